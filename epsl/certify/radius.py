"""ε_cert per example, a certified floor under the true minimal perturbation, and with
``exact`` the true minimum itself, so that the report card can say "provably":

    ε_cert  ≤  true minimal ℓ∞ perturbation (in the [0, 1] box)  ≤  ε*

- **ε_cert** is the largest radius at which CROWN (:mod:`epsl.certify.crown`) proves that no point of
  the ℓ∞ ball intersected with the box changes the prediction: every margin ``z_y - z_c`` has
  a lower bound above :func:`epsl.certify.crown.margin_threshold`. It is found per example by
  bisection on ``[0, hi]``, ``hi`` being ε* where known (no radius at or above ε* can be
  certified, since a verified adversarial point lies there) and the whole box otherwise. The
  bisection's last certified radius is returned, so ε_cert is sound at the bisection's
  resolution ``hi / 2**steps`` from below.
- **ε_exact** (``exact=True``, small ReLU networks of affine layers and ReLUs) is the true
  minimal ℓ∞ distance to a point of the box where some other class's logit reaches the true
  class's, by a mixed-integer program per example in [ε_cert, ``hi``]
  (:func:`epsl.certify.exact.exact_minimum`). One that runs out of time reports the interval
  it reached (``eps_exact_lo``, ``eps_exact_hi``) and NaN as ``eps_exact``, never a guess.

Every bound is computed in float64 on a float64 copy of the network. In float32 the bounds
moved by up to 7e-6, more than the margins left at a bisection's end, so float32 would need a
threshold so large that it costs more than float64's time.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from epsl.certify.crown import (
    Network,
    crown_margins,
    ibp_margins,
    margin_threshold,
    trace_network,
)
from epsl.certify.exact import EXACT_STATUS, dense_layers, exact_minimum
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


@dataclass(frozen=True)
class _Examples:
    """What :func:`certify` bounds, per example (N each): pixels ``x`` and labels ``y`` on the
    CPU, whether the float32 model classifies ``x`` correctly, the bisection's upper end, whether
    a verified adversarial point lies at it, and the margin a bound must clear; with the traced
    network."""

    network: Network
    x: torch.Tensor
    y: torch.Tensor
    correct: torch.Tensor
    upper: torch.Tensor
    broken: torch.Tensor
    threshold: torch.Tensor


def _checked_inputs(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and ``y`` on the CPU (labels as int64), refusing what :func:`certify` cannot take."""
    if x.dim() < 2 or len(x) != len(y):
        raise EpslError("certify needs N x ... inputs and N labels")
    if len(x) and (float(x.min()) < 0 or float(x.max()) > 1):
        raise EpslError("certify needs pixels in [0, 1]")
    return x.detach().cpu(), y.detach().cpu().long()


def _bisection_ends(n: int, hi: torch.Tensor | np.ndarray | None,
                    hi_unbroken: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example, the upper end of the bisection (``hi`` clipped to [0, 1]; 1, the whole box,
    where it is None or not finite) and whether a verified adversarial point lies there (a
    finite ``hi`` not marked by ``hi_unbroken``)."""
    upper = torch.ones(n, dtype=torch.float64)
    broken = torch.zeros(n, dtype=torch.bool)
    if hi is None:
        return upper, broken
    given = torch.as_tensor(np.asarray(hi, dtype=np.float64))
    if given.shape != (n,):
        raise EpslError(f"hi must hold one radius per example ({n}), not {tuple(given.shape)}")
    upper = torch.where(torch.isfinite(given), given.clamp(0.0, 1.0), upper)
    broken = torch.isfinite(given) & (given <= 1.0) & ~torch.as_tensor(
        np.asarray(hi_unbroken if hi_unbroken is not None else np.zeros(n, dtype=bool)))
    return upper, broken


def _float32_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's own logits on ``x`` (CPU), in batches of 256 on the model's device."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        return torch.cat([model(x[i:i + 256].to(device)).cpu() for i in range(0, len(x), 256)]) \
            if len(x) else torch.zeros(0, 1)


def _bisect_batch(examples: _Examples, options: CertifyOptions, seconds: dict[str, float],
                  part: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """(ε_cert, ε_ibp) of the examples in ``part`` (0 where misclassified or ``upper`` is 0),
    adding the time of each method to ``seconds``."""
    cert_part = torch.zeros(part.stop - part.start, dtype=torch.float64)
    ibp_part = torch.zeros_like(cert_part)
    ok = examples.correct[part] & (examples.upper[part] > 0)
    idx = torch.arange(part.start, part.stop)[ok]
    if not len(idx):
        return cert_part, ibp_part
    args = (examples.network, examples.x[idx], examples.y[idx], examples.upper[idx],
            examples.threshold[idx])
    t0 = time.perf_counter()
    ibp = _bisect(*args, "ibp", options.steps, options.budget, broken=examples.broken[idx])
    seconds["ibp"] += time.perf_counter() - t0
    ibp_part[ok] = ibp
    cert_part[ok] = ibp
    if options.method == "crown":
        t0 = time.perf_counter()
        # CROWN is at least as tight (intersected with IBP): start above IBP's radius
        found = _bisect(*args, "crown", options.steps, options.budget, lo=ibp,
                        broken=examples.broken[idx])
        cert_part[ok] = torch.maximum(found, ibp)  # both sound
        seconds["crown"] += time.perf_counter() - t0
    return cert_part, ibp_part


def _bisect_all(examples: _Examples, options: CertifyOptions, progress: Progress | None
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(ε_cert, ε_ibp) of every example, in batches of ``options.batch_size``, and the seconds
    spent per method."""
    n = len(examples.x)
    eps_cert = torch.zeros(n, dtype=torch.float64)
    eps_ibp = torch.zeros(n, dtype=torch.float64)
    seconds = {"crown": 0.0, "ibp": 0.0}
    # under torchrun each process bounds every N-th batch (epsl.distributed)
    batches = [slice(i, min(n, i + options.batch_size)) for i in range(0, n, options.batch_size)]
    pieces = shard_map(functools.partial(_bisect_batch, examples, options, seconds), batches,
                       progress=progress, sizes=[b.stop - b.start for b in batches])
    if pieces:
        eps_cert = torch.cat([p[0] for p in pieces])
        eps_ibp = torch.cat([p[1] for p in pieces])
    return eps_cert, eps_ibp, seconds


#: the row of a misclassified example: no search, status "clean"
_EXACT_CLEAN = (0.0, 0.0, 0.0, 0.0, "clean")


def _exact_all(examples: _Examples, model: nn.Module, eps_cert: torch.Tensor,
               options: CertifyOptions) -> tuple[np.ndarray, list[str]]:
    """:func:`exact_minimum` of every example in [ε_cert, upper] (N x 4: ε_exact, its interval
    and the point's distance) and its status; zeros and "clean" where misclassified."""
    def solve(i: int) -> torch.Tensor:
        row = exact_minimum(examples.network, model, examples.x[i], int(examples.y[i]),
                            float(examples.upper[i]), time_limit=options.exact_time,
                            floor=float(eps_cert[i])) \
            if bool(examples.correct[i]) else _EXACT_CLEAN
        return torch.tensor([[*row[:4], float(EXACT_STATUS.index(row[4]))]],
                            dtype=torch.float64)

    # one example per chunk, shared among the ranks under torchrun
    solved = shard_map(solve, list(range(len(examples.x))))
    rows = torch.cat(solved).numpy() if solved else np.zeros((0, 5))
    return rows[:, :4], [EXACT_STATUS[int(c)] for c in rows[:, 4]]



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
    x, y = _checked_inputs(x, y)
    network = trace_network(model, x[:1])
    if options.exact:
        dense_layers(network)  # refuse a model the program cannot take before any work
    upper, broken = _bisection_ends(len(x), hi, hi_unbroken)
    logits32 = _float32_logits(model, x)
    correct = (logits32.argmax(1) == y) if len(x) else torch.zeros(0, dtype=torch.bool)
    examples = _Examples(network, x, y, correct, upper, broken, margin_threshold(logits32))
    eps_cert, eps_ibp, seconds = _bisect_all(examples, options, progress)
    out = CertifyOutput(eps_cert.numpy(), eps_ibp.numpy(), upper.numpy(), correct.numpy(),
                        seconds={k: round(v, 3) for k, v in seconds.items()})
    if options.exact:
        t0 = time.perf_counter()
        rows, out.exact_status = _exact_all(examples, model, eps_cert, options)
        out.eps_exact, out.eps_exact_lo, out.eps_exact_hi, out.eps_exact_point = \
            (rows[:, k].copy() for k in range(4))
        out.seconds["exact"] = round(time.perf_counter() - t0, 3)
    return out


_EXACT_CLEAN = (0.0, 0.0, 0.0, 0.0, "clean")
