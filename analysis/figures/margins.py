"""Eq. 4 example by example: histograms of its two factors (logit gap and gradient gap), of
ε_L and of the gradient cosine (Figures 1/6, and 3/8 for the noise ablations), of the logits
(Figure 2) and of the gradient magnitudes across smoothing α or squeezing β (Figures 4/7).
All read the runs' ``diagnostics.csv``."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from epsl.errors import EpslError
from epsl.norms import Norm

from ..folders import Run, defense_kind, defense_params, logit_columns
from ..metrics import predicted_accuracy
from .base import (
    axes_grid,
    column_values,
    diagnosed_runs,
    eps_axis,
    eps_symbol,
    figure_legend,
    grad_gap_symbol,
    lin_bins,
    log_bins,
    log_x,
    new_figure,
    palette,
    run_handles,
    runs_norm,
    step_hist,
)
from .registry import Plan, figure


def fig_eps_l_panels(runs: Sequence[Run], *, eps: float | None = None,
                     title: str | None = None) -> Figure:
    """Figures 1/6 layout: the two factors of Eq. 4 and their ratio, overlaid per run.

    Top-left the numerator (logit gap z_y − z_ȳ, log-count axis: the paper chopped it at 30k),
    bottom-left the denominator (gradient gap ‖∇ₓz_y − ∇ₓz_ȳ‖_q in the dual norm q of the
    runs' threat model, ‖·‖₁ for ℓ∞, on a log axis), top-right ε_L with the attack ε as a
    vertical line, bottom-right cos(∇ₓz_y, ∇ₓz_ȳ). Columns read from each run's diagnostics:
    ``logit_gap, grad_gap_<q>, eps_l, grad_cosine`` at the rival class (``grad_gap_l1`` for
    ℓ∞, ``grad_gap_l2`` for ℓ2, ``grad_gap_linf`` for ℓ1). Runs of two norms are refused.
    """
    runs = diagnosed_runs(runs)
    norm = runs_norm(runs)
    gap = runs[0].grad_gap_column
    colors = palette(len(runs))
    fig = new_figure(10, 7.4)
    axes = axes_grid(fig, 2, 2)
    data = {c: [column_values(r, c) for r in runs]
            for c in ("logit_gap", gap, "eps_l", "grad_cosine")}

    bins, _ = lin_bins(data["logit_gap"])
    for values, color, run in zip(data["logit_gap"], colors, runs, strict=True):
        step_hist(axes[0, 0], values, bins, color, run.label)
    axes[0, 0].set_yscale("log")
    axes[0, 0].set(xlabel="logit gap  $z_y - z_{\\bar y}$  (logit units)",
                   ylabel="examples (log scale)", title="Numerator of Eq. 4: logit gap")

    bins = log_bins(data[gap])
    for values, color, run in zip(data[gap], colors, runs, strict=True):
        step_hist(axes[1, 0], values[values > 0], bins, color, run.label)
    log_x(axes[1, 0])
    axes[1, 0].set(xlabel=f"gradient gap  {grad_gap_symbol(norm)}  "
                          "(logit units per pixel, log scale)",
                   ylabel="examples", title=eps_symbol("Denominator of Eq. 4", norm)
                   + ": gradient gap")

    bins, clipped = lin_bins(data["eps_l"], quantiles=(0.005, 0.99))
    if eps is not None and eps > bins[-1]:
        bins = np.linspace(bins[0], eps * 1.1, len(bins))
    for values, color, run in zip(data["eps_l"], colors, runs, strict=True):
        step_hist(axes[0, 1], values, bins, color, run.label, clip=True)
    xlabel = eps_axis("$\\epsilon_L$", norm)
    if clipped:
        xlabel += "\ntails beyond the 0.5% / 99% quantiles are piled into the edge bins"
    axes[0, 1].set(xlabel=xlabel, ylabel="examples",
                   title="$\\epsilon_L$ (Eq. 4)" if norm is Norm.LINF
                   else f"$\\epsilon_L$ (Eq. 4, {norm.label})")
    extra: list[str] = [f"clean {_clean_acc(r):.1%}" for r in runs]
    if eps is not None:
        axes[0, 1].axvline(eps, color="black", linestyle="--", linewidth=1.3)
        axes[0, 1].legend([Line2D([], [], color="black", linestyle="--")],
                          [f"attack {eps_symbol('ε', norm)} = {eps:g}"], loc="upper right",
                          fontsize=8)
        extra = [f"{e}, Eq. 4 at ε={eps:g}: {predicted_accuracy(r.diagnostics, eps):.1%}"
                 for e, r in zip(extra, runs, strict=True)]
    axes[0, 1].axvline(0, color="grey", linewidth=0.8)

    bins = np.linspace(-1, 1, 41)
    for values, color, run in zip(data["grad_cosine"], colors, runs, strict=True):
        step_hist(axes[1, 1], values, bins, color, run.label)
    axes[1, 1].set(xlabel="$\\cos(\\nabla_x z_y, \\nabla_x z_{\\bar y})$  (unitless)",
                   ylabel="examples", title="Gradient coherence", xlim=(-1, 1))

    for ax in (axes[1, 1],):
        ax.set_xticks([-1, -0.5, 0, 0.5, 1])
    figure_legend(fig, *run_handles(runs, colors, extra), where="lower" if title else "upper")
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


def _is_ablation(picked: Sequence[Run], regulariser: str) -> bool:
    """Whether the picked runs make an ablation: two or more, one of them regularised."""
    kinds = {defense_kind(r.meta) for r in picked}
    return len(picked) >= 2 and bool({regulariser, f"{regulariser}+noise"} & kinds)


def fig_noise_ablation(runs: Sequence[Run], *, regulariser: str = "ls",
                       eps: float | None = None) -> Figure:
    """Figures 3 (label smoothing) and 8 (logit squeezing): the Figure 1 panels for natural,
    noise only, regulariser only and regulariser + noise. ``runs`` may hold more runs; the
    four roles are picked by :func:`ablation_runs` from their training metadata."""
    picked = ablation_runs(runs, regulariser)
    if not _is_ablation(picked, regulariser):
        raise EpslError(f"a {_REGULARISER_NAMES[regulariser]} ablation needs a "
                        f"{regulariser} or {regulariser}+noise run and one more of natural, "
                        f"noise-only")
    return fig_eps_l_panels(picked, eps=eps, title=f"Gaussian noise and "
                            f"{_REGULARISER_NAMES[regulariser]}")


def fig_logits(runs: Sequence[Run]) -> Figure:
    """Figure 2: the distribution of all logit values per run (``logit_top_1 ..`` of the
    table: every logit at 10 classes, the 10 highest at more), and of the true-class logit
    z_y alone (adversarial training and squeezing shrink both)."""
    runs = diagnosed_runs(runs)
    colors = palette(len(runs))
    fig = new_figure(10, 4.4)
    axes = axes_grid(fig, 1, 2)
    every, true_class = [], []
    for run in runs:
        assert run.diagnostics is not None
        cols = logit_columns(run.diagnostics)
        if not cols:
            raise EpslError(f"{run.path}: diagnostics table has no logit_top_.. columns")
        logits = run.diagnostics[cols].to_numpy(dtype=float)
        every.append(logits.ravel())
        if "logit_label" in run.diagnostics:
            true_class.append(run.diagnostics["logit_label"].to_numpy(dtype=float))
        else:  # a table older than logit_label: logit_0 .. logit_{K-1} in class order
            labels = run.diagnostics["label"].to_numpy(dtype=int)
            true_class.append(logits[np.arange(len(labels)), labels])
    for ax, arrays, title, xlabel in (
            (axes[0, 0], every, "All logits" if all(r.num_classes <= len(cols) for r in runs)
             else f"Top {len(cols)} logits per example", "logit value $z_i$ (logit units)"),
            (axes[0, 1], true_class, "True-class logit", "$z_y$ (logit units)")):
        bins, _ = lin_bins(arrays, bins=60)
        for values, color in zip(arrays, colors, strict=True):
            weights = np.full(values.shape, 1.0 / max(len(values), 1))
            ax.hist(values, bins=bins, weights=weights, histtype="step", color=color,
                    linewidth=1.6)
            ax.hist(values, bins=bins, weights=weights, histtype="stepfilled", color=color,
                    alpha=0.15)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set(xlabel=xlabel, ylabel="share of values", title=title)
    extra = [f"mean |z| = {np.abs(e).mean():.2f}" for e in every]
    figure_legend(fig, *run_handles(runs, colors, extra))
    return fig



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
    darker = larger). Runs without that parameter are left out unless none has it. These are
    ℓ1 norms and a cosine in every threat model, so the figure names none."""
    if parameter not in _PARAMETERS:
        raise EpslError(f"parameter must be one of {', '.join(_PARAMETERS)}")
    symbol, name = _PARAMETERS[parameter]
    chosen = sweep_runs(runs, parameter) or diagnosed_runs(runs)
    colors = list(sns.color_palette("crest", len(chosen))) if len(chosen) > 1\
        else palette(1)
    fig = new_figure(12, 4.3)
    axes = axes_grid(fig, 1, 3)
    for ax, column, title, xlabel in (
            (axes[0, 0], "grad_l1_label", "True class", "$\\|\\nabla_x z_y\\|_1$"),
            (axes[0, 1], "grad_l1_rival", "Rival class", "$\\|\\nabla_x z_{\\bar y}\\|_1$")):
        arrays = [column_values(r, column) for r in chosen]
        bins = log_bins(arrays)
        for values, color, run in zip(arrays, colors, chosen, strict=True):
            step_hist(ax, values[values > 0], bins, color, run.label)
        log_x(ax)
        ax.set(xlabel=f"{xlabel}  (logit units per pixel, log scale)", ylabel="examples",
               title=f"Gradient magnitude, {title.lower()}")
    bins = np.linspace(-1, 1, 41)
    for run, color in zip(chosen, colors, strict=True):
        step_hist(axes[0, 2], column_values(run, "grad_cosine"), bins, color, run.label)
    axes[0, 2].set(xlabel="$\\cos(\\nabla_x z_y, \\nabla_x z_{\\bar y})$  (unitless)",
                   ylabel="examples", title="Gradient coherence", xlim=(-1, 1))
    axes[0, 2].set_xticks([-1, -0.5, 0, 0.5, 1])
    figure_legend(fig, *run_handles(chosen, colors), where="lower")
    fig.suptitle(f"Gradients across {name} {symbol}", fontsize=12, fontweight="bold")
    return fig


# --------------------------------------------------------------------------- registered


@figure("fig1_eps_l_panels", "Figures 1/6: logit gap (numerator of Eq. 4), gradient gap "
        "(denominator), ε_L with the attack ε, and gradient cosine, per model.",
        needs=("diagnostics",))
def _plan_eps_l_panels(runs: list[Run], eps: float | None) -> Plan:
    return Plan(lambda: fig_eps_l_panels(runs, eps=eps), runs)


@figure("fig2_logits", "Figure 2: distribution of logit values and of the true-class logit.",
        needs=("diagnostics",), norm_free=True)
def _plan_logits(runs: list[Run], eps: float | None) -> Plan:
    return Plan(lambda: fig_logits(runs), runs)


def _plan_ablation(runs: list[Run], eps: float | None, regulariser: str) -> Plan | None:
    picked = ablation_runs(runs, regulariser)
    if not _is_ablation(picked, regulariser):
        return None
    return Plan(partial(fig_noise_ablation, runs, regulariser=regulariser, eps=eps), picked)


@figure("fig3_ls_noise_ablation", "Figure 3: natural, noise only, label smoothing only and "
        "label smoothing + noise.", needs=("diagnostics",))
def _plan_ls_ablation(runs: list[Run], eps: float | None) -> Plan | None:
    return _plan_ablation(runs, eps, "ls")


@figure("fig8_lsq_noise_ablation", "Figure 8: natural, noise only, logit squeezing only and "
        "logit squeezing + noise.", needs=("diagnostics",))
def _plan_lsq_ablation(runs: list[Run], eps: float | None) -> Plan | None:
    return _plan_ablation(runs, eps, "lsq")


def _plan_gradients(runs: list[Run], parameter: str) -> Plan | None:
    swept = sweep_runs(runs, parameter)
    return Plan(partial(fig_gradient_norms, runs, parameter=parameter), swept) if swept else None


@figure("fig4_ls_gradients", "Figures 4/7: gradient magnitudes and cosine across smoothing α.",
        needs=("diagnostics",), norm_free=True)
def _plan_ls_gradients(runs: list[Run], eps: float | None) -> Plan | None:
    return _plan_gradients(runs, "label_smoothing")


@figure("fig4_lsq_gradients", "Figures 4/7: gradient magnitudes and cosine across squeezing β.",
        needs=("diagnostics",), norm_free=True)
def _plan_lsq_gradients(runs: list[Run], eps: float | None) -> Plan | None:
    return _plan_gradients(runs, "logit_squeeze")


__all__ = ["ABLATION_ROLES", "ablation_runs", "fig_eps_l_panels", "fig_gradient_norms",
           "fig_logits", "fig_noise_ablation", "sweep_runs"]
