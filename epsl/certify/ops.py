"""What the tracer (:mod:`epsl.certify.trace`) hands the bounds (:mod:`epsl.certify.crown`):
an :class:`Op` per node of the network, built by a handler (:mod:`epsl.certify.layers`) from
the :class:`Site` of an fx call node; and the one-line refusal (:func:`cannot_bound`) of
anything the bounds do not support."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from epsl.errors import EpslError

__all__ = ["BATCH", "SUPPORTED", "Op", "Site", "Transpose", "cannot_bound"]

#: the adjoint of an affine op's linear part: (coefficients M x *out, input shape M x *in)
#: -> M x *in
Transpose = Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor]

#: what a refusal lists as supported
SUPPORTED = ("Normalize", "Linear", "Conv2d", "BatchNorm (eval)", "Flatten/view/reshape",
             "AvgPool2d", "AdaptiveAvgPool2d", "mean/sum over non-batch dims", "ReLU",
             "MaxPool2d (no padding)", "residual add", "+ - * / with a constant", "Identity",
             "Dropout (eval)", "their functional and method forms")


class _BatchSize:
    """The batch size where a forward reads it (``x.size(0)``, ``x.shape[0]``): known only
    when the network is run, so a reshape may use it as its first dimension and nothing else
    may."""

    def __repr__(self) -> str:
        return "N"


#: the value of ``x.size(0)`` and ``x.shape[0]`` while tracing
BATCH = _BatchSize()


@dataclass
class Op:
    """One node of the traced network.

    An affine op maps its input (N x *in) to ``fn`` of it (N x *shape); IBP bounds it by
    ``fn`` at the centre plus or minus ``abs_linear`` (|linear part|) of the radius, and CROWN
    carries coefficients (M x *shape) back through it by ``transpose`` (given them and the
    shape M x *in, it returns M x *in), the adjoint of its linear part, or by the
    vector-Jacobian product of ``fn`` where ``transpose`` is None. ``transpose`` calls the
    kernel that autograd's vector-Jacobian product calls, without its forward pass, so both
    give the same bits.
    """

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
    #: affine: the adjoint of the linear part on a batch of coefficients, where one is written
    transpose: Transpose | None = field(default=None, repr=False)
    #: affine: whether ``constant`` has a non-zero entry (CROWN skips it where not)
    biased: bool = True


@dataclass(frozen=True)
class Site:
    """One fx call node as a handler sees it."""

    node: fx.Node
    #: how refusals and the op name it: ``path (Type)`` for a module, ``'name' (where)`` for a
    #: function or a method
    name: str
    inputs: list[int]  # the indices of the ops whose outputs it reads
    parents: list[fx.Node]  # the nodes of those ops
    #: the values of the nodes that do not depend on the input (buffers, parameters, what is
    #: computed from them, the batch size)
    constants: dict[fx.Node, Any]
    module: nn.Module | None = None  # the module called, for a ``call_module`` node

    def op(self, kind: str, **fields: Any) -> Op:
        """The op of this node, of ``kind``."""
        return Op(self.name, kind, self.inputs, **fields)

    def constant(self, value: Any) -> Any:
        """An argument's value: itself, or the value of the constant node it names."""
        if isinstance(value, fx.Node):
            if value not in self.constants:
                raise cannot_bound(f"{self.name} with the tensor {value.name} as a parameter")
            return self.constants[value]
        if isinstance(value, tuple):
            return tuple(self.constant(v) for v in value)
        if isinstance(value, list):
            return [self.constant(v) for v in value]
        return value

    def rest(self) -> list[Any]:
        """The values of the positional arguments after the first."""
        return [self.constant(a) for a in self.node.args[1:]]

    def keywords(self) -> dict[str, Any]:
        """The values of the keyword arguments."""
        return {k: self.constant(v) for k, v in self.node.kwargs.items()}

    def arguments(self, names: tuple[str, ...]) -> dict[str, Any]:
        """The values of the arguments after the first, by ``names`` (the signature's order)
        and by keyword."""
        return dict(zip(names, self.rest(), strict=False)) | self.keywords()

    def single(self) -> None:
        """Refuses a node that does not read exactly one op, as its first argument."""
        first = self.node.args[0] if self.node.args else None
        if len(self.inputs) != 1 or first not in self.parents:
            raise cannot_bound(f"{self.name} with {len(self.inputs)} tensor inputs")


def cannot_bound(what: str) -> EpslError:
    """The one-line refusal of ``what`` (an op and where it is in the model)."""
    return EpslError(f"certify cannot bound {what}; supported layers: {', '.join(SUPPORTED)}")
