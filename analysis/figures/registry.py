"""The registry of figures: ``@figure(name, caption, needs=...)`` fills :data:`FIGURES`.

Each figure module registers, next to its ``fig_*`` function, a small *planner*: given the runs
that hold a table the figure ``needs`` (any one of them) and the resolved attack ε, it returns
a :class:`Plan` (what to build and which runs it draws) or ``None`` when those runs do not
allow the figure. :func:`figure_specs` asks every registered figure in registration order,
which is paper order (:mod:`epsl.analysis.figures` imports the modules in that order);
:func:`render_all` renders and saves what it lists. Nothing is rendered while planning.

A figure registered with ``per_run=True`` is drawn once per run holding its tables: the file
name gets the run's slug when more than one run holds them, the caption names the model, and
consecutive per-run figures are listed run by run (Figure 5 then Figure 9 of each model).

Every figure that shows ε, ε_L, ε* or the gradient gap has its caption end with the runs' threat
model (``Threat model: ℓ2 (gradient gap in the dual ℓ2).``, :func:`caption_norm`); one
registered ``norm_free=True`` (the logits, the ℓ1 gradient magnitudes, the activations and the
landscapes, which no threat model measures) keeps its caption as registered. The runs of one
:func:`figure_specs` call must share a norm (one line otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import Any, NamedTuple

from matplotlib.figure import Figure

from epsl.norms import Norm, dual

from ..folders import RUN_KINDS, Run, common_norm
from .base import resolve_eps, save_figure


@dataclass(frozen=True)
class FigureSpec:
    """One renderable figure: file stem, caption and a builder that needs only the runs."""

    name: str
    caption: str
    build: Callable[[], Figure]
    runs: tuple[str, ...]


class Plan(NamedTuple):
    """What a registered figure draws from the runs it was given: the builder and its runs."""

    build: Callable[[], Figure]
    runs: Sequence[Run]


Planner = Callable[[list[Run], float | None], Plan | None]


@dataclass(frozen=True)
class RegisteredFigure:
    """One entry of :data:`FIGURES`: the file stem, caption, the tables of which a run must
    hold one to take part (``needs``), whether it is drawn per run, its planner, and whether
    it shows nothing measured in a norm (``norm_free``: its caption names no threat model)."""

    name: str
    caption: str
    needs: tuple[str, ...]
    per_run: bool
    plan: Planner
    norm_free: bool = False

    def caption_in(self, norm: Norm) -> str:
        """The caption for runs in ``norm``: with :func:`caption_norm` unless norm-free."""
        return self.caption if self.norm_free else f"{self.caption} {caption_norm(norm)}"

    def holders(self, runs: Sequence[Run]) -> list[Run]:
        """The runs holding at least one of the tables this figure needs."""
        return [r for r in runs if any(getattr(r, table) is not None for table in self.needs)]


FIGURES: dict[str, RegisteredFigure] = {}


def caption_norm(norm: Norm) -> str:
    """The sentence a caption ends with: ``Threat model: ℓ2 (gradient gap in the dual ℓ2).``"""
    return f"Threat model: {norm.label} (gradient gap in the dual {dual(norm).label})."


def figure(name: str, caption: str, *, needs: Sequence[str], per_run: bool = False,
           norm_free: bool = False) -> Callable[[Planner], Planner]:
    """Register the decorated planner as figure ``name`` (the file stem) with its caption;
    refuses a name already registered, an empty caption and a table no run can hold.
    ``norm_free``: the figure shows no ε, ε_L, ε* or gradient gap, so its caption names no
    threat model."""
    unknown = sorted(set(needs) - set(RUN_KINDS))
    if not needs or unknown:
        raise ValueError(f"figure {name!r}: needs must name tables of {', '.join(RUN_KINDS)}"
                         + (f" (not {', '.join(unknown)})" if unknown else ""))
    if not caption.strip():
        raise ValueError(f"figure {name!r} has no caption")

    def decorator(plan: Planner) -> Planner:
        if name in FIGURES:
            raise ValueError(f"figure {name!r} is already registered")
        FIGURES[name] = RegisteredFigure(name, caption, tuple(needs), per_run, plan, norm_free)
        return plan

    return decorator


def over_runs_with(table: str, draw: Callable[[list[Run]], Figure]) -> Planner:
    """The planner of a figure drawn by ``draw`` from every run that holds a non-empty
    ``table`` (no figure without one)."""

    def plan(runs: list[Run], eps: float | None) -> Plan | None:
        chosen = [r for r in runs if getattr(r, table) is not None and len(getattr(r, table))]
        return Plan(partial(draw, chosen), chosen) if chosen else None

    return plan


def _slug(text: str) -> str:
    keep = "".join(c if c.isascii() and c.isalnum() else "-" for c in text.lower())
    return "-".join(p for p in keep.split("-") if p)[:40] or "run"


def _spec(plan: Plan | None, name: str, caption: str) -> list[FigureSpec]:
    if plan is None:
        return []
    return [FigureSpec(name, caption, plan.build, tuple(r.label for r in plan.runs))]


def _per_run_specs(entries: Sequence[RegisteredFigure], runs: Sequence[Run],
                   eps: float | None, norm: Norm) -> list[FigureSpec]:
    specs: list[FigureSpec] = []
    for run in runs:
        for entry in entries:
            if not entry.holders([run]):
                continue
            several = len(entry.holders(runs)) > 1
            name = entry.name + (f"_{_slug(run.name)}" if several else "")
            specs += _spec(entry.plan([run], eps), name,
                           entry.caption_in(norm) + f" Model: {run.label}.")
    return specs


def figure_specs(runs: Sequence[Run], *, eps: float | None = None) -> list[FigureSpec]:
    """Every figure the runs' tables allow, in paper order (nothing is rendered yet); runs of
    two norms are refused in one line."""
    norm = common_norm(runs)
    eps = resolve_eps(runs, eps)
    specs: list[FigureSpec] = []
    for per_run, group in groupby(FIGURES.values(), key=lambda entry: entry.per_run):
        entries = list(group)
        if per_run:
            specs += _per_run_specs(entries, runs, eps, norm)
            continue
        for entry in entries:
            holders = entry.holders(runs)
            if holders:
                specs += _spec(entry.plan(holders, eps), entry.name, entry.caption_in(norm))
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


__all__ = ["FIGURES", "FigureSpec", "Plan", "Planner", "RegisteredFigure", "caption_norm",
           "figure", "figure_specs", "over_runs_with", "render_all"]
