"""Checkpoint-level runs behind ``epsl diagnose``, ``epsl activations`` and ``epsl landscape``:
a frozen config in, one :class:`epsl.results.records.Result` out (its table, tensors, summary with the
config, and provenance). Each config says which of its settings decide reuse
(``reuse_settings``); the Jacobian method, chunk and batch sizes never do."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from epsl.diagnostics.features import activations
from epsl.diagnostics.jacobians import DEFAULT_METHOD, Progress, parse_memory
from epsl.diagnostics.landscape import loss_landscape
from epsl.diagnostics.margins import Diagnostics, diagnose, predicted_accuracy
from epsl.errors import EpslError, check_seed
from epsl.norms import Norm, check_radius, parse_norm
from epsl.results.records import Result, check_replaceable, reusable
from epsl.runs.context import DataConfig, Evaluation, provenance
from epsl.stats import accuracy_interval

#: the radii reported by default in each norm (pixel units on the [0, 1] scale): ℓ∞'s are the
#: paper's and RobustBench's (8/255); ℓ2's include RobustBench's CIFAR-10 0.5; ℓ1's its 12.
DEFAULT_EPS_BY_NORM: dict[str, tuple[float, ...]] = {
    "linf": (2 / 255, 4 / 255, 8 / 255, 0.1, 0.2, 0.3),
    "l2": (0.1, 0.25, 0.5, 1.0, 2.0),
    "l1": (0.5, 1.0, 2.0, 5.0, 12.0),
}
DEFAULT_EPS = DEFAULT_EPS_BY_NORM["linf"]


def default_eps(norm: str | Norm = "linf") -> tuple[float, ...]:
    """:data:`DEFAULT_EPS_BY_NORM` of ``norm``."""
    return DEFAULT_EPS_BY_NORM[parse_norm(norm).value]


def check_eps(eps: Sequence[float], norm: str | Norm = "linf", dim: int | None = None) -> None:
    """One-line :class:`EpslError` unless every radius is a valid ``norm`` radius: in (0, 1]
    for ℓ∞, at most √D (ℓ2) or D (ℓ1) once the input size ``dim`` is known
    (:func:`epsl.norms.check_radius`)."""
    check_radius(norm, eps, dim)


@dataclass(frozen=True)
class DiagnoseConfig:
    """``epsl diagnose``: eps_L (Eq. 4) per example in ``norm`` and the predicted accuracy at
    each eps (default: :func:`default_eps` of the norm)."""

    data: DataConfig
    eps: tuple[float, ...] = ()
    chunk_size: int | None = None
    batch_size: int = 256
    method: str = DEFAULT_METHOD
    table_format: str = "csv"
    norm: str = "linf"
    #: bytes the Jacobian blocks may use (``"2GiB"``; None: half the free CUDA memory, or a
    #: quarter of the available memory up to 1 GiB on the CPU)
    memory: str | None = None
    #: search the rival among the top-k wrong logits only (None: every class, exact)
    top_k: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", parse_norm(self.norm).value)
        if not self.eps:
            object.__setattr__(self, "eps", default_eps(self.norm))
        check_eps(self.eps, self.norm)
        parse_memory(self.memory)
        if self.top_k is not None and self.top_k < 1:
            raise EpslError(f"top_k must be at least 1 (got {self.top_k})")

    def reuse_settings(self) -> dict[str, Any]:
        """The norm and the rival search (:func:`diagnostics_settings`): every Jacobian method
        and memory budget gives the same eps_L (tests check it against an autograd loop), and
        the radii only pick the summary's columns."""
        return diagnostics_settings(self.norm, self.top_k)


def diagnostics_settings(norm: str | Norm, top_k: int | None = None) -> dict[str, Any]:
    """What decides whether saved diagnostics are reused: the norm, so that an ℓ∞ ε_L is never
    served for an ℓ2 request, and a top-k rival search (``top_k``), so that an eps_L over
    some classes is never served for an exact one."""
    settings: dict[str, Any] = {"norm": parse_norm(norm).value}
    if top_k is not None:
        settings["top_k"] = int(top_k)
    return settings


@dataclass(frozen=True)
class ActivationsConfig:
    """``epsl activations``: penultimate and logit sums per unit (Figures 10, 11)."""

    data: DataConfig
    batch_size: int = 256
    table_format: str = "csv"

    def reuse_settings(self) -> dict[str, Any]:
        """None: the model and the examples decide the sums."""
        return {}


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
    #: bytes the forward passes over the grid may use, the table of every point too (``"2GiB"``;
    #: None: as for diagnose, :func:`~epsl.diagnostics.jacobians.memory_budget`)
    memory: str | None = None

    def __post_init__(self) -> None:
        check_seed(self.seed)
        parse_memory(self.memory)

    def reuse_settings(self) -> dict[str, Any]:
        """The grid and its directions (not the batch size or the memory budget)."""
        return {"direction": self.direction, "span": self.span, "steps": self.steps,
                "seed": self.seed}


def diagnostics_result(ev: Evaluation, result: Diagnostics, eps: Sequence[float],
                       config: dict[str, Any]) -> Result:
    """The diagnostics result of ``result`` (``ev``'s model on all of ``ev.data``), its
    tensors with it: n, the norm, the clean accuracy, the predicted accuracy (Table 1,
    "Equation 4") at every ``eps`` keyed by ``repr(eps)``, eps_L's median and range over the
    correctly classified examples, the ``config`` that made it, and its provenance (the norm
    decides reuse: :func:`diagnostics_settings`)."""
    accuracy = predicted_accuracy(result.eps_l, list(eps))
    assert isinstance(accuracy, dict)
    positive = result.eps_l[result.correct].double().tolist()
    summary = {
        "n": len(result),
        "norm": result.norm,
        "rivals": "all" if result.top_k is None else f"top-{result.top_k}",
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
    return Result("diagnostics", summary,
                  provenance(ev, diagnostics_settings(result.norm, result.top_k)),
                  result.to_frame(), tensors=result)


def run_diagnose(config: DiagnoseConfig, *, progress: Progress | None = None,
                 evaluation: Evaluation | None = None) -> Result:
    """Diagnose a checkpoint on its data (see :func:`diagnostics_result`); ``result.tensors``
    is the :class:`~epsl.diagnostics.Diagnostics`, written to ``diagnostics.safetensors`` by
    ``result.save``. ``evaluation``: ``config.data`` already prepared."""
    ev = evaluation or config.data.prepare()
    check_eps(config.eps, config.norm, dim=ev.data.x[0].numel())
    result = diagnose(ev.model, ev.data.x, ev.data.y, chunk_size=config.chunk_size,
                      batch_size=config.batch_size, method=config.method, device=ev.device,
                      progress=progress, norm=config.norm, memory=config.memory,
                      top_k=config.top_k)
    return diagnostics_result(ev, result, config.eps, asdict(config))


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
    return Result("activations", summary, provenance(ev, config.reuse_settings()),
                  stats.to_frame())


def run_landscape(config: LandscapeConfig, *, evaluation: Evaluation | None = None) -> Result:
    """Loss landscapes of a checkpoint around its first images (Figures 5, 9), as a record
    whose table is long: one row per image and grid point."""
    ev = evaluation or config.data.prepare()
    frame = loss_landscape(ev.model, ev.data.x, ev.data.y, direction=config.direction,
                           span=config.span, steps=config.steps, seed=config.seed,
                           batch_size=config.batch_size, memory=config.memory)
    center = frame[(frame.eps1 == 0) & (frame.eps2 == 0)] if config.steps % 2 else frame[:0]
    summary = {
        "images": len(ev.data),
        "grid_points": config.steps**2,
        "clean_loss": center["loss"].tolist(),
        "max_loss": frame.groupby("image")["loss"].max().tolist(),
        "config": asdict(config),
    }
    return Result("landscape", summary, provenance(ev, config.reuse_settings()), frame)


def ensure_diagnostics(ev: Evaluation, folder: Path, eps: Sequence[float],
                       log: Callable[[str], None] | None = None, *,
                       norm: str | Norm = "linf", overwrite: bool = True
                       ) -> tuple[pd.DataFrame, bool]:
    """The ε_L diagnostics of ``ev`` in ``norm`` in ``folder``: reused when made from this
    checkpoint, these examples and this norm (with their tensors), else computed and saved.
    Returns ``(table, computed)``; the comparison and the study's ε* stage share it, so ε_L is
    computed once. A result of another origin in ``folder`` is replaced only with
    ``overwrite``."""
    origin = provenance(ev, diagnostics_settings(norm))
    found = reusable(folder, "diagnostics", origin)
    if found is not None and found.table is not None:
        return found.table, False
    check_replaceable(folder, "diagnostics", origin, overwrite)
    if log is not None:
        which = "" if parse_norm(norm) is Norm.LINF else f" ({parse_norm(norm).value})"
        log(f"{folder.name}: eps_L diagnostics{which} on {len(ev.data)} examples")
    check_eps(eps, norm, dim=ev.data.x[0].numel())
    result = diagnose(ev.model, ev.data.x, ev.data.y, device=ev.device, norm=norm)
    record = diagnostics_result(ev, result, eps, {})
    record.save(folder, overwrite=True)
    assert record.table is not None
    return record.table, True


__all__ = ["ActivationsConfig", "DEFAULT_EPS", "DEFAULT_EPS_BY_NORM", "DiagnoseConfig", "LandscapeConfig",
           "check_eps", "default_eps", "diagnostics_result", "diagnostics_settings",
           "ensure_diagnostics", "run_activations", "run_diagnose", "run_landscape"]
