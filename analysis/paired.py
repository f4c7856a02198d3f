"""Paired comparisons: two defenses evaluated on the same examples are paired data, and so are
a model's Eq. 4 prediction and its empirical worst case. Each comparison is an exact McNemar
test on the discordant examples with the paired difference and its 95% interval
(:func:`epsl.analysis.metrics.mcnemar`).

For every model, against a reference (the naturally trained model, and the adversarially
trained one when the comparison has them): does its worst-case robust accuracy differ? And for
every model: does its empirical worst case differ from Eq. 4's prediction (is the predictor's
bias significant)? The worst case per example is the audit's ``robust`` flag when the run has
an audit at that ε (every attack, stronger ones included), else survival of every attack the
run's attack table holds at ε (the paper's attacks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .folders import Run, defense_kind
from .metrics import mcnemar

PAIRED_COLUMNS = ["model", "run", "against", "reference", "n", "accuracy",
                  "reference_accuracy", "difference", "difference_lo", "difference_hi",
                  "only_model", "only_reference", "p_value", "worst_case_from"]


def _truth(values: pd.Series) -> pd.Series:
    return values.astype(str).str.lower().isin(["true", "1", "1.0"])


def worst_case(run: Run, eps: float) -> tuple[pd.Series | None, str]:
    """Per example (indexed by example index), whether it survives every attack at ``eps``,
    and where that came from (``"audit"``, ``"paper's attacks"``); (None, "") without either."""
    audit_eps = run.audit_summary.get("eps")
    if run.audit is not None and (audit_eps is None or math.isclose(float(audit_eps), eps)):
        return pd.Series(_truth(run.audit["robust"]).to_numpy(),
                         index=run.audit["index"].to_numpy()), "audit"
    if run.attack is not None:
        rows = run.attack[np.isclose(run.attack["eps"].astype(float), eps)]
        if not rows.empty:
            return (pd.Series(_truth(rows["correct"]).to_numpy(), index=rows["index"].to_numpy())
                    .groupby(level=0).all()), "paper's attacks"
    return None, ""


def eq4_prediction(run: Run, eps: float) -> pd.Series | None:
    """Per example, Eq. 4's prediction that it survives ε (``eps_l > eps``)."""
    if run.diagnostics is None:
        return None
    return pd.Series((run.diagnostics["eps_l"].astype(float) > eps).to_numpy(),
                     index=run.diagnostics["index"].to_numpy())


def _row(run: Run, against: str, reference: str, a: pd.Series, b: pd.Series,
         source: str) -> dict[str, Any]:
    a, b = a.align(b, join="inner")
    test = mcnemar(a.to_numpy(), b.to_numpy())
    return {"model": run.label, "run": run.name, "against": against, "reference": reference,
            "n": test.n, "accuracy": test.accuracy_b, "reference_accuracy": test.accuracy_a,
            "difference": test.difference, "difference_lo": test.difference_lo,
            "difference_hi": test.difference_hi, "only_model": test.only_b,
            "only_reference": test.only_a, "p_value": test.p_value, "worst_case_from": source}


def paired_tests(runs: Sequence[Run], eps: float) -> pd.DataFrame:
    """One row per paired comparison at ``eps`` (columns :data:`PAIRED_COLUMNS`): each model's
    worst case against the natural and the adversarially trained model (``against`` =
    ``"natural"``/``"adversarial training"``), then its worst case against its own Eq. 4
    prediction (``against = "Eq. 4"``). ``difference`` = model − reference, in [−1, 1]."""
    worst = {run.name: worst_case(run, eps) for run in runs}
    rows = []
    for kind, against in (("natural", "natural"), ("adv", "adversarial training")):
        reference = next((r for r in runs if defense_kind(r.meta) == kind
                          and worst[r.name][0] is not None), None)
        if reference is None:
            continue
        ref_worst, ref_source = worst[reference.name]
        assert ref_worst is not None
        for run in runs:
            mine, source = worst[run.name]
            if run is reference or mine is None:
                continue
            rows.append(_row(run, against, reference.label, ref_worst, mine,
                             source if source == ref_source else f"{source} / {ref_source}"))
    for run in runs:
        mine, source = worst[run.name]
        predicted = eq4_prediction(run, eps)
        if mine is not None and predicted is not None:
            rows.append(_row(run, "Eq. 4", "Eq. 4 predicted", predicted, mine, source))
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def _p(value: float) -> str:
    return "<0.001" if value < 1e-3 else f"{value:.3f}" if value < 0.1 else f"{value:.2f}"


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def paired_markdown(paired: pd.DataFrame) -> str:
    """The paired tests as a Markdown table: difference in points with its 95% interval, the
    discordant examples each way, and the exact McNemar p-value."""
    if paired.empty:
        return ""
    lines = ["| model | against | n | model | reference | difference (points) [95% CI] | "
             "only model / only reference | p (exact McNemar) |",
             "|---|---|--:|--:|--:|--:|--:|--:|"]
    for row in paired.itertuples():
        lines.append(
            f"| {row.model} | {row.reference} | {row.n} | {row.accuracy:.1%} | "
            f"{row.reference_accuracy:.1%} | {_points(row.difference)} "
            f"[{_points(row.difference_lo)}, {_points(row.difference_hi)}] | "
            f"{row.only_model} / {row.only_reference} | {_p(row.p_value)} |")
    return "\n".join(lines) + "\n"


def paired_lines(paired: pd.DataFrame, against: str) -> list[str]:
    """One line per model for the comparisons ``against`` one reference (for terminals)."""
    chosen = paired[paired["against"] == against]
    return [f"- {row.model}: {_points(row.difference)} points "
            f"[{_points(row.difference_lo)}, {_points(row.difference_hi)}], "
            f"p {'< 0.001' if row.p_value < 1e-3 else '= ' + _p(row.p_value)}"
            for row in chosen.itertuples()]


def paired_html(paired: pd.DataFrame) -> str:
    """The paired tests as an HTML ``<table>`` (escaped), the same cells as the Markdown."""
    import html

    rows = [line.strip("|").split(" | ") for line in paired_markdown(paired).splitlines()]
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row)
                   + "</tr>" for row in rows[2:])
    return (f'<table class="comparison paired"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


__all__ = ["PAIRED_COLUMNS", "eq4_prediction", "paired_html", "paired_lines", "paired_markdown",
           "paired_tests", "worst_case"]
