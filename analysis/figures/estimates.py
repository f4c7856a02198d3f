"""Robust accuracy at ε_L's cost, one row per model: the full audit on every image against
prediction-powered inference from a random tenth of the images audited and the cheap attack on
all of them, the classical interval on the audited images alone and Eq. 4's prediction
(:func:`epsl.analysis.estimates.study_estimates`, its first draw)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from epsl.errors import EpslError

from ..estimates import (
    DEFAULT_PREDICTOR,
    PREDICTOR_LABELS,
    STUDY_FRACTION,
    predictor_label,
    study_estimates,
    study_tables,
)
from ..folders import Run
from ..labelled import estimate_result, labelled_estimates
from .base import axes_grid, eps_symbol, figure_legend, new_figure, runs_norm
from .registry import Plan, figure

_PPI_COLOR, _EQ4_COLOR, _CLASSICAL_COLOR = (sns.color_palette("colorblind")[i] for i in (0, 1, 7))
#: (column, row offset, colour, marker, legend text) of each interval
_LINES = (("audit_robust", 0.25, "black", "s", "full audit on all images (exact 95% interval)"),
          ("ppi", 0.0, _PPI_COLOR, "o",
           f"PPI++: audit on the labelled images + {PREDICTOR_LABELS[DEFAULT_PREDICTOR]} on all"),
          ("classical", -0.25, _CLASSICAL_COLOR, "v", "classical: the labelled images alone"))


def _interval(ax: Axes, row: pd.Series, column: str, y: float, color: object,
              marker: str) -> None:
    """One estimate with its 95% interval at height ``y`` (nothing where the draw was
    refused)."""
    value, low, high = (float(row[c]) for c in (column, f"{column}_lo", f"{column}_hi"))
    if math.isnan(value):
        return
    ax.errorbar([value], [y], xerr=[[value - low], [high - value]], fmt=marker, color=color,
                markersize=6, capsize=3, linewidth=1.6, zorder=3, gid=column)


def fig_estimates(runs: Sequence[Run], *, fraction: float = STUDY_FRACTION,
                  seed: int = 0) -> Figure:
    """A forest plot, one row per run holding the audit, the diagnostics and PGD CW on every
    image at the audit's ε: the full audit's robust accuracy on all N images with its exact
    95% interval (black), the PPI++ interval from the audit on ``round(fraction·N)`` random
    images (seeded by ``seed``; the first draw of :func:`~epsl.analysis.estimates.
    study_estimates`) and the default predictor on all (blue), the classical interval on
    those images alone (grey) and Eq. 4's predicted accuracy, the share with ε_L > ε (orange
    diamond). A row whose labelled sample has no spread shows no PPI or classical interval (a
    labelled study's: no PPI interval, and the labelled images' exact one in grey).
    Runs that hold an ``estimate`` result (a study with ``[audit] labelled``, ``compare
    --labelled``) show their own labelled draw instead, with no full audit to set beside it."""
    frame = labelled_estimates(runs)  # a labelled study's or compare --labelled's own draw
    sampled = not frame.empty
    if not sampled:
        frame = study_estimates(runs, fraction=fraction, draws=1, seed=seed)
    if frame.empty:
        raise EpslError("no run has the audit, the diagnostics and PGD CW on every image at "
                        "the audit's ε (a study's runs/<model>/)")
    labels = {run.name: run.label for run in runs}
    count = len(frame)
    fig = new_figure(8.0, 0.85 * count + 2.2)
    ax = axes_grid(fig, 1, 1)[0, 0]
    for k, row in frame.iterrows():
        y = count - 1 - int(k)  # the first model on top
        for column, offset, color, marker, _ in _LINES:
            _interval(ax, row, column, y + offset, color, marker)
        ax.plot([row["eq4_predicted"]], [y], marker="D", color=_EQ4_COLOR, markersize=7,
                linestyle="", zorder=4, gid="eq4_predicted")
        if math.isnan(float(row["ppi"])):  # a labelled study's row shows the exact interval
            note = ("no spread: the labelled images' exact interval" if sampled else
                    "no spread in the labelled sample")
            ax.text(0.99, y + 0.25, note, transform=ax.get_yaxis_transform(), ha="right",
                    va="center", fontsize=8, color="dimgray")
    ax.set_yticks(range(count))
    ax.set_yticklabels([f"{labels.get(m, m)}\n(n = {n} of {N})" for m, n, N in zip(
        frame["model"][::-1], frame["labelled"][::-1], frame["images"][::-1], strict=True)],
        fontsize=8.5)
    ax.set(ylim=(-0.6, count - 0.4), xlim=(-0.02, 1.02))
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_xlabel("robust accuracy")
    ax.set_ylabel("model (labelled n of N images)")
    epsilons = sorted(set(frame["eps"]))
    at = (f"{eps_symbol('ε', runs_norm(runs))} = {epsilons[0]:g}" if len(epsilons) == 1
          else eps_symbol("each model's audit ε", runs_norm(runs)))
    lines = _LINES[1:] if sampled else _LINES  # no full audit in a labelled study
    if sampled:  # the draw's own predictor and cheap attack
        steps = frame["pgd_steps"].dropna()
        label = predictor_label(str(frame["predictor"].iloc[0]),
                                *(int(steps.iloc[0]),) if len(steps) else ())
        lines = ((lines[0][0], *lines[0][1:4], f"PPI++: audit on the labelled images + {label} "
                  "on all"), *lines[1:])
    ax.set_title(f"Robust accuracy at {at}: " + (
        "the full audit on a random sample, the predictor on all images" if sampled else
        f"the full audit against {fraction:.0%} of the images audited"), fontsize=10)
    handles = [Line2D([], [], color=color, marker=marker, linewidth=1.6)
               for _, _, color, marker, _ in lines]
    handles.append(Line2D([], [], color=_EQ4_COLOR, marker="D", linestyle=""))
    figure_legend(fig, handles, [text for *_, text in lines]
                  + ["Eq. 4's prediction: share with ε_L > ε"], where="lower")
    return fig


def _plan(runs: list[Run], eps: float | None) -> Plan | None:
    """Every run :func:`~epsl.analysis.estimates.study_tables` can read (the audit's ε is its
    own: ``eps`` is not used)."""
    chosen = [run for run in runs if estimate_result(run) is not None] or [
        run for run, _, _ in study_tables(runs)]
    return Plan(partial(fig_estimates, chosen), chosen) if chosen else None


figure("estimates", "Robust accuracy at ε_L's cost, per model: the full audit on every image "
       f"(black, where it ran), the PPI++ interval from the full audit on a random sample (a "
       f"random {STUDY_FRACTION:.0%} of the images where every image was audited) and "
       f"{PREDICTOR_LABELS[DEFAULT_PREDICTOR]} on all (blue), the classical interval on those "
       "images alone (grey) and Eq. 4's prediction (orange); 95% intervals.",
       needs=("audit", "diagnostics"))(_plan)


__all__ = ["fig_estimates"]
