"""Robust accuracy of a study that audits a random sample (``[audit] labelled = n``) or of
``epsl compare --labelled``: per model, the prediction-powered estimate on all its images from
the full audit on the labelled ones and the cheap predictor on all (the ``estimate`` result
that :mod:`epsl.runs.estimate` writes into ``<run>/estimate/``), as rows of the study's
estimates table (:data:`LABELLED_COLUMNS`: :data:`~epsl.analysis.estimates.ESTIMATE_COLUMNS`,
with no full audit to compare against, then the floor and ε_cert beside it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from epsl.analysis.display import format_cell, markdown_table
from epsl.analysis.estimates import (
    CHEAP_PGD_STEPS,
    ESTIMATE_COLUMNS,
    estimate,
    predictor_label,
)
from epsl.analysis.folders import Run
from epsl.errors import EpslError
from epsl.results.records import Result, holds, load

#: :data:`ESTIMATE_COLUMNS` (``audit_robust`` and the coverages NaN: no full audit; ``draws``
#: 0: one draw, the study's own), then the draw's seed, the cheap attack's steps, Eq. 4's and
#: the cheap attack's predicted accuracy with their exact 95% intervals, the floor's q and
#: calibration size, beside the floor the labelled, correctly classified images with
#: ε_cert > 0 and those whose floor ε_cert proves (NaN without certify or floor), and the
#: verdict of the labelled images' audit
LABELLED_COLUMNS = [*ESTIMATE_COLUMNS, "labelled_seed", "pgd_steps", "eq4_predicted_lo",
                    "eq4_predicted_hi", "pgd_predicted", "pgd_predicted_lo", "pgd_predicted_hi",
                    "floor_q", "floor_calibration", "certify_images", "certified",
                    "floor_proven", "audit_verdict"]


def estimate_result(run: Run) -> Result | None:
    """The ``estimate`` result in ``<run>/estimate/`` (None without one)."""
    folder = run.path / "estimate"
    return load(folder, "estimate") if holds(folder, "estimate") else None


def _effective(table: pd.DataFrame, mask: np.ndarray, eps: float, predictor: str) -> float:
    """The effective labelled size of ``predictor`` on this draw, as a multiple of n (NaN
    where the labelled images have no spread)."""
    try:
        found = estimate(table, mask, eps, predictor=predictor)
    except EpslError:
        return float("nan")
    return float(found.interval.effective_labelled) / int(mask.sum())


def _audit_verdict(run: Run, summary: dict[str, Any], eps: float) -> str:
    """The verdict of the labelled images' audit at ``eps`` ('' where it cannot be read)."""
    folder = (run.path / "estimate" / "labelled"
              / f"n{summary['labelled']}-seed{summary['labelled_seed']}" / f"audit-{eps!r}")
    try:
        return str(load(folder, "audit", table=False).summary.get("verdict", ""))
    except EpslError:
        return ""


def labelled_row(run: Run, result: Result) -> dict[str, Any]:
    """One row of :data:`LABELLED_COLUMNS` from ``run``'s ``estimate`` result, at its first ε."""
    summary, table = result.summary, result.table
    assert table is not None
    eps = float(summary["eps"][0])
    found = summary["results"][repr(eps)]
    rows = table[np.isclose(table["eps"].to_numpy(dtype=float), eps)].reset_index(drop=True)
    mask = rows["labelled"].astype(str).str.lower().isin(["true", "1", "1.0"]).to_numpy()
    refused = bool(found.get("refused"))
    (low, high), (c_low, c_high) = (found["robust_accuracy"]["interval"],
                                    found["classical"]["interval"])
    nan = float("nan")
    floor = summary.get("floor") or {}
    certify = summary.get("certify") or {}
    eq4, cheap = found["eq4_accuracy"], found["pgd_accuracy"]
    proven = certify.get("floor_proven")
    return {
        "model": run.name, "eps": eps, "images": len(rows), "labelled": int(mask.sum()),
        "predictor": summary["predictor"], "draws": 0, "audit_robust": nan,
        "audit_robust_lo": nan, "audit_robust_hi": nan,
        "ppi": nan if refused else found["robust_accuracy"]["estimate"],
        "ppi_lo": nan if refused else low, "ppi_hi": nan if refused else high,
        "classical": found["classical"]["estimate"], "classical_lo": c_low,
        "classical_hi": c_high, "eq4_predicted": eq4["estimate"],
        "coverage": nan, "classical_coverage": nan,
        "effective": nan if refused else found["effective_labelled"] / int(mask.sum()),
        "effective_eq4": _effective(rows, mask, eps, "eq4"),
        "width_ratio": nan if refused else (high - low) / (c_high - c_low),
        "floor_coverage": nan, "refused": int(refused),
        "labelled_seed": summary["labelled_seed"],
        "pgd_steps": summary.get("config", {}).get("attack", {}).get("steps", nan),
        "eq4_predicted_lo": eq4["interval"][0], "eq4_predicted_hi": eq4["interval"][1],
        "pgd_predicted": cheap["estimate"], "pgd_predicted_lo": cheap["interval"][0],
        "pgd_predicted_hi": cheap["interval"][1],
        "floor_q": floor.get("q", nan), "floor_calibration": floor.get("calibration", nan),
        "certify_images": certify.get("images", nan), "certified": certify.get("certified", nan),
        "floor_proven": nan if proven is None else proven,
        "audit_verdict": _audit_verdict(run, summary, eps)}


def labelled_estimates(runs: Sequence[Run]) -> pd.DataFrame:
    """:func:`labelled_row` of every run with an ``estimate`` result, in the runs' order (an
    empty frame with :data:`LABELLED_COLUMNS` without one)."""
    rows = [labelled_row(run, found) for run in runs
            if (found := estimate_result(run)) is not None]
    return pd.DataFrame(rows, columns=LABELLED_COLUMNS)


def is_labelled(frame: pd.DataFrame) -> bool:
    """Whether an estimates table is a labelled study's (:data:`LABELLED_COLUMNS`) rather than
    the simulation over a full audit's (:func:`~epsl.analysis.estimates.study_estimates`)."""
    return "floor_q" in frame.columns


def _cell(frame: pd.DataFrame, column: str) -> list[str]:
    """``estimate [low, high]`` per row, a normal interval shown within [0, 1]; '–' where
    there is none."""
    return ["–" if pd.isna(v) else format_cell("ppi", v, (max(lo, 0.0), min(hi, 1.0)))
            for v, lo, hi in zip(frame[column], frame[f"{column}_lo"], frame[f"{column}_hi"],
                                 strict=True)]


def _times(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:.1f}×"


def _floor_cell(row: pd.Series) -> str:
    if pd.isna(row["floor_q"]):
        return "–"
    if row["floor_q"] == 0:  # k = ⌊α(m + 1)⌋ = 0: no order statistic is low enough
        return f"none: {int(row['floor_calibration'])} images are too few"
    text = f"q = {row['floor_q']:.3f} ({int(row['floor_calibration'])} images)"
    if not pd.isna(row["floor_proven"]):
        text += (f"; proven by ε_cert on {int(row['floor_proven'])} of "
                 f"{int(row['certify_images'])}")
    return text


def _steps(frame: pd.DataFrame) -> int:
    steps = frame["pgd_steps"].dropna()
    return int(steps.iloc[0]) if len(steps) else CHEAP_PGD_STEPS


def labelled_markdown(frame: pd.DataFrame) -> str:
    """A labelled study's estimates as a Markdown table with 95% intervals ('' without a
    row): the labelled n of N, the PPI++ estimate, the classical one on the n alone, what
    Eq. 4 and the cheap attack predict on all, the effective labelled size (× n) of the
    predictor and of Eq. 4 alone, the floor ε* ≥ q·ε_L with, where certified, how many of its
    images ε_cert proves it on, and the labelled images' audit verdict."""
    if frame.empty:
        return ""
    short = {"eq4": "Eq. 4", "pgd": "PGD", "combined": "combined"}[str(frame["predictor"].iloc[0])]
    shown = pd.DataFrame({
        "model": frame["model"].astype(str),
        "labelled n": [f"{int(n)} of {int(m)}" for n, m in zip(frame["labelled"],
                                                               frame["images"], strict=True)],
        f"PPI++ ({short})": _cell(frame, "ppi"),
        "classical (n alone)": _cell(frame, "classical"),
        "Eq. 4 predicted": _cell(frame, "eq4_predicted"),
        f"PGD-{_steps(frame)} (CW) predicted": _cell(frame, "pgd_predicted"),
        f"effective n ({short} / Eq. 4)": [f"{_times(a)} / {_times(b)}" for a, b in zip(
            frame["effective"], frame["effective_eq4"], strict=True)],
        "floor ε* ≥ q·ε_L": [_floor_cell(row) for _, row in frame.iterrows()],
        "audit of the labelled images": [str(v) if isinstance(v, str) and v else "–"
                                         for v in frame["audit_verdict"]]})
    return markdown_table(shown)


def labelled_sentence(frame: pd.DataFrame) -> str:
    """One sentence on a labelled study's estimates ('' without a row)."""
    if frame.empty:
        return ""
    predictor = predictor_label(str(frame["predictor"].iloc[0]), _steps(frame))
    n, images = int(frame["labelled"].iloc[0]), int(frame["images"].iloc[0])
    kept = frame.dropna(subset=["effective"])
    start = (f"The full audit ran on {n} of the {images} images, chosen at random (seed "
             f"{int(frame['labelled_seed'].iloc[0])}), and {predictor} on all of them")
    if kept.empty:
        return f"{start}; every model's audited images were alike: no prediction-powered interval."
    half = ((kept["ppi_hi"] - kept["ppi_lo"]) / 2 * 100)
    low, high = (f"{v:.1f}" for v in (half.min(), half.max()))
    span = f"±{low}" if low == high else f"±{low} to ±{high}"
    effective = (f"{kept['effective'].min():.1f}–{kept['effective'].max():.1f}×"
                 if len(kept) > 1 else f"{kept['effective'].iloc[0]:.1f}×")
    return (f"{start}: prediction-powered inference gives each model's robust accuracy on all "
            f"{images} to {span} points (95%), as narrow as the classical interval on "
            f"{effective} as many audited images.")


def pairs_markdown(pairs: pd.DataFrame | None) -> str:
    """Each pair's difference in robust accuracy (``model`` − ``against``, percentage
    points) with its PPI++ and classical 95% intervals, from ``estimate_pairs.csv`` ('' without
    a pair)."""
    if pairs is None or pairs.empty:
        return ""

    def points(value: float, low: float, high: float) -> str:
        if pd.isna(low):  # no spread in the pair's labelled differences
            return f"{100 * value:+.1f} (all labelled images alike: no interval)"
        return f"{100 * value:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"

    return markdown_table(pd.DataFrame({
        "difference": [f"{m} − {a}" for m, a in zip(pairs["model"], pairs["against"],
                                                     strict=True)],
        "PPI++ (points)": [points(*v) for v in zip(pairs["estimate"], pairs["low"],
                                                   pairs["high"], strict=True)],
        "classical (points)": [points(*v) for v in zip(
            pairs["classical_estimate"], pairs["classical_low"], pairs["classical_high"],
            strict=True)]}))


__all__ = ["LABELLED_COLUMNS", "estimate_result", "is_labelled", "labelled_estimates",
           "labelled_markdown", "labelled_row", "labelled_sentence", "pairs_markdown"]
