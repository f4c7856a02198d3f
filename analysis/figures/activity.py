"""How active the last layers are: per-neuron activation magnitude of the penultimate layer
(Figure 10) and per-logit activation magnitude (Figure 11), from ``activations.csv``."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from epsl.errors import EpslError

from ..folders import Run
from .base import axes_grid, figure_legend, new_figure, palette
from .registry import Plan, figure


def _activations(run: Run, layer: str) -> pd.DataFrame:
    if run.activations is None:
        raise EpslError(f"{run.path}: no activations table (activations.csv)")
    table = run.activations[run.activations["layer"] == layer]
    if table.empty:
        raise EpslError(f"{run.path}: activations table has no {layer!r} layer")
    return table


def _activation_runs(runs: Sequence[Run]) -> list[Run]:
    chosen = [r for r in runs if r.activations is not None]
    if not chosen:
        raise EpslError("no run has an activations table (activations.csv)")
    return chosen


def fig_penultimate_activity(runs: Sequence[Run]) -> Figure:
    """Figure 10: per penultimate neuron, the activation magnitude summed over the data set
    (``activation_abs_sum``), sorted from largest, log axis; neurons that never fire
    (``active_count == 0``) are counted in the legend and mark where each curve ends."""
    runs = _activation_runs(runs)
    colors = palette(len(runs))
    fig = new_figure(8, 4.8)
    ax = axes_grid(fig, 1, 1)[0, 0]
    handles, labels = [], []
    for run, color in zip(runs, colors, strict=True):
        table = _activations(run, "penultimate")
        magnitude = np.sort(table["activation_abs_sum"].to_numpy(dtype=float))[::-1]
        inactive = int((table["active_count"] == 0).sum())
        rank = np.arange(1, len(magnitude) + 1)
        live = magnitude > 0
        (line,) = ax.plot(rank[live], magnitude[live], color=color, linewidth=1.8)
        if inactive:
            ax.axvline(len(magnitude) - inactive + 0.5, color=color, linestyle=":",
                       linewidth=1.2)
        handles.append(line)
        labels.append(f"{run.label}: {inactive} of {len(magnitude)} neurons inactive")
    ax.set_yscale("log")
    ax.set(xlabel="penultimate neuron, sorted by activation magnitude (rank)",
           ylabel="Σ |activation| over the data set (log scale)",
           title="Penultimate-layer activity (dotted: where inactive neurons begin)")
    figure_legend(fig, handles, labels, where="lower")
    return fig


def fig_logit_activity(runs: Sequence[Run]) -> Figure:
    """Figure 11: per logit (class), the activation magnitude summed over the data set, as
    grouped bars per run."""
    runs = _activation_runs(runs)
    colors = palette(len(runs))
    tables = [_activations(r, "logit").sort_values("unit") for r in runs]
    units = sorted({int(u) for t in tables for u in t["unit"]})
    fig = new_figure(min(12.0, max(7.0, 2.5 + 0.12 * len(units) * len(runs))), 5.0)
    ax = axes_grid(fig, 1, 1)[0, 0]
    width = 0.8 / len(runs)
    for k, (run, table, color) in enumerate(zip(runs, tables, colors, strict=True)):
        positions = table["unit"].to_numpy(dtype=float) - 0.4 + width * (k + 0.5)
        inactive = int((table["active_count"] == 0).sum())
        ax.bar(positions, table["activation_abs_sum"], width=width, color=color,
               label=f"{run.label}" + (f" ({inactive} inactive)" if inactive else ""))
    ax.set_xticks(units)
    ax.set(xlabel="logit (class index)", ylabel="Σ |logit| over the data set (logit units)",
           title="Logit-layer activity")
    figure_legend(fig, *ax.get_legend_handles_labels(), where="lower")
    return fig


def _has_layer(runs: Sequence[Run], layer: str) -> bool:
    return any((r.activations["layer"] == layer).any() for r in runs  # type: ignore[index]
               if r.activations is not None)


@figure("fig10_penultimate_activity", "Figure 10: per-neuron activation magnitude in the "
        "penultimate layer (sorted) and the number of inactive neurons.",
        needs=("activations",), norm_free=True)
def _plan_penultimate(runs: list[Run], eps: float | None) -> Plan | None:
    if not _has_layer(runs, "penultimate"):
        return None
    return Plan(partial(fig_penultimate_activity, runs), runs)


@figure("fig11_logit_activity", "Figure 11: activation magnitude per logit.",
        needs=("activations",), norm_free=True)
def _plan_logit_activity(runs: list[Run], eps: float | None) -> Plan | None:
    return Plan(partial(fig_logit_activity, runs), runs) if _has_layer(runs, "logit") else None


__all__ = ["fig_logit_activity", "fig_penultimate_activity"]
