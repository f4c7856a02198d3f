"""ε_L against ε*, example by example: how Eq. 4's estimate compares with the smallest
perturbation a minimum-norm attack ensemble found (``eps_star.csv`` of ``epsl eps-star``),
with the report card of Eq. 4 in each panel's title."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from epsl.errors import EpslError

from ..cards import report_card
from ..folders import Run
from .base import EPS_UNIT, axes_grid, eps_star_values, eps_symbol, new_figure, plain_log_ticks, runs_norm
from .registry import figure, over_runs_with

_CONSERVATIVE_COLOR, _OPTIMISTIC_COLOR = (sns.color_palette("colorblind")[i] for i in (0, 3))


_PROVEN_COLOR = sns.color_palette("colorblind")[2]


def _proven_conservative(run: Run, n: int) -> np.ndarray:
    """Per example of the ε* table: whether ``certify.csv`` proves ε_L ≤ ε_cert."""
    mask = np.zeros(n, dtype=bool)
    if run.certify is not None and len(run.certify):
        index = run.certify["index"].to_numpy(dtype=int)
        keep = index < n
        mask[index[keep]] = (run.certify["group"].to_numpy() == "conservative")[keep]
    return mask


def _eps_star_runs(runs: Sequence[Run]) -> list[Run]:
    chosen = [r for r in runs if r.eps_star is not None and len(r.eps_star)]
    if not chosen:
        raise EpslError("no run has a eps_star table (eps_star.csv, from epsl eps-star)")
    return chosen


def eps_star_card(run: Run) -> dict[str, Any]:
    """The report card of Eq. 4 of a run with an ε* table: from its record
    (``eps_star.json``), recomputed with :func:`~epsl.analysis.cards.report_card` when
    the record lacks it."""
    card = run.eps_star_summary.get("report_card")
    if isinstance(card, dict) and {"spearman", "optimistic_share"} <= card.keys():
        return card
    assert run.eps_star is not None
    return report_card(run.eps_star["eps_l"], run.eps_star["eps_star"], norm=run.norm)


def _number(card: dict[str, Any], key: str) -> float:
    value = card.get(key)
    return float(value) if isinstance(value, int | float) else math.nan


def _card_title(card: dict[str, Any]) -> str:
    """Two lines: Spearman's ρ and the optimistic share, each with its 95% interval."""
    rho, rho_lo, rho_hi = (_number(card, k) for k in ("spearman", "spearman_lo", "spearman_hi"))
    share, lo, hi = (_number(card, k) for k in ("optimistic_share", "optimistic_lo",
                                                 "optimistic_hi"))
    first = (f"Spearman ρ = {rho:.2f} [{rho_lo:.2f}, {rho_hi:.2f}]" if math.isfinite(rho)
             else "Spearman ρ: too few examples")
    second = (f"optimistic (ε_L > ε*): {share:.0%} [{100 * lo:.0f}, {100 * hi:.0f}]"
              if math.isfinite(share) else "optimistic (ε_L > ε*): no example")
    return f"{first}\n{second}"


def _legend(fig: Figure, chosen: Sequence[Run], cols: int) -> None:
    """The groups' legend under the panels: optimistic, the rest, the identity and, where
    ``certify.csv`` exists, the examples proven conservative."""
    handles = [Line2D([], [], color=_CONSERVATIVE_COLOR, marker="o", linestyle=""),
               Line2D([], [], color=_OPTIMISTIC_COLOR, marker="^", linestyle=""),
               Line2D([], [], color="black", linestyle="--")]
    labels = ["ε_L ≤ ε*: Eq. 4 conservative", "ε_L > ε*: Eq. 4 optimistic", "ε_L = ε*"]
    certified = [r for r in chosen if r.certify is not None and len(r.certify)]
    if certified:  # the three groups: proven conservative, proven optimistic, the rest
        n_cert = max(len(r.certify) for r in certified)  # type: ignore[arg-type]
        labels[0] = "ε_L ≤ ε*: undecided unless boxed"
        handles.append(Line2D([], [], color=_PROVEN_COLOR, marker="s", markerfacecolor="none",
                              linestyle=""))
        labels.append(f"ε_L ≤ ε_cert (CROWN, first {n_cert}): provably conservative")
    fig.legend(handles, labels, loc="outside lower center",  # type: ignore[call-overload]
               ncols=(3 if len(labels) == 3 else 2) if cols > 1 else 1, frameon=False,
               fontsize=9)


def fig_eps_l_vs_eps_star(runs: Sequence[Run]) -> Figure:
    """Eq. 4 example by example: ε_L (y) against ε* (x), the smallest perturbation a
    minimum-norm attack ensemble found (``eps_star.csv`` of ``epsl eps-star``), one panel per
    run with an ε* table (up to three columns, shared log-log axes).

    Points above the dashed line ε_L = ε* (``ratio > 1``, orange triangles) are examples where
    Eq. 4 is *optimistic*: it promises more robustness than the network has, a proven
    overstatement since ε* is an upper bound of the true minimal perturbation. Each panel's
    title gives the run, Spearman's ρ(ε_L, ε*) and the optimistic share with their 95%
    intervals (from the record's report card). Only examples with positive, finite ε_L and ε*
    are drawn (misclassified examples have ε* = 0); examples no attack flipped (ε* = ∞) are
    counted in the panel.
    """
    chosen = _eps_star_runs(runs)
    norm = runs_norm(chosen)
    star_symbol, eps_l_symbol = (eps_symbol(s, norm) for s in ("$\\epsilon^*$", "$\\epsilon_L$"))
    cols = min(3, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = new_figure(3.5 * cols + 0.6, 3.8 * rows + 0.9)  # near-square panels: ε_L = ε* at 45°
    axes = axes_grid(fig, rows, cols, sharex=True, sharey=True)
    drawn: list[np.ndarray] = []
    for k, ax in enumerate(axes.ravel()):
        if k >= len(chosen):
            ax.set_visible(False)
            continue
        run = chosen[k]
        assert run.eps_star is not None
        eps_l = run.eps_star["eps_l"].to_numpy(dtype=float)
        star = eps_star_values(run)
        shown = np.isfinite(eps_l) & np.isfinite(star) & (eps_l > 0) & (star > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (run.eps_star["ratio"].to_numpy(dtype=float) if "ratio" in run.eps_star
                     else eps_l / star)
        optimistic = shown & (ratio > 1)
        for picked, color, marker, size, gid in (
                (shown & ~optimistic, _CONSERVATIVE_COLOR, "o", 12, "conservative"),
                (optimistic, _OPTIMISTIC_COLOR, "^", 18, "optimistic")):
            ax.scatter(star[picked], eps_l[picked], s=size, color=color, marker=marker,
                       alpha=0.6, linewidths=0, zorder=3, gid=gid)
        drawn += [star[shown], eps_l[shown]]
        proven = _proven_conservative(run, len(eps_l)) & shown
        if proven.any():  # ε_L ≤ ε_cert: Eq. 4 is provably a lower bound there
            ax.scatter(star[proven], eps_l[proven], s=30, facecolors="none",
                       edgecolors=_PROVEN_COLOR, marker="s", linewidths=1.2, zorder=4,
                       gid="proven-conservative")
        notes = []
        unbroken = int(np.isinf(star).sum())
        if unbroken:
            notes.append(f"{unbroken} never flipped (ε* = ∞), not shown")
        other = int((np.isfinite(star) & (star > 0) & ~shown).sum())
        if other:
            notes.append(f"{other} with ε_L ≤ 0 or missing, not shown")
        if notes:
            ax.text(0.97, 0.03, "\n".join(notes), transform=ax.transAxes, ha="right",
                    va="bottom", fontsize=7.5, color="dimgray",
                    bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0})
        ax.set_title(f"{run.label}\n{_card_title(eps_star_card(run))}", fontsize=9)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{star_symbol}, min-norm ensemble ({EPS_UNIT}, log)"
                      if k // cols == rows - 1 or k + cols >= len(chosen) else "", fontsize=9)
        ax.set_ylabel(f"{eps_l_symbol}, Eq. 4 (log)" if k % cols == 0 else "", fontsize=9)
    every = np.concatenate(drawn) if drawn else np.array([])
    lo, hi = (float(every.min()), float(every.max())) if every.size else (1e-3, 1.0)
    lo, hi = lo / 1.3, hi * 1.3
    subs = (1.0,) if math.log10(hi / lo) > 2.5 else (1.0, 2.0, 5.0)  # no crowded labels
    for ax in axes.ravel()[:len(chosen)]:
        ax.plot([lo, hi], [lo, hi], color="black", linestyle="--", linewidth=1.1, zorder=2,
                gid="identity")
        plain_log_ticks(ax.xaxis, subs)
        plain_log_ticks(ax.yaxis, subs)
    axes[0, 0].set(xlim=(lo, hi), ylim=(lo, hi))
    _legend(fig, chosen, cols)
    fig.suptitle(eps_symbol("ε_L (Eq. 4) against ε*, per example", norm), fontsize=11,
                 fontweight="bold")
    return fig


figure("eps_l_vs_eps_star", "ε_L (Eq. 4) against ε*, the smallest perturbation a minimum-norm "
       "attack ensemble found, per example and model (log-log); points above the line "
       "ε_L = ε* are where Eq. 4 is optimistic.", needs=("eps_star",))(
    over_runs_with("eps_star", fig_eps_l_vs_eps_star))


def _share_above(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """share(values > ε) at every ε of ``grid``."""
    return (values[None, :] > grid[:, None]).mean(axis=1)


def fig_certified_accuracy(runs: Sequence[Run]) -> Figure:
    """With proofs, one panel per run with a ``certify.csv`` (``epsl certify``): on its
    certified images, the certified accuracy share(ε_cert > ε) (green), Eq. 4's share(ε_L > ε)
    (black) and the accuracy by ε*, share(ε* > ε) (purple), as step curves over ε. The true
    robust accuracy lies between the green and the purple curve at every ε. Where Eq. 4's
    curve lies above the purple one it provably overstates the accuracy; below the green one
    it is provably conservative."""
    from .accuracy import EPS_STAR_COLOR

    chosen = [r for r in runs if r.certify is not None and len(r.certify)]
    if not chosen:
        raise EpslError("no run has a certify table (certify.csv, from epsl certify)")
    cols = min(3, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = new_figure(3.4 * cols + 0.6, 2.9 * rows + 1.1)
    axes = axes_grid(fig, rows, cols, sharex=True, sharey=True)
    tables = [r.certify for r in chosen]
    finite = np.concatenate([t[c].to_numpy(dtype=float) for t in tables  # type: ignore[index]
                             for c in ("eps_cert", "eps_l", "eps_star")])
    finite = finite[np.isfinite(finite)]
    end = float(finite.max()) * 1.05 if finite.size else 1.0
    lines = ((_PROVEN_COLOR, "eps_cert", "certified (CROWN): share with ε_cert > ε"),
             ("black", "eps_l", "Eq. 4: share with ε_L > ε"),
             (EPS_STAR_COLOR, "eps_star", "by ε* (min-norm ensemble): share with ε* > ε"))
    for k, ax in enumerate(axes.ravel()):
        if k >= len(chosen):
            ax.set_visible(False)
            continue
        table = tables[k]
        assert table is not None
        columns = {c: table[c].to_numpy(dtype=float) for _, c, _ in lines}
        points = np.concatenate([v[np.isfinite(v)] for v in columns.values()])
        grid = np.unique(np.concatenate([[0.0], points[points <= end], [end]]))
        for color, column, _ in lines:
            ax.plot(grid, _share_above(columns[column], grid), color=color, linewidth=2.0,
                    drawstyle="steps-post", gid=column)
        ax.set_title(f"{chosen[k].label} ({len(table)} images)", fontsize=10)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_xlabel(f"ε ({EPS_UNIT})" if k // cols == rows - 1 or k + cols >= len(chosen)
                      else "", fontsize=9)
        ax.set_ylabel("accuracy" if k % cols == 0 else "")
    axes[0, 0].set(ylim=(-0.02, 1.02), xlim=(0, end))
    fig.legend([Line2D([], [], color=c, linewidth=2.0) for c, _, _ in lines],
               [label for _, _, label in lines], loc="outside lower center",  # type: ignore[call-overload]
               ncols=3 if cols > 1 else 1, frameon=False, fontsize=9)
    fig.suptitle("With proofs: certified accuracy ≤ true accuracy ≤ accuracy by ε*, beside "
                 "Eq. 4 (ℓ∞)", fontsize=11, fontweight="bold")
    return fig


figure("certified_accuracy", "The certified accuracy (CROWN's ε_cert), Eq. 4's prediction and "
       "the accuracy by ε* against ε on the certified images; the true accuracy lies between "
       "the certified and the ε* curve.", needs=("certify",))(
    over_runs_with("certify", fig_certified_accuracy))


__all__ = ["eps_star_card", "fig_certified_accuracy", "fig_eps_l_vs_eps_star"]
