"""epsl.analysis: the paper's figures and tables from saved per-example tables.

Reads pandas tables and JSON only; never imports torch or model code, so results can be
re-rendered anywhere. Entry points: :func:`load_runs`, the ``fig_*`` functions and
:func:`save_figure` (:mod:`.figures`), :func:`comparison_table` (:mod:`.tables`),
:func:`write_report` (:mod:`.report`) and :func:`render_runs` (``epsl figures``).
"""

from __future__ import annotations

from .cards import accuracy_curves, report_card
from .figures import (
    fig_accuracy_vs_eps,
    fig_accuracy_vs_restarts,
    fig_accuracy_vs_steps,
    fig_eps_l_panels,
    fig_eps_l_vs_eps_star,
    fig_estimates,
    fig_gradient_norms,
    fig_landscape,
    fig_logit_activity,
    fig_logits,
    fig_noise_ablation,
    fig_penultimate_activity,
    render_all,
    save_figure,
)
from .folders import Run, defense_label, load_run, load_runs
from .render import FiguresResult, render_runs
from .report import render_report, write_report
from .tables import comparison_table, to_markdown, write_comparison

__all__ = [
    "FiguresResult", "Run", "accuracy_curves", "comparison_table", "defense_label", "fig_accuracy_vs_eps",
    "fig_accuracy_vs_restarts", "fig_accuracy_vs_steps", "fig_eps_l_panels",
    "fig_eps_l_vs_eps_star", "fig_estimates", "fig_gradient_norms", "fig_landscape",
    "fig_logit_activity", "fig_logits",
    "fig_noise_ablation", "fig_penultimate_activity", "load_run", "load_runs", "render_all",
    "render_report", "render_runs", "report_card", "save_figure", "to_markdown", "write_comparison",
    "write_report",
]
