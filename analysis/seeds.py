"""The spread of a study's accuracies over training seeds: one row per model and seed
(:func:`seed_table`), the mean and standard deviation per model (:func:`seed_summary`) and their
Markdown (:func:`seeds_markdown`).
"""

from __future__ import annotations

import pandas as pd

from .display import markdown_table

__all__ = ["SEED_COLUMNS", "seed_summary", "seed_table", "seeds_markdown"]

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
    return markdown_table(shown)
