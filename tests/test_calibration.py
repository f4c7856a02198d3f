"""The report card of Eq. 4 (epsl.analysis.cards, torch-free) against scipy, numpy, a
hand-built example and a brute-force evaluation of the accuracy curves on a dense grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from epsl.analysis.cards import CARD_KEYS, accuracy_curves, card_columns, report_card

# A hand-built study of 8 examples. Kept (eps_l > 0 and eps_star > 0): rows 0, 1, 2, 5, 6 with
# ratios 2, 0.8, 1, 0 (never broken: eps_star = inf) and 1.5. Row 3 is misclassified (eps_l < 0,
# eps_star 0), row 4 a tie at x (0, 0), row 7 has eps_l > 0 but eps_star = 0: all left out.
HAND_EPS_L = [0.10, 0.20, 0.05, -0.30, 0.0, 0.15, 0.30, 0.08]
HAND_EPS_STAR = [0.05, 0.25, 0.05, 0.0, 0.0, math.inf, 0.20, 0.0]
HAND_RATIO = np.array([2.0, 0.8, 1.0, 0.0, 1.5])


def study(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """A seeded synthetic study: ε* correlated with ε_L, some misclassified examples (ε_L < 0,
    ε* = 0) and a few never broken (ε* = inf)."""
    rng = np.random.default_rng(seed)
    eps_l = rng.uniform(0.0, 0.4, n)
    eps_star = np.clip(eps_l * rng.lognormal(0.0, 0.4, n), 1e-4, 1.0)
    wrong = rng.random(n) < 0.1
    eps_l[wrong], eps_star[wrong] = -rng.uniform(0, 0.2, wrong.sum()), 0.0
    eps_star[rng.random(n) < 0.03] = math.inf
    return eps_l, eps_star


def brute_curves(eps_l, eps_star, grid) -> tuple[np.ndarray, np.ndarray]:
    eps_l, eps_star = np.asarray(eps_l), np.asarray(eps_star)
    eq4 = np.array([(eps_l > e).mean() for e in grid])
    empirical = np.array([(eps_star > e).mean() for e in grid])
    return eq4, empirical


# --------------------------------------------------------------------------- the card's numbers


def test_ratio_statistics_on_a_hand_built_example():
    card = report_card(HAND_EPS_L, HAND_EPS_STAR, resamples=200)
    assert list(card) == list(CARD_KEYS)
    assert (card["n"], card["n_correct"], card["n_unbroken"]) == (8, 5, 1)
    assert card["ratio_median"] == 1.0
    assert card["ratio_p10"] == pytest.approx(np.quantile(HAND_RATIO, 0.1)) == pytest.approx(0.32)
    assert card["ratio_p90"] == pytest.approx(np.quantile(HAND_RATIO, 0.9)) == pytest.approx(1.8)
    assert card["optimistic"] == 2 and card["optimistic_share"] == 0.4
    # Clopper-Pearson from its Beta quantiles (not scipy's binomtest, which epsl calls)
    assert card["optimistic_lo"] == pytest.approx(stats.beta.ppf(0.025, 2, 4), rel=1e-6)
    assert card["optimistic_hi"] == pytest.approx(stats.beta.ppf(0.975, 3, 3), rel=1e-6)
    kept = [0, 1, 2, 5, 6]
    rho = stats.spearmanr(np.array(HAND_EPS_L)[kept], np.array(HAND_EPS_STAR)[kept]).statistic
    assert card["spearman"] == pytest.approx(rho, abs=1e-12)


def test_spearman_equals_scipy_and_the_bootstrap_is_reproducible():
    eps_l, eps_star = study(0)
    card = report_card(eps_l, eps_star, resamples=1000, seed=3)
    keep = (eps_l > 0) & (eps_star > 0)
    assert card["n_correct"] == int(keep.sum()) < len(eps_l)
    assert card["n_unbroken"] == int(np.isinf(eps_star[keep]).sum()) > 0
    rho = stats.spearmanr(eps_l[keep], eps_star[keep]).statistic
    assert card["spearman"] == pytest.approx(rho, abs=1e-12)
    assert 0.5 < rho < 1  # the study is correlated but not monotone
    assert card["spearman_lo"] < card["spearman"] < card["spearman_hi"]
    assert card["ratio_median_lo"] <= card["ratio_median"] <= card["ratio_median_hi"]
    assert card["ratio_median_lo"] < card["ratio_median_hi"]
    ratio = np.where(np.isinf(eps_star[keep]), 0.0, eps_l[keep] / eps_star[keep])
    assert card["ratio_median"] == pytest.approx(np.median(ratio), abs=1e-15)
    assert card["optimistic_share"] == pytest.approx((ratio > 1).mean(), abs=1e-15)

    again = report_card(eps_l, eps_star, resamples=1000, seed=3)
    assert again == card  # same seed, same intervals (no NaN in this card)
    other = report_card(eps_l, eps_star, resamples=1000, seed=4)
    assert other["spearman"] == card["spearman"]
    assert (other["spearman_lo"], other["spearman_hi"]) != (card["spearman_lo"],
                                                            card["spearman_hi"])


def test_too_few_examples_give_nan_not_an_error():
    card = report_card([0.1, -0.2], [0.2, 0.0])
    assert card["n_correct"] == 1 and math.isnan(card["spearman"])
    assert card["ratio_median"] == 0.5
    empty = report_card([-0.1], [0.0])
    assert empty["n_correct"] == 0 and math.isnan(empty["ratio_median"])
    assert card_columns(card)["eq4_ratio_median"] == 0.5


def test_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="one value per example"):
        report_card([0.1, 0.2, 0.3], [0.1, 0.2])


# --------------------------------------------------------------------------- the curves


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_curves_equal_a_brute_force_evaluation_on_a_dense_grid(seed):
    eps_l, eps_star = study(seed)
    dense = np.linspace(0.0, 1.0, 2001)
    eq4, empirical = brute_curves(eps_l, eps_star, dense)
    on_grid = accuracy_curves(eps_l, eps_star, grid=dense)
    assert np.array_equal(on_grid["eps"].to_numpy(), dense)
    assert np.array_equal(on_grid["eq4"].to_numpy(), eq4)
    assert np.array_equal(on_grid["empirical"].to_numpy(), empirical)
    assert np.array_equal(on_grid["gap"].to_numpy(), eq4 - empirical)

    # the breakpoints lose nothing: the step functions are continuous from the right, so each
    # dense point has the value of the last breakpoint at or before it
    curves = accuracy_curves(eps_l, eps_star)
    at = np.searchsorted(curves["eps"].to_numpy(), dense, side="right") - 1
    assert np.array_equal(curves["eq4"].to_numpy()[at], eq4)
    assert np.array_equal(curves["empirical"].to_numpy()[at], empirical)
    bp_eq4, bp_emp = brute_curves(eps_l, eps_star, curves["eps"])
    assert np.array_equal(curves["eq4"].to_numpy(), bp_eq4)
    assert np.array_equal(curves["empirical"].to_numpy(), bp_emp)

    card = report_card(eps_l, eps_star, resamples=50)
    dense_max = np.abs(eq4 - empirical).max()
    assert dense_max <= abs(card["max_gap"]) + 1e-12
    at_max = brute_curves(eps_l, eps_star, [card["max_gap_eps"]])
    assert at_max[0][0] - at_max[1][0] == card["max_gap"]  # attained where the card says
    assert abs(card["max_gap"]) == pytest.approx(np.abs(bp_eq4 - bp_emp).max(), abs=0)


def test_breakpoints_on_the_dense_grid_give_the_same_largest_gap():
    """Values that are multiples of 1/2000 put every breakpoint on the dense grid, so the dense
    evaluation's largest gap is the card's, exactly."""
    eps_l, eps_star = study(5)
    on = lambda v: np.where(np.isfinite(v) & (v > 0), np.round(v * 2000) / 2000, v)  # noqa: E731
    eps_l, eps_star = on(eps_l), on(eps_star)
    dense = np.arange(2001) / 2000
    eq4, empirical = brute_curves(eps_l, eps_star, dense)
    card = report_card(eps_l, eps_star, resamples=50)
    assert np.abs(eq4 - empirical).max() == abs(card["max_gap"]) > 0
    assert card["max_gap_eps"] in set(dense)


def test_optimistic_from_eps_is_where_eq4_first_lies_above():
    """eq4(e) = share(eps_l > e), empirical(e) = share(eps* > e). On [0.1, 0.15) both are 3/4;
    at 0.15 example 1's eps* (0.15) stops counting while its eps_L (0.2) still does: 3/4 > 2/4.
    On [0.2, 0.3) they tie again (2/4) and on [0.3, 0.35) Eq. 4 is below (1/4 < 2/4)."""
    eps_l = [0.1, 0.2, 0.3, 0.4]
    eps_star = [0.1, 0.15, 0.35, 0.4]
    card = report_card(eps_l, eps_star, resamples=50)
    assert card["optimistic_from_eps"] == 0.15
    assert card["max_gap"] == 0.25 and card["max_gap_eps"] == 0.15  # first of the two |0.25|
    curves = accuracy_curves(eps_l, eps_star).set_index("eps")
    assert curves.loc[0.3, "gap"] == -0.25 and curves.loc[0.2, "gap"] == 0.0

    # Eq. 4 never above: eps_l <= eps* per example (with misclassified and unbroken ones)
    low, high = study(7)
    safe = np.where(low > 0, np.minimum(low, high), low)
    card = report_card(safe, high, resamples=50)
    assert card["optimistic_from_eps"] is None
    assert card["max_gap"] <= 0 and card["optimistic"] == 0
