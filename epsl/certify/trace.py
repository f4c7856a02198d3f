"""A network as the list of ops that :mod:`epsl.certify.crown` can bound.

The network is traced once with ``torch.fx`` (:func:`trace_ops`), in float64 and eval mode, into
ops of four kinds (:class:`epsl.certify.ops.Op`):

- **affine** ops: :class:`epsl.models.Normalize`, ``Linear``, ``Conv2d``, ``BatchNorm`` (eval),
  ``Flatten``/``view``/``reshape``, average pooling, a mean or sum over non-batch dimensions,
  ``Identity``/``Dropout`` (eval) and elementwise ``+ - * /`` with a constant (``(x - mean) /
  std`` with buffers, ``x * scale + shift``);
- **add** of two ops (a residual connection);
- **relu**;
- **max pooling** (no padding, no dilation).

Each fx call node is turned into an :class:`Op` by the handler (:mod:`epsl.certify.layers`)
that one of three tables gives for it: :data:`MODULE_OPS` by module type (subclasses included),
:data:`FUNCTION_OPS` by function, :data:`METHOD_OPS` by tensor method name. Supporting another
op is one entry there (and its name in :data:`SUPPORTED`, which refusals list). Anything
without an entry is refused in one line that names the op and where it is in the model: a
module's path and type (``body.3 (Sigmoid)``), a function's or method's name and the layer
whose forward calls it (``'sigmoid' (layer body.3 (Block))``).

A node that does not depend on the input (a buffer, a parameter, ``self.mu.view(1, 3, 1, 1)``)
is a constant, computed once here. So is a query of the input's batch size (``x.size(0)``,
``x.shape[0]``), which only a reshape may use, and of its ``device`` or ``dtype``.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from epsl.certify import layers
from epsl.certify.ops import BATCH, SUPPORTED, Op, Site, cannot_bound
from epsl.errors import EpslError
from epsl.models import Normalize

__all__ = ["FUNCTION_OPS", "METHOD_OPS", "MODULE_OPS", "SUPPORTED", "Op", "Site", "trace_ops"]

Handler = Callable[[Site], Op]

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
            nn.FeatureAlphaDropout)

#: handlers by module type (a subclass takes its nearest listed base's)
MODULE_OPS: dict[type[nn.Module], Handler] = {
    Normalize: layers.normalize, nn.Linear: layers.linear, nn.Conv2d: layers.conv2d,
    nn.BatchNorm1d: layers.batch_norm, nn.BatchNorm2d: layers.batch_norm,
    nn.AvgPool2d: layers.average_pool, nn.AdaptiveAvgPool2d: layers.adaptive_average_pool,
    nn.Flatten: layers.coordinate_map, nn.Identity: layers.coordinate_map,
    **dict.fromkeys(_DROPOUT, layers.coordinate_map),
    nn.ReLU: layers.relu, nn.MaxPool2d: layers.max_pool_module,
}
#: handlers by the function a ``call_function`` node calls
FUNCTION_OPS: dict[Callable, Handler] = {
    F.relu: layers.relu, torch.relu: layers.relu, F.max_pool2d: layers.max_pool_function,
    torch.flatten: layers.flatten_function, F.avg_pool2d: layers.average_pool_function,
    F.adaptive_avg_pool2d: layers.average_pool_function, torch.mean: layers.reduce_mean,
    torch.sum: layers.reduce_mean, F.linear: layers.linear_function,
    F.conv2d: layers.conv2d_function,
    **dict.fromkeys((F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, torch.dropout),
                    layers.dropout_function),
    **dict.fromkeys((operator.add, operator.iadd, torch.add), layers.add),
    **dict.fromkeys((operator.sub, operator.isub, torch.sub, torch.subtract), layers.sub),
    **dict.fromkeys((operator.mul, operator.imul, torch.mul, torch.multiply), layers.mul),
    **dict.fromkeys((operator.truediv, operator.itruediv, torch.div, torch.divide,
                     torch.true_divide), layers.div),
    **dict.fromkeys((operator.neg, torch.neg, torch.negative), layers.neg),
}
#: handlers by the tensor method a ``call_method`` node calls
METHOD_OPS: dict[str, Handler] = {
    "relu": layers.relu, "flatten": layers.flatten_method, "contiguous": layers.flatten_method,
    "view": layers.reshape, "reshape": layers.reshape, "mean": layers.reduce_mean,
    "sum": layers.reduce_mean, "add": layers.add, "sub": layers.sub, "subtract": layers.sub,
    "mul": layers.mul, "multiply": layers.mul, "div": layers.div, "divide": layers.div,
    "true_divide": layers.div, "neg": layers.neg, "negative": layers.neg,
}
#: in-place forms, refused where a later node reads the tensor they overwrite
_IN_PLACE = (operator.iadd, operator.isub, operator.imul, operator.itruediv)


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


def _name(node: fx.Node, module: nn.Module | None) -> str:
    """How refusals name a node: ``path (Type)`` for a module, ``'name' (layer path (Type))``
    for a function or method that a submodule's forward calls, ``'name' (the model's
    forward)`` for one the model's own forward calls."""
    if module is not None:
        return f"{node.target} ({type(module).__name__})"
    target = node.target if node.op == "call_method" else getattr(node.target, "__name__",
                                                                  node.target)
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return f"'{target}' (the model's forward)"
    path, kind = list(stack.values())[-1]
    return f"'{target}' (layer {path} ({getattr(kind, '__name__', kind)}))"


def _check_in_place(node: fx.Node, module: nn.Module | None, order: dict[fx.Node, int]
                    ) -> None:
    """Refuses an in-place op whose input a later node reads (the graph would read the value
    before the op, the model the value after)."""
    in_place = (node.target in _IN_PLACE or node.kwargs.get("inplace") is True
                or getattr(module, "inplace", False) is True)
    first = node.args[0] if node.args else None
    if in_place and isinstance(first, fx.Node) and any(
            order[user] > order[node] for user in first.users):
        raise cannot_bound(f"{_name(node, module)} in place, on a tensor read again after it")


def _call_op(node: fx.Node, root: nn.Module, index: dict[fx.Node, int],
             constants: dict[fx.Node, Any]) -> Op:
    """The op of one call node, whose tensor inputs are already ops (``index``) or constants."""
    module = root.get_submodule(str(node.target)) if node.op == "call_module" else None
    name = _name(node, module)
    parents = [p for p in _tensor_args(node) if p in index]
    handler = _handler(node, module)
    if handler is None:
        raise cannot_bound(name)
    op = handler(Site(node, name, [index[p] for p in parents], parents, constants, module))
    if op.kind in ("affine", "relu", "maxpool") and len(op.inputs) != 1:
        raise cannot_bound(f"{name} with {len(op.inputs)} tensor inputs")
    return op


# ------------------------------------------------------------------ constants


class _InputShape:
    """``x.shape`` or ``x.size()`` of a tensor that depends on the input: only its first entry
    (the batch size) is known while tracing."""

    def __getitem__(self, i: int) -> object:
        if i != 0:
            raise cannot_bound(f"a shape query of dimension {i} (only the batch size, x.size(0) "
                               "or x.shape[0], is known while tracing; use x.flatten(1))")
        return BATCH


def _query(node: fx.Node, module: nn.Module | None) -> tuple[bool, Any]:
    """(True, its value) for a query of a tensor that depends on the input (its batch size,
    shape, device or dtype); (False, None) for any other node."""
    what = node.target if node.op == "call_method" else (
        node.args[1] if node.target is getattr and len(node.args) == 2 else None)
    if node.op == "call_method" and what == "size":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return True, _InputShape() if dim is None else _InputShape()[int(dim)]  # type: ignore[arg-type]
    if node.op == "call_function" and node.target is getattr:
        values = {"shape": _InputShape(), "device": torch.device("cpu"), "dtype": torch.float64}
        if what not in values:
            raise cannot_bound(f"the attribute {what!r} of a tensor ({_name(node, module)})")
        return True, values[str(what)]
    return False, None


def _constant(node: fx.Node, root: nn.Module, constants: dict[fx.Node, Any]) -> Any:
    """The value of a node that does not depend on the input, from the constants it reads."""
    if node.op == "get_attr":
        value: Any = root
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value
    args = fx.node.map_arg(node.args, constants.__getitem__)
    kwargs = fx.node.map_arg(node.kwargs, constants.__getitem__)
    try:
        with torch.no_grad():
            if node.op == "call_method":
                return getattr(args[0], str(node.target))(*args[1:], **kwargs)
            if node.op == "call_module":
                return root.get_submodule(str(node.target))(*args, **kwargs)
            return node.target(*args, **kwargs)  # type: ignore[operator]
    except EpslError:
        raise
    except Exception as exc:  # noqa: BLE001 - what the model computes from constants
        module = root.get_submodule(str(node.target)) if node.op == "call_module" else None
        raise cannot_bound(f"{_name(node, module)} on constants ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def trace_ops(model: nn.Module) -> list[Op]:
    """The ops of a float64, eval-mode copy of ``model``, in topological order, the last
    being the logits (shapes not yet set: :meth:`epsl.certify.crown.Network.set_shapes`).
    An unsupported layer is a one-line :class:`EpslError` naming it."""
    net = copy.deepcopy(model).cpu().double().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    graph = _graph(net)
    order = {node: i for i, node in enumerate(graph.nodes)}
    ops: list[Op] = []
    index: dict[fx.Node, int] = {}
    constants: dict[fx.Node, Any] = {}
    output: int | None = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if ops:
                raise cannot_bound("a model with more than one input")
            index[node] = len(ops)
            ops.append(Op(node.name, "input", []))
        elif node.op == "output":
            result = node.args[0]
            if not isinstance(result, fx.Node) or result not in index:
                raise cannot_bound("a model whose output is not one tensor that depends on its "
                                   "input")
            output = index[result]
        elif not any(n in index for n in node.all_input_nodes):
            constants[node] = _constant(node, net, constants)
        else:
            module = net.get_submodule(str(node.target)) if node.op == "call_module" else None
            is_query, value = _query(node, module)
            if is_query:
                constants[node] = value
                continue
            _check_in_place(node, module, order)
            index[node] = len(ops)
            ops.append(_call_op(node, net, index, constants))
    if output is None:
        raise cannot_bound("a model without an output")
    return ops[: output + 1]
