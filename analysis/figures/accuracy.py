"""Accuracy against ε (Table 1 as curves): the empirical attacks of ``attack.csv``, the
empirical curve of ε* (``eps_star.csv``) and the Eq. 4 prediction, one panel per model; and the
helpers the PGD sweeps share (:mod:`.sweeps`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from epsl.errors import EpslError
from epsl.norms import Norm

from ..cards import accuracy_curves
from ..folders import Run
from ..metrics import (
    attack_accuracies,
    clopper_pearson,
    predicted_accuracy,
    strongest_setting,
    with_intervals,
)
from .base import (
    axes_grid,
    eps_axis,
    eps_star_values,
    eps_symbol,
    figure_legend,
    new_figure,
    palette,
    runs_norm,
)
from .registry import Plan, figure

Style = tuple[str, Any]  # (marker, matplotlib line style)
_ATTACK_STYLE: dict[tuple[str, str], Style] = {
    ("fgsm", "xent"): ("o", "--"), ("fgsm", "cw"): ("s", "--"),
    ("pgd", "xent"): ("^", "-."), ("pgd", "cw"): ("v", "-.")}


def attack_runs(runs: Sequence[Run]) -> list[Run]:
    chosen = [r for r in runs if r.attack is not None and len(r.attack)]
    if not chosen:
        raise EpslError("no run has an attack table (attack.csv)")
    return chosen


def attack_style(attack: str, loss: str, transfer: bool) -> Style:
    if transfer:
        return "X", ":"
    return _ATTACK_STYLE.get((attack, loss), ("D", (0, (1, 1))))


def _setting_name(attack: str, loss: str, transfer: bool, steps: int | None = None) -> str:
    name = attack.upper() + (f"-{steps}" if steps and attack != "fgsm" else "")
    return f"{'transfer ' if transfer else ''}{name} ({loss})"


def _eps_axis_end(tables: Iterable[pd.DataFrame], diagnostics: Iterable[pd.DataFrame | None],
                  eps: float | None, eps_star: Iterable[np.ndarray] = (),
                  norm: Norm = Norm.LINF) -> float:
    """Where the ε axis can end: the first ε at which every empirical curve has reached 0 and
    nearly every ε_L and finite ε* (99.5 %), so that a sanity check at unbounded ε (1.0) does
    not squash the curves. Without attack tables it ends by 1 in ℓ∞ (the whole box) and
    nowhere in ℓ2 and ℓ1, whose radii reach √D and D."""
    ends, largest = [eps or 0.0, 1e-3], [1.0]
    for values in eps_star:
        finite = values[np.isfinite(values) & (values > 0)]
        if finite.size:
            ends.append(float(np.quantile(finite, 0.995)))
    for table in tables:
        largest.append(float(table["eps"].max()))
        for _, curve in table.groupby(["attack", "loss_name", "transfer"]):
            values = np.sort(curve["eps"].unique())
            alive = curve.loc[curve["accuracy"] > 0.005, "eps"]  # above half a percent
            later = values[values > float(alive.max())] if len(alive) else values[:1]
            ends.append(float(later.min()) if len(later) else float(alive.max()))
    for frame in diagnostics:
        if frame is not None and len(frame):
            ends.append(float(frame["eps_l"].quantile(0.995)))  # one outlier can be huge
    return min(max(ends), max(largest[1:], default=1.0 if norm is Norm.LINF else math.inf))


def interval_yerr(group: pd.DataFrame) -> np.ndarray:
    """Error bar lengths below and above each accuracy, from its ``lo``/``hi`` bounds."""
    return np.vstack([group["accuracy"] - group["lo"], group["hi"] - group["accuracy"]])


EPS_STAR_COLOR = "#5b2c83"  # dark purple: apart from the attack palette and Eq. 4's black
EPS_STAR_LABEL = "ε* (min-norm ensemble): share with ε* > ε"


def eps_star_curve(eps_star: pd.DataFrame, end: float) -> pd.DataFrame:
    """The empirical accuracy ``acc(ε) = share(ε* > ε)`` of a ε* table on [0, end],
    at 0, at every finite ε* up to ``end`` and at ``end`` (it changes only at the ε*, so a
    step line through these points, continuous from the right, is the whole curve); the frame
    of :func:`~epsl.analysis.cards.accuracy_curves`, ``empirical`` the column to draw."""
    star = eps_star["eps_star"].to_numpy(dtype=float)
    inside = star[np.isfinite(star) & (star > 0) & (star <= end)]
    grid = np.unique(np.concatenate([[0.0], inside, [end]]))
    return accuracy_curves(eps_star["eps_l"], star, grid)


def fig_accuracy_vs_eps(runs: Sequence[Run], *, eps: float | None = None) -> Figure:
    """Table 1 as curves, one panel per model: empirical accuracy under each attack (markers;
    from ``attack.csv``, the strongest steps/restarts per setting) next to the Eq. 4 prediction,
    the fraction of examples with ε < ε_L (thick black line, from ``diagnostics.csv``, else
    from ``eps_star.csv``). A run with an ε* table (``epsl eps-star``) also gets the
    empirical curve of its ε*, ``acc(ε) = share(ε* > ε)`` (purple step line): the accuracy
    the strongest attack of the ensemble leaves at every ε at once."""
    chosen = [r for r in runs if r.attack is not None or r.diagnostics is not None
              or r.eps_star is not None]
    if not chosen:
        raise EpslError("no run has an attack, diagnostics or eps_star (ε*) table")
    tables = {id(r): with_intervals(strongest_setting(attack_accuracies(r.attack)))
              for r in chosen if r.attack is not None}
    settings = sorted({(a, loss, bool(t)) for table in tables.values()
                       for a, loss, t in zip(table["attack"], table["loss_name"],
                                             table["transfer"], strict=True)},
                      key=lambda s: (s[2], s[0], s[1]))
    colors = dict(zip(settings, palette(len(settings)), strict=True))
    cols = min(4, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = new_figure(3.4 * cols + 0.8, 3.0 * rows + 1.2)
    axes = axes_grid(fig, rows, cols, sharex=True, sharey=True)
    with_star = [r for r in chosen if r.eps_star is not None and len(r.eps_star)]
    norm = runs_norm(chosen)
    eps_max = _eps_axis_end(tables.values(), [r.diagnostics for r in chosen], eps,
                            [eps_star_values(r) for r in with_star], norm)
    grid = np.linspace(0, eps_max * 1.1, 200)
    names: dict[tuple[str, str, bool], str] = {}
    for k, ax in enumerate(axes.ravel()):
        if k >= len(chosen):
            ax.set_visible(False)
            continue
        run = chosen[k]
        predictor = run.diagnostics if run.diagnostics is not None else run.eps_star
        if predictor is not None and len(predictor):
            predicted = predicted_accuracy(predictor, grid)
            n = len(predictor)
            band = np.array([clopper_pearson(round(p * n), n) for p in predicted])
            ax.fill_between(grid, band[:, 0], band[:, 1], color="black", alpha=0.12,
                            linewidth=0, zorder=2)
            ax.plot(grid, predicted, color="black", linewidth=2.4, zorder=3)
        if run.eps_star is not None and len(run.eps_star):
            curve = eps_star_curve(run.eps_star, float(grid[-1]))
            ax.plot(curve["eps"], curve["empirical"], color=EPS_STAR_COLOR, linewidth=2.0,
                    drawstyle="steps-post", zorder=3.5, gid="eps_star")
        for (attack, loss, transfer), group in tables.get(id(run), pd.DataFrame(
                columns=["attack", "loss_name", "transfer"])).groupby(
                ["attack", "loss_name", "transfer"]):
            key = (str(attack), str(loss), bool(transfer))
            group = group.sort_values("eps")
            marker, line = attack_style(*key)
            names.setdefault(key, _setting_name(*key, int(group["steps"].max())))
            ax.errorbar(group["eps"], group["accuracy"], yerr=interval_yerr(group), color=colors[key],
                        marker=marker, linestyle=line, linewidth=1.3, markersize=5,
                        elinewidth=0.8, capsize=2)
        if eps is not None:
            ax.axvline(eps, color="grey", linestyle="--", linewidth=1)
        ax.set_title(run.label, fontsize=10)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_xlabel(eps_axis("ε", norm, sep=" ") if k // cols == rows - 1 or k + cols >= len(chosen)
                      else "", fontsize=9)
        ax.set_ylabel("accuracy" if k % cols == 0 else "")
    axes[0, 0].set(ylim=(-0.02, 1.02), xlim=(0, grid[-1]))
    handles = [Line2D([], [], color="black", linewidth=2.4)]
    labels = ["Eq. 4 prediction: share with ε < ε_L (band: 95% interval)"]
    if with_star:
        handles.append(Line2D([], [], color=EPS_STAR_COLOR, linewidth=2.0,
                              drawstyle="steps-post"))
        labels.append(EPS_STAR_LABEL)
    for key in settings:
        marker, line = attack_style(*key)
        handles.append(Line2D([], [], color=colors[key], marker=marker, linestyle=line))
        labels.append(names.get(key, _setting_name(*key)))
    figure_legend(fig, handles, labels, where="lower")
    shown = "attacks, ε*" if with_star else "empirical attacks"
    fig.suptitle(f"Accuracy against {eps_symbol('ε', norm)}: {shown} "
                 "and the Eq. 4 prediction (bars and band: 95% Clopper–Pearson intervals)",
                 fontsize=11, fontweight="bold")
    return fig


@figure("accuracy_vs_eps", "Accuracy against ε: empirical attacks (and, where a run has a "
        "eps_star table, the share with ε* > ε) next to the Eq. 4 prediction.",
        needs=("attack", "diagnostics", "eps_star"))
def _plan_accuracy_vs_eps(runs: list[Run], eps: float | None) -> Plan | None:
    # Eq. 4 alone (runs with diagnostics only) is no curve worth a figure of its own
    if not any(r.attack is not None or r.eps_star is not None for r in runs):
        return None
    return Plan(partial(fig_accuracy_vs_eps, runs, eps=eps), runs)


__all__ = ["EPS_STAR_COLOR", "EPS_STAR_LABEL", "Style", "attack_runs", "attack_style",
           "eps_star_curve", "fig_accuracy_vs_eps", "interval_yerr"]
