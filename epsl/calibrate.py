"""``epsl calibrate``: Eq. 4's ε_L beside ε*, the smallest perturbation that really flips each
example, and the report card of Eq. 4 (:func:`epsl.analysis.calibration.report_card`).

One record (kind ``minimal``: ``minimal.csv``, ``minimal.json`` and the verified points in
``minimal.safetensors``) per checkpoint and examples:
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

from epsl.analysis.calibration import report_card
from epsl.context import Evaluation, provenance
from epsl.diagnostics import diagnose
from epsl.diagnostics.runs import DEFAULT_EPS, DataConfig, check_eps
from epsl.errors import EpslError
from epsl.io import check_out_dir
from epsl.minimal import (
    TENSORS_FILE,
    MinimalConfig,
    MinimalResult,
    check_minimal_dependencies,
    minimal_perturbation,
)
from epsl.records import Provenance, Result, invalidate, kind, reusable
from epsl.stats import accuracy_interval


@dataclass(frozen=True)
class CalibrateConfig:
    """``epsl calibrate``: which checkpoint and examples, the minimum-norm ensemble, and the
    radii at which the ε* accuracy is reported (the curves cover every ε anyway)."""

    data: DataConfig
    minimal: MinimalConfig = dataclasses.field(default_factory=MinimalConfig)
    eps: tuple[float, ...] = DEFAULT_EPS
    table_format: str = "csv"

    def __post_init__(self) -> None:
        check_eps(self.eps)


def minimal_provenance(ev: Evaluation, config: MinimalConfig) -> Provenance:
    """What decides reuse of ε*: the model, the examples and the ensemble's settings."""
    return provenance(ev, config.settings())


def minimal_table(found: MinimalResult, eps_l: Any, rival: Any) -> pd.DataFrame:
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


def calibration_result(ev: Evaluation, found: MinimalResult, eps_l: Any, rival: Any,
                       config: MinimalConfig, eps: Sequence[float],
                       extra: dict[str, Any] | None = None) -> Result:
    """The ``minimal`` record of ``found`` beside ``eps_l`` on all of ``ev.data``."""
    table = minimal_table(found, eps_l, rival)
    n = len(table)
    accuracy = {repr(e): found.accuracy(e) for e in eps}
    summary = {
        "n": n,
        "eps": list(eps),
        "eps_star_accuracy": accuracy,
        "eps_star_accuracy_interval": {k: list(accuracy_interval(a, n))
                                       for k, a in accuracy.items()},
        "report_card": report_card(table["eps_l"], table["eps_star"], seed=config.seed),
        "found_by": {str(k): int(v) for k, v in
                     table["eps_star_attack"].replace("", "none").value_counts().items()},
        "seconds": found.seconds,
        "minimal": config.settings(),
        **(extra or {}),
    }
    return Result("minimal", summary, minimal_provenance(ev, config), table)


def run_calibrate(config: CalibrateConfig, *, evaluation: Evaluation | None = None,
                  diagnostics: pd.DataFrame | None = None,
                  progress: Callable[[int], None] | None = None
                  ) -> tuple[MinimalResult, Result]:
    """ε* and the report card for a checkpoint on its examples: ``(points, record)``.
    ``diagnostics``: ε_L already computed for exactly these examples (a table with ``eps_l``
    and ``rival``)."""
    check_minimal_dependencies(config.minimal)
    ev = evaluation or config.data.prepare()
    if diagnostics is None:
        result = diagnose(ev.model, ev.data.x, ev.data.y, device=ev.device)
        eps_l, rival = result.eps_l.double().numpy(), result.rival.numpy()
    else:
        if len(diagnostics) != len(ev.data):
            raise EpslError(f"the diagnostics hold {len(diagnostics)} examples, not "
                            f"{len(ev.data)}")
        eps_l, rival = diagnostics["eps_l"].to_numpy(), diagnostics["rival"].to_numpy()
    found = minimal_perturbation(ev.model, ev.data.x, ev.data.y, config=config.minimal,
                                 progress=progress)
    return found, calibration_result(ev, found, eps_l, rival, config.minimal, config.eps,
                                     {"config": dataclasses.asdict(config)})


def save_calibration(folder: Path | str, found: MinimalResult, record: Result, *,
                     table_format: str = "csv", overwrite: bool = False) -> list[Path]:
    """Write ``minimal.safetensors`` (the verified points), then the table and the record,
    refusing to replace results unless ``overwrite``."""
    folder = check_out_dir(folder, kind("minimal").files(table_format), overwrite)
    invalidate(folder, "minimal")  # no old record may sit beside new points
    return [found.save_tensors(folder), *record.save(folder, table_format=table_format)]


def reusable_minimal(folder: Path | str, provenance: Provenance) -> bool:
    """Whether ``folder`` holds ε* made from exactly this checkpoint, these examples and these
    settings, with its verified points (``minimal.safetensors``) beside the record."""
    return (reusable(folder, "minimal", provenance) is not None
            and (Path(folder) / TENSORS_FILE).is_file())

