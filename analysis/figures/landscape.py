"""The loss landscape around single images: cross-entropy over a plane of two directions,
random (Figure 5) or random and adversarial (Figure 9), from ``landscape.csv``."""

from __future__ import annotations

import math
from functools import partial

from matplotlib.figure import Figure

from epsl.errors import EpslError

from ..folders import Run
from .base import EPS_UNIT, axes_grid, new_figure
from .registry import Plan, figure


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
    fig = new_figure(3.2 * cols + 0.6, 2.9 * rows + 0.7)
    axes = axes_grid(fig, rows, cols)
    second = "adversarial sign$(\\nabla_x$xent$)$" if direction == "adversarial"\
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


#: The landscape figure of each second direction: its file stem and caption, in paper order.
LANDSCAPE_FIGURES = {
    "random": ("fig5_landscape", "Figure 5: cross-entropy over two random directions, first "
               "eight images."),
    "adversarial": ("fig9_landscape", "Figure 9: cross-entropy over a random and the "
                    "adversarial direction, first eight images."),
}


def _plan_landscape(runs: list[Run], eps: float | None, *, direction: str) -> Plan | None:
    (run,) = runs
    assert run.landscape is not None
    if not (run.landscape["direction"] == direction).any():
        return None
    return Plan(partial(fig_landscape, run, direction=direction), [run])


for _direction, (_name, _caption) in LANDSCAPE_FIGURES.items():
    figure(_name, _caption, needs=("landscape",), per_run=True, norm_free=True)(
        partial(_plan_landscape, direction=_direction))


__all__ = ["LANDSCAPE_FIGURES", "fig_landscape"]
