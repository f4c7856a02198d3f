"""``epsl certify``: ε_cert (the certified floor, :mod:`epsl.certify.radius`) beside ε_L and ε*
per example, and the three-way report card of Eq. 4
(:func:`epsl.analysis.cards.proof_card`): where Eq. 4 is provably conservative
(ε_L ≤ ε_cert), provably optimistic (ε_L > ε*) or undecided.

One record (kind ``certify``: ``certify.csv`` and ``certify.json``) per checkpoint and
examples. The table has one row per example: ``index, label, eps_cert, eps_cert_ibp,
bisect_hi`` (the bisection's upper end: ε*, or 1 where no attack broke the example), with
``--exact`` ``eps_exact`` (NaN where unsolved), ``eps_exact_lo``, ``eps_exact_hi``,
``eps_exact_point`` and ``exact_status``, then ``eps_l``, ``eps_star`` and ``group``. The
record holds the card, the certified accuracy at each ε with its 95% interval, the time per
example of the bounds against ε*'s, and the provenance. Certification is ℓ∞ only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from epsl.analysis.cards import proof_card, proof_groups
from epsl.attacks.eps_star import (
    EpsStarConfig,
    EpsStarResult,
    check_eps_star_dependencies,
    find_eps_star,
)
from epsl.certify.radius import CertifyOptions, certify
from epsl.diagnostics import diagnose
from epsl.errors import EpslError
from epsl.norms import Norm, check_radius, parse_norm
from epsl.results.records import Result, reusable
from epsl.runs.context import DataConfig, Evaluation, provenance
from epsl.runs.diagnose import DEFAULT_EPS
from epsl.stats import accuracy_interval

__all__ = ["CertifyConfig", "certify_result", "ensure_certify", "run_certify"]


@dataclass(frozen=True)
class CertifyConfig:
    """``epsl certify``: which checkpoint and examples, how the bounds are computed
    (``options``), the minimum-norm ensemble whose ε* closes each bisection from above and
    sets the card's upper side (``eps_star``, ℓ∞), the radii of the certified accuracy, and
    ``eps_max``, an optional cap on the bisection's upper end."""

    data: DataConfig
    options: CertifyOptions = dataclasses.field(default_factory=CertifyOptions)
    eps_star: EpsStarConfig = dataclasses.field(default_factory=EpsStarConfig)
    eps: tuple[float, ...] = DEFAULT_EPS
    eps_max: float | None = None
    table_format: str = "csv"

    def __post_init__(self) -> None:
        if not isinstance(self.options, CertifyOptions):
            raise EpslError(f"options must be CertifyOptions (got {self.options!r})")
        if parse_norm(self.eps_star.norm) is not Norm.LINF:
            raise EpslError(f"certify bounds the l_inf ball only (got norm {self.eps_star.norm})")
        check_radius("linf", self.eps)
        if self.eps_max is not None and not 0 < self.eps_max <= 1:
            raise EpslError(f"eps_max must lie in (0, 1], the l_inf radii of the box (got "
                            f"{self.eps_max}); no bisection can start from it")

    def reuse_settings(self) -> dict[str, Any]:
        """The bounds' settings and the ensemble's (its ε* is each bisection's upper end)."""
        return {"certify": self.options.settings(), "eps_star": self.eps_star.reuse_settings(),
                "eps_max": self.eps_max}


def certify_result(ev: Evaluation, config: CertifyConfig, *,
                   eps_l: np.ndarray, eps_star: np.ndarray, eps_star_seconds: float,
                   progress: Callable[[int], None] | None = None,
                   extra: dict[str, Any] | None = None) -> Result:
    """ε_cert on ``ev``'s examples with ε_L and ε* given (one per example), as a ``certify``
    :class:`~epsl.results.records.Result`."""
    hi = np.where(np.isfinite(eps_star), eps_star, 1.0)
    capped = np.zeros(len(hi), dtype=bool)
    if config.eps_max is not None:
        capped = config.eps_max < hi
        hi = np.minimum(hi, config.eps_max)
    out = certify(ev.model, ev.data.x, ev.data.y, hi=hi, hi_unbroken=capped | ~np.isfinite(
        eps_star), options=config.options, progress=progress)
    frame = out.to_frame()
    frame.insert(1, "label", ev.data.y.numpy())
    frame["eps_l"] = np.where(out.correct, np.asarray(eps_l, dtype=np.float64), 0.0)
    frame["eps_star"] = np.asarray(eps_star, dtype=np.float64)
    cert_for_card = np.where(out.correct, out.eps_cert, 0.0)
    frame["group"] = proof_groups(frame["eps_l"], cert_for_card, frame["eps_star"])
    card = proof_card(frame["eps_l"], cert_for_card, frame["eps_star"],
                      None if out.eps_exact is None else out.eps_exact, grid=config.eps)
    n = len(frame)
    certified = {repr(e): float(np.mean(out.eps_cert > e)) for e in config.eps}
    bound_seconds = out.seconds.get("crown", 0.0) + out.seconds.get("ibp", 0.0)
    summary = {
        "n": n,
        "norm": "linf",
        "eps": list(config.eps),
        "card": card,
        "certified_accuracy": certified,
        "certified_accuracy_interval": {k: list(accuracy_interval(a, n))
                                        for k, a in certified.items()},
        "seconds": out.seconds | {"eps_star": round(eps_star_seconds, 3)},
        "seconds_per_example": {"bounds": bound_seconds / max(n, 1),
                                "eps_star": eps_star_seconds / max(n, 1),
                                **({"exact": out.seconds["exact"] / max(n, 1)}
                                   if "exact" in out.seconds else {})},
        "precision": "float64; certified where every margin bound exceeds 1e-5 (1 + max|z|)",
        "settings": config.reuse_settings(),
        **(extra or {}),
    }
    return Result("certify", summary, provenance(ev, config.reuse_settings()), frame)


def run_certify(config: CertifyConfig, *, evaluation: Evaluation | None = None,
                eps_star: EpsStarResult | None = None,
                progress: Callable[[int], None] | None = None) -> Result:
    """ε_cert, ε_L and ε* for a checkpoint on its examples, and the three-way card. ``eps_star``:
    ε* already found for exactly these examples with ``config.eps_star`` (else found here).
    Examples of which none is correctly classified are refused in one line before ε* is
    searched: there is nothing to certify (a study's stage, :func:`ensure_certify`, records
    them as they are)."""
    check_eps_star_dependencies(config.eps_star)
    ev = evaluation or config.data.prepare()
    diag = diagnose(ev.model, ev.data.x, ev.data.y, device=ev.device)
    if not bool(diag.correct.any()):
        raise EpslError(f"none of the {len(ev.data)} examples is correctly classified (clean "
                        "accuracy 0%), so there is nothing to certify: check that the "
                        "examples and their labels are the checkpoint's (dataset=, data=), "
                        "or certify more of them")
    found = eps_star or find_eps_star(ev.model, ev.data.x, ev.data.y,
                                             config=config.eps_star)
    if len(found.eps_star) != len(ev.data):
        raise EpslError(f"eps* holds {len(found.eps_star)} examples, not {len(ev.data)}")
    return certify_result(ev, config, eps_l=diag.eps_l.double().numpy(),
                          eps_star=found.eps_star.double().numpy(),
                          eps_star_seconds=float(sum(found.seconds.values())),
                          progress=progress, extra={"config": dataclasses.asdict(config)})


def ensure_certify(ev: Evaluation, folder: Path, config: CertifyConfig, *,
                   eps_l: np.ndarray, eps_star: np.ndarray, eps_star_seconds: float,
                   log: Callable[[str], None] | None = None) -> tuple[Result, bool]:
    """The ``certify`` result in ``folder`` when made from this checkpoint, these examples and
    these settings, else computed and saved: ``(result, computed)``."""
    found = reusable(folder, "certify", provenance(ev, config.reuse_settings()))
    if found is not None:
        return found, False
    if log is not None:
        log(f"certify: CROWN bounds on {len(ev.data)} examples")
    result = certify_result(ev, config, eps_l=eps_l, eps_star=eps_star,
                            eps_star_seconds=eps_star_seconds)
    result.save(folder, table_format=config.table_format)
    return result, True

