"""The comparison of Tables 1-4 (and 6-8) of the paper, from saved per-example tables.

One row per model: its defense parameters (α, β, σ, adversarial training and κ, training
steps), train and test accuracy from the checkpoint, the clean accuracy and the Eq. 4 predicted
accuracy (share of examples with ε < ε_L) on the evaluated examples, white-box FGSM and PGD
accuracy on the cross-entropy and CW losses, black-box (transfer) accuracy, and the audit's
worst case; with ε* tables (``epsl eps-star``), the accuracy by ε* and the report card of
Eq. 4 (Spearman's ρ of ε_L and ε*, the median ratio ε_L / ε*, the share of examples where Eq. 4
is optimistic and the ε from which its curve overstates the accuracy). Every accuracy is a
mean over per-example rows, and every one computed here from such rows carries its 95%
Clopper–Pearson interval in ``<column>_lo`` and ``<column>_hi`` (shown as
``76.9% [72.2, 81.1]``); train and test accuracy come from the checkpoint's metadata, without
the rows an interval needs.

Every table is in one threat model (:mod:`epsl.norms`): runs of two norms are refused
(:func:`~epsl.analysis.folders.common_norm`); the ``norm`` column (``linf``, ``l2``, ``l1``) says
which, and the written Markdown and HTML say it once above the table
(:func:`~epsl.analysis.display.norm_line`) rather than in every row.

Here the table is built (:func:`comparison_table`) and written (:func:`write_comparison`); its
columns are in :mod:`~epsl.analysis.columns`, its display strings, Markdown and HTML in
:mod:`~epsl.analysis.display`, the reported accuracies in :mod:`~epsl.analysis.reported`, the
spread over training seeds in :mod:`~epsl.analysis.seeds` and a study's headline in
:mod:`~epsl.analysis.headline`; the functions other modules use from those are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from epsl.norms import Norm, parse_norm
from epsl.results.files import write_table, write_text

from .cards import report_card
from .columns import BASE_COLUMNS, FIRST_ATTACKS, TAIL_COLUMNS, attack_column, is_interval_bound
from .display import format_table, norm_line, table_norm, to_html, to_markdown
from .folders import Run, common_norm, defense_params
from .headline import card_frame, card_markdown, headline
from .metrics import (
    attack_accuracies,
    clopper_pearson,
    main_eps,
    normalise_attacks,
    pick_eps,
    predicted_accuracy,
    strongest_setting,
)
from .paired import paired_markdown
from .reported import reported_markdown, with_reported
from .seeds import seed_summary, seed_table

__all__ = ["card_frame", "card_markdown", "comparison_row", "comparison_table", "format_table",
           "headline", "norm_line", "reported_markdown", "seed_summary", "seed_table",
           "table_norm", "to_html", "to_markdown", "with_reported", "write_comparison"]


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _training_steps(meta: dict[str, Any]) -> float:
    config = meta.get("train_config") or {}
    for key in ("steps", "steps_done"):
        value = config.get(key) if isinstance(config, dict) else None
        value = value if value is not None else meta.get(key)
        if value is not None:
            return _number(value)
    return math.nan


def _table_eps(runs: Sequence[Run], eps: float | None) -> float | None:
    if eps is not None:
        return float(eps)
    values = [v for r in runs if r.attack is not None
              for v in [main_eps(r.attack, r.attack_summary)] if v is not None]
    if values:
        return float(max(values))
    for run in runs:
        listed = run.summary.get("eps")
        if isinstance(listed, list) and listed:
            return float(max(listed))
        if isinstance(listed, int | float):
            return float(listed)
    return None


def _with_interval(row: dict[str, Any], column: str, k: int, n: int) -> None:
    """``row[column] = k / n`` and its 95% Clopper–Pearson interval in ``column_lo/_hi``."""
    row[column] = k / n if n else math.nan
    row[f"{column}_lo"], row[f"{column}_hi"] = clopper_pearson(k, n)


def _survived(attack: pd.DataFrame, settings: pd.DataFrame) -> pd.Series:
    """Per example, whether it survives every one of ``settings`` (rows of
    :func:`attack_accuracies`): the worst case over the table's attack columns."""
    frame = normalise_attacks(attack)
    keys = ["attack", "loss_name", "steps", "restarts", "transfer"]
    chosen = frame.merge(settings[keys + ["eps"]].drop_duplicates(), on=keys, how="inner",
                         suffixes=("", "_chosen"))
    chosen = chosen[np.isclose(chosen["eps"].astype(float), chosen["eps_chosen"].astype(float))]
    return chosen.groupby("index")["correct"].all()


def comparison_row(run: Run, eps: float | None) -> dict[str, Any]:
    """One model's row of :func:`comparison_table` at attack radius ``eps``."""
    d = defense_params(run.meta)
    metrics = run.meta.get("metrics") or {}
    adv = str(d.get("adv") or "none")
    row: dict[str, Any] = {
        "model": run.label, "run": run.name, "dataset": run.meta.get("dataset"),
        "arch": run.meta.get("arch"), "norm": parse_norm(run.norm).value,
        "alpha": _number(d.get("label_smoothing", 0.0) if d else math.nan),
        "beta": _number(d.get("logit_squeeze", 0.0) if d else math.nan),
        "sigma": _number(d.get("noise_sigma", 0.0) if d else math.nan),
        "adv": adv if d else None,
        "adv_eps": _number(d.get("adv_eps")) if adv != "none" else math.nan,
        "kappa": _number(d.get("adv_kappa")) if adv != "none" else math.nan,
        "steps": _training_steps(run.meta),
        "train_accuracy": _number(metrics.get("train_accuracy")),
        "test_accuracy": _number(metrics.get("test_accuracy")),
        "n": math.nan, "clean_accuracy": math.nan, "eps": eps, "eq4_predicted": math.nan,
    }
    if run.diagnostics is not None:
        n = row["n"] = len(run.diagnostics)
        _with_interval(row, "clean_accuracy", int(run.diagnostics["correct"].astype(bool).sum()),
                       n)
        if eps is not None:
            _with_interval(row, "eq4_predicted",
                           round(predicted_accuracy(run.diagnostics, eps) * n), n)
    if run.attack is not None and eps is not None:
        settings = attack_accuracies(run.attack)
        at = pick_eps(settings["eps"], eps)
        if at is not None:
            strongest = strongest_setting(settings[np.isclose(settings["eps"], at)])
            for record in strongest.itertuples():
                column = attack_column(str(record.attack), str(record.loss_name),
                                       bool(record.transfer))
                _with_interval(row, column, round(float(record.accuracy) * int(record.n)),
                               int(record.n))
                if record.attack == "pgd" and not record.transfer:
                    row["pgd_steps"] = max(int(record.steps), int(row.get("pgd_steps", 0)))
            survived = _survived(run.attack, strongest)
            _with_interval(row, "attacks_worst", int(survived.sum()), len(survived))
    if run.audit is not None:
        audit_eps = _number(run.audit_summary.get("eps"))
        if eps is None or math.isnan(audit_eps) or np.isclose(audit_eps, eps):
            robust = run.audit["robust"].astype(str).str.lower().isin(["true", "1", "1.0"])
            _with_interval(row, "audit_worst", int(robust.sum()), len(robust))
            row["audit_n"] = len(run.audit)  # the audit may run on fewer examples than n
            if run.audit_summary.get("verdict"):
                row["audit_verdict"] = str(run.audit_summary["verdict"])
    if run.eps_star is not None:
        _card_row(row, run, eps)
    if run.certify is not None:
        _proof_row(row, run, eps)
    return row


def _proof_row(row: dict[str, Any], run: Run, eps: float | None) -> None:
    """The certified accuracy at ``eps`` and the three-way card of Eq. 4 on the certified
    examples (the first ``certify_n`` of the run's; their own share of the correct ones)."""
    assert run.certify is not None
    table = run.certify
    row["certify_n"] = len(table)
    if eps is not None:
        _with_interval(row, "certified_accuracy", int((table["eps_cert"] > eps).sum()),
                       len(table))
    correct = int((table["group"] != "misclassified").sum())
    for column, group in (("eq4_conservative", "conservative"),
                          ("eq4_proven_optimistic", "optimistic"),
                          ("eq4_undecided", "undecided")):
        _with_interval(row, column, int((table["group"] == group).sum()), correct)


def _card_row(row: dict[str, Any], run: Run, eps: float | None) -> None:
    """ε*'s accuracy at ``eps`` and the report card of Eq. 4 (from the record, else computed
    from the table)."""
    assert run.eps_star is not None
    eps_star = run.eps_star["eps_star"].astype(float)
    if eps is not None:
        _with_interval(row, "eps_star_accuracy", int((eps_star > eps).sum()), len(eps_star))
    card = run.eps_star_summary.get("report_card") or report_card(run.eps_star["eps_l"], eps_star,
                                                                 norm=run.norm)
    for column, key in (("eq4_spearman", "spearman"), ("eq4_ratio_median", "ratio_median"),
                        ("eq4_optimistic", "optimistic_share")):
        row[column] = _number(card.get(key))
        base = key.removesuffix("_share")
        row[f"{column}_lo"] = _number(card.get(f"{base}_lo"))
        row[f"{column}_hi"] = _number(card.get(f"{base}_hi"))
    start = card.get("optimistic_from_eps")
    row["eq4_optimistic_from"] = math.inf if start is None else _number(start)


def comparison_table(runs: Sequence[Run], *, eps: float | None = None) -> pd.DataFrame:
    """Tables 1-4 of the paper in one frame: one row per run, accuracies as fractions in [0,1].

    Every run must be in one norm (a one-line ``EpslError`` names two that are not); its
    ``norm`` column says which. ``eps`` (pixel units, [0,1] scale, in that norm) defaults to
    the ε the attacks were made for (the attack summary's, else the ε with the most settings).
    Attack columns are named :func:`attack_column` (``fgsm_xent``, ``pgd_cw``,
    ``transfer_pgd_cw``...) and hold the mean of ``correct`` for the setting with the most
    steps, then restarts;
    ``audit_worst`` is the mean of the audit's per-example ``robust`` flag (robust only if the
    example survives every attack) over its ``audit_n`` examples (the first ``audit_n`` of the
    ``n``; an audit may use fewer).
    """
    common_norm(runs)
    at = _table_eps(runs, eps)
    rows = [comparison_row(r, at) for r in runs]
    frame = pd.DataFrame(rows)
    attacks = [c for c in frame.columns if c not in BASE_COLUMNS and not is_interval_bound(c)
               and c not in TAIL_COLUMNS]
    attacks = [c for c in FIRST_ATTACKS if c in attacks] + sorted(
        c for c in attacks if c not in FIRST_ATTACKS and not c.startswith("transfer_")) +\
        sorted(c for c in attacks if c.startswith("transfer_"))
    tail = [c for c in TAIL_COLUMNS if c in frame.columns]
    order = [c for column in BASE_COLUMNS + attacks + tail
             for c in (column, f"{column}_lo", f"{column}_hi")
             if c == column or c in frame.columns]
    return frame.reindex(columns=order)


def write_comparison(out_dir: Path | str, table: pd.DataFrame, *,
                     name: str = "comparison", paired: pd.DataFrame | None = None
                     ) -> dict[str, Path]:
    """Write ``name.csv`` (raw fractions and interval bounds), ``name.md`` (formatted) and,
    with ``paired`` (:func:`epsl.analysis.paired.paired_tests`), ``paired.csv``, atomically."""
    out_dir = Path(out_dir)
    norm = table_norm(table)
    written = {"csv": write_table(table, out_dir / f"{name}.csv")}
    md = out_dir / f"{name}.md"
    eps = table["eps"].dropna()
    title = f"Comparison at ε = {float(eps.iloc[0]):g}" if len(eps) else "Comparison"
    if norm is not Norm.LINF:
        title += f" ({norm.label})"
    text = (f"# {title}\n\n{norm_line(norm)}\n\nAccuracies are shares of the evaluated "
            "examples with their 95% Clopper–Pearson interval; Eq. 4 is the share with "
            "ε < ε_L.\n\n" + to_markdown(table))
    if paired is not None and not paired.empty:
        written["paired"] = write_table(paired, out_dir / "paired.csv")
        text += ("\n## Paired tests\n\nWorst-case robust accuracy of each model against a "
                 "reference on the same examples (difference in points, Newcombe's 95% interval "
                 "for paired proportions, exact McNemar p-value); against Eq. 4: the empirical "
                 "worst case minus the prediction.\n\n" + paired_markdown(paired))
    write_text(md, text)
    written["md"] = md
    return written
