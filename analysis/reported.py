"""A leaderboard's reported accuracies beside epsl's own: the columns :func:`with_reported` adds
to a comparison table, and the Markdown of the headline (:func:`reported_markdown`).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .display import column_cells, format_cell, markdown_table

__all__ = ["WIDE_INTERVAL", "reported_markdown", "with_reported"]


def _outside(value: float, lo: Any, hi: Any) -> bool:
    """Whether ``value`` lies outside the interval [lo, hi] (missing bounds: never)."""
    return bool(pd.notna(lo) and pd.notna(hi) and not lo - 1e-12 <= value <= hi + 1e-12)


def with_reported(table: pd.DataFrame, reported: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """``table`` with a leaderboard's accuracies beside epsl's own, for the runs in
    ``reported`` ({run: {"clean": 0.8334, "robust": 0.4321, "attack": "AutoAttack",
    "source": ...}}, fractions in [0, 1]): ``reported_clean``, ``reported_robust``,
    ``reported_attack``, ``reported_source``; ``reported_against``, epsl's worst case the
    robust accuracy is set against (``audit_worst``, else ``attacks_worst``); and
    ``reported_verdict``: ``agrees`` when each reported accuracy lies inside the 95%
    Clopper–Pearson interval of epsl's (``clean_accuracy``, the worst case), else which
    ones fall outside it and on which side (``disagrees: clean 83.3% above epsl's [0.6,
    80.6]``). The leaderboard evaluates other examples (all 10,000 test images)
    with other attacks, so a disagreement says the numbers differ by more than epsl's sample
    explains: other weights, a stronger or weaker attack, or another test set."""
    table = table.copy()
    for column in ("reported_clean", "reported_robust"):
        table[column] = math.nan
    for column in ("reported_attack", "reported_against", "reported_verdict",
                   "reported_source"):
        table[column] = pd.Series([None] * len(table), index=table.index, dtype=object)
    for i, run in zip(table.index, table["run"], strict=True):
        if run not in reported:
            continue
        given = reported[run]
        against = next((c for c in ("audit_worst", "attacks_worst")
                        if c in table.columns and pd.notna(table.at[i, c])), None)
        table.at[i, "reported_clean"] = float(given["clean"])
        table.at[i, "reported_robust"] = float(given["robust"])
        table.at[i, "reported_attack"] = str(given.get("attack", "AutoAttack"))
        table.at[i, "reported_source"] = str(given.get("source", ""))
        table.at[i, "reported_against"] = against
        apart = []
        checks: list[tuple[str, str | None, float]] = [
            ("clean", "clean_accuracy", given["clean"]), ("robust", against, given["robust"])]
        for what, epsl_column, value in checks:
            if epsl_column is None or pd.isna(table.at[i, epsl_column]):
                continue
            lo, hi = table.at[i, f"{epsl_column}_lo"], table.at[i, f"{epsl_column}_hi"]
            if _outside(float(value), lo, hi):
                side = "above" if float(value) > float(hi) else "below"
                apart.append(f"{what} {float(value):.1%} {side} epsl's [{100 * float(lo):.1f}, "
                             f"{100 * float(hi):.1f}]")
        table.at[i, "reported_verdict"] = "disagrees: " + "; ".join(apart) if apart\
            else "agrees"
    return table


#: an interval wider than this (a fraction) makes agreement with a reported accuracy weak
WIDE_INTERVAL = 0.1


def reported_markdown(table: pd.DataFrame) -> str:
    """epsl's clean accuracy and worst case beside a leaderboard's, per model with reported
    numbers, as Markdown, then one plain sentence on how many disagree ('' without
    :func:`with_reported` columns)."""
    if "reported_robust" not in table.columns or table["reported_robust"].isna().all():
        return ""
    rows = table[table["reported_robust"].notna()]
    worst = [c if isinstance(c, str) else None for c in rows["reported_against"]]
    attack = str(rows["reported_attack"].dropna().iloc[0]) if\
        rows["reported_attack"].notna().any() else "reported"
    shown = pd.DataFrame({
        "model": list(rows["model"]),
        "clean (epsl)": column_cells(rows, "clean_accuracy"),
        "clean (reported)": column_cells(rows, "reported_clean"),
        "worst case (epsl)": [format_cell(c, rows.at[i, c], (rows.at[i, f"{c}_lo"],
                                                             rows.at[i, f"{c}_hi"]))
                              if c is not None else "–" for i, c in zip(rows.index, worst,
                                                                        strict=True)],
        f"{attack} (reported)": column_cells(rows, "reported_robust"),
        "verdict": [str(v) for v in rows["reported_verdict"]]})
    apart = int(rows["reported_verdict"].astype(str).str.startswith("disagrees").sum())
    models = f"{len(rows)} model{'s' if len(rows) > 1 else ''}"
    if apart:
        text = (f"{apart} of {models} disagree{'s' if len(rows) == 1 else ''} with the "
                "reported accuracies by more than epsl's 95% interval: these numbers are not "
                "the leaderboard's. Random or other weights, another sample of the test set, "
                "or a weaker or stronger attack make them differ; with the real weights on "
                "many examples, a reported robust accuracy below epsl's interval says epsl's "
                "attacks are weaker on that model, above it that they are stronger.")
    else:
        text = (f"{'All ' if len(rows) > 1 else 'The '}{models} agree{'' if len(rows) > 1 else 's'}"
                " with the reported accuracies within epsl's 95% interval.")
    widths = [float(rows.at[i, f"{c}_hi"] - rows.at[i, f"{c}_lo"]) for i in rows.index
              for c in ("clean_accuracy", *[w for w in worst if w is not None])
              if f"{c}_hi" in rows.columns and pd.notna(rows.at[i, f"{c}_hi"])]
    if widths and max(widths) > WIDE_INTERVAL:
        n = int(rows["n"].min()) if "n" in rows.columns and rows["n"].notna().any() else 0
        text += (f" On {n:,} examples epsl's intervals are up to {100 * max(widths):.0f} "
                 "points wide, so agreement within them says little; evaluate more examples "
                 "(the leaderboard uses all 10,000 test images).")
    return markdown_table(shown) + "\n" + text + "\n"
