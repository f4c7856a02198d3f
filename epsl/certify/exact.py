"""ε_exact: the true minimal ℓ∞ perturbation of one example of a small ReLU network (affine
layers and ReLUs in a chain), in the [0, 1] box, as a mixed-integer program (Tjeng et al.
2019, https://arxiv.org/abs/1711.07356) per other class, solved by scipy's ``milp`` (HiGHS).

The program's variables are the input x, the radius t (the objective, with |x - x0| <= t), each
hidden layer's outputs and one binary per unstable ReLU (big-M encoding). The big-M constants
are CROWN's pre-activation bounds (:mod:`epsl.certify.crown`) on the ball of radius ``upper``,
which contains the optimum. The search has a time limit; one that runs out reports the interval
it reached and NaN as ε_exact, never a guess. The solver's point is re-scored: clipped to the
box, misclassified by the model, at an ℓ∞ distance which may exceed ε_exact by the solver's
tolerance (~1e-6).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from epsl.certify.crown import Network, ball
from epsl.errors import EpslError

__all__ = ["EXACT_STATUS", "dense_layers", "exact_minimum"]

#: what ``exact_status`` may say: solved, cut off by the time limit (the interval reached is
#: reported), no class reachable inside ``hi``, a point the model does not misclassify, or
#: misclassified at x
EXACT_STATUS = ("optimal", "time limit", "beyond upper", "unverified point", "clean")


def dense_layers(network: Network) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """The network as affine blocks between ReLUs: (W, b, index of the block's last op), the
    last block ending at the logits. Refuses anything but affine ops and ReLUs in a chain."""
    blocks: list[tuple[np.ndarray, np.ndarray, int]] = []
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    for i, op in enumerate(network.ops):
        if op.kind == "input":
            continue
        if op.inputs != [i - 1]:
            raise EpslError("--exact needs a chain of affine layers and ReLUs (this model "
                            f"branches at {op.name})")
        if op.kind == "affine":
            jac = network.jacobian(i)
            if jac is None:
                raise EpslError(f"--exact: {op.name} is too large for a dense program")
            const = op.constant.flatten()  # type: ignore[union-attr]
            weight = jac if weight is None else jac @ weight
            bias = const if bias is None else jac @ bias + const
        elif op.kind == "relu":
            if weight is None or bias is None:
                raise EpslError("--exact needs an affine layer before every ReLU")
            blocks.append((weight.numpy(), bias.numpy(), i - 1))
            weight, bias = None, None
        else:
            raise EpslError(f"--exact supports affine layers and ReLUs only, not {op.name}; "
                            "use certify without --exact for this model")
    if weight is None or bias is None:
        raise EpslError("--exact needs an affine output layer")
    blocks.append((weight.numpy(), bias.numpy(), len(network.ops) - 1))
    return blocks


def exact_minimum(network: Network, model: nn.Module, x: torch.Tensor, label: int,
                  upper: float, *, time_limit: float = 30.0, floor: float = 0.0
                  ) -> tuple[float, float, float, float, str]:
    """The true minimal ℓ∞ distance (in the box) at which a class other than ``label`` reaches
    ``label``'s logit, for one example ``x`` (C x H x W), searched in [``floor``, ``upper``]
    (a certified radius and a radius with a known adversarial point): ``(eps_exact, lo, hi,
    point distance, status)``; eps_exact is NaN unless every class was solved to optimality.
    One program per other class (:func:`_relu_program`, :func:`_search_classes`), all within
    ``time_limit`` seconds."""
    blocks = dense_layers(network)
    deadline = time.perf_counter() + time_limit
    # pre-activation bounds of every ReLU on the ball of radius `upper` (which holds the optimum)
    lower_box, upper_box = ball(x[None], upper)
    bounds = network.bounds(lower_box, upper_box, method="crown")
    pre = [(bounds[last][0].flatten().numpy(), bounds[last][1].flatten().numpy())
           for _, _, last in blocks[:-1]]
    program = _relu_program(blocks[:-1], pre, x.double().flatten().numpy(), floor, upper)
    search = _search_classes(program, blocks[-1], label, deadline, floor)
    return _exact_outcome(search, model, x, label, floor, upper)


@dataclass
class _Program:
    """The mixed-integer program of a ReLU network on the ℓ∞ ball in the box (Tjeng et al.
    2019): variables x (``dim``), t (the radius, the objective), each hidden layer's outputs h
    and one binary d per unstable ReLU; constraints ``lbs <= rows · v <= ubs``."""

    dim: int
    var_lo: np.ndarray
    var_hi: np.ndarray
    integrality: np.ndarray
    rows: list[np.ndarray] = field(default_factory=list)
    lbs: list[float] = field(default_factory=list)
    ubs: list[float] = field(default_factory=list)
    #: the variables the logits read, (offset, size): the last hidden layer's, or x
    last: tuple[int, int] = (0, 0)

    def zero_row(self) -> np.ndarray:
        return np.zeros(len(self.var_lo))

    def add(self, row: np.ndarray, lb: float, ub: float) -> None:
        self.rows.append(row)
        self.lbs.append(lb)
        self.ubs.append(ub)


def _layout(first: int, counts: list[int]) -> tuple[list[int], int]:
    """The offsets of consecutive blocks of ``counts`` variables from ``first``, and the end."""
    offsets, cursor = [], first
    for count in counts:
        offsets.append(cursor)
        cursor += count
    return offsets, cursor


def _relu_program(hidden: list[tuple[np.ndarray, np.ndarray, int]],
                  pre: list[tuple[np.ndarray, np.ndarray]], x0: np.ndarray, floor: float,
                  upper: float) -> _Program:
    """The program of the hidden layers ``hidden`` (W, b, _) around ``x0`` (flat), with t in
    [``floor``, ``upper``]; ``pre``: each layer's pre-activation bounds (the big-M constants)."""
    dim = x0.size
    unstable = [np.nonzero((lo < 0) & (hi > 0))[0] for lo, hi in pre]
    offsets, cursor = _layout(dim + 1, [w.shape[0] for w, _, _ in hidden])
    delta_offsets, nvar = _layout(cursor, [len(idx) for idx in unstable])
    var_hi = np.full(nvar, np.inf)
    var_hi[:dim] = 1.0
    program = _Program(dim, np.zeros(nvar), var_hi, np.zeros(nvar))
    program.var_lo[dim], program.var_hi[dim] = floor, upper
    for i in range(dim):  # |x - x0| <= t
        r = program.zero_row()
        r[i], r[dim] = 1.0, -1.0
        program.add(r, -np.inf, x0[i])
        r = program.zero_row()
        r[i], r[dim] = -1.0, -1.0
        program.add(r, -np.inf, -x0[i])
    previous = (0, dim)  # the previous layer's variables: (offset, size)
    for k, (w, b, _) in enumerate(hidden):
        deltas = {int(j): delta_offsets[k] + m for m, j in enumerate(unstable[k])}
        _add_relu_layer(program, w, b, pre[k], offsets[k], previous, deltas)
        previous = (offsets[k], w.shape[0])
    program.last = previous
    return program


def _add_relu_layer(program: _Program, w: np.ndarray, b: np.ndarray,
                    bounds: tuple[np.ndarray, np.ndarray], offset: int,
                    previous: tuple[int, int], deltas: dict[int, int]) -> None:
    """h = relu(W · previous + b) at variables from ``offset``: h = 0 where inactive, h = z where
    active, and the big-M encoding with binary ``deltas[j]`` where unit j is unstable."""
    lo, hi = bounds
    p_off, p_size = previous
    for j in range(w.shape[0]):
        h = offset + j
        if hi[j] <= 0:  # inactive: h = 0
            program.var_lo[h], program.var_hi[h] = 0.0, 0.0
            continue
        program.var_lo[h], program.var_hi[h] = 0.0, max(hi[j], 0.0)
        z = program.zero_row()
        z[p_off:p_off + p_size] = w[j]
        if lo[j] >= 0:  # active: h = z
            r = z.copy()
            r[h] -= 1.0
            program.add(r, -b[j], -b[j])
            continue
        d = deltas[j]
        program.integrality[d] = 1
        program.var_lo[d], program.var_hi[d] = 0.0, 1.0
        r = z.copy()  # h >= z
        r[h] -= 1.0
        program.add(r, -np.inf, -b[j])
        r = program.zero_row()  # h <= u * d
        r[h], r[d] = 1.0, -hi[j]
        program.add(r, -np.inf, 0.0)
        r = -z.copy()  # h <= z - l (1 - d)  <=>  h - z - l d <= b - l
        r[h] += 1.0
        r[d] -= lo[j]
        program.add(r, -np.inf, b[j] - lo[j])


@dataclass
class _Search:
    """What the per-class programs found: the smallest radius of a point found and the point
    (x, or None), a proven lower bound on the minimum, and "optimal" or "time limit"."""

    best_value: float = math.inf
    best_point: np.ndarray | None = None
    lower_bound: float = math.inf
    status: str = "optimal"


def _search_classes(program: _Program, output: tuple[np.ndarray, np.ndarray, int], label: int,
                    deadline: float, floor: float) -> _Search:
    """Minimise t for each class c != ``label`` with the constraint z_c >= z_label added to
    ``program`` (``output``: the logits' W, b), by scipy's ``milp`` until ``deadline``."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    w_out, b_out, _ = output
    p_off, p_size = program.last
    nvar = len(program.var_lo)
    base = np.array(program.rows) if program.rows else np.zeros((0, nvar))
    objective = np.zeros(nvar)
    objective[program.dim] = 1.0
    search = _Search()
    for c in range(w_out.shape[0]):
        if c == label:
            continue
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            search.status, search.lower_bound = "time limit", min(search.lower_bound, floor)
            break
        r = np.zeros(nvar)
        r[p_off:p_off + p_size] = w_out[c] - w_out[label]
        A = np.vstack([base, r])
        lb = np.array([*program.lbs, b_out[label] - b_out[c]])
        ub = np.array([*program.ubs, np.inf])
        res = milp(objective, integrality=program.integrality,
                   bounds=Bounds(program.var_lo, program.var_hi),
                   constraints=LinearConstraint(A, lb, ub),
                   options={"time_limit": remaining, "disp": False})
        if res.status == 0:  # optimal
            search.lower_bound = min(search.lower_bound, float(res.fun))
            if float(res.fun) < search.best_value:
                search.best_value, search.best_point = float(res.fun), res.x[:program.dim].copy()
        elif res.status == 2:  # infeasible: class c cannot be reached within `upper`
            continue
        else:  # time or iteration limit: the dual bound is what is proven
            search.status = "time limit"
            dual = getattr(res, "mip_dual_bound", None)
            search.lower_bound = min(search.lower_bound, float(dual) if dual is not None and
                                     np.isfinite(dual) else floor)
            if res.x is not None and float(res.fun) < search.best_value:
                search.best_value, search.best_point = float(res.fun), res.x[:program.dim].copy()
    return search


def _exact_outcome(search: _Search, model: nn.Module, x: torch.Tensor, label: int,
                   floor: float, upper: float) -> tuple[float, float, float, float, str]:
    """:func:`exact_minimum`'s answer from the search, its point re-scored by the model."""
    if search.best_point is None:
        if search.status == "optimal":  # no class reachable within upper: the minimum exceeds it
            return math.nan, upper, math.inf, math.nan, "beyond upper"
        return math.nan, max(floor, search.lower_bound), math.inf, math.nan, search.status
    best = search.best_value
    point_distance = _verify(model, x, label, search.best_point)
    lo_value = max(floor, min(search.lower_bound, best))
    if search.status != "optimal":
        return math.nan, lo_value, best, point_distance, search.status
    if not math.isfinite(point_distance):
        return best, best, best, math.nan, "unverified point"
    return best, best, best, point_distance, "optimal"


def _verify(model: nn.Module, x: torch.Tensor, label: int, point: np.ndarray) -> float:
    """The ℓ∞ distance of the solver's point, clipped to the box and pushed outwards by
    up to 1e-5 in relative size until the model misclassifies it; +inf if it never does."""
    x0 = x.double().flatten()
    delta = torch.as_tensor(point, dtype=torch.float64) - x0
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        for scale in (1.0, 1 + 1e-7, 1 + 1e-6, 1 + 1e-5):
            candidate = (x0 + delta * scale).clamp(0.0, 1.0)
            logits = model(candidate.to(x.dtype).view(1, *x.shape).to(device))
            if int(logits.argmax(1)) != label:
                return float((candidate.to(x.dtype).double() - x0).abs().max())
    return math.inf

