"""The headline of a study (``headline.md``, what ``epsl reproduce`` ends with): the few
columns a terminal can show, the report cards of Eq. 4, the reported accuracies, the spread over
training seeds, the audit's verdicts and the paired tests, from its comparison tables.
"""

from __future__ import annotations

import math

import pandas as pd

from epsl.norms import Norm

from .display import column_cells, markdown_table, norm_line, table_norm
from .estimates import PREDICTOR_LABELS, estimates_markdown, estimates_sentence, predictor_label
from .labelled import is_labelled, labelled_markdown, labelled_sentence, pairs_markdown
from .paired import paired_lines
from .reported import reported_markdown
from .seeds import seeds_markdown

__all__ = ["CARD_HEADLINE", "HEADLINE", "PROOF_HEADLINE", "card_frame", "card_markdown",
           "estimates_section", "headline", "proof_markdown"]

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
    return markdown_table(pd.DataFrame({header: column_cells(table, column)
                                        for column, header in PROOF_HEADLINE
                                        if column in table.columns}))


def card_frame(table: pd.DataFrame) -> pd.DataFrame | None:
    """The report card of Eq. 4 per model as display strings (None without ε* tables)."""
    if "eq4_spearman" not in table.columns or table["eq4_spearman"].isna().all():
        return None
    return pd.DataFrame({header: column_cells(table, column) for column, header in CARD_HEADLINE
                         if column in table.columns})


def card_markdown(table: pd.DataFrame) -> str:
    """The report card of Eq. 4 per model as Markdown ('' without ε* tables)."""
    shown = card_frame(table)
    return "" if shown is None else markdown_table(shown)


def headline(table: pd.DataFrame, *, source_run: str | None = None,
             paired: pd.DataFrame | None = None, seeds: pd.DataFrame | None = None,
             sections: dict[str, pd.DataFrame] | None = None,
             estimates: pd.DataFrame | None = None,
             estimate_pairs: pd.DataFrame | None = None) -> str:
    """The few columns a terminal can show, as Markdown with 95% intervals, then one line per
    model with the audit's verdict and, with ``paired`` (:func:`~epsl.analysis.paired.
    paired_tests`), each model's worst case against adversarial training and against Eq. 4:
    what ``epsl reproduce`` ends with (the full table stays in ``comparison.csv``/``.md``).
    ``source_run`` (the ``run`` whose adversarial examples the transfer columns use) shows
    ``(source)`` in its own transfer cell; ``seeds`` (:func:`~epsl.analysis.seeds.seed_summary`)
    adds the mean and sd over training seeds; ``sections`` (folder name → comparison table of
    another norm, as a study's ``[[threat_models]]``) adds each one's report card of Eq. 4;
    ``estimates`` (:func:`~epsl.analysis.estimates.study_estimates`) adds one sentence on robust
    accuracy at ε_L's cost and its table (a labelled study's, with each pair's difference in
    ``estimate_pairs``)."""
    pgd = _paper_pgd(table)
    return (_columns_markdown(table, source_run, pgd) + _card_text(table) + _proof_text(table)
            + _reported_text(table) + _sections_text(sections or {}) + _seeds_text(seeds, pgd)
            + _audit_text(table) + _paired_text(paired)
            + estimates_section(estimates, estimate_pairs))


def _paper_pgd(table: pd.DataFrame) -> str:
    """``PGD-k``, the paper's PGD-k of the study: the k most models were attacked with (a model
    with a steps sweep reports its longest PGD in the full table)."""
    steps = table["pgd_steps"].dropna() if "pgd_steps" in table else pd.Series(dtype=float)
    return f"PGD-{int(steps.mode().iloc[0])}" if len(steps) else "PGD"


def _at_eps(table: pd.DataFrame) -> str:
    """`` at ε = <the table's ε>`` ('' without one)."""
    eps = table.get("eps", pd.Series(dtype=float)).dropna()
    return f" at ε = {float(eps.iloc[0]):g}" if len(eps) else ""


def _columns_markdown(table: pd.DataFrame, source_run: str | None, pgd: str) -> str:
    """The :data:`HEADLINE` columns that hold a number, under the norm's line where it is not
    the paper's ℓ∞."""
    columns = [(c, h.format(pgd=pgd)) for c, h in HEADLINE
               if c in table.columns and table[c].notna().any()]
    shown = pd.DataFrame({
        header: ["(source)" if column.startswith("transfer_") and run == source_run
                 else cell for run, cell in zip(table["run"], column_cells(table, column),
                                                strict=True)]
        for column, header in columns})
    text = markdown_table(shown)
    norm = table_norm(table)
    if norm is not Norm.LINF:  # the paper's threat model goes without saying
        text = f"{norm_line(norm)}\n\n{text}"
    return text


def _section(intro: str, body: str) -> str:
    """``body`` under its one-line ``intro``, after a blank line ('' without a body)."""
    return f"\n{intro}:\n\n{body}" if body else ""


def _card_text(table: pd.DataFrame) -> str:
    return _section("Eq. 4 against ε*, the smallest perturbation that really flips each example "
                    f"(accuracy by ε*{_at_eps(table)}; the rest on the correctly classified "
                    "examples, 95% intervals)", card_markdown(table))


def _proof_text(table: pd.DataFrame) -> str:
    count = table.get("certify_n", pd.Series(dtype=float)).dropna()
    images = f"the first {int(count.max())} test images" if len(count) else "some images"
    return _section(f"With proofs, on {images} (CROWN's ε_cert ≤ the true minimum ≤ ε*; "
                    f"certified accuracy{_at_eps(table)}; the shares of the correctly classified, "
                    "95% intervals)", proof_markdown(table))


def _reported_text(table: pd.DataFrame) -> str:
    sources = sorted({str(s) for s in table.get("reported_source", pd.Series(dtype=object)).dropna()})
    return _section(f"Against the reported accuracies{_at_eps(table)} (epsl's worst case over "
                    "every attack it ran, 95% intervals, on its own examples; reported: "
                    f"{'; '.join(sources)})", reported_markdown(table))


def _sections_text(sections: dict[str, pd.DataFrame]) -> str:
    """The report card of Eq. 4 of each other norm's comparison table (folder → table)."""
    text = ""
    for folder, other in sections.items():
        other_card = card_markdown(other)
        if other_card:
            text += (f"\nIn {table_norm(other).label} ({folder}/comparison.md), Eq. 4 against "
                     f"ε* in the same norm (accuracy by ε*{_at_eps(other)}):\n\n" + other_card)
    return text


def _seeds_text(seeds: pd.DataFrame | None, pgd: str) -> str:
    if seeds is None or seeds.empty:
        return ""
    count = int(seeds["seeds"].max())
    return (f"\nAcross {count} training seeds (mean ± sd in points; each seed's numbers in "
            "seeds.csv; the audit and the table above are the main seed's):\n\n"
            + seeds_markdown(seeds, pgd=pgd))


def _audit_text(table: pd.DataFrame) -> str:
    """One line per model with the audit's verdict (and on how many examples)."""
    if "audit_verdict" not in table or not table["audit_verdict"].notna().any():
        return ""
    text = f"\nAudit{_at_eps(table)}:\n"
    for row in table.itertuples():
        n = getattr(row, "audit_n", math.nan)
        on = f" ({int(n)} examples)" if isinstance(n, int | float) and n == n else ""
        verdict = row.audit_verdict if isinstance(row.audit_verdict, str) else "not audited"
        text += f"- {row.model}: {verdict}{on}\n"
    return text


def _paired_text(paired: pd.DataFrame | None) -> str:
    """The paired tests: each worst case against adversarial training and against Eq. 4."""
    if paired is None or paired.empty:
        return ""
    text = ""
    for against, title in (("adversarial training", "Worst case against adversarial "
                            "training, in points (95% CI, exact McNemar p)"),
                           ("Eq. 4", "Worst case minus Eq. 4's prediction, in points "
                            "(positive: Eq. 4 is pessimistic)")):
        lines = paired_lines(paired, against)
        if lines:
            text += f"\n{title}:\n" + "\n".join(lines) + "\n"
    return text


def estimates_section(estimates: pd.DataFrame | None, pairs: pd.DataFrame | None = None
                      ) -> str:
    """The section on robust accuracy at ε_L's cost (:func:`~epsl.analysis.estimates.
    study_estimates`, or a labelled study's :func:`~epsl.analysis.labelled.labelled_estimates`
    with its paired differences ``pairs``): one sentence, then the table under its intro line
    ('' without a row); the headline's and ``estimates.md``'s."""
    if estimates is None or estimates.empty:
        return ""
    if is_labelled(estimates):
        steps = estimates["pgd_steps"].dropna()
        predictor = predictor_label(str(estimates["predictor"].iloc[0]),
                                    *(int(steps.iloc[0]),) if len(steps) else ())
        return (f"\n{labelled_sentence(estimates)}\n" + _section(
            f"Robust accuracy at ε_L's cost{_at_eps(estimates)}: PPI++ from the full audit on "
            f"the labelled images and {predictor} on all, and the classical interval on the "
            "labelled images alone (95% intervals; estimates.csv)",
            labelled_markdown(estimates)) + _section(
            "Each difference in robust accuracy, from the same labelled images (PPI++ and the "
            "classical interval, 95%; estimate_pairs.csv)", pairs_markdown(pairs)))
    labelled = estimates["labelled"]
    share = (f"{int(labelled.iloc[0])} random images" if labelled.nunique() == 1 else
             f"a random {(labelled / estimates['images']).median():.0%} of each model's images")
    predictor = PREDICTOR_LABELS[str(estimates["predictor"].iloc[0])]
    return (f"\n{estimates_sentence(estimates)}\n" + _section(
        f"Robust accuracy at ε_L's cost{_at_eps(estimates)}: the full audit on all images beside "
        f"PPI++ from the full audit on {share} and {predictor} on all, and the classical "
        "interval on the audited images alone (one draw; 95% intervals; effective n and "
        f"coverage over {int(estimates['draws'].max()):,} draws, estimates.csv)",
        estimates_markdown(estimates)))
