"""The paper's figures, rendered from saved per-example tables (never from a model).

Every ``fig_*`` function takes :class:`~epsl.analysis.runs.Run` objects and returns a
``matplotlib.figure.Figure`` built without pyplot (so no global state, Agg rendering);
:func:`save_figure` writes it as PNG and SVG atomically and :func:`render_all` renders every
figure the runs' tables allow. ε is always in pixel units on the [0,1] scale.

=========================  ==============================================================
function                   paper
=========================  ==============================================================
fig_eps_l_panels           Figures 1 and 6: logit gap, gradient gap, ε_L, gradient cosine
fig_noise_ablation         Figures 3 and 8: the same panels for natural / noise only /
                           regulariser only / regulariser + noise
fig_logits                 Figure 2: distribution of logit values
fig_gradient_norms         Figures 4 and 7: ‖∇ₓz_y‖₁, ‖∇ₓz_ȳ‖₁ and cosine across α or β
fig_landscape              Figures 5 and 9: cross-entropy over (ε₁, ε₂) for eight images
fig_penultimate_activity   Figure 10: per-neuron activation magnitude, inactive count
fig_logit_activity         Figure 11: per-logit activation magnitude
fig_accuracy_vs_eps        Table 1 as curves: attacks and ε* next to the Eq. 4 prediction
fig_eps_l_vs_eps_star      beyond the paper: ε_L against ε* (minimum-norm ensemble) per example
fig_accuracy_vs_steps      Table 11: PGD accuracy against the number of steps
fig_accuracy_vs_restarts   Table 10: PGD accuracy against the number of restarts
=========================  ==============================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter

from epsl.errors import EpslError
from epsl.io import atomic_path

from .calibration import accuracy_curves, report_card
from .metrics import (
    attack_accuracies,
    clopper_pearson,
    main_eps,
    pick_eps,
    predicted_accuracy,
    strongest_setting,
    with_intervals,
)
from .runs import Run, defense_kind, defense_params, logit_columns

EPS_UNIT = "pixel units, [0,1] scale"
DPI = 110
_STYLE = {"axes.grid": True, "grid.alpha": 0.35, "axes.spines.top": False,
          "axes.spines.right": False}


# --------------------------------------------------------------------------- helpers


def _figure(width: float, height: float) -> Figure:
    """A pyplot-free figure (rendered with Agg on save) with the seaborn look."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig


def _axes(fig: Figure, rows: int, cols: int, **kwargs: Any) -> np.ndarray:
    with sns.axes_style("whitegrid", _STYLE):
        axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return axes


def palette(n: int) -> list[tuple[float, float, float]]:
    """Distinct colour-blind-safe colours for ``n`` runs."""
    return list(sns.color_palette("colorblind" if n <= 10 else "husl", n))


def _diag_runs(runs: Sequence[Run]) -> list[Run]:
    selected = [r for r in runs if r.diagnostics is not None and len(r.diagnostics)]
    if not selected:
        raise EpslError("no run has a diagnostics table (diagnostics.csv)")
    return selected


def _values(run: Run, column: str) -> np.ndarray:
    assert run.diagnostics is not None
    if column not in run.diagnostics.columns:
        raise EpslError(f"{run.path}: diagnostics table has no column {column!r}")
    values = run.diagnostics[column].to_numpy(dtype=float)
    return values[np.isfinite(values)]


def _log_bins(arrays: Sequence[np.ndarray], bins: int = 40) -> np.ndarray:
    positive = np.concatenate([a[a > 0] for a in arrays]) if arrays else np.array([])
    if positive.size == 0:
        return np.linspace(0, 1, bins + 1)
    lo, hi = positive.min(), positive.max()
    if hi <= lo:
        lo, hi = lo / 2, hi * 2
    return np.geomspace(lo, hi * 1.0001, bins + 1)


def _lin_bins(arrays: Sequence[np.ndarray], bins: int = 40,
              quantiles: tuple[float, float] | None = None) -> tuple[np.ndarray, bool]:
    """Shared linear bins; with ``quantiles`` the range is cut there and the tails are clipped
    into the edge bins (returned flag True when that happened)."""
    every = np.concatenate(arrays) if arrays else np.array([0.0])
    if every.size == 0:
        every = np.array([0.0])
    lo, hi = (np.quantile(every, quantiles) if quantiles else (every.min(), every.max()))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    clipped = bool(quantiles) and bool((every < lo).any() or (every > hi).any())
    return np.linspace(lo, hi, bins + 1), clipped


def _log_x(ax: Axes) -> None:
    """Log x-axis labelled 1, 2, 5, 10, 20, 50... in plain numbers (no crowded minor labels)."""
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)


def _plain_log_ticks(axis: Any, subs: tuple[float, ...] = (1.0, 2.0, 5.0)) -> None:
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _step_hist(ax: Axes, values: np.ndarray, bins: np.ndarray, color: Any, label: str,
               clip: bool = False) -> None:
    if clip:
        values = np.clip(values, bins[0], bins[-1])
    edges = bins.tolist()
    ax.hist(values, bins=edges, histtype="stepfilled", color=color, alpha=0.18)
    ax.hist(values, bins=edges, histtype="step", color=color, linewidth=1.6, label=label)


def _run_handles(runs: Sequence[Run], colors: Sequence[Any],
                 extra: Sequence[str] | None = None) -> tuple[list[Line2D], list[str]]:
    handles = [Line2D([], [], color=c, linewidth=2.5) for c in colors]
    labels = [r.label + (f"  ({e})" if extra and e else "") for r, e in
              zip(runs, extra or [""] * len(runs), strict=True)]
    return handles, labels


def _fig_legend(fig: Figure, handles: Sequence[Any], labels: Sequence[str], *,
                where: str = "upper", title: str | None = None) -> None:
    """One legend for the whole figure, outside the axes (``where``: 'upper' or 'lower')."""
    longest = max((len(s) for s in labels), default=0)
    ncols = 1 if longest > 60 else 2 if longest > 32 else min(len(labels), 4)
    fig.legend(handles, labels, loc=f"outside {where} center",  # type: ignore[call-overload]
               ncols=ncols, frameon=False, fontsize=9, title=title, title_fontsize=9)


def resolve_eps(runs: Sequence[Run], eps: float | None = None) -> float | None:
    """The attack ε to mark: ``eps`` if given, else the largest of the runs' main attack ε
    (:func:`~epsl.analysis.metrics.main_eps`), else the largest ε of the diagnostics
    summaries."""
    if eps is not None:
        return float(eps)
    values = [v for r in runs if r.attack is not None
              for v in [main_eps(r.attack, r.attack_summary)] if v is not None]
    if not values:
        for r in runs:
            listed = r.summary.get("eps")
            values += [float(v) for v in (listed if isinstance(listed, list) else
                                          [listed] if listed is not None else [])]
    return max(values) if values else None


# --------------------------------------------------------------------------- figures 1/3/6/8


def fig_eps_l_panels(runs: Sequence[Run], *, eps: float | None = None,
                     title: str | None = None) -> Figure:
    """Figures 1/6 layout: the two factors of Eq. 4 and their ratio, overlaid per run.

    Top-left the numerator (logit gap z_y − z_ȳ, log-count axis: the paper chopped it at 30k),
    bottom-left the denominator (gradient gap ‖∇ₓz_y − ∇ₓz_ȳ‖₁ on a log axis), top-right ε_L
    with the attack ε as a vertical line, bottom-right cos(∇ₓz_y, ∇ₓz_ȳ). Columns read from
    each run's diagnostics: ``logit_gap, grad_gap_l1, eps_l, grad_cosine`` at the rival class.
    """
    runs = _diag_runs(runs)
    colors = palette(len(runs))
    fig = _figure(10, 7.4)
    axes = _axes(fig, 2, 2)
    data = {c: [_values(r, c) for r in runs]
            for c in ("logit_gap", "grad_gap_l1", "eps_l", "grad_cosine")}

    bins, _ = _lin_bins(data["logit_gap"])
    for values, color, run in zip(data["logit_gap"], colors, runs, strict=True):
        _step_hist(axes[0, 0], values, bins, color, run.label)
    axes[0, 0].set_yscale("log")
    axes[0, 0].set(xlabel="logit gap  $z_y - z_{\\bar y}$  (logit units)",
                   ylabel="examples (log scale)", title="Numerator of Eq. 4: logit gap")

    bins = _log_bins(data["grad_gap_l1"])
    for values, color, run in zip(data["grad_gap_l1"], colors, runs, strict=True):
        _step_hist(axes[1, 0], values[values > 0], bins, color, run.label)
    _log_x(axes[1, 0])
    axes[1, 0].set(xlabel="gradient gap  $\\|\\nabla_x z_y - \\nabla_x z_{\\bar y}\\|_1$  "
                          "(logit units per pixel, log scale)",
                   ylabel="examples", title="Denominator of Eq. 4: gradient gap")

    bins, clipped = _lin_bins(data["eps_l"], quantiles=(0.005, 0.99))
    if eps is not None and eps > bins[-1]:
        bins = np.linspace(bins[0], eps * 1.1, len(bins))
    for values, color, run in zip(data["eps_l"], colors, runs, strict=True):
        _step_hist(axes[0, 1], values, bins, color, run.label, clip=True)
    xlabel = f"$\\epsilon_L$  ({EPS_UNIT})"
    if clipped:
        xlabel += "\ntails beyond the 0.5% / 99% quantiles are piled into the edge bins"
    axes[0, 1].set(xlabel=xlabel, ylabel="examples", title="$\\epsilon_L$ (Eq. 4)")
    extra: list[str] = [f"clean {_clean_acc(r):.1%}" for r in runs]
    if eps is not None:
        axes[0, 1].axvline(eps, color="black", linestyle="--", linewidth=1.3)
        axes[0, 1].legend([Line2D([], [], color="black", linestyle="--")],
                          [f"attack ε = {eps:g}"], loc="upper right", fontsize=8)
        extra = [f"{e}, Eq. 4 at ε={eps:g}: {predicted_accuracy(r.diagnostics, eps):.1%}"
                 for e, r in zip(extra, runs, strict=True)]
    axes[0, 1].axvline(0, color="grey", linewidth=0.8)

    bins = np.linspace(-1, 1, 41)
    for values, color, run in zip(data["grad_cosine"], colors, runs, strict=True):
        _step_hist(axes[1, 1], values, bins, color, run.label)
    axes[1, 1].set(xlabel="$\\cos(\\nabla_x z_y, \\nabla_x z_{\\bar y})$  (unitless)",
                   ylabel="examples", title="Gradient coherence", xlim=(-1, 1))

    for ax in (axes[1, 1],):
        ax.set_xticks([-1, -0.5, 0, 0.5, 1])
    _fig_legend(fig, *_run_handles(runs, colors, extra), where="lower" if title else "upper")
    if title:
        fig.suptitle(title, fontsize=12, fontweight="bold")
    return fig


def _clean_acc(run: Run) -> float:
    assert run.diagnostics is not None
    return float(run.diagnostics["correct"].astype(bool).mean())


ABLATION_ROLES = ("natural", "noise", "{reg}", "{reg}+noise")
_REGULARISER_NAMES = {"ls": "label smoothing", "lsq": "logit squeezing"}


def ablation_runs(runs: Sequence[Run], regulariser: str) -> list[Run]:
    """The runs of Figure 3 (``regulariser='ls'``) or Figure 8 (``'lsq'``): the first
    natural, noise-only, regulariser-only and regulariser + noise run found, in that order."""
    if regulariser not in _REGULARISER_NAMES:
        raise EpslError(f"regulariser must be one of {', '.join(_REGULARISER_NAMES)}")
    picked = []
    for role in ABLATION_ROLES:
        wanted = role.format(reg=regulariser)
        match = next((r for r in runs if r.diagnostics is not None
                      and defense_kind(r.meta) == wanted), None)
        if match is not None:
            picked.append(match)
    return picked


def fig_noise_ablation(runs: Sequence[Run], *, regulariser: str = "ls",
                       eps: float | None = None) -> Figure:
    """Figures 3 (label smoothing) and 8 (logit squeezing): the Figure 1 panels for natural,
    noise only, regulariser only and regulariser + noise. ``runs`` may hold more runs; the
    four roles are picked by :func:`ablation_runs` from their training metadata."""
    picked = ablation_runs(runs, regulariser)
    kinds = {defense_kind(r.meta) for r in picked}
    if not ({regulariser, f"{regulariser}+noise"} & kinds) or len(picked) < 2:
        raise EpslError(f"a {_REGULARISER_NAMES[regulariser]} ablation needs a "
                        f"{regulariser} or {regulariser}+noise run and one more of natural, "
                        f"noise-only")
    return fig_eps_l_panels(picked, eps=eps, title=f"Gaussian noise and "
                            f"{_REGULARISER_NAMES[regulariser]}")


# --------------------------------------------------------------------------- figure 2


def fig_logits(runs: Sequence[Run]) -> Figure:
    """Figure 2: the distribution of all logit values ``logit_0 .. logit_{K-1}`` per run, and of
    the true-class logit z_y alone (adversarial training and squeezing shrink both)."""
    runs = _diag_runs(runs)
    colors = palette(len(runs))
    fig = _figure(10, 4.4)
    axes = _axes(fig, 1, 2)
    every, true_class = [], []
    for run in runs:
        assert run.diagnostics is not None
        cols = logit_columns(run.diagnostics)
        if not cols:
            raise EpslError(f"{run.path}: diagnostics table has no logit_0.. columns")
        logits = run.diagnostics[cols].to_numpy(dtype=float)
        every.append(logits.ravel())
        labels = run.diagnostics["label"].to_numpy(dtype=int)
        true_class.append(logits[np.arange(len(labels)), labels])
    for ax, arrays, title, xlabel in (
            (axes[0, 0], every, "All logits", "logit value $z_i$ (logit units)"),
            (axes[0, 1], true_class, "True-class logit", "$z_y$ (logit units)")):
        bins, _ = _lin_bins(arrays, bins=60)
        for values, color in zip(arrays, colors, strict=True):
            weights = np.full(values.shape, 1.0 / max(len(values), 1))
            ax.hist(values, bins=bins, weights=weights, histtype="step", color=color,
                    linewidth=1.6)
            ax.hist(values, bins=bins, weights=weights, histtype="stepfilled", color=color,
                    alpha=0.15)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set(xlabel=xlabel, ylabel="share of values", title=title)
    extra = [f"mean |z| = {np.abs(e).mean():.2f}" for e in every]
    _fig_legend(fig, *_run_handles(runs, colors, extra))
    return fig


# --------------------------------------------------------------------------- figures 4/7

_PARAMETERS = {"label_smoothing": ("α", "label smoothing"),
               "logit_squeeze": ("β", "logit squeezing")}


def sweep_runs(runs: Sequence[Run], parameter: str) -> list[Run]:
    """Runs with diagnostics whose defense sets ``parameter`` (> 0), sorted by its value."""
    chosen = [r for r in runs if r.diagnostics is not None
              and float(defense_params(r.meta).get(parameter) or 0) > 0]
    return sorted(chosen, key=lambda r: float(defense_params(r.meta)[parameter]))


def fig_gradient_norms(runs: Sequence[Run], *, parameter: str = "label_smoothing") -> Figure:
    """Figures 4 and 7: ‖∇ₓz_y‖₁ (``grad_l1_label``), ‖∇ₓz_ȳ‖₁ (``grad_l1_rival``) on log axes
    and cos(∇ₓz_y, ∇ₓz_ȳ), for runs sorted by smoothing α or squeezing β (sequential colours,
    darker = larger). Runs without that parameter are left out unless none has it."""
    if parameter not in _PARAMETERS:
        raise EpslError(f"parameter must be one of {', '.join(_PARAMETERS)}")
    symbol, name = _PARAMETERS[parameter]
    chosen = sweep_runs(runs, parameter) or _diag_runs(runs)
    colors = list(sns.color_palette("crest", len(chosen))) if len(chosen) > 1 \
        else palette(1)
    fig = _figure(12, 4.3)
    axes = _axes(fig, 1, 3)
    for ax, column, title, xlabel in (
            (axes[0, 0], "grad_l1_label", "True class", "$\\|\\nabla_x z_y\\|_1$"),
            (axes[0, 1], "grad_l1_rival", "Rival class", "$\\|\\nabla_x z_{\\bar y}\\|_1$")):
        arrays = [_values(r, column) for r in chosen]
        bins = _log_bins(arrays)
        for values, color, run in zip(arrays, colors, chosen, strict=True):
            _step_hist(ax, values[values > 0], bins, color, run.label)
        _log_x(ax)
        ax.set(xlabel=f"{xlabel}  (logit units per pixel, log scale)", ylabel="examples",
               title=f"Gradient magnitude, {title.lower()}")
    bins = np.linspace(-1, 1, 41)
    for run, color in zip(chosen, colors, strict=True):
        _step_hist(axes[0, 2], _values(run, "grad_cosine"), bins, color, run.label)
    axes[0, 2].set(xlabel="$\\cos(\\nabla_x z_y, \\nabla_x z_{\\bar y})$  (unitless)",
                   ylabel="examples", title="Gradient coherence", xlim=(-1, 1))
    axes[0, 2].set_xticks([-1, -0.5, 0, 0.5, 1])
    _fig_legend(fig, *_run_handles(chosen, colors), where="lower")
    fig.suptitle(f"Gradients across {name} {symbol}", fontsize=12, fontweight="bold")
    return fig


# --------------------------------------------------------------------------- figures 5/9


def fig_landscape(run: Run, *, direction: str = "random", images: int = 8) -> Figure:
    """Figures 5 and 9: cross-entropy at x + ε₁·r₁ + ε₂·d₂ for the first ``images`` images,
    as a 2x4 grid of filled contour plots (one colour bar each, the clean image at the cross).
    r₁ is a Rademacher direction; d₂ is another (``direction='random'``, Figure 5) or
    sign(∇ₓ xent) (``'adversarial'``, Figure 9). Reads ``landscape.csv``."""
    if run.landscape is None:
        raise EpslError(f"{run.path}: no landscape table (landscape.csv)")
    table = run.landscape[run.landscape["direction"] == direction]
    if table.empty:
        raise EpslError(f"{run.path}: landscape table has no {direction!r} direction")
    ids = sorted(table["image"].unique())[:images]
    cols = min(4, len(ids))
    rows = math.ceil(len(ids) / cols)
    fig = _figure(3.2 * cols + 0.6, 2.9 * rows + 0.7)
    axes = _axes(fig, rows, cols)
    second = "adversarial sign$(\\nabla_x$xent$)$" if direction == "adversarial" \
        else "random $r_2$"
    for k, ax in enumerate(axes.ravel()):
        if k >= len(ids):
            ax.set_visible(False)
            continue
        image = table[table["image"] == ids[k]]
        grid = image.pivot_table(index="eps2", columns="eps1", values="loss", aggfunc="mean")
        contour = ax.contourf(grid.columns.to_numpy(), grid.index.to_numpy(), grid.to_numpy(),
                              levels=14, cmap="viridis")
        fig.colorbar(contour, ax=ax, shrink=0.9, label="xent loss" if k % cols == cols - 1
                     else None)
        ax.plot([0], [0], marker="+", color="white", markersize=10, markeredgewidth=2)
        first = image.iloc[0]
        ax.set_title(f"image {int(first['index'])}, label {int(first['label'])}", fontsize=9)
        ax.set_xlabel("$\\epsilon_1$ along random $r_1$" if k // cols == rows - 1 else "")
        ax.set_ylabel(f"$\\epsilon_2$ along {second}" if k % cols == 0 else "", fontsize=8)
        ax.grid(False)
    fig.suptitle(f"Cross-entropy landscape, {run.label} ({direction} plane; ε in {EPS_UNIT})",
                 fontsize=11, fontweight="bold")
    return fig


# --------------------------------------------------------------------------- figures 10/11


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
    fig = _figure(8, 4.8)
    ax = _axes(fig, 1, 1)[0, 0]
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
    _fig_legend(fig, handles, labels, where="lower")
    return fig


def fig_logit_activity(runs: Sequence[Run]) -> Figure:
    """Figure 11: per logit (class), the activation magnitude summed over the data set, as
    grouped bars per run."""
    runs = _activation_runs(runs)
    colors = palette(len(runs))
    tables = [_activations(r, "logit").sort_values("unit") for r in runs]
    units = sorted({int(u) for t in tables for u in t["unit"]})
    fig = _figure(min(12.0, max(7.0, 2.5 + 0.12 * len(units) * len(runs))), 5.0)
    ax = _axes(fig, 1, 1)[0, 0]
    width = 0.8 / len(runs)
    for k, (run, table, color) in enumerate(zip(runs, tables, colors, strict=True)):
        positions = table["unit"].to_numpy(dtype=float) - 0.4 + width * (k + 0.5)
        inactive = int((table["active_count"] == 0).sum())
        ax.bar(positions, table["activation_abs_sum"], width=width, color=color,
               label=f"{run.label}" + (f" ({inactive} inactive)" if inactive else ""))
    ax.set_xticks(units)
    ax.set(xlabel="logit (class index)", ylabel="Σ |logit| over the data set (logit units)",
           title="Logit-layer activity")
    _fig_legend(fig, *ax.get_legend_handles_labels(), where="lower")
    return fig


# --------------------------------------------------------------------------- accuracy curves

Style = tuple[str, Any]  # (marker, matplotlib line style)
_ATTACK_STYLE: dict[tuple[str, str], Style] = {
    ("fgsm", "xent"): ("o", "--"), ("fgsm", "cw"): ("s", "--"),
    ("pgd", "xent"): ("^", "-."), ("pgd", "cw"): ("v", "-.")}


def _attack_runs(runs: Sequence[Run]) -> list[Run]:
    chosen = [r for r in runs if r.attack is not None and len(r.attack)]
    if not chosen:
        raise EpslError("no run has an attack table (attack.csv)")
    return chosen


def _style(attack: str, loss: str, transfer: bool) -> Style:
    if transfer:
        return "X", ":"
    return _ATTACK_STYLE.get((attack, loss), ("D", (0, (1, 1))))


def _setting_name(attack: str, loss: str, transfer: bool, steps: int | None = None) -> str:
    name = attack.upper() + (f"-{steps}" if steps and attack != "fgsm" else "")
    return f"{'transfer ' if transfer else ''}{name} ({loss})"


def _eps_axis_end(tables: Iterable[pd.DataFrame], diagnostics: Iterable[pd.DataFrame | None],
                  eps: float | None, eps_star: Iterable[np.ndarray] = ()) -> float:
    """Where the ε axis can end: the first ε at which every empirical curve has reached 0 and
    nearly every ε_L and finite ε* (99.5 %), so that a sanity check at unbounded ε (1.0) does
    not squash the curves."""
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
    return min(max(ends), max(largest[1:], default=1.0))


EPS_STAR_COLOR = "#5b2c83"  # dark purple: apart from the attack palette and Eq. 4's black
EPS_STAR_LABEL = "ε* (min-norm ensemble): share with ε* > ε"


def _eps_star(run: Run) -> np.ndarray:
    assert run.minimal is not None
    return run.minimal["eps_star"].to_numpy(dtype=float)


def eps_star_curve(minimal: pd.DataFrame, end: float) -> pd.DataFrame:
    """The empirical accuracy ``acc(ε) = share(ε* > ε)`` of a minimal (ε*) table on [0, end],
    at 0, at every finite ε* up to ``end`` and at ``end`` (it changes only at the ε*, so a
    step line through these points, continuous from the right, is the whole curve); the frame
    of :func:`~epsl.analysis.calibration.accuracy_curves`, ``empirical`` the column to draw."""
    star = minimal["eps_star"].to_numpy(dtype=float)
    inside = star[np.isfinite(star) & (star > 0) & (star <= end)]
    grid = np.unique(np.concatenate([[0.0], inside, [end]]))
    return accuracy_curves(minimal["eps_l"], star, grid)


def fig_accuracy_vs_eps(runs: Sequence[Run], *, eps: float | None = None) -> Figure:
    """Table 1 as curves, one panel per model: empirical accuracy under each attack (markers;
    from ``attack.csv``, the strongest steps/restarts per setting) next to the Eq. 4 prediction,
    the fraction of examples with ε < ε_L (thick black line, from ``diagnostics.csv``, else
    from ``minimal.csv``). A run with a minimal table (``epsl calibrate``) also gets the
    empirical curve of its ε*, ``acc(ε) = share(ε* > ε)`` (purple step line): the accuracy
    the strongest attack of the ensemble leaves at every ε at once."""
    chosen = [r for r in runs if r.attack is not None or r.diagnostics is not None
              or r.minimal is not None]
    if not chosen:
        raise EpslError("no run has an attack, diagnostics or minimal (ε*) table")
    tables = {id(r): with_intervals(strongest_setting(attack_accuracies(r.attack)))
              for r in chosen if r.attack is not None}
    settings = sorted({(a, loss, bool(t)) for table in tables.values()
                       for a, loss, t in zip(table["attack"], table["loss_name"],
                                             table["transfer"], strict=True)},
                      key=lambda s: (s[2], s[0], s[1]))
    colors = dict(zip(settings, palette(len(settings)), strict=True))
    cols = min(4, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = _figure(3.4 * cols + 0.8, 3.0 * rows + 1.2)
    axes = _axes(fig, rows, cols, sharex=True, sharey=True)
    with_star = [r for r in chosen if r.minimal is not None and len(r.minimal)]
    eps_max = _eps_axis_end(tables.values(), [r.diagnostics for r in chosen], eps,
                            [_eps_star(r) for r in with_star])
    grid = np.linspace(0, eps_max * 1.1, 200)
    names: dict[tuple[str, str, bool], str] = {}
    for k, ax in enumerate(axes.ravel()):
        if k >= len(chosen):
            ax.set_visible(False)
            continue
        run = chosen[k]
        predictor = run.diagnostics if run.diagnostics is not None else run.minimal
        if predictor is not None and len(predictor):
            predicted = predicted_accuracy(predictor, grid)
            n = len(predictor)
            band = np.array([clopper_pearson(round(p * n), n) for p in predicted])
            ax.fill_between(grid, band[:, 0], band[:, 1], color="black", alpha=0.12,
                            linewidth=0, zorder=2)
            ax.plot(grid, predicted, color="black", linewidth=2.4, zorder=3)
        if run.minimal is not None and len(run.minimal):
            curve = eps_star_curve(run.minimal, float(grid[-1]))
            ax.plot(curve["eps"], curve["empirical"], color=EPS_STAR_COLOR, linewidth=2.0,
                    drawstyle="steps-post", zorder=3.5, gid="eps_star")
        for (attack, loss, transfer), group in tables.get(id(run), pd.DataFrame(
                columns=["attack", "loss_name", "transfer"])).groupby(
                ["attack", "loss_name", "transfer"]):
            key = (str(attack), str(loss), bool(transfer))
            group = group.sort_values("eps")
            marker, line = _style(*key)
            names.setdefault(key, _setting_name(*key, int(group["steps"].max())))
            ax.errorbar(group["eps"], group["accuracy"], yerr=_yerr(group), color=colors[key],
                        marker=marker, linestyle=line, linewidth=1.3, markersize=5,
                        elinewidth=0.8, capsize=2)
        if eps is not None:
            ax.axvline(eps, color="grey", linestyle="--", linewidth=1)
        ax.set_title(run.label, fontsize=10)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_xlabel(f"ε ({EPS_UNIT})" if k // cols == rows - 1 or k + cols >= len(chosen)
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
        marker, line = _style(*key)
        handles.append(Line2D([], [], color=colors[key], marker=marker, linestyle=line))
        labels.append(names.get(key, _setting_name(*key)))
    _fig_legend(fig, handles, labels, where="lower")
    fig.suptitle(f"Accuracy against ε: {'attacks, ε*' if with_star else 'empirical attacks'} "
                 "and the Eq. 4 prediction (bars and band: 95% Clopper–Pearson intervals)",
                 fontsize=11, fontweight="bold")
    return fig


# --------------------------------------------------------------------------- ε_L against ε*

_CONSERVATIVE_COLOR, _OPTIMISTIC_COLOR = (sns.color_palette("colorblind")[i] for i in (0, 3))


def _minimal_runs(runs: Sequence[Run]) -> list[Run]:
    chosen = [r for r in runs if r.minimal is not None and len(r.minimal)]
    if not chosen:
        raise EpslError("no run has a minimal table (minimal.csv, from epsl calibrate)")
    return chosen


def minimal_card(run: Run) -> dict[str, Any]:
    """The report card of Eq. 4 of a run with a minimal table: from its record
    (``minimal.json``), recomputed with :func:`~epsl.analysis.calibration.report_card` when
    the record lacks it."""
    card = run.minimal_summary.get("report_card")
    if isinstance(card, dict) and {"spearman", "optimistic_share"} <= card.keys():
        return card
    assert run.minimal is not None
    return report_card(run.minimal["eps_l"], run.minimal["eps_star"])


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


def fig_eps_l_vs_eps_star(runs: Sequence[Run]) -> Figure:
    """Eq. 4 example by example: ε_L (y) against ε* (x), the smallest perturbation a
    minimum-norm attack ensemble found (``minimal.csv`` of ``epsl calibrate``), one panel per
    run with a minimal table (up to three columns, shared log-log axes).

    Points above the dashed line ε_L = ε* (``ratio > 1``, orange triangles) are examples where
    Eq. 4 is *optimistic*: it promises more robustness than the network has, a proven
    overstatement since ε* is an upper bound of the true minimal perturbation. Each panel's
    title gives the run, Spearman's ρ(ε_L, ε*) and the optimistic share with their 95%
    intervals (from the record's report card). Only examples with positive, finite ε_L and ε*
    are drawn (misclassified examples have ε* = 0); examples no attack flipped (ε* = ∞) are
    counted in the panel.
    """
    chosen = _minimal_runs(runs)
    cols = min(3, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = _figure(3.5 * cols + 0.6, 3.8 * rows + 0.9)  # near-square panels: ε_L = ε* at 45°
    axes = _axes(fig, rows, cols, sharex=True, sharey=True)
    drawn: list[np.ndarray] = []
    for k, ax in enumerate(axes.ravel()):
        if k >= len(chosen):
            ax.set_visible(False)
            continue
        run = chosen[k]
        assert run.minimal is not None
        eps_l = run.minimal["eps_l"].to_numpy(dtype=float)
        star = _eps_star(run)
        shown = np.isfinite(eps_l) & np.isfinite(star) & (eps_l > 0) & (star > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (run.minimal["ratio"].to_numpy(dtype=float) if "ratio" in run.minimal
                     else eps_l / star)
        optimistic = shown & (ratio > 1)
        for picked, color, marker, size, gid in (
                (shown & ~optimistic, _CONSERVATIVE_COLOR, "o", 12, "conservative"),
                (optimistic, _OPTIMISTIC_COLOR, "^", 18, "optimistic")):
            ax.scatter(star[picked], eps_l[picked], s=size, color=color, marker=marker,
                       alpha=0.6, linewidths=0, zorder=3, gid=gid)
        drawn += [star[shown], eps_l[shown]]
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
        ax.set_title(f"{run.label}\n{_card_title(minimal_card(run))}", fontsize=9)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"$\\epsilon^*$, min-norm ensemble ({EPS_UNIT}, log)"
                      if k // cols == rows - 1 or k + cols >= len(chosen) else "", fontsize=9)
        ax.set_ylabel("$\\epsilon_L$, Eq. 4 (log)" if k % cols == 0 else "", fontsize=9)
    every = np.concatenate(drawn) if drawn else np.array([])
    lo, hi = (float(every.min()), float(every.max())) if every.size else (1e-3, 1.0)
    lo, hi = lo / 1.3, hi * 1.3
    subs = (1.0,) if math.log10(hi / lo) > 2.5 else (1.0, 2.0, 5.0)  # no crowded labels
    for ax in axes.ravel()[:len(chosen)]:
        ax.plot([lo, hi], [lo, hi], color="black", linestyle="--", linewidth=1.1, zorder=2,
                gid="identity")
        _plain_log_ticks(ax.xaxis, subs)
        _plain_log_ticks(ax.yaxis, subs)
    axes[0, 0].set(xlim=(lo, hi), ylim=(lo, hi))
    handles = [Line2D([], [], color=_CONSERVATIVE_COLOR, marker="o", linestyle=""),
               Line2D([], [], color=_OPTIMISTIC_COLOR, marker="^", linestyle=""),
               Line2D([], [], color="black", linestyle="--")]
    labels = ["ε_L ≤ ε*: Eq. 4 conservative", "ε_L > ε*: Eq. 4 optimistic", "ε_L = ε*"]
    fig.legend(handles, labels, loc="outside lower center",  # type: ignore[call-overload]
               ncols=3 if cols > 1 else 1, frameon=False, fontsize=9)
    fig.suptitle("ε_L (Eq. 4) against ε*, per example", fontsize=11, fontweight="bold")
    return fig


def _yerr(group: pd.DataFrame) -> np.ndarray:
    """Error bar lengths below and above each accuracy, from its ``lo``/``hi`` bounds."""
    return np.vstack([group["accuracy"] - group["lo"], group["hi"] - group["accuracy"]])


def _sweep(runs: Sequence[Run], key: str, eps: float | None) -> list[tuple[Run, pd.DataFrame]]:
    """White-box PGD accuracies at one ε, varying ``key`` ('steps' or 'restarts') with the other
    at its most common value for that ε."""
    other = "restarts" if key == "steps" else "steps"
    found = []
    for run in _attack_runs(runs):
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
    colors = palette(len(found))
    fig = _figure(8, 4.8)
    ax = _axes(fig, 1, 1)[0, 0]
    losses: set[str] = set()
    for (_run, table), color in zip(found, colors, strict=True):
        for loss, group in table.groupby("loss_name"):
            if group[key].nunique() < 2:
                continue  # a single point is no curve
            group = group.sort_values(key)
            marker, line = _style("pgd", str(loss), False)
            losses.add(str(loss))
            ax.errorbar(group[key], group["accuracy"], yerr=_yerr(group), color=color,
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
                 f"(ε = {', '.join(f'{e:g}' for e in eps_used)}, "
                 f"{other} = {', '.join(map(str, fixed))})")
    handles, labels = _run_handles([r for r, _ in found], colors)
    for loss in sorted(losses):
        marker, line = _style("pgd", loss, False)
        handles.append(Line2D([], [], color="dimgray", marker=marker, linestyle=line))
        labels.append(f"loss: {loss}")
    _fig_legend(fig, handles, labels, where="lower")
    return fig


def fig_accuracy_vs_steps(runs: Sequence[Run], *, eps: float | None = None) -> Figure:
    """Table 11 as a curve: white-box PGD accuracy against the number of steps at ε."""
    return _fig_sweep(runs, "steps", eps)


def fig_accuracy_vs_restarts(runs: Sequence[Run], *, eps: float | None = None) -> Figure:
    """Table 10 as a curve: white-box PGD accuracy against the number of random restarts."""
    return _fig_sweep(runs, "restarts", eps)


# --------------------------------------------------------------------------- saving


def save_figure(fig: Figure, out_dir: Path | str, name: str, *, dpi: int = DPI,
                formats: Sequence[str] = ("png", "svg")) -> dict[str, Path]:
    """Write ``fig`` as ``out_dir/name.png`` and ``.svg``, each atomically; return the paths."""
    out_dir = Path(out_dir)
    paths = {}
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata)
        paths[fmt] = path
    return paths


@dataclass(frozen=True)
class FigureSpec:
    """One renderable figure: file stem, caption and a builder that needs only the runs."""

    name: str
    caption: str
    build: Callable[[], Figure]
    runs: tuple[str, ...]


CAPTIONS = {
    "fig1_eps_l_panels": "Figures 1/6: logit gap (numerator of Eq. 4), gradient gap "
                         "(denominator), ε_L with the attack ε, and gradient cosine, per model.",
    "fig2_logits": "Figure 2: distribution of logit values and of the true-class logit.",
    "fig3_ls_noise_ablation": "Figure 3: natural, noise only, label smoothing only and label "
                              "smoothing + noise.",
    "fig8_lsq_noise_ablation": "Figure 8: natural, noise only, logit squeezing only and logit "
                               "squeezing + noise.",
    "fig4_ls_gradients": "Figures 4/7: gradient magnitudes and cosine across smoothing α.",
    "fig4_lsq_gradients": "Figures 4/7: gradient magnitudes and cosine across squeezing β.",
    "fig5_landscape": "Figure 5: cross-entropy over two random directions, first eight images.",
    "fig9_landscape": "Figure 9: cross-entropy over a random and the adversarial direction, "
                      "first eight images.",
    "fig10_penultimate_activity": "Figure 10: per-neuron activation magnitude in the "
                                  "penultimate layer (sorted) and the number of inactive "
                                  "neurons.",
    "fig11_logit_activity": "Figure 11: activation magnitude per logit.",
    "accuracy_vs_eps": "Accuracy against ε: empirical attacks (and, where a run has a minimal "
                       "table, the share with ε* > ε) next to the Eq. 4 prediction.",
    "eps_l_vs_eps_star": "ε_L (Eq. 4) against ε*, the smallest perturbation a minimum-norm "
                         "attack ensemble found, per example and model (log-log); points "
                         "above the line ε_L = ε* are where Eq. 4 is optimistic.",
    "accuracy_vs_steps": "White-box PGD accuracy against the number of steps (Table 11).",
    "accuracy_vs_restarts": "White-box PGD accuracy against the number of restarts (Table 10).",
}


def _slug(text: str) -> str:
    keep = "".join(c if c.isascii() and c.isalnum() else "-" for c in text.lower())
    return "-".join(p for p in keep.split("-") if p)[:40] or "run"


def figure_specs(runs: Sequence[Run], *, eps: float | None = None) -> list[FigureSpec]:
    """Every figure the runs' tables allow, in paper order (nothing is rendered yet)."""
    eps = resolve_eps(runs, eps)
    specs: list[FigureSpec] = []

    def add(name: str, build: Callable[[], Figure], used: Sequence[Run],
            caption: str | None = None) -> None:
        specs.append(FigureSpec(name, caption or CAPTIONS[name], build,
                                tuple(r.label for r in used)))

    diag = [r for r in runs if r.diagnostics is not None]
    if diag:
        add("fig1_eps_l_panels", lambda: fig_eps_l_panels(diag, eps=eps), diag)
        add("fig2_logits", lambda: fig_logits(diag), diag)
        for reg, name in (("ls", "fig3_ls_noise_ablation"), ("lsq", "fig8_lsq_noise_ablation")):
            picked = ablation_runs(diag, reg)
            kinds = {defense_kind(r.meta) for r in picked}
            if len(picked) >= 2 and {reg, f"{reg}+noise"} & kinds:
                add(name, partial(fig_noise_ablation, diag, regulariser=reg, eps=eps), picked)
        for parameter, name in (("label_smoothing", "fig4_ls_gradients"),
                                ("logit_squeeze", "fig4_lsq_gradients")):
            swept = sweep_runs(diag, parameter)
            if swept:
                add(name, partial(fig_gradient_norms, diag, parameter=parameter), swept)
    for run in runs:
        if run.landscape is None:
            continue
        suffix = "" if sum(r.landscape is not None for r in runs) == 1 else f"_{_slug(run.name)}"
        for direction, stem in (("random", "fig5_landscape"), ("adversarial", "fig9_landscape")):
            if (run.landscape["direction"] == direction).any():
                add(stem + suffix, partial(fig_landscape, run, direction=direction), [run],
                    CAPTIONS[stem] + f" Model: {run.label}.")
    acts = [r for r in runs if r.activations is not None]
    if acts:
        if any((r.activations["layer"] == "penultimate").any() for r in acts):  # type: ignore[index]
            add("fig10_penultimate_activity", lambda: fig_penultimate_activity(acts), acts)
        if any((r.activations["layer"] == "logit").any() for r in acts):  # type: ignore[index]
            add("fig11_logit_activity", lambda: fig_logit_activity(acts), acts)
    if any(r.attack is not None or r.minimal is not None for r in runs):
        used = [r for r in runs if r.attack is not None or r.diagnostics is not None
                or r.minimal is not None]
        add("accuracy_vs_eps", lambda: fig_accuracy_vs_eps(used, eps=eps), used)
    calibrated = [r for r in runs if r.minimal is not None and len(r.minimal)]
    if calibrated:
        add("eps_l_vs_eps_star", lambda: fig_eps_l_vs_eps_star(calibrated), calibrated)
    if any(r.attack is not None for r in runs):
        for key, stem in (("steps", "accuracy_vs_steps"), ("restarts", "accuracy_vs_restarts")):
            found = _sweep(runs, key, eps)
            if found:
                add(stem, partial(_fig_sweep, runs, key, eps), [r for r, _ in found])
    return specs


def render_all(runs: Sequence[Run], out_dir: Path | str, *, eps: float | None = None
               ) -> list[dict[str, Any]]:
    """Render and save every figure of :func:`figure_specs`; return index entries
    ``{name, caption, runs, png, svg}`` (paths relative to ``out_dir``)."""
    out_dir = Path(out_dir)
    index = []
    for spec in figure_specs(runs, eps=eps):
        fig = spec.build()
        paths = save_figure(fig, out_dir, spec.name)
        fig.clear()
        index.append({"name": spec.name, "caption": spec.caption, "runs": list(spec.runs),
                      **{k: str(p.relative_to(out_dir)) for k, p in paths.items()}})
    return index
