"""ε_cert per example, a certified floor under the true minimal perturbation, and with
``exact`` the true minimum itself, so that the report card can say "provably":

    ε_cert  ≤  true minimal ℓ∞ perturbation (in the [0, 1] box)  ≤  ε*

- **ε_cert** is the largest radius at which CROWN (:mod:`epsl.bounds.crown`) proves that no point of
  the ℓ∞ ball intersected with the box changes the prediction: every margin ``z_y - z_c`` has
  a lower bound above :func:`epsl.bounds.crown.margin_threshold`. It is found per example by
  bisection on ``[0, hi]``, ``hi`` being ε* where known (no radius at or above ε* can be
  certified, since a verified adversarial point lies there) and the whole box otherwise. The
  bisection's last certified radius is returned, so ε_cert is sound at the bisection's
  resolution ``hi / 2**steps`` from below.
- **ε_exact** (``exact=True``, small ReLU networks of affine layers and ReLUs) is the true
  minimal ℓ∞ distance to a point of the box where some other class's logit reaches the true
  class's, as a mixed-integer program (Tjeng et al. 2019, https://arxiv.org/abs/1711.07356)
  solved by scipy's ``milp`` (HiGHS). The big-M constants are CROWN's pre-activation bounds on
  the ball of radius ``hi``, which contains the optimum. Each example has a time limit; one
  that runs out reports the interval it reached (``eps_exact_lo``, ``eps_exact_hi``) and NaN
  as ``eps_exact``, never a guess. The solver's point is re-scored: clipped to the box,
  misclassified by the model, at ℓ∞ distance ``eps_exact_point`` (which may exceed ε_exact by
  the solver's tolerance, ~1e-6).

Every bound is computed in float64 on a float64 copy of the network. In float32 the bounds
moved by up to 7e-6, more than the margins left at a bisection's end, so float32 would need a
threshold so large that it costs more than float64's time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from epsl.bounds.crown import (
    Network,
    crown_margins,
    ibp_margins,
    margin_threshold,
    trace_network,
)
from epsl.distributed import shard_map
from epsl.errors import EpslError

__all__ = ["CertifyOptions", "CertifyOutput", "certify", "exact_minimum"]

Progress = Callable[[int], None]
METHODS = ("crown", "ibp")


@dataclass(frozen=True)
class CertifyOptions:
    """How ε_cert (and ε_exact) are computed.

    Attributes:
        method: ``crown`` (backward linear bounds, the default) or ``ibp`` (intervals only).
        steps: halvings of the bisection on [0, hi] (resolution hi / 2**steps).
        batch_size: examples bounded together (memory grows with it).
        budget: floats per chunk of CROWN's backward pass (8 bytes each). Small chunks are
            faster on a CPU: 2**20 (8 MB) ran 2.4x faster than 2**26 on the digits models,
            which spent most of their time in the kernel allocating pages (docs/benchmarks.md).
        exact: also the true minimum by MILP (ReLU networks of affine layers only).
        exact_time: seconds of solver time per example for ``exact``.
    """

    method: str = "crown"
    steps: int = 10
    batch_size: int = 64
    budget: int = 2 ** 20
    exact: bool = False
    exact_time: float = 30.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise EpslError(f"unknown certify method {self.method!r}; known: "
                            f"{', '.join(METHODS)}")
        if not 1 <= self.steps <= 40:
            raise EpslError(f"steps must be in 1..40 (got {self.steps})")
        if self.batch_size < 1 or self.budget < 1:
            raise EpslError("batch_size and budget must be positive")
        if not self.exact_time > 0:
            raise EpslError(f"exact_time must be positive seconds (got {self.exact_time})")

    def settings(self) -> dict[str, Any]:
        """What decides the result (for reuse): not the batching."""
        out: dict[str, Any] = {"method": self.method, "steps": self.steps}
        if self.exact:
            out |= {"exact": True, "exact_time": self.exact_time}
        return out


@dataclass
class CertifyOutput:
    """Per example (N each): ``eps_cert`` (0 where misclassified at x), ``eps_cert_ibp`` (the
    interval bound's own radius, for comparison), ``hi`` (the bisection's upper end) and, with
    ``exact``, ``eps_exact`` (NaN where unsolved), ``eps_exact_lo``/``eps_exact_hi`` (the
    interval reached) and ``eps_exact_point`` (the verified point's distance);
    ``seconds``: wall time per part."""

    eps_cert: np.ndarray
    eps_cert_ibp: np.ndarray
    hi: np.ndarray
    correct: np.ndarray
    eps_exact: np.ndarray | None = None
    eps_exact_lo: np.ndarray | None = None
    eps_exact_hi: np.ndarray | None = None
    eps_exact_point: np.ndarray | None = None
    exact_status: list[str] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_frame(self, index: np.ndarray | None = None) -> pd.DataFrame:
        n = len(self.eps_cert)
        frame = pd.DataFrame({"index": np.arange(n) if index is None else index,
                              "eps_cert": self.eps_cert, "eps_cert_ibp": self.eps_cert_ibp,
                              "bisect_hi": self.hi})
        if self.eps_exact is not None:
            frame["eps_exact"] = self.eps_exact
            frame["eps_exact_lo"] = self.eps_exact_lo
            frame["eps_exact_hi"] = self.eps_exact_hi
            frame["eps_exact_point"] = self.eps_exact_point
            frame["exact_status"] = self.exact_status
        return frame


def _certified(network: Network, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor,
               threshold: torch.Tensor, method: str, budget: int) -> torch.Tensor:
    """Whether every margin bound over the ball of radius ``eps`` (one per example) clears the
    threshold."""
    if method == "ibp":
        margins = ibp_margins(network, x, y, eps)
    else:
        margins = crown_margins(network, x, y, eps, budget=budget)
    return margins.amin(dim=1) > threshold


def _bisect(network: Network, x: torch.Tensor, y: torch.Tensor, hi: torch.Tensor,
            threshold: torch.Tensor, method: str, steps: int, budget: int, *,
            lo: torch.Tensor | None = None, broken: torch.Tensor | None = None
            ) -> torch.Tensor:
    """The largest certified radius found by bisection on [lo, hi] (``lo`` already certified,
    0 by default). ``hi`` itself is tried first unless ``broken`` says a verified adversarial
    point lies at distance ``hi`` (then it cannot be certified)."""
    lo = torch.zeros_like(hi) if lo is None else lo.clone()
    done = torch.zeros_like(hi, dtype=torch.bool)
    unknown = torch.ones_like(done) if broken is None else ~broken
    if bool(unknown.any()):  # the whole bracket, where it might hold
        done[unknown] = _certified(network, x[unknown], y[unknown], hi[unknown],
                                   threshold[unknown], method, budget)
    lo = torch.where(done, hi, lo)
    upper = hi.clone()
    for _ in range(steps):
        todo = ~done
        if not bool(todo.any()):
            break
        mid = (lo + upper) / 2
        ok = torch.zeros_like(done)
        ok[todo] = _certified(network, x[todo], y[todo], mid[todo], threshold[todo], method,
                              budget)
        lo = torch.where(todo & ok, mid, lo)
        upper = torch.where(todo & ~ok, mid, upper)
    return lo


def certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
            hi: torch.Tensor | np.ndarray | None = None,
            hi_unbroken: np.ndarray | None = None,
            options: CertifyOptions | None = None,
            progress: Progress | None = None) -> CertifyOutput:
    """ε_cert (and with ``options.exact`` ε_exact) per example of ``model`` on (x, y), pixels
    in [0, 1]. ``hi``: per-example upper ends of the bisection (ε* where known; +inf or None
    means the whole box, radius 1). A finite ``hi`` is taken to be the distance of a verified
    adversarial point, so it is not tried itself, unless ``hi_unbroken`` marks it (a cap, not
    a point). ``progress`` is advanced by examples done.

    Raises :class:`EpslError` (one line) for a layer the bounds do not support."""
    options = options or CertifyOptions()
    if x.dim() < 2 or len(x) != len(y):
        raise EpslError("certify needs N x ... inputs and N labels")
    if len(x) and (float(x.min()) < 0 or float(x.max()) > 1):
        raise EpslError("certify needs pixels in [0, 1]")
    x = x.detach().cpu()
    y = y.detach().cpu().long()
    network = trace_network(model, x[:1])
    if options.exact:
        _dense_layers(network)  # refuse a model the program cannot take before any work
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    n = len(x)
    upper = torch.ones(n, dtype=torch.float64)
    broken = torch.zeros(n, dtype=torch.bool)  # a verified adversarial point lies at `upper`
    if hi is not None:
        given = torch.as_tensor(np.asarray(hi, dtype=np.float64))
        if given.shape != (n,):
            raise EpslError(f"hi must hold one radius per example ({n}), not {tuple(given.shape)}")
        upper = torch.where(torch.isfinite(given), given.clamp(0.0, 1.0), upper)
        broken = torch.isfinite(given) & (given <= 1.0) & ~torch.as_tensor(
            np.asarray(hi_unbroken if hi_unbroken is not None else np.zeros(n, dtype=bool)))
    with torch.no_grad():
        logits32 = torch.cat([model(x[i:i + 256].to(device)).cpu() for i in range(0, n, 256)]) \
            if n else torch.zeros(0, 1)
    correct = (logits32.argmax(1) == y) if n else torch.zeros(0, dtype=torch.bool)
    threshold = margin_threshold(logits32)
    eps_cert = torch.zeros(n, dtype=torch.float64)
    eps_ibp = torch.zeros(n, dtype=torch.float64)
    seconds = {"crown": 0.0, "ibp": 0.0}

    def chunk(part: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε_cert, ε_ibp) of one batch of examples (0 where misclassified)."""
        cert_part = torch.zeros(part.stop - part.start, dtype=torch.float64)
        ibp_part = torch.zeros_like(cert_part)
        ok = correct[part] & (upper[part] > 0)
        idx = torch.arange(part.start, part.stop)[ok]
        if len(idx):
            t0 = time.perf_counter()
            ibp = _bisect(network, x[idx], y[idx], upper[idx], threshold[idx], "ibp",
                          options.steps, options.budget, broken=broken[idx])
            seconds["ibp"] += time.perf_counter() - t0
            ibp_part[ok] = ibp
            cert_part[ok] = ibp
            if options.method == "crown":
                t0 = time.perf_counter()
                # CROWN is at least as tight (intersected with IBP): start above IBP's radius
                found = _bisect(network, x[idx], y[idx], upper[idx], threshold[idx], "crown",
                                options.steps, options.budget, lo=ibp, broken=broken[idx])
                cert_part[ok] = torch.maximum(found, ibp)  # both sound
                seconds["crown"] += time.perf_counter() - t0
        return cert_part, ibp_part

    # under torchrun each process bounds every N-th batch (epsl.distributed)
    batches = [slice(i, min(n, i + options.batch_size)) for i in range(0, n, options.batch_size)]
    pieces = shard_map(chunk, batches, progress=progress,
                       sizes=[b.stop - b.start for b in batches])
    if pieces:
        eps_cert = torch.cat([p[0] for p in pieces])
        eps_ibp = torch.cat([p[1] for p in pieces])
    out = CertifyOutput(eps_cert.numpy(), eps_ibp.numpy(), upper.numpy(), correct.numpy(),
                        seconds={k: round(v, 3) for k, v in seconds.items()})
    if options.exact:
        t0 = time.perf_counter()

        def solve(i: int) -> torch.Tensor:
            row = exact_minimum(network, model, x[i], int(y[i]), float(upper[i]),
                                time_limit=options.exact_time, floor=float(eps_cert[i])) \
                if bool(correct[i]) else _EXACT_CLEAN
            return torch.tensor([[*row[:4], float(EXACT_STATUS.index(row[4]))]],
                                dtype=torch.float64)

        # one example per chunk, shared among the ranks under torchrun
        solved = shard_map(solve, list(range(n)))
        rows = torch.cat(solved).numpy() if solved else np.zeros((0, 5))
        out.eps_exact, out.eps_exact_lo, out.eps_exact_hi, out.eps_exact_point = \
            (rows[:, k].copy() for k in range(4))
        out.exact_status = [EXACT_STATUS[int(c)] for c in rows[:, 4]]
        out.seconds["exact"] = round(time.perf_counter() - t0, 3)
    return out


_EXACT_CLEAN = (0.0, 0.0, 0.0, 0.0, "clean")
#: what ``exact_status`` may say: solved, cut off by the time limit (the interval reached is
#: reported), no class reachable inside ``hi``, a point the model does not misclassify, or
#: misclassified at x
EXACT_STATUS = ("optimal", "time limit", "beyond upper", "unverified point", "clean")

# --------------------------------------------------------------------------- the exact MILP


def _dense_layers(network: Network) -> list[tuple[np.ndarray, np.ndarray, int]]:
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
            jac = network._jacobian(i)
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
    point distance, status)``; eps_exact is NaN unless every class was solved to optimality."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    blocks = _dense_layers(network)
    deadline = time.perf_counter() + time_limit
    x0 = x.double().flatten().numpy()
    dim = x0.size
    # pre-activation bounds of every ReLU on the ball of radius `upper` (which holds the optimum)
    from epsl.bounds.crown import ball
    lower_box, upper_box = ball(x[None], upper)
    bounds = network.bounds(lower_box, upper_box, method="crown")
    pre = [(bounds[last][0].flatten().numpy(), bounds[last][1].flatten().numpy())
           for _, _, last in blocks[:-1]]
    # variables: x (dim), t, then per hidden layer h (n_k) and binaries for unstable units
    sizes = [w.shape[0] for w, _, _ in blocks[:-1]]
    offsets, cursor = [], dim + 1
    for size in sizes:
        offsets.append(cursor)
        cursor += size
    unstable = [np.nonzero((lo < 0) & (hi > 0))[0] for lo, hi in pre]
    delta_offsets = []
    for idx in unstable:
        delta_offsets.append(cursor)
        cursor += len(idx)
    nvar = cursor
    rows: list[np.ndarray] = []
    lbs: list[float] = []
    ubs: list[float] = []

    def add(row: np.ndarray, lb: float, ub: float) -> None:
        rows.append(row)
        lbs.append(lb)
        ubs.append(ub)

    # |x - x0| <= t
    for i in range(dim):
        r = np.zeros(nvar)
        r[i], r[dim] = 1.0, -1.0
        add(r, -np.inf, x0[i])
        r = np.zeros(nvar)
        r[i], r[dim] = -1.0, -1.0
        add(r, -np.inf, -x0[i])
    var_lo = np.zeros(nvar)
    var_hi = np.full(nvar, np.inf)
    var_hi[:dim] = 1.0
    var_lo[dim], var_hi[dim] = floor, upper
    integrality = np.zeros(nvar)
    previous = (0, dim)  # the previous layer's variables: (offset, size)
    for k, (w, b, _) in enumerate(blocks[:-1]):
        lo, hi = pre[k]
        off = offsets[k]
        p_off, p_size = previous
        where_unstable = {int(j): delta_offsets[k] + m for m, j in enumerate(unstable[k])}
        for j in range(w.shape[0]):
            h = off + j
            if hi[j] <= 0:  # inactive: h = 0
                var_lo[h], var_hi[h] = 0.0, 0.0
                continue
            var_lo[h], var_hi[h] = 0.0, max(hi[j], 0.0)
            z = np.zeros(nvar)
            z[p_off:p_off + p_size] = w[j]
            if lo[j] >= 0:  # active: h = z
                r = z.copy()
                r[h] -= 1.0
                add(r, -b[j], -b[j])
                continue
            d = where_unstable[j]
            integrality[d] = 1
            var_lo[d], var_hi[d] = 0.0, 1.0
            r = z.copy()  # h >= z
            r[h] -= 1.0
            add(r, -np.inf, -b[j])
            r = np.zeros(nvar)  # h <= u * d
            r[h], r[d] = 1.0, -hi[j]
            add(r, -np.inf, 0.0)
            r = -z.copy()  # h <= z - l (1 - d)  <=>  h - z - l d <= b - l
            r[h] += 1.0
            r[d] -= lo[j]
            add(r, -np.inf, b[j] - lo[j])
        previous = (off, w.shape[0])
    w_out, b_out, _ = blocks[-1]
    p_off, p_size = previous
    base = np.array(rows) if rows else np.zeros((0, nvar))
    objective = np.zeros(nvar)
    objective[dim] = 1.0
    best_value, best_point, lower_bound, status = math.inf, None, math.inf, "optimal"
    classes = w_out.shape[0]
    for c in range(classes):
        if c == label:
            continue
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            status, lower_bound = "time limit", min(lower_bound, floor)
            break
        r = np.zeros(nvar)
        r[p_off:p_off + p_size] = w_out[c] - w_out[label]
        A = np.vstack([base, r])
        lb = np.array([*lbs, b_out[label] - b_out[c]])
        ub = np.array([*ubs, np.inf])
        res = milp(objective, integrality=integrality, bounds=Bounds(var_lo, var_hi),
                   constraints=LinearConstraint(A, lb, ub),
                   options={"time_limit": remaining, "disp": False})
        if res.status == 0:  # optimal
            lower_bound = min(lower_bound, float(res.fun))
            if float(res.fun) < best_value:
                best_value, best_point = float(res.fun), res.x[:dim].copy()
        elif res.status == 2:  # infeasible: class c cannot be reached within `upper`
            continue
        else:  # time or iteration limit: the dual bound is what is proven
            status = "time limit"
            dual = getattr(res, "mip_dual_bound", None)
            lower_bound = min(lower_bound, float(dual) if dual is not None and
                              np.isfinite(dual) else floor)
            if res.x is not None and float(res.fun) < best_value:
                best_value, best_point = float(res.fun), res.x[:dim].copy()
    if best_point is None:
        if status == "optimal":  # no class reachable within upper: the minimum exceeds it
            return math.nan, upper, math.inf, math.nan, "beyond upper"
        return math.nan, max(floor, lower_bound), math.inf, math.nan, status
    point_distance = _verify(model, x, label, best_point)
    lo_value = max(floor, min(lower_bound, best_value))
    if status != "optimal":
        return math.nan, lo_value, best_value, point_distance, status
    if not math.isfinite(point_distance):
        return best_value, best_value, best_value, math.nan, "unverified point"
    return best_value, best_value, best_value, point_distance, "optimal"


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

