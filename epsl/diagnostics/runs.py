"""Checkpoint-level runs behind ``epsl diagnose``, ``epsl activations`` and ``epsl landscape``:
a frozen config in, per-example results plus a JSON-able summary (with the config) out."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

import epsl
from epsl.context import Evaluation, prepare
from epsl.diagnostics.features import ActivationStats, activations
from epsl.diagnostics.jacobians import DEFAULT_METHOD, Progress
from epsl.diagnostics.landscape import loss_landscape
from epsl.diagnostics.margins import Diagnostics, diagnose, predicted_accuracy
from epsl.errors import EpslError

DEFAULT_EPS = (2 / 255, 4 / 255, 8 / 255, 0.1, 0.2, 0.3)


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

    def prepare(self) -> Evaluation:
        return prepare(self.checkpoint, dataset=self.dataset, data=self.data, split=self.split,
                       limit=self.limit, arch=self.arch, model=self.model,
                       data_root=self.data_root, download=self.download, device=self.device)


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
        bad = [e for e in self.eps if not 0 < e < 1]
        if bad:
            raise EpslError(f"eps must lie in (0, 1) in pixel units, e.g. 0.3 or 8/255 "
                            f"(got {bad[0]})")


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


def provenance(ev: Evaluation) -> dict[str, Any]:
    """Where the model and the examples came from, for every summary."""
    return {
        "checkpoint": ev.checkpoint,
        "model": ev.meta,
        "data": {"dataset": ev.data.info.name, "split": ev.data.split,
                 "source": ev.data.source, "n": len(ev.data)},
        "device": str(ev.device),
        "epsl_version": epsl.__version__,
    }


def run_diagnose(config: DiagnoseConfig, *, progress: Progress | None = None,
                 evaluation: Evaluation | None = None) -> tuple[Diagnostics, dict[str, Any]]:
    """Diagnose a checkpoint on its data: ``(Diagnostics, summary)``.

    The summary holds n, the clean accuracy, the predicted accuracy (Table 1, "Equation 4")
    for every eps keyed by ``repr(eps)``, eps_L quantiles over the correctly classified
    examples, provenance and the config.
    """
    ev = evaluation or config.data.prepare()
    result = diagnose(ev.model, ev.data.x, ev.data.y, chunk_size=config.chunk_size,
                      batch_size=config.batch_size, method=config.method, device=ev.device,
                      progress=progress)
    accuracy = predicted_accuracy(result.eps_l, config.eps)
    assert isinstance(accuracy, dict)
    positive = result.eps_l[result.correct].double().tolist()
    summary = {
        "n": len(result),
        "clean_accuracy": result.clean_accuracy,
        "eps": list(config.eps),
        "predicted_accuracy": {repr(e): a for e, a in accuracy.items()},
        "eps_l_correct": ({"median": statistics.median(positive), "min": min(positive),
                           "max": max(positive)} if positive else None),
        **provenance(ev),
        "config": asdict(config),
    }
    return result, summary


def run_activations(config: ActivationsConfig, *, evaluation: Evaluation | None = None
                    ) -> tuple[ActivationStats, dict[str, Any]]:
    """Activation sums of a checkpoint on its data: ``(ActivationStats, summary)``."""
    ev = evaluation or config.data.prepare()
    stats = activations(ev.model, ev.data.x, batch_size=config.batch_size, device=ev.device)
    summary = {
        "n": stats.n,
        "n_features": int(stats.penultimate_sum.numel()),
        "n_inactive": stats.n_inactive,
        "num_classes": int(stats.logit_sum.numel()),
        **provenance(ev),
        "config": asdict(config),
    }
    return stats, summary


def run_landscape(config: LandscapeConfig, *, evaluation: Evaluation | None = None
                  ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Loss landscapes of a checkpoint around its first images: ``(long table, summary)``."""
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
        **provenance(ev),
        "config": asdict(config),
    }
    return frame, summary
