"""``epsl eps-star``: Eq. 4's ε_L beside ε*, the smallest perturbation that really flips each
example, and the report card of Eq. 4 (:func:`epsl.analysis.cards.report_card`).

One record (kind ``eps_star``: ``eps_star.csv``, ``eps_star.json`` and the verified points in
``eps_star.safetensors``) per checkpoint and examples:
the table has one row per example (``index, label, eps_star, eps_star_attack, pred_adv``, each
attack's own ``eps_<attack>``, ``eps_l``, ``rival``, ``ratio`` = ε_L / ε* and ``optimistic`` =
ratio > 1 on correctly classified examples); the record holds the report card, the ε* accuracy
at each ε with its 95% interval, the attacks' wall time and the provenance (checkpoint content,
examples, the ensemble's settings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from epsl.analysis.cards import report_card
from epsl.attacks.eps_star import (
    EpsStarConfig,
    EpsStarResult,
    check_eps_star_dependencies,
    find_eps_star,
)
from epsl.diagnostics import diagnose
from epsl.errors import EpslError
from epsl.norms import check_radius, dual
from epsl.results.records import Result, check_replaceable, reusable
from epsl.runs.context import DataConfig, Evaluation, provenance
from epsl.runs.diagnose import DEFAULT_EPS
from epsl.stats import accuracy_interval


@dataclass(frozen=True)
class EpsStarRunConfig:
    """``epsl eps-star``: which checkpoint and examples, the minimum-norm ensemble (with its
    norm, ``eps_star.norm``: ε* and ε_L are both measured in it), and the radii at which the ε*
    accuracy is reported (the curves cover every ε anyway), radii of that norm."""

    data: DataConfig
    eps_star: EpsStarConfig = dataclasses.field(default_factory=EpsStarConfig)
    eps: tuple[float, ...] = DEFAULT_EPS
    table_format: str = "csv"

    def __post_init__(self) -> None:
        if not isinstance(self.eps_star, EpsStarConfig):
            raise EpslError(f"eps_star must be an EpsStarConfig (got {self.eps_star!r})")
        check_radius(self.eps_star.norm, self.eps)

    def reuse_settings(self) -> dict[str, Any]:
        """The ensemble's (the radii only pick the summary's columns)."""
        return self.eps_star.reuse_settings()


def eps_star_table(found: EpsStarResult, eps_l: Any, rival: Any) -> pd.DataFrame:
    """``found``'s per-example table with ε_L, its rival class, the ratio ε_L / ε* and the
    ``optimistic`` flag (ratio > 1 on correctly classified examples)."""
    frame = found.to_frame()
    frame["eps_l"] = np.asarray(eps_l, dtype=np.float64)
    frame["rival"] = np.asarray(rival, dtype=np.int64)
    correct = (frame["eps_star"] > 0) & (frame["eps_l"] > 0)
    star = frame["eps_star"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isinf(star), 0.0, frame["eps_l"].to_numpy() / star)
    frame["ratio"] = np.where(correct, ratio, np.nan)
    frame["optimistic"] = correct & (frame["ratio"] > 1)
    return frame


def eps_star_record(ev: Evaluation, found: EpsStarResult, eps_l: Any, rival: Any,
                       config: EpsStarConfig, eps: Sequence[float],
                       extra: dict[str, Any] | None = None) -> Result:
    """The ``eps_star`` result of ``found`` (its points as tensors) beside ``eps_l`` (ε_L of the
    same norm) on all of ``ev.data``, made with ``config``."""
    if found.norm != config.norm:
        raise EpslError(f"eps* was found in {found.norm}, not in the config's {config.norm}")
    table = eps_star_table(found, eps_l, rival)
    n = len(table)
    accuracy = {repr(e): found.accuracy(e) for e in eps}
    summary = {
        "n": n,
        "norm": config.norm,
        "eps": list(eps),
        "eps_star_accuracy": accuracy,
        "eps_star_accuracy_interval": {k: list(accuracy_interval(a, n))
                                       for k, a in accuracy.items()},
        "report_card": report_card(table["eps_l"], table["eps_star"], seed=config.seed,
                                   norm=config.norm),
        "found_by": {str(k): int(v) for k, v in
                     table["eps_star_attack"].replace("", "none").value_counts().items()},
        "seconds": found.seconds,
        "eps_star": config.reuse_settings(),
        **(extra or {}),
    }
    return Result("eps_star", summary, provenance(ev, config.reuse_settings()), table,
                  tensors=found)


def _eps_star_run(ev: Evaluation, config: EpsStarConfig, eps: Sequence[float],
               diagnostics: pd.DataFrame | None, progress: Callable[[int], None] | None,
               extra: dict[str, Any] | None = None) -> Result:
    if diagnostics is None:
        result = diagnose(ev.model, ev.data.x, ev.data.y, device=ev.device, norm=config.norm)
        eps_l, rival = result.eps_l.double().numpy(), result.rival.numpy()
    else:
        if len(diagnostics) != len(ev.data):
            raise EpslError(f"the diagnostics hold {len(diagnostics)} examples, not "
                            f"{len(ev.data)}")
        # Diagnostics.to_frame names its gradient gap by the dual norm (grad_gap_l1 in linf)
        gaps = {c for c in diagnostics.columns if str(c).startswith("grad_gap_")}
        if gaps and f"grad_gap_{dual(config.norm).value}" not in gaps:
            raise EpslError(f"the diagnostics hold eps_L of another norm ({', '.join(gaps)}), "
                            f"not of {config.norm}: diagnose with norm={config.norm!r}")
        eps_l, rival = diagnostics["eps_l"].to_numpy(), diagnostics["rival"].to_numpy()
    found = find_eps_star(ev.model, ev.data.x, ev.data.y, config=config,
                                 progress=progress)
    return eps_star_record(ev, found, eps_l, rival, config, eps, extra)


def run_eps_star(config: EpsStarRunConfig, *, evaluation: Evaluation | None = None,
                  diagnostics: pd.DataFrame | None = None,
                  progress: Callable[[int], None] | None = None) -> Result:
    """ε* and the report card for a checkpoint on its examples; ``result.tensors`` is the
    :class:`~epsl.attacks.eps_star.EpsStarResult` (the verified points, written to
    ``eps_star.safetensors``). ``diagnostics``: ε_L already computed for exactly these examples
    (a table with ``eps_l`` and ``rival``); ``progress`` is advanced by examples done."""
    check_eps_star_dependencies(config.eps_star)
    ev = evaluation or config.data.prepare()
    check_radius(config.eps_star.norm, config.eps, dim=ev.data.x[0].numel())
    return _eps_star_run(ev, config.eps_star, config.eps, diagnostics, progress,
                      {"config": dataclasses.asdict(config)})


def ensure_eps_star(ev: Evaluation, folder: Path, config: EpsStarConfig,
                       eps: Sequence[float], diagnostics: pd.DataFrame,
                       log: Callable[[str], None] | None = None, *,
                       overwrite: bool = True) -> tuple[Result, bool]:
    """The ``eps_star`` result in ``folder`` when made from this checkpoint, these examples and
    ``config`` (with its points), else computed and saved: ``(result, computed)``. The
    comparison and the study share it, so ε* is found once; ``result.tensors`` holds the
    points only when computed here (:meth:`EpsStarResult.load` reads them back). The norm is
    part of ``config.reuse_settings()`` (named whenever it is not ℓ∞), so an ℓ∞ result is never
    served for an ℓ2 request. ``diagnostics`` must hold ε_L of ``config.norm``. A result of
    another origin in ``folder`` is replaced only with ``overwrite``."""
    origin = provenance(ev, config.reuse_settings())
    found = reusable(folder, "eps_star", origin)
    if found is not None:
        return found, False
    check_replaceable(folder, "eps_star", origin, overwrite)
    if log is not None:
        log(f"{folder.parent.name}: eps* (minimum-norm attacks) on {len(ev.data)} examples")
    result = _eps_star_run(ev, config, eps, diagnostics, None)
    result.save(folder, overwrite=True)
    return result, True


__all__ = ["EpsStarRunConfig", "eps_star_record", "ensure_eps_star", "eps_star_table", "run_eps_star"]
