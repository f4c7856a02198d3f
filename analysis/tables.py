"""The comparison of Tables 1-4 (and 6-8) of the paper, from saved per-example tables.

One row per model: its defense parameters (α, β, σ, adversarial training and κ, training
steps), train and test accuracy from the checkpoint, the clean accuracy and the Eq. 4 predicted
accuracy (share of examples with ε < ε_L) on the evaluated examples, white-box FGSM and PGD
accuracy on the cross-entropy and CW losses, black-box (transfer) accuracy, and the audit's
worst case; with ε* tables (``epsl calibrate``), the accuracy by ε* and the report card of
Eq. 4 (Spearman's ρ of ε_L and ε*, the median ratio ε_L / ε*, the share of examples where Eq. 4
is optimistic and the ε from which its curve overstates the accuracy). Every accuracy is a
mean over per-example rows, and every one computed here from such rows carries its 95%
Clopper–Pearson interval in ``<column>_lo`` and ``<column>_hi`` (shown as
``76.9% [72.2, 81.1]``); train and test accuracy come from the checkpoint's metadata, without
the rows an interval needs.

Every table is in one threat model (:mod:`epsl.norms`): runs of two norms are refused
(:func:`~epsl.analysis.folders.common_norm`); the ``norm`` column (``linf``, ``l2``, ``l1``) says
which, and the written Markdown and HTML say it once above the table (:func:`norm_line`) rather
than in every row.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from epsl.errors import EpslError
from epsl.norms import Norm, dual, parse_norm
from epsl.results.files import write_table, write_text

from .cards import report_card
from .folders import Run, common_norm, defense_params
from .metrics import (
    attack_accuracies,
    clopper_pearson,
    main_eps,
    normalise_attacks,
    pick_eps,
    predicted_accuracy,
    strongest_setting,
)
from .paired import paired_lines, paired_markdown

#: Columns always present, in order; attack columns follow (see :func:`attack_column`).
BASE_COLUMNS = ["model", "run", "dataset", "arch", "norm", "alpha", "beta", "sigma", "adv", "adv_eps",
                "kappa", "steps", "train_accuracy", "test_accuracy", "n", "clean_accuracy",
                "eps", "eq4_predicted"]
_FIRST_ATTACKS = ["fgsm_xent", "fgsm_cw", "pgd_xent", "pgd_cw"]
_FRACTIONS = {"train_accuracy", "test_accuracy", "clean_accuracy", "eq4_predicted",
              "attacks_worst", "audit_worst"}
#: The report card of Eq. 4 (numbers that are not accuracies, shown with 3 decimals).
_CARD_STATS = {"eq4_spearman", "eq4_ratio_median"}
#: Columns after the attacks, in order.
_TAIL = ("pgd_steps", "eps_star_accuracy", "attacks_worst", "audit_worst", "audit_n",
         "audit_verdict", "eq4_spearman", "eq4_ratio_median", "eq4_optimistic",
         "eq4_optimistic_from", "certified_accuracy", "eq4_conservative", "eq4_proven_optimistic",
         "eq4_undecided", "certify_n", "reported_clean", "reported_robust", "reported_attack",
         "reported_against", "reported_verdict", "reported_source")
_NOT_FRACTIONS = (set(BASE_COLUMNS) - _FRACTIONS) | {"pgd_steps", "audit_n", "audit_verdict",
                                                     "eq4_optimistic_from", "certify_n",
                                                     "reported_attack", "reported_against",
                                                     "reported_verdict", "reported_source"} \
    | _CARD_STATS
HEADERS = {"model": "model", "run": "run", "dataset": "data", "arch": "arch", "norm": "norm",
           "alpha": "α",
           "beta": "β", "sigma": "σ", "adv": "adv", "adv_eps": "adv ε", "kappa": "κ",
           "steps": "k (steps)", "train_accuracy": "train", "test_accuracy": "test", "n": "n",
           "clean_accuracy": "clean", "eps": "ε", "eq4_predicted": "Eq. 4",
           "pgd_steps": "PGD steps", "attacks_worst": "worst of these attacks",
           "audit_worst": "audit worst case", "audit_n": "audit n",
           "audit_verdict": "audit verdict", "eps_star_accuracy": "ε* (min-norm)",
           "eq4_spearman": "ρ(ε_L, ε*)", "eq4_ratio_median": "median ε_L/ε*",
           "eq4_optimistic": "Eq. 4 optimistic", "eq4_optimistic_from": "Eq. 4 overstates from ε",
           "certified_accuracy": "certified (CROWN)",
           "eq4_conservative": "Eq. 4 provably conservative",
           "eq4_proven_optimistic": "Eq. 4 provably optimistic",
           "eq4_undecided": "undecided", "certify_n": "certify n",
           "reported_clean": "reported clean", "reported_robust": "reported robust",
           "reported_attack": "reported attack", "reported_against": "epsl's column",
           "reported_verdict": "against reported", "reported_source": "reported by"}


def attack_column(attack: str, loss: str, transfer: bool) -> str:
    """``fgsm_xent``, ``pgd_cw``, ``transfer_pgd_cw``, ``apgd_dlr``..."""
    return f"{'transfer_' if transfer else ''}{attack}_{loss}".replace("-", "_")


_TEXT_HEADERS = {"model", "run", "data", "arch", "norm", "adv", "audit verdict",
                 "reported attack", "epsl's column", "against reported", "reported by",
                 "verdict"}


def _header(column: str, norm: Norm = Norm.LINF) -> str:
    if column in HEADERS:
        return HEADERS[column]
    transfer = column.startswith("transfer_")
    name = column.removeprefix("transfer_")
    attack, _, loss = name.rpartition("_")
    # the one-step attack is FGSM (the sign of the gradient) only in l_inf; FGM elsewhere
    attack = "fgm" if attack == "fgsm" and norm is not Norm.LINF else attack
    text = f"{attack.upper()} {loss.upper() if loss == 'cw' else loss}"
    return f"black-box {text}" if transfer else text


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


def _bounds(column: str) -> bool:
    return column.endswith(("_lo", "_hi"))


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
    if run.minimal is not None:
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
    assert run.minimal is not None
    eps_star = run.minimal["eps_star"].astype(float)
    if eps is not None:
        _with_interval(row, "eps_star_accuracy", int((eps_star > eps).sum()), len(eps_star))
    card = run.minimal_summary.get("report_card") or report_card(run.minimal["eps_l"], eps_star,
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
    attacks = [c for c in frame.columns if c not in BASE_COLUMNS and not _bounds(c)
               and c not in _TAIL]
    attacks = [c for c in _FIRST_ATTACKS if c in attacks] + sorted(
        c for c in attacks if c not in _FIRST_ATTACKS and not c.startswith("transfer_")) + \
        sorted(c for c in attacks if c.startswith("transfer_"))
    tail = [c for c in _TAIL if c in frame.columns]
    order = [c for column in BASE_COLUMNS + attacks + tail
             for c in (column, f"{column}_lo", f"{column}_hi")
             if c == column or c in frame.columns]
    return frame.reindex(columns=order)


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
        table.at[i, "reported_verdict"] = "disagrees: " + "; ".join(apart) if apart \
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
    attack = str(rows["reported_attack"].dropna().iloc[0]) if \
        rows["reported_attack"].notna().any() else "reported"
    shown = pd.DataFrame({
        "model": list(rows["model"]),
        "clean (epsl)": _cells(rows, "clean_accuracy"),
        "clean (reported)": _cells(rows, "reported_clean"),
        "worst case (epsl)": [_cell(c, rows.at[i, c], (rows.at[i, f"{c}_lo"],
                                                       rows.at[i, f"{c}_hi"]))
                              if c is not None else "–" for i, c in zip(rows.index, worst,
                                                                        strict=True)],
        f"{attack} (reported)": _cells(rows, "reported_robust"),
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
    return _markdown(shown) + "\n" + text + "\n"


def _cell(column: str, value: Any, interval: tuple[Any, Any] | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if column in _CARD_STATS:
        lo, hi = interval if interval is not None else (math.nan, math.nan)
        if pd.isna(lo) or pd.isna(hi):
            return f"{float(value):.3f}"
        return f"{float(value):.3f} [{float(lo):.3f}, {float(hi):.3f}]"
    if column == "eq4_optimistic_from":
        return "never" if math.isinf(float(value)) else f"{float(value):.3g}"
    if column not in _NOT_FRACTIONS:  # accuracies: train/test/clean/Eq. 4/attacks/audit
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
    columns = [c for c in table.columns if not _bounds(c) and c != "norm"  # said above it
               and not (drop_empty and table[c].isna().all())]
    norm = table_norm(table)
    return pd.DataFrame({_header(c, norm): _cells(table, c) for c in columns})


def _cells(table: pd.DataFrame, column: str) -> list[str]:
    """One column's display strings, each accuracy with its interval when the table has it."""
    lo, hi = f"{column}_lo", f"{column}_hi"
    if lo in table.columns and hi in table.columns:
        return [_cell(column, v, (a, b)) for v, a, b in zip(table[column], table[lo], table[hi],
                                                             strict=True)]
    return [_cell(column, v) for v in table[column]]


def _markdown(shown: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of string cells; text columns left-aligned."""
    escape = [[str(v).replace("|", "\\|") for v in row] for row in shown.itertuples(index=False)]
    lines = ["| " + " | ".join(shown.columns) + " |",
             "|" + "|".join("---" if c in _TEXT_HEADERS else "--:" for c in shown.columns)
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
    return _markdown(format_table(table.drop(
        columns=["audit_verdict", "reported_source", "reported_verdict", "reported_against"],
        errors="ignore")))


#: The README's headline columns of a study: (comparison column, header); ``{pgd}`` is the
#: paper's PGD-k with its k.
HEADLINE = [("model", "model"), ("clean_accuracy", "clean"), ("eq4_predicted", "Eq. 4 predicted"),
            ("fgsm_xent", "FGSM"), ("pgd_cw", "{pgd} (CW)"),
            ("transfer_pgd_cw", "transfer {pgd} (CW)"), ("audit_worst", "worst case, all attacks")]


#: The report card of Eq. 4 in the headline: (comparison column, header).
CARD_HEADLINE = [("model", "model"), ("eps_star_accuracy", "accuracy by ε*"),
                 ("eq4_spearman", "Spearman ρ(ε_L, ε*)"),
                 ("eq4_ratio_median", "median ε_L / ε*"),
                 ("eq4_optimistic", "optimistic (ε_L > ε*)"),
                 ("eq4_optimistic_from", "Eq. 4 overstates accuracy from ε")]


#: The three-way card of Eq. 4 in the headline: (comparison column, header).
PROOF_HEADLINE = [("model", "model"), ("certified_accuracy", "certified accuracy"),
                  ("eq4_conservative", "provably conservative (ε_L ≤ ε_cert)"),
                  ("eq4_proven_optimistic", "provably optimistic (ε_L > ε*)"),
                  ("eq4_undecided", "undecided")]


def proof_markdown(table: pd.DataFrame) -> str:
    """The three-way card per model as Markdown ('' without certify tables)."""
    if "eq4_conservative" not in table.columns or table["eq4_conservative"].isna().all():
        return ""
    return _markdown(pd.DataFrame({header: _cells(table, column)
                                   for column, header in PROOF_HEADLINE
                                   if column in table.columns}))


def card_frame(table: pd.DataFrame) -> pd.DataFrame | None:
    """The report card of Eq. 4 per model as display strings (None without ε* tables)."""
    if "eq4_spearman" not in table.columns or table["eq4_spearman"].isna().all():
        return None
    return pd.DataFrame({header: _cells(table, column) for column, header in CARD_HEADLINE
                         if column in table.columns})


def card_markdown(table: pd.DataFrame) -> str:
    """The report card of Eq. 4 per model as Markdown ('' without ε* tables)."""
    shown = card_frame(table)
    return "" if shown is None else _markdown(shown)


def headline(table: pd.DataFrame, *, source_run: str | None = None,
             paired: pd.DataFrame | None = None, seeds: pd.DataFrame | None = None,
             sections: dict[str, pd.DataFrame] | None = None) -> str:
    """The few columns a terminal can show, as Markdown with 95% intervals, then one line per
    model with the audit's verdict and, with ``paired`` (:func:`~epsl.analysis.paired.
    paired_tests`), each model's worst case against adversarial training and against Eq. 4:
    what ``epsl reproduce`` ends with (the full table stays in ``comparison.csv``/``.md``).
    ``source_run`` (the ``run`` whose adversarial examples the transfer columns use) shows
    ``(source)`` in its own transfer cell; ``seeds`` (:func:`seed_summary`) adds the mean and
    sd over training seeds; ``sections`` (folder name → comparison table of another norm, as
    a study's ``[[threat_models]]``) adds each one's report card of Eq. 4."""
    steps = table["pgd_steps"].dropna() if "pgd_steps" in table else pd.Series(dtype=float)
    # the paper's PGD-k of the study: the k most models were attacked with (a model with a
    # steps sweep reports its longest PGD in the full table)
    pgd = f"PGD-{int(steps.mode().iloc[0])}" if len(steps) else "PGD"
    columns = [(c, h.format(pgd=pgd)) for c, h in HEADLINE
               if c in table.columns and table[c].notna().any()]
    shown = pd.DataFrame({
        header: ["(source)" if column.startswith("transfer_") and run == source_run
                 else cell for run, cell in zip(table["run"], _cells(table, column),
                                                strict=True)]
        for column, header in columns})
    text = _markdown(shown)
    norm = table_norm(table)
    if norm is not Norm.LINF:  # the paper's threat model goes without saying
        text = f"{norm_line(norm)}\n\n{text}"
    card = card_markdown(table)
    if card:
        eps = table["eps"].dropna()
        at = f" at ε = {float(eps.iloc[0]):g}" if len(eps) else ""
        text += ("\nEq. 4 against ε*, the smallest perturbation that really flips each example "
                 f"(accuracy by ε*{at}; the rest on the correctly classified examples, 95% "
                 "intervals):\n\n" + card)
    proofs = proof_markdown(table)
    if proofs:
        eps = table["eps"].dropna()
        at = f" at ε = {float(eps.iloc[0]):g}" if len(eps) else ""
        count = table["certify_n"].dropna()
        images = f"the first {int(count.max())} test images" if len(count) else "some images"
        text += (f"\nWith proofs, on {images} (CROWN's ε_cert ≤ the true minimum ≤ ε*; "
                 f"certified accuracy{at}; the shares of the correctly classified, 95% "
                 "intervals):\n\n" + proofs)
    against = reported_markdown(table)
    if against:
        eps = table["eps"].dropna()
        at = f" at ε = {float(eps.iloc[0]):g}" if len(eps) else ""
        sources = sorted({str(s) for s in table["reported_source"].dropna()})
        text += (f"\nAgainst the reported accuracies{at} (epsl's worst case over every attack "
                 f"it ran, 95% intervals, on its own examples; reported: "
                 f"{'; '.join(sources)}):\n\n" + against)
    for folder, other in (sections or {}).items():
        other_card = card_markdown(other)
        if other_card:
            eps = other["eps"].dropna()
            at = f" at ε = {float(eps.iloc[0]):g}" if len(eps) else ""
            text += (f"\nIn {table_norm(other).label} ({folder}/comparison.md), Eq. 4 against "
                     f"ε* in the same norm (accuracy by ε*{at}):\n\n" + other_card)
    if seeds is not None and not seeds.empty:
        count = int(seeds["seeds"].max())
        text += (f"\nAcross {count} training seeds (mean ± sd in points; each seed's numbers in "
                 "seeds.csv; the audit and the table above are the main seed's):\n\n"
                 + seeds_markdown(seeds, pgd=pgd))
    if "audit_verdict" in table and table["audit_verdict"].notna().any():
        eps = table["eps"].dropna()
        at = f" at ε = {float(eps.iloc[0]):g}" if len(eps) else ""
        text += f"\nAudit{at}:\n"
        for row in table.itertuples():
            n = getattr(row, "audit_n", math.nan)
            on = f" ({int(n)} examples)" if isinstance(n, int | float) and n == n else ""
            verdict = row.audit_verdict if isinstance(row.audit_verdict, str) else "not audited"
            text += f"- {row.model}: {verdict}{on}\n"
    if paired is not None and not paired.empty:
        for against, title in (("adversarial training", "Worst case against adversarial "
                                "training, in points (95% CI, exact McNemar p)"),
                               ("Eq. 4", "Worst case minus Eq. 4's prediction, in points "
                                "(positive: Eq. 4 is pessimistic)")):
            lines = paired_lines(paired, against)
            if lines:
                text += f"\n{title}:\n" + "\n".join(lines) + "\n"
    return text


def to_html(table: pd.DataFrame) -> str:
    """An HTML ``<table>`` of :func:`format_table` (escaped; no external assets)."""
    shown = format_table(table)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in shown.itertuples(index=False))
    return (f'<table class="comparison"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


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


#: The accuracies compared across training seeds (all from Eq. 4 and the paper's attacks,
#: which every seed's models get; the audit runs on the main seed only).
SEED_COLUMNS = ["clean_accuracy", "eq4_predicted", "fgsm_xent", "fgsm_cw", "pgd_xent", "pgd_cw",
                "transfer_fgsm_cw", "transfer_pgd_cw", "attacks_worst"]


def seed_table(tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """One row per model and training seed: ``model, run, seed`` and the
    :data:`SEED_COLUMNS` of each seed's comparison table (keyed by seed)."""
    frames = []
    for seed, table in tables.items():
        columns = ["model", "run", *[c for c in SEED_COLUMNS if c in table.columns]]
        frames.append(table[columns].assign(seed=seed))
    frame = pd.concat(frames, ignore_index=True)
    return frame[["model", "run", "seed", *[c for c in SEED_COLUMNS if c in frame.columns]]]


def seed_summary(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per model (in the order of the first seed), the number of seeds and the mean and
    sample standard deviation (ddof 1) of every accuracy over them: ``<column>_mean``,
    ``<column>_sd``."""
    columns = [c for c in SEED_COLUMNS if c in per_seed.columns]
    grouped = per_seed.groupby("model", sort=False)
    summary = pd.DataFrame({"model": list(grouped.groups),
                            "seeds": grouped["seed"].nunique().to_numpy()})
    for column in columns:
        summary[f"{column}_mean"] = grouped[column].mean().to_numpy()
        summary[f"{column}_sd"] = grouped[column].std(ddof=1).to_numpy()
    return summary


_SEED_HEADLINE = [("clean_accuracy", "clean"), ("eq4_predicted", "Eq. 4 predicted"),
                  ("fgsm_xent", "FGSM"), ("pgd_cw", "{pgd} (CW)"),
                  ("transfer_pgd_cw", "transfer {pgd} (CW)"),
                  ("attacks_worst", "paper's attacks (worst)")]


def seeds_markdown(summary: pd.DataFrame, *, pgd: str = "PGD") -> str:
    """The spread over training seeds as Markdown: ``mean ± sd`` in points per model."""
    columns = [(c, h.format(pgd=pgd)) for c, h in _SEED_HEADLINE
               if f"{c}_mean" in summary.columns and summary[f"{c}_mean"].notna().any()]
    shown = pd.DataFrame({"model": summary["model"], **{
        header: [f"{100 * m:.1f} ± {100 * s:.1f}" if pd.notna(m) and pd.notna(s) else "–"
                 for m, s in zip(summary[f"{c}_mean"], summary[f"{c}_sd"], strict=True)]
        for c, header in columns}})
    return _markdown(shown)
