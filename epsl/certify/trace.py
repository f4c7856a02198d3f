"""A network as the list of ops that :mod:`epsl.certify.crown` can bound.

The network is traced once with ``torch.fx`` (:func:`trace_ops`), in float64 and eval mode, into
ops of four kinds:

- **affine** ops: :class:`epsl.models.Normalize`, ``Linear``, ``Conv2d``, ``BatchNorm`` (eval),
  ``Flatten``/``view``/``reshape``, average pooling, ``Identity``/``Dropout`` (eval) and the
  addition of a constant;
- **add** of two ops (a residual connection);
- **relu**;
- **max pooling** (no padding, no dilation).

Each fx call node is turned into an :class:`Op` by the handler that one of three tables gives
for it: :data:`MODULE_OPS` by module type (subclasses included), :data:`FUNCTION_OPS` by
function, :data:`METHOD_OPS` by tensor method name. Supporting another op is one entry there
(and its name in :data:`SUPPORTED`, which refusals list). Anything without an entry is refused
in one line that names the node and its target (a module's path and type).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from epsl.errors import EpslError
from epsl.models import Normalize

__all__ = ["FUNCTION_OPS", "METHOD_OPS", "MODULE_OPS", "SUPPORTED", "Op", "Site", "trace_ops"]

#: what a refusal lists as supported
SUPPORTED = ("Normalize", "Linear", "Conv2d", "BatchNorm (eval)", "Flatten/view/reshape",
             "AvgPool2d", "AdaptiveAvgPool2d", "ReLU", "MaxPool2d (no padding)",
             "residual add", "Identity", "Dropout (eval)")


@dataclass
class Op:
    """One node of the traced network."""

    name: str
    kind: str  # "input", "affine", "add", "relu", "maxpool"
    inputs: list[int]
    #: affine: the op on a batch (with its bias); abs_linear: |linear part| on a batch (IBP)
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    abs_linear: Callable[[torch.Tensor], torch.Tensor] | None = None
    #: affine: whether its linear part mixes coordinates (Linear, Conv, pooling) or is diagonal
    mixing: bool = True
    pool: tuple[int, int] = (0, 0)  # maxpool: kernel, stride
    shape: tuple[int, ...] = ()  # per-example output shape
    constant: torch.Tensor | None = field(default=None, repr=False)  # affine: fn(0)


@dataclass(frozen=True)
class Site:
    """One fx call node as a handler sees it."""

    node: fx.Node
    #: how refusals and the op name it: ``path (Type)`` for a module, ``node (target)`` otherwise
    name: str
    inputs: list[int]  # the indices of the ops whose outputs it reads
    parents: list[fx.Node]  # the nodes of those ops
    root: nn.Module  # the float64 copy being traced, where ``get_attr`` constants live
    module: nn.Module | None = None  # the module called, for a ``call_module`` node

    def op(self, kind: str, **fields: Any) -> Op:
        """The op of this node, of ``kind``."""
        return Op(self.name, kind, self.inputs, **fields)

    def constant(self, value: Any) -> Any:
        """A non-tensor argument's value (a ``get_attr`` node resolved to its attribute)."""
        if isinstance(value, fx.Node):
            if value.op != "get_attr":
                raise _refuse(f"{value.name} used as a constant")
            obj: Any = self.root
            for part in str(value.target).split("."):
                obj = getattr(obj, part)
            return obj
        return value

    def rest(self) -> list[Any]:
        """The values of the positional arguments after the first."""
        return [self.constant(a) for a in self.node.args[1:]]

    def keywords(self) -> dict[str, Any]:
        """The values of the keyword arguments."""
        return {k: self.constant(v) for k, v in self.node.kwargs.items()}


Handler = Callable[[Site], Op]


def _refuse(what: str) -> EpslError:
    return EpslError(f"certify cannot bound {what}; supported layers: {', '.join(SUPPORTED)}")


def _pair(value: Any) -> int:
    if isinstance(value, tuple | list):
        if len(set(value)) != 1:
            raise _refuse(f"a max pool with a non-square window {tuple(value)}")
        return int(value[0])
    return int(value)


# ------------------------------------------------------------------ handlers


def _relu(site: Site) -> Op:
    return site.op("relu")


def _affine(site: Site, fn: Callable, abs_linear: Callable, mixing: bool) -> Op:
    return site.op("affine", fn=fn, abs_linear=abs_linear, mixing=mixing)


def _normalize(site: Site) -> Op:
    m = site.module
    assert isinstance(m, Normalize)
    return _affine(site, m, lambda r: r / m.std, False)


def _linear(site: Site) -> Op:
    m = site.module
    assert isinstance(m, nn.Linear)
    return _affine(site, m, lambda r: F.linear(r, m.weight.abs()), True)


def _conv2d(site: Site) -> Op:
    m = site.module
    assert isinstance(m, nn.Conv2d)
    if m.padding_mode != "zeros":
        raise _refuse(f"{site.name} (Conv2d with padding_mode={m.padding_mode!r})")
    return _affine(site, m, lambda r: F.conv2d(r, m.weight.abs(), None, m.stride, m.padding,
                                               m.dilation, m.groups), True)


def _batch_norm(site: Site) -> Op:
    m = site.module
    assert isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)
    if m.running_var is None:
        raise _refuse(f"{site.name} (BatchNorm without running statistics)")
    scale = (m.running_var + m.eps).rsqrt()
    if m.weight is not None:
        scale = scale * m.weight
    view = (-1, 1, 1) if isinstance(m, nn.BatchNorm2d) else (-1,)
    factor = scale.abs().view(*view)
    return _affine(site, m, lambda r: r * factor, False)


def _average_pool(site: Site) -> Op:
    assert site.module is not None
    return _affine(site, site.module, site.module, True)  # |linear part| is itself


def _coordinate_map(site: Site) -> Op:
    """Flatten, Identity, Dropout (eval): each output is one input."""
    assert site.module is not None
    return _affine(site, site.module, site.module, False)


def _max_pool_module(site: Site) -> Op:
    m = site.module
    assert isinstance(m, nn.MaxPool2d)
    if _pair(m.padding) != 0 or _pair(m.dilation) != 1 or m.ceil_mode:
        raise _refuse(f"{site.name} with padding, dilation or ceil_mode")
    k = _pair(m.kernel_size)
    return site.op("maxpool", pool=(k, _pair(m.stride or k)))


def _max_pool_function(site: Site) -> Op:
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
    given = dict(zip(names, site.rest(), strict=False)) | site.keywords()
    k = _pair(given["kernel_size"])
    stride = _pair(given.get("stride") or k)
    if (_pair(given.get("padding", 0)) != 0 or _pair(given.get("dilation", 1)) != 1
            or given.get("ceil_mode", False) or given.get("return_indices", False)):
        raise _refuse(f"{site.name}: a max pool with padding, dilation or ceil_mode")
    return site.op("maxpool", pool=(k, stride))


def _add(site: Site) -> Op:
    """Two tensors: a residual add; a tensor and a constant: an affine op."""
    if site.node.kwargs or len(site.inputs) not in (1, 2):
        raise _refuse(site.name)
    if len(site.inputs) == 2:
        return site.op("add")
    (c,) = [site.constant(a) for a in site.node.args
            if not (isinstance(a, fx.Node) and a in site.parents)]
    return _affine(site, lambda t: t + c, lambda r: r, False)


def _call(site: Site, mixing: bool) -> Op:
    """A function of one tensor and constant arguments, linear in the tensor."""
    target, rest, kwargs = site.node.target, site.rest(), site.keywords()
    if len(site.inputs) != 1 or not site.node.args or not isinstance(site.node.args[0], fx.Node):
        raise _refuse(site.name)

    def fn(t: torch.Tensor) -> torch.Tensor:
        return target(t, *rest, **kwargs)  # type: ignore[operator]
    return _affine(site, fn, fn, mixing)


def _flatten_function(site: Site) -> Op:
    return _call(site, False)


def _average_pool_function(site: Site) -> Op:
    return _call(site, True)


def _flatten_method(site: Site) -> Op:
    """``flatten`` or ``contiguous``: a map of coordinates."""
    method, rest = str(site.node.target), site.rest()
    if len(site.inputs) != 1:
        raise _refuse(site.name)

    def fn(t: torch.Tensor) -> torch.Tensor:
        return getattr(t, method)(*rest)
    return _affine(site, fn, fn, False)


def _reshape(site: Site) -> Op:
    """``view`` or ``reshape`` that keeps the batch dimension first."""
    rest = site.rest()
    if len(site.inputs) != 1:
        raise _refuse(site.name)
    shape = rest[0] if len(rest) == 1 and isinstance(rest[0], Sequence) else rest
    if not shape or int(shape[0]) not in (-1,) and len(shape) < 2:
        raise _refuse(f"{site.name}: a reshape that moves the batch dimension")
    kept = [int(d) for d in tuple(shape)[1:]]

    def fn(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(len(t), *kept)
    return _affine(site, fn, fn, False)


#: handlers by module type (a subclass takes its nearest listed base's)
MODULE_OPS: dict[type[nn.Module], Handler] = {
    Normalize: _normalize, nn.Linear: _linear, nn.Conv2d: _conv2d,
    nn.BatchNorm1d: _batch_norm, nn.BatchNorm2d: _batch_norm,
    nn.AvgPool2d: _average_pool, nn.AdaptiveAvgPool2d: _average_pool,
    nn.Flatten: _coordinate_map, nn.Identity: _coordinate_map, nn.Dropout: _coordinate_map,
    nn.ReLU: _relu, nn.MaxPool2d: _max_pool_module,
}
#: handlers by the function a ``call_function`` node calls
FUNCTION_OPS: dict[Callable, Handler] = {
    F.relu: _relu, torch.relu: _relu, F.max_pool2d: _max_pool_function,
    operator.add: _add, torch.add: _add, torch.flatten: _flatten_function,
    F.avg_pool2d: _average_pool_function, F.adaptive_avg_pool2d: _average_pool_function,
}
#: handlers by the tensor method a ``call_method`` node calls
METHOD_OPS: dict[str, Handler] = {
    "relu": _relu, "flatten": _flatten_method, "contiguous": _flatten_method, "view": _reshape,
    "reshape": _reshape,
}


# ------------------------------------------------------------------ tracing


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Normalize) or super().is_leaf_module(m, qualname)


def _graph(net: nn.Module) -> fx.Graph:
    try:
        return _Tracer().trace(net)
    except Exception as exc:  # noqa: BLE001 - any tracing failure is one line
        raise EpslError(f"certify cannot trace the model ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); it needs a network "
                        "without data-dependent control flow") from None


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    return [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]


def _handler(node: fx.Node, module: nn.Module | None) -> Handler | None:
    if node.op == "call_module":
        assert module is not None
        return next((MODULE_OPS[t] for t in type(module).__mro__ if t in MODULE_OPS), None)
    if node.op == "call_function":
        return FUNCTION_OPS.get(node.target)  # type: ignore[arg-type]
    if node.op == "call_method":
        return METHOD_OPS.get(str(node.target))
    return None


def _call_op(node: fx.Node, root: nn.Module, index: dict[fx.Node, int]) -> Op:
    """The op of one call node, whose tensor inputs are already ops (``index``)."""
    label = f"{node.name} ({node.target})"
    parents = [p for p in _tensor_args(node) if p.op != "get_attr"]
    try:
        inputs = [index[p] for p in parents]
    except KeyError:
        raise _refuse(label) from None
    module = root.get_submodule(str(node.target)) if node.op == "call_module" else None
    name = f"{node.target} ({type(module).__name__})" if module is not None else label
    handler = _handler(node, module)
    if handler is None:
        raise _refuse(name)
    op = handler(Site(node, name, inputs, parents, root, module))
    if op.kind in ("affine", "relu", "maxpool") and len(op.inputs) != 1:
        raise _refuse(f"{label} with {len(op.inputs)} tensor inputs")
    return op


def trace_ops(model: nn.Module) -> list[Op]:
    """The ops of a float64, eval-mode copy of ``model``, in topological order, the last
    being the logits (shapes not yet set: :meth:`epsl.certify.crown.Network.set_shapes`).
    An unsupported layer is a one-line :class:`EpslError` naming it."""
    net = copy.deepcopy(model).cpu().double().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    ops: list[Op] = []
    index: dict[fx.Node, int] = {}
    output: int | None = None
    for node in _graph(net).nodes:
        if node.op == "placeholder":
            if ops:
                raise _refuse("a model with more than one input")
            index[node] = len(ops)
            ops.append(Op(node.name, "input", []))
        elif node.op == "output":
            (result,) = _tensor_args(node)
            output = index[result]
        elif node.op != "get_attr":
            index[node] = len(ops)
            ops.append(_call_op(node, net, index))
    if output is None:
        raise _refuse("a model without an output")
    return ops[: output + 1]
