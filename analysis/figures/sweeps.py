"""White-box PGD accuracy against the attack's budget at one ε: the number of steps (Table 11)
and of random restarts (Table 10), from ``attack.csv``."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from epsl.errors import EpslError

from ..folders import Run
from ..metrics import attack_accuracies, pick_eps, with_intervals
from .accuracy import attack_runs, attack_style, interval_yerr
from .base import axes_grid, eps_symbol, figure_legend, new_figure, palette, run_handles, runs_norm
from .registry import Plan, figure


def _sweep(runs: Sequence[Run], key: str, eps: float | None) -> list[tuple[Run, pd.DataFrame]]:
    """White-box PGD accuracies at one ε, varying ``key`` ('steps' or 'restarts') with the other
    at its most common value for that ε."""
    other = "restarts" if key == "steps" else "steps"
    found = []
    for run in attack_runs(runs):
        table = with_intervals(attack_accuracies(run.attack))  # type: ignore[arg-type]
        table = table[(table["attack"] == "pgd") & ~table["transfer"]]
        at = pick_eps(table["eps"], eps)
        if at is None:
            continue
        table = table[np.isclose(table["eps"], at)]
        if table.empty:
            continue
        # hold the other setting where the sweep has the most values (1 restart on ties)
        spread = table.groupby(other)[key].nunique()
        candidates = [int(v) for v in spread[spread == spread.max()].index]
        fixed = 1 if 1 in candidates else max(candidates)
        table = table[table[other] == fixed]
        if table[key].nunique() >= 2:
            found.append((run, table.assign(fixed=fixed, eps_used=at)))
    return found


def _fig_sweep(runs: Sequence[Run], key: str, eps: float | None) -> Figure:
    found = _sweep(runs, key, eps)
    if not found:
        raise EpslError(f"no run has PGD results at more than one value of {key}")
    norm = runs_norm([r for r, _ in found])
    colors = palette(len(found))
    fig = new_figure(8, 4.8)
    ax = axes_grid(fig, 1, 1)[0, 0]
    losses: set[str] = set()
    for (_run, table), color in zip(found, colors, strict=True):
        for loss, group in table.groupby("loss_name"):
            if group[key].nunique() < 2:
                continue  # a single point is no curve
            group = group.sort_values(key)
            marker, line = attack_style("pgd", str(loss), False)
            losses.add(str(loss))
            ax.errorbar(group[key], group["accuracy"], yerr=interval_yerr(group), color=color,
                        marker=marker, linestyle=line, linewidth=1.5, elinewidth=0.8,
                        capsize=2)
    ax.set_xscale("log")
    values = sorted({int(v) for _, t in found for v in t[key]})
    ax.set_xticks(values, [str(v) for v in values])
    ax.minorticks_off()
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    # at least a 15-point window, so that small changes do not look like collapses
    shown = [ln.get_ydata() for ln in ax.get_lines()]
    low = min(float(np.min(y)) for y in shown) if shown else 0.0
    high = max(float(np.max(y)) for y in shown) if shown else 1.0
    pad = max(0.0, 0.15 - (high - low)) / 2 + 0.02
    ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad))
    other = "restarts" if key == "steps" else "steps"
    fixed = sorted({int(t["fixed"].iloc[0]) for _, t in found})
    eps_used = sorted({float(t["eps_used"].iloc[0]) for _, t in found})
    ax.set(xlabel=f"PGD {key} (log scale)", ylabel="robust accuracy (95% interval)",
           title=f"White-box PGD accuracy against {key} "
                 f"({eps_symbol('ε', norm)} = {', '.join(f'{e:g}' for e in eps_used)}, "
                 f"{other} = {', '.join(map(str, fixed))})")
    handles, labels = run_handles([r for r, _ in found], colors)
    for loss in sorted(losses):
        marker, line = attack_style("pgd", loss, False)
        handles.append(Line2D([], [], color="dimgray", marker=marker, linestyle=line))
        labels.append(f"loss: {loss}")
    figure_legend(fig, handles, labels, where="lower")
    return fig


def fig_accuracy_vs_steps(runs: Sequence[Run], *, eps: float | None = None) -> Figure:
    """Table 11 as a curve: white-box PGD accuracy against the number of steps at ε."""
    return _fig_sweep(runs, "steps", eps)


def fig_accuracy_vs_restarts(runs: Sequence[Run], *, eps: float | None = None) -> Figure:
    """Table 10 as a curve: white-box PGD accuracy against the number of random restarts."""
    return _fig_sweep(runs, "restarts", eps)


def _plan_sweep(runs: list[Run], key: str, eps: float | None) -> Plan | None:
    found = _sweep(runs, key, eps)
    return Plan(partial(_fig_sweep, runs, key, eps), [r for r, _ in found]) if found else None


@figure("accuracy_vs_steps", "White-box PGD accuracy against the number of steps (Table 11).",
        needs=("attack",))
def _plan_steps(runs: list[Run], eps: float | None) -> Plan | None:
    return _plan_sweep(runs, "steps", eps)


@figure("accuracy_vs_restarts", "White-box PGD accuracy against the number of restarts "
        "(Table 10).", needs=("attack",))
def _plan_restarts(runs: list[Run], eps: float | None) -> Plan | None:
    return _plan_sweep(runs, "restarts", eps)


__all__ = ["fig_accuracy_vs_restarts", "fig_accuracy_vs_steps"]
