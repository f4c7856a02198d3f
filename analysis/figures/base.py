"""What every figure module shares: the look (pyplot-free figures, seaborn style, palettes,
legends), histogram bins and log axes, picking runs and columns, the attack ε to mark, how ε,
ε_L, ε* and the gradient gap are labelled in each norm, and :func:`save_figure`. Names with a
leading underscore are private to :mod:`epsl.analysis.figures`.

Labels in each norm (:func:`eps_symbol`, :func:`eps_axis`, :func:`grad_gap_symbol`): the
paper's ℓ∞ keeps its labels unchanged (``ε``, ``ε_L  (pixel units, [0,1] scale)``,
``‖∇z_y − ∇z_ȳ‖₁``); any other norm is named beside every ε (``ε (ℓ2)``, ``ε_L (ℓ2; pixel
units, [0,1] scale)``) and the gradient gap carries its dual norm's subscript (``‖·‖₂`` for
ℓ2, ``‖·‖_∞`` for ℓ1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from epsl.errors import EpslError
from epsl.norms import Norm, dual, parse_norm
from epsl.results.files import atomic_path

from ..folders import Run, common_norm
from ..metrics import main_eps

EPS_UNIT = "pixel units, [0,1] scale"
DPI = 110
_STYLE = {"axes.grid": True, "grid.alpha": 0.35, "axes.spines.top": False,
          "axes.spines.right": False}


_DUAL_SUBSCRIPT = {Norm.L1: "1", Norm.L2: "2", Norm.LINF: "\\infty"}


def eps_symbol(symbol: str, norm: str | Norm) -> str:
    """``symbol`` (``ε``, ``ε_L``, ``ε*``...) named with its norm: unchanged for the
    paper's ℓ∞, ``ε (ℓ2)`` for any other."""
    p = parse_norm(norm)
    return symbol if p is Norm.LINF else f"{symbol} ({p.label})"


def eps_axis(symbol: str, norm: str | Norm, *, sep: str = "  ") -> str:
    """An ε axis label with its units: ``ε  (pixel units, [0,1] scale)`` for ℓ∞ (as before;
    ``sep`` between symbol and units), ``ε (ℓ2; pixel units, [0,1] scale)`` for another
    norm."""
    p = parse_norm(norm)
    if p is Norm.LINF:
        return f"{symbol}{sep}({EPS_UNIT})"
    return f"{symbol} ({p.label}; {EPS_UNIT})"


def grad_gap_symbol(norm: str | Norm) -> str:
    """Eq. 4's denominator in the dual norm of ``norm``, as mathtext:
    ``‖∇ₓz_y − ∇ₓz_ȳ‖₁`` for ℓ∞, ``‖·‖₂`` for ℓ2, ``‖·‖_∞`` for ℓ1."""
    q = _DUAL_SUBSCRIPT[dual(norm)]
    return "$\\|\\nabla_x z_y - \\nabla_x z_{\\bar y}\\|_" + (q if len(q) == 1 else f"{{{q}}}") + "$"


def runs_norm(runs: Sequence[Run]) -> Norm:
    """The one norm of the runs a figure draws (runs of two norms are refused in one line)."""
    return common_norm(runs)


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure (rendered with Agg on save) with the seaborn look."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig


def axes_grid(fig: Figure, rows: int, cols: int, **kwargs: Any) -> np.ndarray:
    with sns.axes_style("whitegrid", _STYLE):
        axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return axes


def palette(n: int) -> list[tuple[float, float, float]]:
    """Distinct colour-blind-safe colours for ``n`` runs."""
    return list(sns.color_palette("colorblind" if n <= 10 else "husl", n))


def diagnosed_runs(runs: Sequence[Run]) -> list[Run]:
    selected = [r for r in runs if r.diagnostics is not None and len(r.diagnostics)]
    if not selected:
        raise EpslError("no run has a diagnostics table (diagnostics.csv)")
    return selected


def column_values(run: Run, column: str) -> np.ndarray:
    assert run.diagnostics is not None
    if column not in run.diagnostics.columns:
        raise EpslError(f"{run.path}: diagnostics table has no column {column!r}")
    values = run.diagnostics[column].to_numpy(dtype=float)
    return values[np.isfinite(values)]


def log_bins(arrays: Sequence[np.ndarray], bins: int = 40) -> np.ndarray:
    positive = np.concatenate([a[a > 0] for a in arrays]) if arrays else np.array([])
    if positive.size == 0:
        return np.linspace(0, 1, bins + 1)
    lo, hi = positive.min(), positive.max()
    if hi <= lo:
        lo, hi = lo / 2, hi * 2
    return np.geomspace(lo, hi * 1.0001, bins + 1)


def lin_bins(arrays: Sequence[np.ndarray], bins: int = 40,
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


def log_x(ax: Axes) -> None:
    """Log x-axis labelled 1, 2, 5, 10, 20, 50... in plain numbers (no crowded minor labels)."""
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)


def plain_log_ticks(axis: Any, subs: tuple[float, ...] = (1.0, 2.0, 5.0)) -> None:
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def step_hist(ax: Axes, values: np.ndarray, bins: np.ndarray, color: Any, label: str,
               clip: bool = False) -> None:
    if clip:
        values = np.clip(values, bins[0], bins[-1])
    edges = bins.tolist()
    ax.hist(values, bins=edges, histtype="stepfilled", color=color, alpha=0.18)
    ax.hist(values, bins=edges, histtype="step", color=color, linewidth=1.6, label=label)


def run_handles(runs: Sequence[Run], colors: Sequence[Any],
                 extra: Sequence[str] | None = None) -> tuple[list[Line2D], list[str]]:
    handles = [Line2D([], [], color=c, linewidth=2.5) for c in colors]
    labels = [r.label + (f"  ({e})" if extra and e else "") for r, e in
              zip(runs, extra or [""] * len(runs), strict=True)]
    return handles, labels


def figure_legend(fig: Figure, handles: Sequence[Any], labels: Sequence[str], *,
                where: str = "upper", title: str | None = None) -> None:
    """One legend for the whole figure, outside the axes (``where``: 'upper' or 'lower')."""
    longest = max((len(s) for s in labels), default=0)
    ncols = 1 if longest > 60 else 2 if longest > 32 else min(len(labels), 4)
    fig.legend(handles, labels, loc=f"outside {where} center",  # type: ignore[call-overload]
               ncols=ncols, frameon=False, fontsize=9, title=title, title_fontsize=9)


def eps_star_values(run: Run) -> np.ndarray:
    assert run.eps_star is not None
    return run.eps_star["eps_star"].to_numpy(dtype=float)


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


def save_figure(fig: Figure, out_dir: Path | str, name: str, *, dpi: int = DPI,
                formats: Sequence[str] = ("png", "svg")) -> dict[str, Path]:
    """Write ``fig`` as ``out_dir/name.png`` and ``.svg``, each atomically and byte for byte the
    same on every run; return the paths."""
    out_dir = Path(out_dir)
    paths = {}
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        # a fixed salt: the SVG's element ids, random per process otherwise, repeat run to run
        with atomic_path(path) as tmp, matplotlib.rc_context({"svg.hashsalt": "epsl"}):
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata)
        paths[fmt] = path
    return paths


__all__ = ["DPI", "EPS_UNIT", "axes_grid", "column_values", "diagnosed_runs", "eps_axis",
           "eps_star_values", "eps_symbol", "figure_legend", "grad_gap_symbol", "lin_bins",
           "log_bins", "log_x", "new_figure", "palette", "plain_log_ticks", "resolve_eps",
           "run_handles", "runs_norm", "save_figure", "step_hist"]
