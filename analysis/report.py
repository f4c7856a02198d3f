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

from epsl.errors import EpslError
from epsl.results.files import write_text
from epsl.version import __version__

from .paired import paired_html
from .tables import card_frame, norm_line, table_norm, to_html

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;
max-width:1360px;padding:0 1rem;color:#222}
p.question{font-size:1rem;max-width:62rem}
table.headline{border-collapse:collapse;font-size:.85rem}
table.headline th,table.headline td{border:1px solid #ccc;padding:.25rem .45rem;text-align:right;
white-space:nowrap}
table.headline th{background:#f3f3f3;white-space:normal}
table.headline td:first-child,table.headline td:last-child,table.headline th:first-child,
table.headline th:last-child{text-align:left}
table.headline td:last-child{white-space:normal;max-width:16rem}
ul.answers{font-size:.9rem;max-width:70rem}
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


QUESTION = ("Shafahi et al. ask whether label smoothing and logit squeezing, with Gaussian noise, "
            "are a replacement for adversarial training, and whether the robustness they give "
            "is real or gradient masking. Below: every model's accuracy under the paper's "
            "attacks and under every attack of the audit, each with its 95% interval, and the "
            "paired test of its worst case against adversarial training.")

_LEAD = [("clean_accuracy", "clean"), ("eq4_predicted", "Eq. 4 predicted"),
         ("attacks_worst", "paper's attacks (worst)"), ("audit_worst", "all attacks (worst)")]


def _pct(row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None or pd.isna(value):
        return "–"
    lo, hi = row.get(f"{column}_lo"), row.get(f"{column}_hi")
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return f"{float(value):.1%}"
    return f"{float(value):.1%} [{100 * float(lo):.1f}, {100 * float(hi):.1f}]"


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 1e-3 else f"p = {p:.3f}"


def _versus(test: Mapping[str, Any] | None) -> str:
    """``+1.2 [-0.3, +2.7], p = 0.123``: a paired difference in points with its interval."""
    if test is None:
        return "–"
    return (f"{100 * test['difference']:+.1f} [{100 * test['difference_lo']:+.1f}, "
            f"{100 * test['difference_hi']:+.1f}], {_p_text(float(test['p_value']))}")


def _sentence(row: Mapping[str, Any], test: Mapping[str, Any] | None,
              eq4: Mapping[str, Any] | None) -> str:
    """What the numbers of one model support, in one sentence (significant: p < 0.05)."""
    column = "audit_worst" if pd.notna(row.get("audit_worst")) else "attacks_worst"
    what = "every attack of the audit" if column == "audit_worst" else "the paper's attacks"
    parts = [f"robust to {what} on {_pct(row, column)} of the examples"]
    if test is not None:
        if float(test["p_value"]) < 0.05:
            side = "below" if test["difference"] < 0 else "above"
            parts.append(f"significantly {side} adversarial training ({_versus(test)})")
        else:
            parts.append(f"not distinguishable from adversarial training on these examples "
                         f"({_versus(test)})")
    if eq4 is not None:
        if float(eq4["p_value"]) < 0.05:
            side = "pessimistic" if eq4["difference"] > 0 else "optimistic"
            parts.append(f"Eq. 4 is {side} for it ({_versus(eq4)})")
        else:
            parts.append(f"Eq. 4 predicts its worst case within the noise ({_versus(eq4)})")
    verdict = row.get("audit_verdict")
    if isinstance(verdict, str) and verdict:
        parts.append(f"audit: {verdict}")
    return (f"<li><b>{html.escape(str(row.get('model')))}</b>: "
            f"{html.escape('; '.join(parts))}.</li>")


def _lead(table: pd.DataFrame, paired: pd.DataFrame | None, question: str) -> str:
    """The first screen: the question, a compact table with intervals and the paired test
    against adversarial training, and one sentence per model."""
    tests = {} if paired is None or paired.empty else {
        (r["run"], r["against"]): r for r in paired.to_dict("records")}
    columns = [(c, h) for c, h in _LEAD if c in table.columns and table[c].notna().any()]
    versus = any(against == "adversarial training" for _, against in tests)
    reference = next((r["reference"] for r in tests.values()
                      if r["against"] == "adversarial training"), None)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["model", *(h for _, h in columns)]
                   + (["vs adversarial training, points [95% CI]"] if versus else [])
                   + (["audit verdict"] if "audit_verdict" in table.columns else []))
    rows, sentences = [], []
    for row in table.to_dict("records"):
        cells = [html.escape(str(row.get("model")))] + [_pct(row, c) for c, _ in columns]
        if versus:
            test = tests.get((row.get("run"), "adversarial training"))
            cells.append("reference" if test is None and row.get("model") == reference
                         else _versus(test))
        if "audit_verdict" in table.columns:
            verdict = row.get("audit_verdict")
            cells.append(str(verdict) if isinstance(verdict, str) else "–")
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        sentences.append(_sentence(row, tests.get((row.get("run"), "adversarial training")),
                                   tests.get((row.get("run"), "Eq. 4"))))
    return (f'<p class="question">{html.escape(question)}</p>'
            f'<table class="headline"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}'
            f"</tbody></table><ul class=\"answers\">{''.join(sentences)}</ul>")


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
                  paired: pd.DataFrame | None = None, question: str = QUESTION) -> str:
    """The report as one HTML string. ``figures``: entries with ``name``, ``caption`` and
    either ``figure`` (a matplotlib Figure), ``png`` or ``svg`` (paths relative to ``base``).
    The notes name the table's threat model (its ``norm`` column, ℓ∞ without one); a norm
    other than ℓ∞ is added to the title too, unless the title already names it."""
    base = Path(base)
    norm = table_norm(table)
    if norm.label not in title and norm.value != "linf":
        title = f"{title} ({norm.label})"
    eps = table["eps"].dropna() if "eps" in table.columns else pd.Series(dtype=float)
    eps_text = f" at ε = {float(eps.iloc[0]):g} (pixel units, [0,1] scale)" if len(eps) else ""
    sections = [f"<h1>{html.escape(title)}</h1>"]
    if len(table):
        sections.append(_lead(table, paired, question))
    sections += [f'<p class="note">epsl {html.escape(__version__)}. '
                 f"{html.escape(norm_line(norm))} Accuracies are shares of "
                "the evaluated examples; <b>Eq. 4</b> is the share of examples with ε &lt; ε_L "
                "(the prediction of Shafahi et al., Table 1); attack columns use the strongest "
                "saved setting (most steps, then restarts); <b>audit worst case</b> counts an "
                "example as robust only if it survives every attack.</p>"]
    if len(table):
        sections.append(f"<h2>Comparison{html.escape(eps_text)}</h2>{to_html(table)}"
                        '<p class="note">Every accuracy carries its 95% Clopper–Pearson '
                        "interval.</p>")
    card = card_frame(table) if len(table) else None
    if card is not None:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in card.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row)
                       + "</tr>" for row in card.itertuples(index=False))
        sections.append(
            "<h2>Can ε_L be trusted? Eq. 4 against ε*, example by example</h2>"
            f'<table class="headline"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            '</table><p class="note">ε* is the smallest perturbation that really flips an '
            "example, found by an ensemble of minimum-norm attacks (Foolbox FMN, torchattacks "
            "FAB) with every point re-scored; it is an upper bound of the true minimum, so the "
            "accuracy by ε* is an upper bound of the true robust accuracy and ε_L &gt; ε* is a "
            "proven overstatement. ρ: Spearman rank correlation of ε_L and ε* (bootstrap 95% "
            "interval); median ε_L/ε* with its bootstrap interval; optimistic: share of "
            "correctly classified examples with ε_L &gt; ε* (Clopper–Pearson interval); the "
            "last column is the smallest ε at which Eq. 4's predicted accuracy exceeds the "
            "accuracy by ε*.</p>")
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


__all__ = ["QUESTION", "audit_notes", "render_report", "write_report"]
