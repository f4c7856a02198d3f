"""The paper's figures, rendered from saved per-example tables (never from a model).

Every ``fig_*`` function takes :class:`~epsl.analysis.folders.Run` objects and returns a
``matplotlib.figure.Figure`` built without pyplot (so no global state, Agg rendering);
:func:`save_figure` writes it as PNG and SVG atomically and :func:`render_all` renders every
figure the runs' tables allow. ε is always in pixel units on the [0,1] scale.

The modules are grouped by what the figures show; each registers its figures with
``@figure(name, caption, needs=...)`` in :data:`FIGURES` (:mod:`.registry`), which
:func:`figure_specs` walks in registration order, the paper order of the imports below.

=========================  ================  ==================================================
function                   module            paper
=========================  ================  ==================================================
fig_eps_l_panels           ``margins``       Figures 1 and 6: logit gap, gradient gap, ε_L,
                                             gradient cosine
fig_logits                 ``margins``       Figure 2: distribution of logit values
fig_noise_ablation         ``margins``       Figures 3 and 8: the same panels for natural /
                                             noise only / regulariser only / regulariser + noise
fig_gradient_norms         ``margins``       Figures 4 and 7: ‖∇ₓz_y‖₁, ‖∇ₓz_ȳ‖₁ and cosine
                                             across α or β
fig_landscape              ``landscape``     Figures 5 and 9: cross-entropy over (ε₁, ε₂) for
                                             eight images
fig_penultimate_activity   ``activity``      Figure 10: per-neuron activation magnitude,
                                             inactive count
fig_logit_activity         ``activity``      Figure 11: per-logit activation magnitude
fig_accuracy_vs_eps        ``accuracy``      Table 1 as curves: attacks and ε* next to the
                                             Eq. 4 prediction
fig_eps_l_vs_eps_star      ``eps_star``      beyond the paper: ε_L against ε* (minimum-norm
                                             ensemble) per example
fig_certified_accuracy     ``eps_star``      beyond the paper: certified accuracy (CROWN),
                                             Eq. 4 and the accuracy by ε* against ε
fig_accuracy_vs_steps      ``sweeps``        Table 11: PGD accuracy against the number of steps
fig_accuracy_vs_restarts   ``sweeps``        Table 10: PGD accuracy against the number of
                                             restarts
fig_estimates              ``estimates``     beyond the paper: robust accuracy from 10% of the
                                             images audited (PPI) against the full audit
=========================  ================  ==================================================

Shared drawing helpers, :func:`resolve_eps` and :func:`save_figure` live in :mod:`.base`.
"""

from __future__ import annotations

# Importing a figure module registers its figures: this order is the order of figure_specs,
# render_all, figures.json and the report (tests/test_figures_registry.py pins it).
# isort: off
from . import margins, landscape, activity, accuracy, eps_star, sweeps, estimates  # noqa: F401
# isort: on
from .accuracy import EPS_STAR_COLOR, EPS_STAR_LABEL, Style, eps_star_curve, fig_accuracy_vs_eps
from .activity import fig_logit_activity, fig_penultimate_activity
from .base import DPI, EPS_UNIT, palette, resolve_eps, save_figure
from .eps_star import eps_star_card, fig_certified_accuracy, fig_eps_l_vs_eps_star
from .estimates import fig_estimates
from .landscape import fig_landscape
from .margins import (
    ABLATION_ROLES,
    ablation_runs,
    fig_eps_l_panels,
    fig_gradient_norms,
    fig_logits,
    fig_noise_ablation,
    sweep_runs,
)
from .registry import FIGURES, FigureSpec, Plan, RegisteredFigure, figure, figure_specs, render_all
from .sweeps import fig_accuracy_vs_restarts, fig_accuracy_vs_steps

__all__ = [
    "ABLATION_ROLES", "DPI", "EPS_STAR_COLOR", "EPS_STAR_LABEL", "EPS_UNIT", "FIGURES", "FigureSpec",
    "Plan", "RegisteredFigure", "Style", "ablation_runs", "eps_star_curve", "fig_accuracy_vs_eps",
    "fig_accuracy_vs_restarts", "fig_accuracy_vs_steps", "fig_certified_accuracy", "fig_eps_l_panels",
    "fig_eps_l_vs_eps_star", "fig_estimates",
    "fig_gradient_norms", "fig_landscape", "fig_logit_activity", "fig_logits", "fig_noise_ablation",
    "fig_penultimate_activity", "figure", "figure_specs", "eps_star_card", "palette", "render_all",
    "resolve_eps", "save_figure", "sweep_runs",
]
