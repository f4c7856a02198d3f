"""Checkpoint-level runs behind ``epsl diagnose``, ``epsl activations`` and ``epsl landscape``:
a frozen config in, per-example results plus a JSON-able summary (with the config) out."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from epsl.context import Evaluation, prepare, provenance
from epsl.diagnostics.features import activations
from epsl.diagnostics.jacobians import DEFAULT_METHOD, Progress
from epsl.diagnostics.landscape import loss_landscape
from epsl.diagnostics.margins import Diagnostics, diagnose, predicted_accuracy
from epsl.errors import EpslError
from epsl.io import check_out_dir
from epsl.records import Provenance, Result, invalidate, kind
from epsl.stats import accuracy_interval

DEFAULT_EPS = (2 / 255, 4 / 255, 8 / 255, 0.1, 0.2, 0.3)


def check_eps(eps: Sequence[float]) -> None:
    """One-line :class:`EpslError` unless every radius lies in (0, 1] (pixel units)."""
    bad = [e for e in eps if not 0 < e <= 1]
    if bad:
        raise EpslError(f"eps must lie in (0, 1] in pixel units, e.g. 0.3 or 8/255 "
                        f"(got {bad[0]})")


@dataclass(frozen=True)
class DataConfig:
    """Which checkpoint and which examples (see :func:`epsl.context.prepare`)."""

    checkpoint: str
    dataset: str | None = None
    data: str | None = None
    data_root: str | None = None
    download: bool = False
    split: str = "test"
    limit: int | None = None
    arch: str | None = None
    model: str | None = None
    device: str = "auto"
    #: the folder of a model source's weights (``robustbench:``, ``timm:``, ``torchvision:``)
    model_dir: str | None = None

    def prepare(self) -> Evaluation:
        return prepare(self.checkpoint, dataset=self.dataset, data=self.data, split=self.split,
                       limit=self.limit, arch=self.arch, model=self.model,
                       data_root=self.data_root, download=self.download,
                       model_dir=self.model_dir, device=self.device)


@dataclass(frozen=True)
class DiagnoseConfig:
    """``epsl diagnose``: eps_L (Eq. 4) per example and the predicted accuracy at each eps."""

    data: DataConfig
    eps: tuple[float, ...] = DEFAULT_EPS
    chunk_size: int | None = None
    batch_size: int = 256
    method: str = DEFAULT_METHOD
    table_format: str = "csv"

    def __post_init__(self) -> None:
        check_eps(self.eps)


@dataclass(frozen=True)
class ActivationsConfig:
    """``epsl activations``: penultimate and logit sums per unit (Figures 10, 11)."""

    data: DataConfig
    batch_size: int = 256
    table_format: str = "csv"


@dataclass(frozen=True)
class LandscapeConfig:
    """``epsl landscape``: cross-entropy around the first ``images`` images (Figures 5, 9)."""

    data: DataConfig
    direction: str = "random"
    span: float = 10 / 255
    steps: int = 41
    seed: int = 0
    batch_size: int = 512
    table_format: str = "csv"


def diagnostics_result(ev: Evaluation, result: Diagnostics, eps: Sequence[float],
                       config: dict[str, Any]) -> Result:
    """The diagnostics record of ``result`` (``ev``'s model on all of ``ev.data``): n, the
    clean accuracy, the predicted accuracy (Table 1, "Equation 4") at every ``eps`` keyed by
    ``repr(eps)``, eps_L's median and range over the correctly classified examples, the
    ``config`` that made it, and its provenance. Every Jacobian method gives the same eps_L
    (tests check it against an autograd loop), so no diagnose option decides reuse."""
    accuracy = predicted_accuracy(result.eps_l, list(eps))
    assert isinstance(accuracy, dict)
    positive = result.eps_l[result.correct].double().tolist()
    summary = {
        "n": len(result),
        "clean_accuracy": result.clean_accuracy,
        "eps": list(eps),
        "predicted_accuracy": {repr(e): a for e, a in accuracy.items()},
        "predicted_accuracy_interval": {repr(e): list(accuracy_interval(a, len(result)))
                                        for e, a in accuracy.items()},
        "clean_accuracy_interval": list(accuracy_interval(result.clean_accuracy,
                                                          len(result))),
        "eps_l_correct": ({"median": statistics.median(positive), "min": min(positive),
                           "max": max(positive)} if positive else None),
        "config": config,
    }
    return Result("diagnostics", summary, provenance(ev, {}), result.to_frame())


def save_diagnostics(folder: Path | str, result: Diagnostics, record: Result, *,
                     table_format: str = "csv", overwrite: bool = False) -> list[Path]:
    """Write ``diagnostics.safetensors`` (every tensor, exact), then the table and the record
    (:mod:`epsl.records`), refusing to replace results unless ``overwrite``."""
    folder = check_out_dir(folder, kind("diagnostics").files(table_format), overwrite)
    invalidate(folder, "diagnostics")  # no old record may sit beside new tensors
    return [result.save_tensors(folder), *record.save(folder, table_format=table_format)]


def run_diagnose(config: DiagnoseConfig, *, progress: Progress | None = None,
                 evaluation: Evaluation | None = None) -> tuple[Diagnostics, Result]:
    """Diagnose a checkpoint on its data: ``(Diagnostics, record)`` (see
    :func:`diagnostics_result`)."""
    ev = evaluation or config.data.prepare()
    result = diagnose(ev.model, ev.data.x, ev.data.y, chunk_size=config.chunk_size,
                      batch_size=config.batch_size, method=config.method, device=ev.device,
                      progress=progress)
    return result, diagnostics_result(ev, result, config.eps, asdict(config))


def activations_provenance(ev: Evaluation, config: ActivationsConfig) -> Provenance:
    """What decides reuse of activations: the model and the examples (no setting does)."""
    return provenance(ev, {})


def run_activations(config: ActivationsConfig, *, evaluation: Evaluation | None = None
                    ) -> Result:
    """Activation sums of a checkpoint on its data (Figures 10, 11), as a record."""
    ev = evaluation or config.data.prepare()
    stats = activations(ev.model, ev.data.x, batch_size=config.batch_size, device=ev.device)
    summary = {
        "n": stats.n,
        "n_features": int(stats.penultimate_sum.numel()),
        "n_inactive": stats.n_inactive,
        "num_classes": int(stats.logit_sum.numel()),
        "config": asdict(config),
    }
    return Result("activations", summary, activations_provenance(ev, config), stats.to_frame())


def landscape_provenance(ev: Evaluation, config: LandscapeConfig) -> Provenance:
    """What decides reuse of a landscape: model, images, and the grid and its directions."""
    return provenance(ev, {"direction": config.direction, "span": config.span,
                           "steps": config.steps, "seed": config.seed})


def run_landscape(config: LandscapeConfig, *, evaluation: Evaluation | None = None) -> Result:
    """Loss landscapes of a checkpoint around its first images (Figures 5, 9), as a record
    whose table is long: one row per image and grid point."""
    ev = evaluation or config.data.prepare()
    frame = loss_landscape(ev.model, ev.data.x, ev.data.y, direction=config.direction,
                           span=config.span, steps=config.steps, seed=config.seed,
                           batch_size=config.batch_size)
    center = frame[(frame.eps1 == 0) & (frame.eps2 == 0)] if config.steps % 2 else frame[:0]
    summary = {
        "images": len(ev.data),
        "grid_points": config.steps**2,
        "clean_loss": center["loss"].tolist(),
        "max_loss": frame.groupby("image")["loss"].max().tolist(),
        "config": asdict(config),
    }
    return Result("landscape", summary, landscape_provenance(ev, config), frame)
