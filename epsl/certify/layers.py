"""The handlers of :mod:`epsl.certify.trace`'s tables: each turns the :class:`Site` of one fx
call node into the :class:`Op` that :mod:`epsl.certify.crown` bounds, or refuses it in one
line (:func:`epsl.certify.ops.cannot_bound`).

An affine op is its own function ``fn`` (the layer on a batch, N x *in -> N x *out), the
absolute value of its linear part ``abs_linear`` (for IBP) and, where one is written here, the
adjoint of that linear part ``transpose`` (for CROWN; otherwise CROWN takes the vector-Jacobian
product of ``fn``). Elementwise arithmetic with a constant ``c`` (a number, a buffer, a
parameter or a tensor computed from them, broadcast) is affine in the input ``x`` in these
forms, and each is bounded as such:

    x + c, c + x, x - c, c - x, x * c, c * x, x / c, -x        (|linear part|: 1 or |c|, 1/|c|)

``c / x`` and any product or quotient of two tensors that depend on the input are refused.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from epsl.certify.ops import BATCH, Op, Site, Transpose, cannot_bound
from epsl.models import Normalize

__all__ = ["adaptive_average_pool", "add", "average_pool", "average_pool_function",
           "batch_norm", "conv2d", "conv2d_function", "coordinate_map", "div",
           "dropout_function", "flatten_function", "flatten_method", "linear",
           "linear_function", "max_pool_function", "max_pool_module", "mul", "neg", "normalize",
           "reduce_mean", "relu", "reshape", "sub"]

Tensor = torch.Tensor


def _pair(value: Any) -> int:
    if isinstance(value, tuple | list):
        if len(set(value)) != 1:
            raise cannot_bound(f"a max pool with a non-square window {tuple(value)}")
        return int(value[0])
    return int(value)


def _affine(site: Site, fn: Callable, abs_linear: Callable, mixing: bool,
            transpose: Transpose | None = None) -> Op:
    return site.op("affine", fn=fn, abs_linear=abs_linear, mixing=mixing, transpose=transpose)


def _as_function(site: Site) -> Callable[[Tensor], Tensor]:
    """The node's own call as a function of its one tensor input, every other argument fixed
    to its value."""
    node = site.node
    (parent,) = set(site.parents)
    args = [a if a is parent else site.constant(a) for a in node.args]
    kwargs = {k: v if v is parent else site.constant(v) for k, v in node.kwargs.items()}
    target, module = node.target, site.module

    def fn(t: Tensor) -> Tensor:
        a = [t if v is parent else v for v in args]
        k = {key: t if v is parent else v for key, v in kwargs.items()}
        if node.op == "call_method":
            return getattr(a[0], str(target))(*a[1:], **k)  # type: ignore[no-any-return]
        if node.op == "call_module":
            assert module is not None
            return module(*a, **k)  # type: ignore[no-any-return]
        return target(*a, **k)  # type: ignore[operator,no-any-return]
    return fn


# ------------------------------------------------------------------ modules


def relu(site: Site) -> Op:
    """``nn.ReLU``, ``F.relu``, ``torch.relu``, ``x.relu()``."""
    return site.op("relu")


def normalize(site: Site) -> Op:
    """:class:`epsl.models.Normalize`: ``(x - mean) / std``."""
    m = site.module
    assert isinstance(m, Normalize)
    return _affine(site, m, lambda r: r / m.std, False, transpose=lambda g, _: g / m.std)


def linear(site: Site) -> Op:
    """``nn.Linear`` (N x in -> N x out)."""
    m = site.module
    assert isinstance(m, nn.Linear)
    return _affine(site, m, lambda r: F.linear(r, m.weight.abs()), True,
                   transpose=lambda g, _: g @ m.weight)


def conv2d(site: Site) -> Op:
    """``nn.Conv2d`` with zero padding (N x C x H x W -> N x C' x H' x W')."""
    m = site.module
    assert isinstance(m, nn.Conv2d)
    if m.padding_mode != "zeros":
        raise cannot_bound(f"{site.name} (Conv2d with padding_mode={m.padding_mode!r})")
    transpose = _conv_transpose(m.weight, m.stride, m.padding, m.dilation, m.groups)
    return _affine(site, m, lambda r: F.conv2d(r, m.weight.abs(), None, m.stride, m.padding,
                                               m.dilation, m.groups), True, transpose)


def _conv_transpose(weight: Tensor, stride: Any, padding: Any, dilation: Any, groups: int
                    ) -> Transpose | None:
    """The adjoint of a 2-d convolution: the input gradient that autograd computes for it;
    None for a padding given by name ("same"), left to the vector-Jacobian product."""
    if isinstance(padding, str):
        return None
    pairs = [tuple(v) if isinstance(v, tuple | list) else (v, v)
             for v in (stride, padding, dilation)]

    def transpose(g: Tensor, shape: tuple[int, ...]) -> Tensor:
        return torch.ops.aten.convolution_backward(  # type: ignore[no-any-return]
            g, g.new_zeros(()).expand(shape), weight, None, *pairs, False, [0, 0], groups,
            [True, False, False])[0]
    return transpose


def batch_norm(site: Site) -> Op:
    """``nn.BatchNorm1d``/``2d`` in eval mode: a per-channel scale and shift."""
    m = site.module
    assert isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)
    if m.running_var is None:
        raise cannot_bound(f"{site.name} (BatchNorm without running statistics)")
    scale = (m.running_var + m.eps).rsqrt()
    if m.weight is not None:
        scale = scale * m.weight
    view = (-1, 1, 1) if isinstance(m, nn.BatchNorm2d) else (-1,)
    factor = scale.abs().view(*view)

    def transpose(g: Tensor, shape: tuple[int, ...]) -> Tensor:
        return torch.ops.aten.native_batch_norm_backward(  # type: ignore[no-any-return]
            g, g.new_zeros(()).expand(shape), m.weight, m.running_mean, m.running_var, None,
            None, False, m.eps, [True, False, False])[0]
    return _affine(site, m, lambda r: r * factor, False, transpose)


def average_pool(site: Site) -> Op:
    """``nn.AvgPool2d``: its linear part is its own absolute value."""
    m = site.module
    assert isinstance(m, nn.AvgPool2d)

    def transpose(g: Tensor, shape: tuple[int, ...]) -> Tensor:
        return torch.ops.aten.avg_pool2d_backward(  # type: ignore[no-any-return]
            g, g.new_zeros(()).expand(shape), m.kernel_size, m.stride, m.padding, m.ceil_mode,
            m.count_include_pad, m.divisor_override)
    return _affine(site, m, m, True, transpose)


def adaptive_average_pool(site: Site) -> Op:
    """``nn.AdaptiveAvgPool2d``: its linear part is its own absolute value."""
    assert site.module is not None
    return _affine(site, site.module, site.module, True)


def coordinate_map(site: Site) -> Op:
    """Flatten, Identity, Dropout (eval): each output is one input."""
    assert site.module is not None
    return _affine(site, site.module, site.module, False, transpose=_reshaped)


def _reshaped(g: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The transpose of a map of coordinates that keeps their order (flatten, reshape)."""
    return g.reshape(shape)


def max_pool_module(site: Site) -> Op:
    """``nn.MaxPool2d`` without padding or dilation."""
    m = site.module
    assert isinstance(m, nn.MaxPool2d)
    if _pair(m.padding) != 0 or _pair(m.dilation) != 1 or m.ceil_mode:
        raise cannot_bound(f"{site.name} with padding, dilation or ceil_mode")
    k = _pair(m.kernel_size)
    return site.op("maxpool", pool=(k, _pair(m.stride or k)))


# ------------------------------------------------------------------ functions and methods


def max_pool_function(site: Site) -> Op:
    """``F.max_pool2d`` without padding or dilation."""
    given = site.arguments(("kernel_size", "stride", "padding", "dilation", "ceil_mode"))
    k = _pair(given["kernel_size"])
    stride = _pair(given.get("stride") or k)
    if (_pair(given.get("padding", 0)) != 0 or _pair(given.get("dilation", 1)) != 1
            or given.get("ceil_mode", False) or given.get("return_indices", False)):
        raise cannot_bound(f"{site.name}: a max pool with padding, dilation or ceil_mode")
    return site.op("maxpool", pool=(k, stride))


def _call(site: Site, mixing: bool) -> Op:
    """A function of one tensor and constant arguments, linear in the tensor with non-negative
    weights (its linear part is its own absolute value)."""
    target, rest, kwargs = site.node.target, site.rest(), site.keywords()
    site.single()

    def fn(t: Tensor) -> Tensor:
        return target(t, *rest, **kwargs)  # type: ignore[operator,no-any-return]
    return _affine(site, fn, fn, mixing)


def flatten_function(site: Site) -> Op:
    """``torch.flatten(x, start_dim)`` with ``start_dim`` >= 1."""
    if int(site.arguments(("start_dim", "end_dim")).get("start_dim", 0)) == 0:
        raise cannot_bound(f"{site.name} from dimension 0 (the batch's)")
    return _call(site, False)


def average_pool_function(site: Site) -> Op:
    """``F.avg_pool2d``, ``F.adaptive_avg_pool2d``."""
    return _call(site, True)


def flatten_method(site: Site) -> Op:
    """``x.flatten(start_dim)`` (``start_dim`` >= 1) or ``x.contiguous()``: a map of
    coordinates."""
    method, rest = str(site.node.target), site.rest()
    site.single()
    if method == "flatten" and int(site.arguments(("start_dim",)).get("start_dim", 0)) == 0:
        raise cannot_bound(f"{site.name} from dimension 0 (the batch's)")

    def fn(t: Tensor) -> Tensor:
        return getattr(t, method)(*rest)  # type: ignore[no-any-return]
    return _affine(site, fn, fn, False, transpose=_reshaped)


def reshape(site: Site) -> Op:
    """``view`` or ``reshape`` that keeps the batch dimension first (``-1``, ``x.size(0)`` or
    ``x.shape[0]`` there; a number there is taken for the batch size)."""
    rest = site.rest()
    site.single()
    shape = rest[0] if len(rest) == 1 and isinstance(rest[0], Sequence) else rest
    if len(shape) < 2 or BATCH in shape[1:]:
        raise cannot_bound(f"{site.name}: a reshape that moves the batch dimension")
    kept = [int(d) for d in tuple(shape)[1:]]

    def fn(t: Tensor) -> Tensor:
        return t.reshape(len(t), *kept)
    return _affine(site, fn, fn, False, transpose=_reshaped)


def reduce_mean(site: Site) -> Op:
    """``x.mean(dims)``, ``torch.mean``, ``x.sum(dims)``, ``torch.sum`` over dimensions other
    than the batch's (N x C x H x W -> N x C with dims (2, 3))."""
    site.single()
    given = site.arguments(("dim", "keepdim"))
    dims = given.get("dim")
    if dims is None or given.get("dtype") is not None:
        raise cannot_bound(f"{site.name} without dims (over the batch too) or with a dtype")
    if 0 in ((dims,) if isinstance(dims, int) else tuple(dims)):
        raise cannot_bound(f"{site.name} over dimension 0 (the batch's)")
    fn = _as_function(site)
    return _affine(site, fn, fn, True)


def linear_function(site: Site) -> Op:
    """``F.linear(x, weight, bias)`` with a constant weight and bias."""
    site.single()
    given = site.arguments(("weight", "bias"))
    weight, bias = given["weight"], given.get("bias")
    if not isinstance(weight, Tensor):
        raise cannot_bound(f"{site.name} with a weight that is not a tensor")
    return _affine(site, lambda t: F.linear(t, weight, bias),
                   lambda r: F.linear(r, weight.abs()), True, transpose=lambda g, _: g @ weight)


def conv2d_function(site: Site) -> Op:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups)`` with a constant weight
    and bias."""
    site.single()
    given = site.arguments(("weight", "bias", "stride", "padding", "dilation", "groups"))
    weight, bias = given.pop("weight"), given.pop("bias", None)
    if not isinstance(weight, Tensor):
        raise cannot_bound(f"{site.name} with a weight that is not a tensor")
    options = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1} | given
    return _affine(site, lambda t: F.conv2d(t, weight, bias, **options),
                   lambda r: F.conv2d(r, weight.abs(), None, **options), True,
                   _conv_transpose(weight, **options))


def dropout_function(site: Site) -> Op:
    """``F.dropout`` (and its 1d/2d/3d/alpha forms, ``torch.dropout``) with ``training=False``
    or ``p=0``: the identity."""
    site.single()
    given = site.arguments(("p", "training", "inplace"))
    training = given.get("training", given.get("train", True))
    if training and float(given.get("p", 0.5)) > 0:
        raise cannot_bound(f"{site.name} in training mode (pass training=self.training)")
    return _affine(site, _identity, _identity, False, transpose=_reshaped)


def _identity(t: Tensor) -> Tensor:
    return t


# ------------------------------------------------------------------ arithmetic


def _constant_operand(site: Site) -> tuple[Any, bool]:
    """The constant operand of a binary op that reads one op, and whether the op's tensor is
    the first operand; a number or a tensor."""
    operands = [*site.node.args, *([site.node.kwargs["other"]] if "other" in site.node.kwargs
                                   else [])]
    if len(operands) != 2 or len(site.inputs) != 1:
        raise cannot_bound(f"{site.name} of {len(site.inputs)} tensors that depend on the input")
    first = isinstance(operands[0], fx.Node) and operands[0] in site.parents
    value = site.constant(operands[1] if first else operands[0])
    if isinstance(value, bool) or not isinstance(value, Tensor | numbers.Real):
        raise cannot_bound(f"{site.name} with {type(value).__name__} {value!r}")
    return value, first


def _magnitude(value: Any) -> Any:
    return value.abs() if isinstance(value, Tensor) else abs(value)


def add(site: Site) -> Op:
    """Two tensors: a residual add; a tensor and a constant: ``x + c`` or ``c + x``."""
    if len(site.inputs) == 2 and not site.node.kwargs:
        return site.op("add")
    return _shift(site)


def sub(site: Site) -> Op:
    """``x - c`` or ``c - x`` with a constant ``c``."""
    return _shift(site)


def _shift(site: Site) -> Op:
    """``x ± c`` or ``c ± x`` (``alpha`` scales the second operand)."""
    _, first = _constant_operand(site)
    alpha = _magnitude(site.keywords().get("alpha", 1))
    fn = _as_function(site)
    if first or alpha == 1:
        return _affine(site, fn, _identity, False)
    return _affine(site, fn, lambda r: r * alpha, False)


def mul(site: Site) -> Op:
    """``x * c`` or ``c * x`` with a constant ``c``."""
    value, _ = _constant_operand(site)
    factor = _magnitude(value)
    return _affine(site, _as_function(site), lambda r: r * factor, False)


def div(site: Site) -> Op:
    """``x / c`` with a constant ``c`` (true division); ``c / x`` is not affine."""
    value, first = _constant_operand(site)
    if not first:
        raise cannot_bound(f"{site.name}: division by the input is not affine")
    if site.keywords().get("rounding_mode") is not None:
        raise cannot_bound(f"{site.name} with a rounding mode")
    factor = _magnitude(value)
    return _affine(site, _as_function(site), lambda r: r / factor, False)


def neg(site: Site) -> Op:
    """``-x``."""
    site.single()
    return _affine(site, _as_function(site), _identity, False)
