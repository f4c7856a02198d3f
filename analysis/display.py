"""Comparison tables as people read them: display strings (accuracies as ``76.9% [72.2, 81.1]``,
'–' for missing), the paper's symbols in the headers, Markdown and HTML, and the one threat
model of a table said once above it (:func:`norm_line`).
"""

from __future__ import annotations

import html
import math
from typing import Any

import pandas as pd

from epsl.errors import EpslError
from epsl.norms import Norm, dual, parse_norm

from .columns import CARD_STATS, NOT_FRACTIONS, TEXT_HEADERS, column_header, is_interval_bound

__all__ = ["column_cells", "format_cell", "format_table", "markdown_table", "norm_line",
           "table_norm", "to_html", "to_markdown"]


def format_cell(column: str, value: Any, interval: tuple[Any, Any] | None = None) -> str:
    """One cell's display string: an accuracy as a percentage with its 95% ``interval``
    (lo, hi) where given, a statistic of the report card with 3 decimals, '–' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if column in CARD_STATS:
        lo, hi = interval if interval is not None else (math.nan, math.nan)
        if pd.isna(lo) or pd.isna(hi):
            return f"{float(value):.3f}"
        return f"{float(value):.3f} [{float(lo):.3f}, {float(hi):.3f}]"
    if column == "eq4_optimistic_from":
        return "never" if math.isinf(float(value)) else f"{float(value):.3g}"
    if column not in NOT_FRACTIONS:  # accuracies: train/test/clean/Eq. 4/attacks/audit
        lo, hi = interval if interval is not None else (math.nan, math.nan)
        if pd.isna(lo) or pd.isna(hi):
            return f"{float(value):.1%}"
        return f"{float(value):.1%} [{100 * float(lo):.1f}, {100 * float(hi):.1f}]"
    if column in ("steps", "n", "pgd_steps", "audit_n"):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_table(table: pd.DataFrame, *, drop_empty: bool = True) -> pd.DataFrame:
    """Strings for display: percentages with their 95% interval (``76.9% [72.2, 81.1]``), '–'
    for missing, headers with the paper's symbols. Columns that are empty for every row are
    dropped (``drop_empty``), and so is ``norm``, one for the whole table
    (:func:`norm_line`)."""
    columns = [c for c in table.columns
               if not is_interval_bound(c) and c != "norm"  # said above it
               and not (drop_empty and table[c].isna().all())]
    norm = table_norm(table)
    return pd.DataFrame({column_header(c, norm): column_cells(table, c) for c in columns})


def column_cells(table: pd.DataFrame, column: str) -> list[str]:
    """One column's display strings, each accuracy with its interval when the table has it."""
    lo, hi = f"{column}_lo", f"{column}_hi"
    if lo in table.columns and hi in table.columns:
        return [format_cell(column, v, (a, b))
                for v, a, b in zip(table[column], table[lo], table[hi], strict=True)]
    return [format_cell(column, v) for v in table[column]]


def markdown_table(shown: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of string cells; text columns left-aligned."""
    escape = [[str(v).replace("|", "\\|") for v in row] for row in shown.itertuples(index=False)]
    lines = ["| " + " | ".join(shown.columns) + " |",
             "|" + "|".join("---" if c in TEXT_HEADERS else "--:" for c in shown.columns)
             + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in escape]
    return "\n".join(lines) + "\n"


def table_norm(table: pd.DataFrame) -> Norm:
    """The one norm of a comparison table, from its ``norm`` column (ℓ∞ without one, as
    tables of older runs); a table holding two norms is a one-line ``EpslError``."""
    if "norm" not in table.columns:
        return Norm.LINF
    norms = sorted({parse_norm(str(v)).value for v in table["norm"].dropna()})
    if len(norms) > 1:
        first: dict[str, str] = {}
        for model, value in zip(table["model"], table["norm"], strict=True):
            if pd.notna(value):
                first.setdefault(parse_norm(str(value)).value, str(model))
        named = ", ".join(f"{model} is {norm}" for norm, model in first.items())
        raise EpslError(f"one table holds results of {len(norms)} norms ({named}); "
                        "tabulate each norm separately")
    return parse_norm(norms[0]) if norms else Norm.LINF


def norm_line(norm: str | Norm) -> str:
    """The threat model of a table in one sentence, for the top of the written tables."""
    p = parse_norm(norm)
    return (f"Threat model: {p.label} ({p.value}). Every ε, ε_L and ε* is an {p.label} distance "
            f"in pixel units ([0,1] scale); Eq. 4 divides the logit gap by the gradient gap in "
            f"the dual norm {dual(p).label}.")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of :func:`format_table` (the audit's verdicts and
    the reported accuracies' sources and verdicts are said below it, in the headline)."""
    return markdown_table(format_table(table.drop(
        columns=["audit_verdict", "reported_source", "reported_verdict", "reported_against"],
        errors="ignore")))


def to_html(table: pd.DataFrame) -> str:
    """An HTML ``<table>`` of :func:`format_table` (escaped; no external assets)."""
    shown = format_table(table)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in shown.itertuples(index=False))
    return (f'<table class="comparison"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")
