"""``epsl figures``: re-render every figure, the comparison and the report from saved run
folders alone (no model, no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epsl.norms import Norm, check_radius
from epsl.results.files import check_out_dir, write_json, write_text
from epsl.version import __version__

from .figures import figure_specs, render_all, resolve_eps
from .folders import Run, common_norm, load_runs
from .paired import paired_tests
from .report import audit_notes, write_report
from .tables import comparison_table, norm_line, write_comparison

PRODUCTS = ["figures.json", "config.json", "index.md", "comparison.csv", "comparison.md",
            "paired.csv", "report.html"]


@dataclass(frozen=True)
class FiguresResult:
    """What :func:`render_runs` wrote: the index entries, the paths of the summaries and the
    runs' one threat model."""

    out: Path
    runs: tuple[Run, ...]
    figures: tuple[dict[str, Any], ...]
    report: Path
    eps: float | None
    norm: Norm = Norm.LINF


def _index_markdown(entries: Sequence[dict[str, Any]], runs: Sequence[Run], norm: Norm) -> str:
    lines = ["# Figures", "", "Runs: " + ", ".join(f"`{r.path}` ({r.label})" for r in runs), "",
             norm_line(norm), ""]
    for entry in entries:
        lines += [f"## {entry['name']}", "", entry["caption"], "",
                  f"![{entry['name']}]({entry['png']})", ""]
    return "\n".join(lines)


def render_runs(run_dirs: Sequence[Path | str], out: Path | str, *, eps: float | None = None,
                overwrite: bool = False) -> FiguresResult:
    """Load ``run_dirs``, render every figure their tables allow into ``out`` (PNG + SVG), and
    write ``figures.json`` (index), ``config.json``, ``index.md``, the comparison
    (``comparison.csv``/``.md``) and the self-contained ``report.html``. The runs must share
    one norm (refused in one line otherwise); ``config.json`` and ``index.md`` name it."""
    runs = load_runs(run_dirs)
    norm = common_norm(runs)
    if eps is not None:
        check_radius(norm, eps)
    out = check_out_dir(out, PRODUCTS + [f"{s.name}.png" for s in figure_specs(runs, eps=eps)],
                        overwrite)
    eps = resolve_eps(runs, eps)
    entries = render_all(runs, out, eps=eps)
    table = comparison_table(runs, eps=eps)
    paired = paired_tests(runs, eps) if eps is not None else None
    write_comparison(out, table, paired=paired)
    config = {"epsl_version": __version__, "eps": eps, "norm": norm.value,
              "runs": [{"path": str(r.path), "label": r.label, "tables": r.tables(),
                        "checkpoint": r.summary.get("checkpoint")} for r in runs]}
    report = write_report(out, table, entries, notes=audit_notes(runs), config=config,
                          paired=paired,
                          title=f"Results of {len(runs)} runs"
                          + (f" at ε = {eps:g}" if eps is not None else ""))
    write_json(out / "figures.json", entries)
    write_json(out / "config.json", config)
    write_text(out / "index.md", _index_markdown(entries, runs, norm))
    return FiguresResult(out, tuple(runs), tuple(entries), report, eps, norm)


__all__ = ["FiguresResult", "PRODUCTS", "render_runs"]
