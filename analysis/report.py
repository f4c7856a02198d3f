"""A self-contained HTML report: the comparison table and the figures, embedded as base64 PNG
(or inline SVG), with no external assets and no JavaScript, so it opens anywhere offline."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

import epsl
from epsl.errors import EpslError
from epsl.io import write_text

from .paired import paired_html
from .tables import to_html

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table.comparison{border-collapse:collapse;font-size:.82rem;display:block;overflow-x:auto}
table.comparison th,table.comparison td{border:1px solid #ccc;padding:.25rem .45rem;
text-align:right;white-space:nowrap}
table.comparison th{background:#f3f3f3}
table.comparison td:nth-child(-n+4),table.comparison th:nth-child(-n+4){text-align:left}
figure{margin:1.5rem 0}figure img,figure svg{max-width:100%;height:auto}
figcaption{font-size:.9rem;color:#444;margin-top:.3rem}
.note{font-size:.85rem;color:#555}.warning{color:#8a4b00}
"""


def _png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi, metadata={"Software": None})
    return buffer.getvalue()


def _embed(entry: Mapping[str, Any], base: Path) -> str:
    """An ``<img>`` with a base64 PNG (or an inline ``<svg>``) for one figure entry."""
    alt = html.escape(str(entry.get("name", "figure")))
    figure = entry.get("figure")
    if isinstance(figure, Figure):
        data = _png_bytes(figure)
    elif entry.get("png"):
        path = base / str(entry["png"])
        if not path.is_file():
            raise EpslError(f"{path}: figure file missing")
        data = path.read_bytes()
    elif entry.get("svg"):
        path = base / str(entry["svg"])
        if not path.is_file():
            raise EpslError(f"{path}: figure file missing")
        text = path.read_text()
        return text[text.index("<svg"):] if "<svg" in text else ""
    else:
        raise EpslError(f"figure {alt!r} has neither a Figure, a png nor an svg")
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{alt}" src="data:image/png;base64,{encoded}">'


def _run_notes(runs_notes: Mapping[str, Any]) -> str:
    parts = []
    for model, note in runs_notes.items():
        verdict = note.get("verdict")
        warnings = note.get("warnings") or []
        if not verdict and not warnings:
            continue
        items = "".join(
            f'<li class="warning">{html.escape(str(w.get("code", "")))}: '
            f'{html.escape(str(w.get("message", "")))}'
            + (f' (see {html.escape(str(w["doc"]))})' if w.get("doc") else "") + "</li>"
            for w in warnings if isinstance(w, Mapping))
        parts.append(f"<h3>{html.escape(model)}</h3>"
                     + (f"<p>{html.escape(str(verdict))}</p>" if verdict else "")
                     + (f"<ul>{items}</ul>" if items else ""))
    return "<h2>Audit verdicts and warnings</h2>" + "".join(parts) if parts else ""


def render_report(table: pd.DataFrame, figures: Sequence[Mapping[str, Any]], *,
                  base: Path | str = ".", title: str = "epsl comparison",
                  notes: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                  paired: pd.DataFrame | None = None) -> str:
    """The report as one HTML string. ``figures``: entries with ``name``, ``caption`` and
    either ``figure`` (a matplotlib Figure), ``png`` or ``svg`` (paths relative to ``base``)."""
    base = Path(base)
    eps = table["eps"].dropna() if "eps" in table.columns else pd.Series(dtype=float)
    eps_text = f" at ε = {float(eps.iloc[0]):g} (pixel units, [0,1] scale)" if len(eps) else ""
    sections = [f"<h1>{html.escape(title)}</h1>",
                f'<p class="note">epsl {html.escape(epsl.__version__)}. Accuracies are shares of '
                "the evaluated examples; <b>Eq. 4</b> is the share of examples with ε &lt; ε_L "
                "(the prediction of Shafahi et al., Table 1); attack columns use the strongest "
                "saved setting (most steps, then restarts); <b>audit worst case</b> counts an "
                "example as robust only if it survives every attack.</p>"]
    if len(table):
        sections.append(f"<h2>Comparison{html.escape(eps_text)}</h2>{to_html(table)}"
                        '<p class="note">Every accuracy carries its 95% Clopper–Pearson '
                        "interval.</p>")
    if paired is not None and not paired.empty:
        sections.append("<h2>Paired tests</h2>" + paired_html(paired)
                        + '<p class="note">Each model against a reference on the same examples:'
                        " the difference of worst-case robust accuracy in points with its 95% "
                        "interval (Newcombe's score interval for paired proportions) and the "
                        "exact McNemar p-value on the discordant examples; against Eq. 4, the "
                        "model's empirical worst case minus its predicted accuracy.</p>")
    sections.append(_run_notes(notes or {}))
    if figures:
        sections.append("<h2>Figures</h2>")
    for entry in figures:
        caption = html.escape(str(entry.get("caption", entry.get("name", ""))))
        sections.append(f'<figure id="{html.escape(str(entry.get("name", "")))}">'
                        f"{_embed(entry, base)}<figcaption>{caption}</figcaption></figure>")
    if config:
        sections.append("<h2>Configuration</h2><pre>"
                        + html.escape(json.dumps(config, indent=2, default=str)) + "</pre>")
    body = "\n".join(s for s in sections if s)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def write_report(out_dir: Path | str, table: pd.DataFrame,
                 figures: Sequence[Mapping[str, Any]], *, name: str = "report.html",
                 title: str = "epsl comparison", notes: Mapping[str, Any] | None = None,
                 config: Mapping[str, Any] | None = None,
                 paired: pd.DataFrame | None = None) -> Path:
    """Write ``out_dir/report.html`` atomically; figure paths are relative to ``out_dir``."""
    out_dir = Path(out_dir)
    path = out_dir / name
    write_text(path, render_report(table, figures, base=out_dir, title=title, notes=notes,
                                   config=config, paired=paired))
    return path


def audit_notes(runs: Sequence[Any]) -> dict[str, Any]:
    """``{model label: {verdict, warnings}}`` from each run's ``audit.json``."""
    return {r.label: {"verdict": r.audit_summary.get("verdict"),
                      "warnings": r.audit_summary.get("warnings") or []}
            for r in runs if r.audit_summary}
