"""Robust accuracy at ε_L's cost: prediction-powered estimates (:mod:`epsl.ppi`) from per-image
tables, shared by ``epsl estimate`` (:mod:`epsl.runs.estimate`), the study's section on it and
``benchmarks/estimate_predictors.py``.

A per-image table holds ``robust`` (the full audit's outcome, 0/1; the truth, known on the
labelled images), ``eps_l`` (Eq. 4), and the cheap attack's ``pgd_robust`` (0/1) and
``pgd_margin`` (``z_y − max z_ȳ`` at its adversarial point). The predictors, each a value in
[0, 1] per image:

- ``eq4``: ``eps_l > ε`` — Eq. 4's prediction; PPI++ with power tuning;
- ``pgd``: the cheap attack's survival; PPI++ with power tuning;
- ``combined``: a ridge logistic probability from ``clip(eps_l/ε, −1, 3)``, ``eq4``, ``pgd``
  and ``sign(m)·log(1 + |m|)`` of the margin, cross-fitted on the labelled images
  (cross-prediction-powered inference, Zrnic & Candès 2024).

``pgd`` is the default: on the digits study it gives the narrowest valid intervals
(docs/results.md, "Robust accuracy at ε_L's cost").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from epsl.analysis.display import format_cell, markdown_table
from epsl.analysis.folders import Run
from epsl.errors import EpslError
from epsl.ppi import (
    ConformalFloor,
    MeanInterval,
    conformal_floor,
    cross_fit_logistic,
    cross_ppi_mean_ci,
    ppi_mean_ci,
)
from epsl.stats import accuracy_interval

PREDICTORS = ("eq4", "pgd", "combined")
DEFAULT_PREDICTOR = "pgd"
#: the cheap attack of the study and of ``epsl estimate``: PGD-20 with the CW loss
CHEAP_PGD_STEPS = 20


def check_predictor(predictor: str) -> str:
    if predictor not in PREDICTORS:
        raise EpslError(f"predictor must be one of {', '.join(PREDICTORS)} (got {predictor!r})")
    return predictor


def features(table: pd.DataFrame, eps: float) -> np.ndarray:
    """(N, 4) features of the ``combined`` predictor (see the module docstring)."""
    eps_l = table["eps_l"].to_numpy(dtype=float)
    margin = table["pgd_margin"].fillna(0).to_numpy(dtype=float)
    return np.column_stack([np.clip(np.nan_to_num(eps_l / eps, nan=-1.0), -1.0, 3.0),
                            (eps_l > eps).astype(float),
                            table["pgd_robust"].fillna(0).to_numpy(dtype=float),
                            np.sign(margin) * np.log1p(np.abs(margin))])


def plain_prediction(table: pd.DataFrame, eps: float, predictor: str) -> np.ndarray:
    """(N,) the ``eq4`` or ``pgd`` prediction of every image, 0/1."""
    if predictor == "eq4":
        return (table["eps_l"].to_numpy(dtype=float) > eps).astype(float)
    return table["pgd_robust"].fillna(0).to_numpy(dtype=float)


@dataclass(frozen=True)
class Estimate:
    """A prediction-powered estimate of the robust accuracy of a pool of images.

    ``interval``: the estimate with its 95% interval, beside the classical one on the labelled
    images alone (:class:`epsl.ppi.MeanInterval`); ``prediction``: (N,) the predictor's value
    on every image (cross-fitted for ``combined``: no image is predicted by a model trained on
    it); ``predictor``: which one."""

    interval: MeanInterval
    prediction: np.ndarray
    predictor: str


def estimate(table: pd.DataFrame, labelled: np.ndarray, eps: float, *,
             predictor: str = DEFAULT_PREDICTOR, seed: int = 0, folds: int = 10) -> Estimate:
    """The robust accuracy of ``table``'s images at ``eps`` from the truth (``robust``) on the
    ``labelled`` images (a boolean mask, a uniform random sample of them) and ``predictor`` on
    every image. ``seed`` draws the cross-fitting folds of ``combined``.

    Raises :class:`EpslError` in one line when the labelled images leave no valid interval
    (fewer than 2, none unlabelled, or no spread)."""
    check_predictor(predictor)
    labelled = np.asarray(labelled, dtype=bool)
    y = table["robust"].to_numpy(dtype=float)[labelled]
    if predictor != "combined":
        value = plain_prediction(table, eps, predictor)
        interval = ppi_mean_ci(y, value[labelled], value[~labelled])
        return Estimate(interval, value, predictor)
    x = features(table, eps)
    fit = cross_fit_logistic(x[labelled], y, x[~labelled], folds=folds, seed=seed)
    interval = cross_ppi_mean_ci(y, fit.labelled, fit.unlabelled, fold_sizes=fit.fold_sizes)
    value = np.empty(len(table))
    value[labelled], value[~labelled] = fit.labelled, fit.unlabelled.mean(axis=1)
    return Estimate(interval, value, predictor)


def paired_estimates(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The difference in robust accuracy of every pair of models, estimated from the same
    labelled images: one PPI++ interval per pair (the differences are one vector mean, with
    one power-tuning λ, as :func:`epsl.ppi.ppi_mean_ci` takes them), beside the classical
    interval of the labelled differences alone.

    ``tables``: model → its per-image table at one ε (``robust`` on the labelled images,
    ``prediction`` on all, ``labelled``), rows in the same image order. A ``combined``
    prediction is cross-fitted per model; its differences are used as a fixed predictor."""
    names = list(tables)
    if len(names) < 2:
        return pd.DataFrame(columns=["model", "against", "estimate", "low", "high",
                                     "classical_estimate", "classical_low", "classical_high",
                                     "refused"])
    first = tables[names[0]]
    mask = first["labelled"].to_numpy(dtype=bool)
    for name in names[1:]:
        if not (tables[name]["labelled"].to_numpy(dtype=bool) == mask).all():
            raise EpslError(f"{name} was labelled on other images than {names[0]}: paired "
                            "estimates need the same labelled images for every model")
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    truth = {n: tables[n]["robust"].to_numpy(dtype=float) for n in names}
    value = {n: tables[n]["prediction"].to_numpy(dtype=float) for n in names}
    y = np.column_stack([truth[b][mask] - truth[a][mask] for a, b in pairs])
    yhat = np.column_stack([value[b] - value[a] for a, b in pairs])
    # a pair whose labelled differences and predictions are all alike has no interval; the
    # others are still one vector mean
    flat = (np.ptp(y, axis=0) == 0) & (np.ptp(yhat[mask], axis=0) == 0)
    nan = np.full(len(pairs), np.nan)
    columns = {"estimate": y.mean(axis=0), "low": nan.copy(), "high": nan.copy(),
               "classical_estimate": y.mean(axis=0), "classical_low": nan.copy(),
               "classical_high": nan.copy()}
    if not flat.all():
        kept = ~flat
        found = ppi_mean_ci(y[:, kept], yhat[mask][:, kept], yhat[~mask][:, kept],
                            value_range=(-1.0, 1.0))
        for key in columns:
            columns[key][kept] = np.atleast_1d(getattr(found, key))
    refused = [f"all {int(mask.sum())} labelled differences and their predictions are "
               f"{y[0, j]:+g}: no interval" if flat[j] else "" for j in range(len(pairs))]
    return pd.DataFrame({"model": [b for _, b in pairs], "against": [a for a, _ in pairs],
                         **columns, "refused": refused})


def floor(table: pd.DataFrame, labelled: np.ndarray, alpha: float = 0.05) -> ConformalFloor:
    """The split-conformal floor ε* ≥ q·ε_L from the labelled images' ``eps_star`` and
    ``eps_l`` (:func:`epsl.ppi.conformal_floor`)."""
    labelled = np.asarray(labelled, dtype=bool)
    return conformal_floor(table["eps_star"].to_numpy(dtype=float)[labelled],
                           table["eps_l"].to_numpy(dtype=float)[labelled], alpha)


def pgd_outcome(run: Run, eps: float, steps: int = CHEAP_PGD_STEPS) -> pd.DataFrame | None:
    """``index, pgd_robust, pgd_margin`` of the white-box PGD CW run on every image at ``eps``
    with ``steps`` steps and one restart (else the most steps there are), from the run's attack
    table; None without one."""
    return None if run.attack is None else attack_outcome(run.attack, eps, steps)


def attack_outcome(attack: pd.DataFrame, eps: float, steps: int = CHEAP_PGD_STEPS, *,
                   exact: bool = False, restarts: int = 1) -> pd.DataFrame | None:
    """:func:`pgd_outcome` from an attack table (``exact``: only rows of ``steps`` steps),
    with ``restarts``, sorted by ``index``; None without such rows."""
    rows = attack[(attack["attack"] == "pgd") & (attack["loss_name"] == "cw")
                  & np.isclose(attack["eps"], eps) & (attack["source"].fillna("") == "")
                  & (attack["restarts"] == restarts)]
    if rows.empty or (exact and not (rows["steps"] == steps).any()):
        return None
    chosen = steps if (rows["steps"] == steps).any() else int(rows["steps"].max())
    rows = rows[rows["steps"] == chosen].drop_duplicates("index").sort_values("index")
    return pd.DataFrame({"index": rows["index"].to_numpy(),
                         "pgd_robust": rows["correct"].astype(float).to_numpy(),
                         "pgd_margin": rows["margin"].to_numpy(dtype=float)})


def image_table(run: Run, steps: int = CHEAP_PGD_STEPS) -> tuple[pd.DataFrame, float]:
    """``(table, eps)``: a run folder's per-image table at its audit's ε, the audit on every
    image as the truth (the study's layout: ``audit``, ``diagnostics``, ``attack`` and ε*)."""
    if run.audit is None or run.diagnostics is None:
        raise EpslError(f"{run.path}: needs an audit and diagnostics table: the truth comes "
                        "from the full audit, the prediction from eps_L and the attacks")
    eps = float(run.audit_summary["eps"])
    table = run.audit[["index", "robust"]].astype({"robust": float})
    table = table.merge(run.diagnostics[["index", "eps_l"]], on="index", how="left")
    if run.eps_star is not None:
        table = table.merge(run.eps_star[["index", "eps_star"]], on="index", how="left")
    pgd = pgd_outcome(run, eps, steps)
    if pgd is None:
        raise EpslError(f"{run.path}: no PGD-{steps} CW rows at eps={eps:g} in its attack table")
    return table.merge(pgd, on="index", how="left"), eps


@dataclass(frozen=True)
class Draws:
    """What many random labelled samples of one model's images give (:func:`simulate`).

    ``n``: labelled images per draw; ``estimate``: the first draw's :class:`Estimate`;
    ``coverage``: the share of draws whose interval holds the full-set robust accuracy (over
    the draws not refused); ``classical_coverage``: the same for the labelled images alone;
    ``effective``: the median of n·(classical / PPI width)², as a multiple of n;
    ``width_ratio``: the median PPI / classical width; ``refused``: draws with no spread;
    ``floor_coverage``: the mean share of the unlabelled, correctly classified images with
    ε* ≥ q·ε_L (NaN without ε*)."""

    n: int
    draws: int
    truth: float
    estimate: Estimate | None
    coverage: float
    classical_coverage: float
    effective: float
    width_ratio: float
    refused: int
    floor_coverage: float


def simulate(table: pd.DataFrame, eps: float, n: int, *, draws: int = 1000, seed: int = 0,
             predictor: str = DEFAULT_PREDICTOR, alpha: float = 0.05) -> Draws:
    """Label ``n`` random images of ``table`` ``draws`` times (seeded) and measure the
    prediction-powered interval against the full-set robust accuracy, and the conformal floor
    (with ``alpha``) where ``eps_star`` is known. Works from full tables: no model is run."""
    check_predictor(predictor)
    y = table["robust"].to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    found: list[Estimate | None] = []
    floors = []
    has_star = "eps_star" in table and table["eps_star"].notna().all()
    eps_l = table["eps_l"].to_numpy(dtype=float)
    eps_star = table["eps_star"].to_numpy(dtype=float) if has_star else eps_l
    # the plain predictors' values do not depend on the draw: read from the table once
    value = None if predictor == "combined" else plain_prediction(table, eps, predictor)
    for draw in range(draws):
        mask = np.zeros(len(y), dtype=bool)
        mask[rng.choice(len(y), size=n, replace=False)] = True
        try:
            found.append(
                estimate(table, mask, eps, predictor=predictor, seed=draw) if value is None
                else Estimate(ppi_mean_ci(y[mask], value[mask], value[~mask]), value, predictor))
        except EpslError:  # a labelled sample with no spread: refused, and counted
            found.append(None)
        if has_star:  # floor(table, mask, alpha) on the arrays
            rest = ~mask & (eps_l > 0)
            cut = conformal_floor(eps_star[mask], eps_l[mask], alpha).floor(eps_l[rest])
            floors.append(float(np.mean(eps_star[rest] >= cut)))
    kept = [e.interval for e in found if e is not None]
    truth = float(y.mean())
    return Draws(
        n=n, draws=draws, truth=truth, estimate=found[0],
        coverage=_share([i.low <= truth <= i.high for i in kept]),
        classical_coverage=_share([i.classical_low <= truth <= i.classical_high for i in kept]),
        effective=_median([i.effective_labelled / n for i in kept]),
        width_ratio=_median([i.width / i.classical_width for i in kept
                             if i.classical_width > 0]),
        refused=len(found) - len(kept), floor_coverage=_share(floors))


def _share(values: Sequence[float | bool]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else float("nan")


# --------------------------------------------------------------------------- the study's section

#: the share of a study's images the section labels with the full audit
STUDY_FRACTION = 0.1
#: each predictor as the headline names it
PREDICTOR_LABELS = {"eq4": "Eq. 4 (ε_L > ε)", "pgd": f"PGD-{CHEAP_PGD_STEPS} (CW)",
                    "combined": f"ε_L, PGD-{CHEAP_PGD_STEPS} (CW) and its margin, cross-fitted"}
def predictor_label(predictor: str, steps: int = CHEAP_PGD_STEPS) -> str:
    """:data:`PREDICTOR_LABELS`' text for ``predictor`` with a cheap attack of ``steps``."""
    return PREDICTOR_LABELS[predictor].replace(f"PGD-{CHEAP_PGD_STEPS}", f"PGD-{steps}")


#: the columns of :func:`study_estimates`, one row per model
ESTIMATE_COLUMNS = [
    "model", "eps", "images", "labelled", "predictor", "draws",
    "audit_robust", "audit_robust_lo", "audit_robust_hi", "ppi", "ppi_lo", "ppi_hi",
    "classical", "classical_lo", "classical_hi", "eq4_predicted", "coverage",
    "classical_coverage", "effective", "effective_eq4", "width_ratio", "floor_coverage",
    "refused"]


def labelled_size(images: int, fraction: float) -> int:
    """n = round(``fraction``·N) labelled images of a pool of N = ``images``, kept within
    [2, N − 1] (PPI needs two labelled images and one unlabelled)."""
    return min(max(2, round(fraction * images)), images - 1)


def study_tables(runs: Sequence[Run]) -> list[tuple[Run, pd.DataFrame, float]]:
    """``(run, per-image table, eps)`` of every run :func:`image_table` can read; a run
    without an audit, diagnostics or the cheap PGD CW rows at the audit's ε, or with fewer than
    3 audited images, is left out."""
    found = []
    for run in runs:
        try:
            table, eps = image_table(run)
        except EpslError:  # not every run of a study is audited: it has no section row
            continue
        if len(table) >= 3:  # two labelled images and one more at the least
            found.append((run, table, eps))
    return found


def estimate_row(model: str, table: pd.DataFrame, eps: float, *, fraction: float, draws: int,
                 seed: int) -> dict[str, Any]:
    """One row of :func:`study_estimates` (:data:`ESTIMATE_COLUMNS`) from a per-image table."""
    images = len(table)
    n = labelled_size(images, fraction)
    main = simulate(table, eps, n, draws=draws, seed=seed)
    # Eq. 4 alone on the same draws; its floor would repeat the default predictor's
    eq4 = main if DEFAULT_PREDICTOR == "eq4" else simulate(
        table.drop(columns="eps_star", errors="ignore"), eps, n, draws=draws, seed=seed,
        predictor="eq4")
    first = main.estimate.interval if main.estimate is not None else None
    low, high = accuracy_interval(main.truth, images)
    nan = float("nan")
    return {
        "model": model, "eps": eps, "images": images, "labelled": n,
        "predictor": DEFAULT_PREDICTOR, "draws": draws, "audit_robust": main.truth,
        "audit_robust_lo": low, "audit_robust_hi": high,
        "ppi": first.estimate if first else nan, "ppi_lo": first.low if first else nan,
        "ppi_hi": first.high if first else nan,
        "classical": first.classical_estimate if first else nan,
        "classical_lo": first.classical_low if first else nan,
        "classical_hi": first.classical_high if first else nan,
        "eq4_predicted": float(np.mean(plain_prediction(table, eps, "eq4"))),
        "coverage": main.coverage, "classical_coverage": main.classical_coverage,
        "effective": main.effective, "effective_eq4": eq4.effective,
        "width_ratio": main.width_ratio, "floor_coverage": main.floor_coverage,
        "refused": main.refused}


def study_estimates(runs: Sequence[Run], *, fraction: float = STUDY_FRACTION,
                    draws: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The study's section on robust accuracy at ε_L's cost, from its full tables (no attack is
    run): per model whose run holds the audit, the diagnostics and the cheap PGD CW on every
    image (:func:`study_tables`), ``round(fraction·N)`` images labelled ``draws`` times at
    random (seeded by ``seed``; :func:`simulate`).

    One row per model (:data:`ESTIMATE_COLUMNS`): ``images`` N and ``labelled`` n; the full
    audit's robust accuracy on all N with its exact 95% interval (``audit_robust``, ``_lo``,
    ``_hi``); the first draw's PPI estimate with :data:`DEFAULT_PREDICTOR` (``ppi``, ``_lo``,
    ``_hi``) and the classical interval on its n labelled images alone (``classical``...);
    Eq. 4's predicted accuracy, the share with ε_L > ε (``eq4_predicted``); over the draws, the
    coverage of the full audit's value by the PPI and the classical interval, the median
    effective labelled size as a multiple of n for the default predictor (``effective``) and
    for Eq. 4 alone (``effective_eq4``), the median width ratio PPI / classical, the conformal
    floor's coverage (NaN without ε*) and the draws refused (a labelled sample with no
    spread). No row without such a run: an empty frame with these columns."""
    if not 0 < fraction < 1:
        raise EpslError(f"fraction must lie strictly between 0 and 1 (got {fraction!r})")
    if draws < 1:
        raise EpslError(f"draws must be at least 1 (got {draws!r})")
    rows = [estimate_row(run.name, table, eps, fraction=fraction, draws=draws, seed=seed)
            for run, table, eps in study_tables(runs)]
    return pd.DataFrame(rows, columns=ESTIMATE_COLUMNS)


def _interval_cell(frame: pd.DataFrame, column: str) -> list[str]:
    """``estimate [low, high]`` per row; an accuracy's normal interval is shown within
    [0, 1] (the interval itself is kept as computed)."""
    return [format_cell(column, value, (max(low, 0.0), min(high, 1.0))) for value, low, high in
            zip(frame[column], frame[f"{column}_lo"], frame[f"{column}_hi"], strict=True)]


def _number(value: float, text: str) -> str:
    return "–" if pd.isna(value) else text.format(value)


def estimates_markdown(frame: pd.DataFrame) -> str:
    """:func:`study_estimates` as a compact Markdown table with 95% intervals: per model the
    full audit on all images, the PPI estimate and the classical one on the first draw's
    labelled images, Eq. 4's prediction, the effective labelled size (× n) of the default
    predictor and of Eq. 4 alone, and the coverage of the PPI interval, of the classical one
    and of the conformal floor over the draws ('' without a row)."""
    if frame.empty:
        return ""
    predictor = str(frame["predictor"].iloc[0])
    short = {"eq4": "Eq. 4", "pgd": "PGD", "combined": "combined"}[predictor]
    shown = pd.DataFrame({
        "model": frame["model"].astype(str),
        "full audit (all images)": _interval_cell(frame, "audit_robust"),
        "labelled n": [f"{int(n)} of {int(m)}" for n, m in zip(frame["labelled"],
                                                               frame["images"], strict=True)],
        f"PPI++ ({short})": _interval_cell(frame, "ppi"),
        "classical (n alone)": _interval_cell(frame, "classical"),
        "Eq. 4 predicted": [format_cell("eq4_predicted", v) for v in frame["eq4_predicted"]],
        f"effective n ({short} / Eq. 4)": [
            f"{_number(a, '{:.1f}×')} / {_number(b, '{:.1f}×')}"
            for a, b in zip(frame["effective"], frame["effective_eq4"], strict=True)],
        "coverage (PPI / classical / floor)": [
            " / ".join(_number(v, "{:.3f}") for v in values)
            for values in zip(frame["coverage"], frame["classical_coverage"],
                              frame["floor_coverage"], strict=True)]})
    return markdown_table(shown)


def _span(values: pd.Series, text: str) -> str:
    """``values``' range over the models as ``text`` formats one number: ``4.6–8.6×``."""
    low, high = (text.format(v).rstrip("×%") for v in (values.min(), values.max()))
    unit = text.format(values.max())[len(high):]
    return f"{low}{unit}" if low == high else f"{low}–{high}{unit}"


def estimates_sentence(frame: pd.DataFrame) -> str:
    """One sentence on :func:`study_estimates`: over the models, the range of the effective
    labelled size of the default predictor and of Eq. 4 alone, and of the coverage of the
    interval and of the floor ('' without a row)."""
    if frame.empty:
        return ""
    images, labelled = frame["images"], frame["labelled"]
    share = (f"n = {int(labelled.iloc[0])} of {int(images.iloc[0])}"
             if images.nunique() == 1 else f"n = {_span(labelled, '{:.0f}')} per model")
    predictor = PREDICTOR_LABELS[str(frame["predictor"].iloc[0])]
    kept = frame.dropna(subset=["effective"])
    if kept.empty:
        return (f"With the full audit on {share} images, every random labelled sample had no "
                "spread: no prediction-powered interval.")
    floors = frame["floor_coverage"].dropna()
    floor_text = (f", and the conformal floor ε* ≥ q·ε_L holds on {_span(floors, '{:.0%}')} "
                  "of the other images" if len(floors) else "")
    return (f"With the full audit on {share} images chosen at random and {predictor} on every "
            "image, prediction-powered inference gives an interval as narrow as the classical "
            f"one on {_span(kept['effective'], '{:.1f}×')} as many audited images (Eq. 4 alone: "
            f"{_span(kept['effective_eq4'], '{:.1f}×')}); over {int(frame['draws'].max()):,} "
            f"random draws it covers the full audit's robust accuracy in "
            f"{_span(kept['coverage'], '{:.0%}')} of them{floor_text}.")


__all__ = ["CHEAP_PGD_STEPS", "DEFAULT_PREDICTOR", "ESTIMATE_COLUMNS", "PREDICTORS",
           "PREDICTOR_LABELS", "STUDY_FRACTION", "Draws", "Estimate", "attack_outcome", "check_predictor",
           "estimate", "estimate_row", "estimates_markdown", "estimates_sentence", "features",
           "floor", "image_table", "labelled_size", "pgd_outcome", "plain_prediction",
           "predictor_label", "simulate",
           "study_estimates", "study_tables"]
