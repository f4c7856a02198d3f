"""The report card of Eq. 4: how well ε_L predicts, example by example, ε*, the smallest
perturbation that really flips the example (found by :mod:`epsl.attacks.eps_star`). Torch-free: it reads
two per-example columns.

For the examples the model classifies right (ε_L > 0 and ε* > 0):

- **rank agreement**: Spearman's ρ between ε_L and ε*, with a percentile-bootstrap 95% interval
  (examples resampled in pairs);
- **the ratio** r = ε_L / ε*: its median (with a bootstrap interval) and 10th/90th percentiles,
  and the share of examples where Eq. 4 is *optimistic* (r > 1: the linear model promises more
  robustness than the network has), with its Clopper–Pearson interval. ε* is an upper bound of
  the true minimal perturbation, so r > 1 is a proven overstatement; r ≤ 1 is not proof of a
  lower bound;
- **the curves**, over all examples: Eq. 4's predicted accuracy ``share(ε_L > ε)`` and the
  empirical ``acc(ε) = share(ε* > ε)`` at every ε at once; their largest gap and where it is, and
  the smallest ε from which Eq. 4's curve lies above the empirical one (there Eq. 4 overstates
  the accuracy, since ``acc(ε)`` itself is an upper bound of the true robust accuracy).

The card is the same in every ℓp threat model (:mod:`epsl.norms`): ε_L and ε* are two distances
in one norm, and ρ, the ratios and the optimistic share compare them without knowing which. The
only place the norm enters is where the curves may end: by 1 in ℓ∞ (the whole [0, 1] box), not
at all in ℓ2 and ℓ1, whose radii reach √D and D (``norm=``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from epsl.norms import Norm, parse_norm
from epsl.stats import clopper_pearson

__all__ = ["accuracy_curves", "card_columns", "card_lines", "report_card"]

#: The report card's numbers, in the order tables show them.
CARD_KEYS = ("n", "n_correct", "n_unbroken", "spearman", "spearman_lo", "spearman_hi",
             "ratio_median", "ratio_median_lo", "ratio_median_hi", "ratio_p10", "ratio_p90",
             "optimistic", "optimistic_share", "optimistic_lo", "optimistic_hi",
             "max_gap", "max_gap_eps", "optimistic_from_eps")


def _as_array(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def accuracy_curves(eps_l: Any, eps_star: Any, grid: Any = None, *,
                    norm: str | Norm = "linf") -> pd.DataFrame:
    """Eq. 4's and the empirical accuracy against ε over all N examples.

    ``eps_l``: (N,) ε_L (≤ 0 for misclassified examples); ``eps_star``: (N,) ε* (0 when
    misclassified, +inf when never flipped), both in ``norm``. Without ``grid``, the curves are
    evaluated at 0 and at every finite positive value of either column, up to 1 in ℓ∞ (no ℓ∞
    radius beyond the whole box means anything): both are step functions continuous from the
    right that change only there, so this is every ε at once.

    Returns a frame with columns ``eps, eq4, empirical, gap`` (``gap = eq4 - empirical``).
    """
    # a missing value is no evidence of robustness: it counts as broken at every ε
    eps_l = np.nan_to_num(_as_array(eps_l), nan=-np.inf)
    eps_star = np.nan_to_num(_as_array(eps_star), nan=-np.inf)
    if grid is None:
        values = np.concatenate([eps_l, eps_star])
        largest = 1.0 if parse_norm(norm) is Norm.LINF else np.inf
        values = values[np.isfinite(values) & (values > 0) & (values <= largest)]
        grid = np.unique(np.concatenate([[0.0], values]))
    grid = np.sort(_as_array(grid))
    n = max(len(eps_l), 1)
    eq4 = len(eps_l) - np.searchsorted(np.sort(eps_l), grid, side="right")
    empirical = len(eps_star) - np.searchsorted(np.sort(eps_star), grid, side="right")
    frame = pd.DataFrame({"eps": grid, "eq4": eq4 / n, "empirical": empirical / n})
    frame["gap"] = frame["eq4"] - frame["empirical"]
    return frame


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's ρ of each row pair of two (B, n) arrays (average ranks for ties)."""
    ra = stats.rankdata(a, axis=1)
    rb = stats.rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(axis=1) / denom


def report_card(eps_l: Any, eps_star: Any, *, resamples: int = 2000, seed: int = 0,
                confidence: float = 0.95, norm: str | Norm = "linf") -> dict[str, Any]:
    """The report card of Eq. 4 on one model's examples (module docstring).

    Args:
        eps_l, eps_star: (N,) per-example ε_L (Eq. 4) and ε* on the same examples, both in
            ``norm``.
        resamples: bootstrap resamples for the intervals of ρ and of the median ratio.
        seed: seeds the bootstrap.
        norm: the threat model of both columns; it only decides where the curves may end
            (:func:`accuracy_curves`), every other number is the same in every norm.

    Returns:
        A dict with the keys of :data:`CARD_KEYS` (NaN where there are too few examples;
        ``optimistic_from_eps`` is None when Eq. 4's curve never lies above the empirical one).
    """
    eps_l, eps_star = _as_array(eps_l), _as_array(eps_star)
    if eps_l.shape != eps_star.shape:
        raise ValueError(f"eps_l and eps_star must be one value per example "
                         f"(got {eps_l.shape} and {eps_star.shape})")
    n = len(eps_l)
    keep = (eps_l > 0) & (eps_star > 0) & ~np.isnan(eps_l) & ~np.isnan(eps_star)
    a, b = eps_l[keep], eps_star[keep]
    m = len(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isinf(b), 0.0, a / b)
    optimistic = int((ratio > 1).sum())
    card: dict[str, Any] = {"n": n, "n_correct": m, "n_unbroken": int(np.isinf(b).sum()),
                            "optimistic": optimistic}
    alpha = (1 - confidence) / 2
    if m >= 3 and len(np.unique(a)) > 1 and len(np.unique(b)) > 1:
        rng = np.random.default_rng(seed)
        rho = float(_spearman_rows(a[None, :], b[None, :])[0])
        draws = rng.integers(0, m, size=(resamples, m))
        rhos = _spearman_rows(a[draws], b[draws])
        rhos = rhos[np.isfinite(rhos)]
        medians = np.median(ratio[draws], axis=1)
        card.update(spearman=rho, spearman_lo=float(np.quantile(rhos, alpha)),
                    spearman_hi=float(np.quantile(rhos, 1 - alpha)),
                    ratio_median_lo=float(np.quantile(medians, alpha)),
                    ratio_median_hi=float(np.quantile(medians, 1 - alpha)))
    else:
        card.update(spearman=math.nan, spearman_lo=math.nan, spearman_hi=math.nan,
                    ratio_median_lo=math.nan, ratio_median_hi=math.nan)
    if m:
        lo, hi = clopper_pearson(optimistic, m, confidence)
        card.update(ratio_median=float(np.median(ratio)),
                    ratio_p10=float(np.quantile(ratio, 0.1)),
                    ratio_p90=float(np.quantile(ratio, 0.9)),
                    optimistic_share=optimistic / m, optimistic_lo=lo, optimistic_hi=hi)
    else:
        card.update(ratio_median=math.nan, ratio_p10=math.nan, ratio_p90=math.nan,
                    optimistic_share=math.nan, optimistic_lo=math.nan, optimistic_hi=math.nan)
    curves = accuracy_curves(eps_l, eps_star, norm=norm)
    worst = int(np.argmax(curves["gap"].abs().to_numpy())) if len(curves) else 0
    above = curves[curves["gap"] > 0]
    card.update(max_gap=float(curves["gap"].iloc[worst]) if len(curves) else math.nan,
                max_gap_eps=float(curves["eps"].iloc[worst]) if len(curves) else math.nan,
                optimistic_from_eps=float(above["eps"].iloc[0]) if len(above) else None)
    return {key: card[key] for key in CARD_KEYS}


def card_columns(card: dict[str, Any]) -> dict[str, Any]:
    """The report card's headline numbers as comparison-table columns (``eq4_`` prefix)."""
    return {"eq4_spearman": card.get("spearman"), "eq4_spearman_lo": card.get("spearman_lo"),
            "eq4_spearman_hi": card.get("spearman_hi"),
            "eq4_ratio_median": card.get("ratio_median"),
            "eq4_ratio_p10": card.get("ratio_p10"), "eq4_ratio_p90": card.get("ratio_p90"),
            "eq4_optimistic": card.get("optimistic_share"),
            "eq4_optimistic_lo": card.get("optimistic_lo"),
            "eq4_optimistic_hi": card.get("optimistic_hi"),
            "eq4_optimistic_from_eps": card.get("optimistic_from_eps")}


def _interval(value: float, lo: float, hi: float, digits: int = 3) -> str:
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def card_lines(card: dict[str, Any]) -> list[str]:
    """The report card of Eq. 4 as a few lines of text (shared with compare's summary)."""
    m = card["n_correct"]
    lines = [f"report card of Eq. 4 on the {m} correctly classified examples:"]
    if card["spearman"] == card["spearman"]:  # not NaN
        lines.append("  Spearman rho(eps_L, eps*)      "
                     + _interval(card["spearman"], card["spearman_lo"], card["spearman_hi"]))
        lines.append("  median eps_L / eps*            "
                     + _interval(card["ratio_median"], card["ratio_median_lo"],
                                 card["ratio_median_hi"])
                     + f"  (10th-90th percentile {card['ratio_p10']:.3f}-"
                       f"{card['ratio_p90']:.3f})")
    if m:
        lines.append(f"  optimistic (eps_L > eps*)      {card['optimistic']} of {m} = "
                     f"{card['optimistic_share']:.1%} [{100 * card['optimistic_lo']:.1f}, "
                     f"{100 * card['optimistic_hi']:.1f}]")
    lines.append(f"  largest gap of the curves      {100 * card['max_gap']:+.1f} points "
                 f"(Eq. 4 minus eps*) at eps={card['max_gap_eps']:.4f}")
    start = card["optimistic_from_eps"]
    lines.append("  Eq. 4 overstates the accuracy  " + (
        f"from eps={start:.4f} on" if start is not None else "at no eps"))
    if card["n_unbroken"]:
        lines.append(f"  never flipped inside the box   {card['n_unbroken']} examples")
    return lines


# --------------------------------------------------------------------------- with proofs

#: the groups of the three-way card, in the order figures and tables show them
PROOF_GROUPS = ("conservative", "optimistic", "undecided")


def proof_groups(eps_l: Any, eps_cert: Any, eps_star: Any) -> np.ndarray:
    """Per example: ``conservative`` where ε_L ≤ ε_cert (Eq. 4 is provably a lower bound: the
    certified floor lies at or above it), ``optimistic`` where ε_L > ε* (provably an
    overstatement: a verified adversarial point lies closer), ``undecided`` in between, and
    ``misclassified`` where the model is wrong at x (ε* = 0 or ε_L ≤ 0)."""
    el, cert, star = _as_array(eps_l), _as_array(eps_cert), _as_array(eps_star)
    if not (len(el) == len(cert) == len(star)):
        raise ValueError("eps_l, eps_cert and eps_star must have one value per example")
    groups = np.full(len(el), "undecided", dtype=object)
    groups[el <= cert] = "conservative"
    groups[el > star] = "optimistic"
    groups[(star <= 0) | (el <= 0)] = "misclassified"
    return groups


def proof_card(eps_l: Any, eps_cert: Any, eps_star: Any, eps_exact: Any = None, *,
               grid: Any = None) -> dict[str, Any]:
    """The three-way report card on the correctly classified examples: the share (with its
    Clopper–Pearson 95% interval) where Eq. 4 is provably conservative, provably optimistic
    or undecided; with ``eps_exact`` (NaN where unsolved) the true optimistic share
    share(ε_L > ε_exact) on the solved examples; and the certified accuracy share(ε_cert > ε)
    beside Eq. 4's share(ε_L > ε) and the empirical share(ε* > ε) at the ``grid`` radii.
    The three accuracies are ordered by construction (ε_cert ≤ ε*), Eq. 4's is not."""
    el, cert, star = _as_array(eps_l), _as_array(eps_cert), _as_array(eps_star)
    groups = proof_groups(el, cert, star)
    correct = groups != "misclassified"
    n = int(correct.sum())
    card: dict[str, Any] = {"n": int(len(el)), "n_correct": n}
    for group in PROOF_GROUPS:
        k = int((groups == group).sum())
        lo, hi = clopper_pearson(k, n) if n else (math.nan, math.nan)
        card[group] = {"count": k, "share": k / n if n else math.nan, "interval": [lo, hi]}
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(correct & (star > 0), cert / star, np.nan)
    card["cert_over_star_median"] = float(np.nanmedian(ratio)) if correct.any() else math.nan
    if eps_exact is not None:
        exact = _as_array(eps_exact)
        solved = correct & np.isfinite(exact)
        k = int((el[solved] > exact[solved]).sum())
        m = int(solved.sum())
        lo, hi = clopper_pearson(k, m) if m else (math.nan, math.nan)
        card["exact"] = {"solved": m, "optimistic": k, "share": k / m if m else math.nan,
                         "interval": [lo, hi],
                         "optimistic_vs_eps_star_same_examples":
                             int((el[solved] > star[solved]).sum())}
    if grid is not None:
        radii = [float(e) for e in np.atleast_1d(np.asarray(grid, dtype=np.float64))]
        card["accuracy"] = {repr(e): {"certified": float(np.mean(cert > e)),
                                      "eq4": float(np.mean(el > e)),
                                      "empirical": float(np.mean(star > e))} for e in radii}
    return card


def proof_lines(card: dict[str, Any]) -> list[str]:
    """The three-way card as a few lines for a terminal."""
    def share(part: dict[str, Any]) -> str:
        lo, hi = part["interval"]
        return f"{100 * part['share']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({part['count']})"

    lines = [f"Eq. 4 provably conservative (eps_L <= eps_cert): {share(card['conservative'])}",
             f"Eq. 4 provably optimistic (eps_L > eps*): {share(card['optimistic'])}",
             f"undecided: {share(card['undecided'])}  "
             f"(of {card['n_correct']} correctly classified; median eps_cert / eps* "
             f"{card['cert_over_star_median']:.3f})"]
    exact = card.get("exact")
    if exact:
        lo, hi = exact["interval"]
        lines.append(f"with the exact minimum: optimistic (eps_L > eps_exact) "
                     f"{100 * exact['share']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] of "
                     f"{exact['solved']} solved")
    for eps, acc in (card.get("accuracy") or {}).items():
        lines.append(f"at eps = {float(eps):g}: certified {100 * acc['certified']:.1f}%, "
                     f"Eq. 4 {100 * acc['eq4']:.1f}%, by eps* {100 * acc['empirical']:.1f}%")
    return lines
