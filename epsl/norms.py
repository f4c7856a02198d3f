"""The ℓp threat models epsl measures in: ℓ∞ (the paper's), ℓ2 and ℓ1.

A perturbation δ of an image with D pixels in [0, 1] is measured by ``‖δ‖_p``; Eq. 4's
first-order bound divides by the *dual* norm ``‖·‖_q`` (1/p + 1/q = 1) of the gradient gap:

=======  ==============  ===========================  ===========================
norm     ‖δ‖_p           dual ‖g‖_q (Eq. 4's divisor)  largest useful radius (box)
=======  ==============  ===========================  ===========================
``linf`` max_i |δ_i|     ‖g‖_1 = Σ |g_i|               1
``l2``   (Σ δ_i²)^½       ‖g‖_2                         √D
``l1``   Σ |δ_i|          ‖g‖_∞ = max_i |g_i|           D
=======  ==============  ===========================  ===========================

The last column is the radius that reaches every point of [0, 1]^D from any image in it: a
larger one adds nothing, so it is refused (:func:`check_radius`). Closed sets are string
enums converted at the API boundary (:func:`parse_norm`), as RobustBench does for threat models.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from epsl.errors import EpslError

if TYPE_CHECKING:  # torch-free at import, so that epsl.analysis can name norms too
    import torch

__all__ = ["NORMS", "Norm", "check_radius", "distance", "dual", "lp", "max_radius",
           "parse_norm"]


class Norm(enum.StrEnum):
    """An ℓp threat model; its value is the name used in flags, presets and records."""

    LINF = "linf"
    L2 = "l2"
    L1 = "l1"

    @property
    def p(self) -> float:
        return {"linf": math.inf, "l2": 2.0, "l1": 1.0}[self.value]

    @property
    def label(self) -> str:
        """How figures and tables name it: ``ℓ∞``, ``ℓ2``, ``ℓ1``."""
        return {"linf": "ℓ∞", "l2": "ℓ2", "l1": "ℓ1"}[self.value]


#: every norm's name, in the order flags list them
NORMS: tuple[str, ...] = tuple(n.value for n in Norm)


def parse_norm(norm: str | Norm) -> Norm:
    """``"linf"``, ``"l2"`` or ``"l1"`` (or a :class:`Norm`) -> :class:`Norm`; anything else is
    a one-line :class:`EpslError` naming the choices."""
    if isinstance(norm, Norm):
        return norm
    try:
        return Norm(str(norm).strip().lower())
    except ValueError:
        raise EpslError(f"norm must be one of {', '.join(NORMS)} (got {norm!r})") from None


def dual(norm: str | Norm) -> Norm:
    """The dual norm q of p (1/p + 1/q = 1): ℓ∞ <-> ℓ1, ℓ2 <-> ℓ2."""
    return {Norm.LINF: Norm.L1, Norm.L2: Norm.L2, Norm.L1: Norm.LINF}[parse_norm(norm)]


def lp(values: torch.Tensor, norm: str | Norm, dim: int = -1) -> torch.Tensor:
    """``‖values‖_p`` along ``dim`` (the norm itself, not its dual)."""
    p = parse_norm(norm)
    if p is Norm.LINF:
        return values.abs().amax(dim)
    if p is Norm.L1:
        return values.abs().sum(dim)
    import torch

    return torch.linalg.vector_norm(values, ord=2, dim=dim)


def distance(x_adv: torch.Tensor, x: torch.Tensor, norm: str | Norm) -> torch.Tensor:
    """``‖x_adv - x‖_p`` per example (N) of two N x ... batches, in float64 (exact enough to
    re-score a point at the bisection's last digit)."""
    if len(x) == 0:
        return x.new_zeros(0, dtype=torch.float64)
    return lp((x_adv.double() - x.double()).flatten(1), norm, dim=1)


def max_radius(norm: str | Norm, dim: int) -> float:
    """The radius that reaches the whole box [0, 1]^D from any point of it: 1, √D or D."""
    p = parse_norm(norm)
    return {Norm.LINF: 1.0, Norm.L2: math.sqrt(dim), Norm.L1: float(dim)}[p]


def check_radius(norm: str | Norm, eps: float | Iterable[float], dim: int | None = None,
                 *, name: str = "eps") -> None:
    """One-line :class:`EpslError` unless every radius is positive, finite and at most the
    whole box in this norm (:func:`max_radius`). Without ``dim`` (the input size is not known
    yet), ℓ∞ radii are still checked against 1 and the others only for being positive."""
    p = parse_norm(norm)
    values = [float(eps)] if isinstance(eps, int | float) else [float(e) for e in eps]
    for e in values:
        if not (math.isfinite(e) and e > 0):
            raise EpslError(f"{name} must be a positive radius (got {e:g})")
        if p is Norm.LINF and e > 1:
            raise EpslError(f"{name} must lie in (0, 1] for the linf norm in pixel units, "
                            f"e.g. 0.3 or 8/255 (got {e:g})")
        if dim is not None and e > max_radius(p, dim) * (1 + 1e-12):
            where = {Norm.L2: f"sqrt(D) = {math.sqrt(dim):.4g}", Norm.L1: f"D = {dim}",
                     Norm.LINF: "1"}[p]
            raise EpslError(f"{name} = {e:g} exceeds the whole [0, 1] box in {p.value} "
                            f"({where} for D = {dim} pixels)")
