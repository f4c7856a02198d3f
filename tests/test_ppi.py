"""epsl.ppi: PPI++ and cross-PPI against ppi_py 0.2.3 itself, their coverage and the conformal
floor's on synthetic pools with a known answer, and the one-line errors on bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from epsl.errors import EpslError
from epsl.ppi import (
    classical_mean_ci,
    combined_mean_ci,
    conformal_floor,
    cross_fit_logistic,
    cross_ppi_mean_ci,
    fit_logistic,
    power_tuning,
    ppi_mean_ci,
)

ALPHA = 0.05


def binomial_margin(draws: int, coverage: float = 1 - ALPHA) -> float:
    """Three standard deviations of a coverage estimated from ``draws`` independent draws
    that each cover with probability ``coverage``: sqrt(c(1 − c)/D). A correct interval falls
    below ``coverage − margin`` with probability about 0.13% (one-sided normal tail at 3 sd)."""
    return 3 * math.sqrt(coverage * (1 - coverage) / draws)


def pool(rng: np.random.Generator, size: int, d: int = 1, accuracy: float = 0.4
         ) -> tuple[np.ndarray, np.ndarray]:
    """0/1 truths with mean ``accuracy`` and a biased, noisy predictor in [0, 1]."""
    y = (rng.random((size, d)) < accuracy).astype(float)
    yhat = np.clip(0.2 + 0.5 * y + 0.25 * rng.normal(size=(size, d)), 0, 1)
    return (y[:, 0], yhat[:, 0]) if d == 1 else (y, yhat)


# ppi_py 0.2.3 is the reference ---------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 3], ids=["scalar", "vector"])
@pytest.mark.parametrize("lam", [None, 0.0, 0.3, 1.0], ids=["tuned", "lam0", "lam0.3", "lam1"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppi_mean_ci_matches_ppi_py(seed: int, lam: float | None, d: int) -> None:
    ppi_py = pytest.importorskip("ppi_py")
    rng = np.random.default_rng(seed)
    n, big_n = int(rng.integers(20, 120)), int(rng.integers(100, 900))
    y, yhat = pool(rng, n, d)
    _, unlabelled = pool(rng, big_n, d)
    ours = ppi_mean_ci(y, yhat, unlabelled, alpha=ALPHA, lam=lam)
    low, high = ppi_py.ppi_mean_ci(y, yhat, unlabelled, alpha=ALPHA, lam=lam)
    estimate = ppi_py.ppi_mean_pointestimate(y, yhat, unlabelled, lam=lam)
    assert np.shape(ours.low) == (() if d == 1 else (d,))
    np.testing.assert_allclose(np.ravel(ours.low), np.ravel(low), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.ravel(ours.high), np.ravel(high), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.ravel(ours.estimate), np.ravel(estimate), rtol=0, atol=1e-12)
    classical = ppi_py.ppi_mean_ci(y, yhat, unlabelled, alpha=ALPHA, lam=0)
    np.testing.assert_allclose(np.ravel(ours.classical_low), np.ravel(classical[0]), atol=1e-12)
    np.testing.assert_allclose(np.ravel(ours.classical_high), np.ravel(classical[1]), atol=1e-12)


def test_classical_matches_ppi_py() -> None:
    baselines = pytest.importorskip("ppi_py.baselines")
    y, _ = pool(np.random.default_rng(5), 80)
    estimate, low, high = classical_mean_ci(y, ALPHA)
    assert estimate == pytest.approx(y.mean(), abs=1e-15)
    np.testing.assert_allclose((low, high), baselines.classical_mean_ci(y, alpha=ALPHA),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_ppi_matches_ppi_py(seed: int) -> None:
    ppi_py = pytest.importorskip("ppi_py")
    rng = np.random.default_rng(seed)
    y, _ = pool(rng, 60)
    yhat, unlabelled = rng.random(60), rng.random((500, 10))  # ten equal folds of 6
    ours = cross_ppi_mean_ci(y, yhat, unlabelled, ALPHA)
    low, high = ppi_py.crossppi_mean_ci(y, yhat, unlabelled, alpha=ALPHA)
    estimate = ppi_py.crossppi_mean_pointestimate(y, yhat, unlabelled)
    np.testing.assert_allclose([ours.low, ours.high, ours.estimate],
                               np.ravel([low, high, estimate]), rtol=0, atol=1e-12)
    # equal fold sizes given explicitly are the same weights
    same = cross_ppi_mean_ci(y, yhat, unlabelled, ALPHA, fold_sizes=np.full(10, 6))
    assert same.low == pytest.approx(ours.low, abs=1e-15)


# properties ----------------------------------------------------------------------------------


def test_lam_zero_is_classical_and_effective_size() -> None:
    y, yhat = pool(np.random.default_rng(7), 50)
    _, unlabelled = pool(np.random.default_rng(8), 450)
    classical = ppi_mean_ci(y, yhat, unlabelled, lam=0)
    assert (classical.low, classical.high) == pytest.approx(
        (classical.classical_low, classical.classical_high), abs=1e-15)
    assert classical.effective_labelled == pytest.approx(50)
    tuned = ppi_mean_ci(y, yhat, unlabelled)
    assert 0 < tuned.lam <= 1 and tuned.width < tuned.classical_width
    assert tuned.effective_labelled == pytest.approx(
        50 * (tuned.classical_width / tuned.width) ** 2)


def test_constant_predictor_gives_lam_zero() -> None:
    y, _ = pool(np.random.default_rng(9), 40)
    assert power_tuning(y, np.full(40, 0.5), np.full(300, 0.5)) == 0.0
    result = ppi_mean_ci(y, np.full(40, 0.5), np.full(300, 0.5))
    assert (result.low, result.high) == (result.classical_low, result.classical_high)


def test_paired_difference_is_a_vector_mean() -> None:
    """Two models' 0/1 outcomes and their difference in one call, range (−1, 1)."""
    rng = np.random.default_rng(10)
    y, yhat = pool(rng, 80, d=2)
    _, unlabelled = pool(rng, 700, d=2)
    with_diff = [np.column_stack([a, a[:, 1] - a[:, 0]]) for a in (y, yhat, unlabelled)]
    result = ppi_mean_ci(*with_diff, value_range=(-1.0, 1.0))
    assert result.low.shape == (3,) and (result.low < result.estimate).all()
    with pytest.raises(EpslError, match=r"in \[0, 1\]"):
        ppi_mean_ci(*with_diff)


def test_logistic_fit_is_optimal_and_calibrated() -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(20000, 2))
    truth_prob = special.expit(1.5 * x[:, 0] - 0.5)
    y = (rng.random(len(x)) < truth_prob).astype(float)
    models = fit_logistic(x, y, ridge=1.0)
    design = models.design(x)[0]
    prob = models.predict(x)[0]
    penalty = np.array([1.0, 1.0, 1e-3])
    gradient = design.T @ (prob - y) + penalty * models.theta[0]
    assert np.abs(gradient).max() < 1e-6
    assert np.abs(prob - truth_prob).mean() < 0.01 and np.abs(prob - truth_prob).max() < 0.05


def test_logistic_fit_stays_finite_on_separable_and_flat_truths() -> None:
    x = np.arange(10.0)[:, None]
    models = fit_logistic(x, (x[:, 0] > 4).astype(float))
    assert np.isfinite(models.theta).all()
    flat = fit_logistic(x, np.ones(10)).predict(x)
    assert ((flat > 0.99) & (flat < 1)).all()


def test_cross_fit_never_predicts_an_image_it_trained_on() -> None:
    rng = np.random.default_rng(12)
    x, x_unlabelled = rng.normal(size=(30, 3)), rng.normal(size=(200, 3))
    y = (rng.random(30) < special.expit(x[:, 0])).astype(float)
    fit = cross_fit_logistic(x, y, x_unlabelled, folds=5, seed=3)
    assert fit.unlabelled.shape == (200, 5) and fit.fold_sizes.tolist() == [6] * 5
    for i in (0, 17):  # flipping one image's truth moves every prediction but its own
        flipped = y.copy()
        flipped[i] = 1 - flipped[i]
        other = cross_fit_logistic(x, flipped, x_unlabelled, folds=5, seed=3)
        assert other.labelled[i] == fit.labelled[i]
        assert not np.allclose(other.labelled, fit.labelled)


# coverage on pools with a known answer -------------------------------------------------------


def test_ppi_interval_covers() -> None:
    """PPI++ at n = 200 labelled of 2,000, a biased predictor, 10,000 seeded draws: coverage of
    the true mean (0.4) at least 0.94. A nominal 95% interval would fall below 0.95 minus 3
    binomial standard deviations (:func:`binomial_margin`, 0.0065 at 10,000 draws) with
    probability 0.13%; this normal interval (ppi_py's, with λ tuned on the same sample) covers
    0.945 on this pool (20,000 draws), 0.9455 at n = 100 and about 0.94 at n = 50, so 0.94 is
    2.2 standard deviations below its expected value."""
    rng = np.random.default_rng(20)
    draws, n = 10_000, 200
    covered = 0
    for _ in range(draws):
        y, yhat = pool(rng, 10 * n)
        result = ppi_mean_ci(y[:n], yhat[:n], yhat[n:], ALPHA)
        covered += result.low <= 0.4 <= result.high
    assert covered / draws >= 0.94


@pytest.mark.parametrize("informative", [True, False], ids=["informative", "noise-features"])
def test_cross_ppi_covers_whatever_the_features(informative: bool) -> None:
    """Cross-PPI with a learned predictor at n = 100 of 1,000, 1,000 draws: coverage at least
    0.95 minus 3 binomial standard deviations (0.021), with informative features and with pure
    noise (the cross-fitting, not the predictor, keeps it valid)."""
    rng = np.random.default_rng(21 + informative)
    draws, n = 1000, 100
    truth = integrate.quad(lambda z: special.expit(2 * z - 0.4) * stats.norm.pdf(z),
                           -np.inf, np.inf)[0]  # E[y] = E[expit(2Z − 0.4)], Z ~ N(0, 1)
    covered, wider = 0, 0
    for _ in range(draws):
        signal = rng.normal(size=10 * n)
        y = (rng.random(10 * n) < special.expit(2 * signal - 0.4)).astype(float)
        noise = rng.normal(size=(10 * n, 2))
        features = np.column_stack([signal, signal > 0, noise]) if informative else noise
        result = combined_mean_ci(features[:n], y[:n], features[n:], ALPHA, folds=5, seed=0)
        covered += result.low <= truth <= result.high
        wider += result.width > result.classical_width
    assert covered / draws >= 0.95 - binomial_margin(draws)
    if informative:
        assert wider / draws < 0.05


def test_conformal_floor_covers() -> None:
    """m = 100 calibration images with ε_L > 0 (and some misclassified, ignored), one new image
    per draw, 4,000 draws. Split conformal covers with probability exactly
    1 − ⌊α(m + 1)⌋/(m + 1) = 1 − 5/101 = 0.9505 for continuous ratios, so the estimate must
    lie within 3 binomial standard deviations (0.0103) of it."""
    rng = np.random.default_rng(30)
    draws, m = 4000, 100
    exact = 1 - math.floor(ALPHA * (m + 1)) / (m + 1)
    covered = 0
    for _ in range(draws):
        eps_l = rng.lognormal(-3, 0.5, m + 1)
        eps_star = eps_l * rng.lognormal(-0.3, 0.4, m + 1)
        eps_star[rng.random(m + 1) < 0.05] = np.inf  # never broken
        misclassified = np.column_stack([np.zeros(10), -rng.random(10)])
        floor = conformal_floor(np.r_[eps_star[:m], misclassified[:, 0]],
                                np.r_[eps_l[:m], misclassified[:, 1]], ALPHA)
        assert floor.calibration == m and floor.rank == 5
        covered += eps_star[m] >= floor.floor(eps_l[m:])[0]
    assert abs(covered / draws - exact) <= binomial_margin(draws, exact)
    assert covered / draws >= 0.94


def test_conformal_floor_order_statistic_and_trivial_edge() -> None:
    ratios = np.arange(1.0, 20.0)  # m = 19: k = floor(0.05 * 20) = 1, the smallest ratio
    floor = conformal_floor(2 * ratios, np.full(19, 2.0), ALPHA)
    assert (floor.q, floor.rank, floor.trivial) == (1.0, 1, False)
    np.testing.assert_array_equal(floor.floor([0.5, 0.0, -0.1]), [0.5, 0.0, 0.0])
    short = conformal_floor(2 * ratios[:18], np.full(18, 2.0), ALPHA)  # m = 18: k = 0
    assert (short.q, short.rank, short.trivial) == (0.0, 0, True)
    assert conformal_floor(ratios, np.ones(19), 0.5).q == 10.0  # k = floor(0.5 * 20) = 10


# bad input: one clear line -------------------------------------------------------------------


GOOD_Y, GOOD_YHAT = np.array([0.0, 1.0, 1.0]), np.array([0.2, 0.9, 0.6])
GOOD_UNLABELLED = np.array([0.1, 0.5, 0.8, 0.3])


@pytest.mark.parametrize(("arguments", "fragment"), [
    ((GOOD_Y[:1], GOOD_YHAT[:1], GOOD_UNLABELLED), "at least 2 labelled"),
    ((GOOD_Y, GOOD_YHAT, GOOD_UNLABELLED[:0]), "no unlabelled image"),
    ((np.ones(3), np.full(3, 0.7), GOOD_UNLABELLED), "no spread"),
    ((np.ones(3), GOOD_YHAT, GOOD_UNLABELLED), "no spread"),  # tuned λ = 0: zero width
    ((GOOD_Y, GOOD_YHAT[:2], GOOD_UNLABELLED), "one shape"),
    ((GOOD_Y, GOOD_YHAT + 0.5, GOOD_UNLABELLED), r"in \[0, 1\]"),
    ((GOOD_Y, GOOD_YHAT, GOOD_UNLABELLED - 0.5), r"yhat_unlabelled must hold finite values"),
    ((GOOD_Y, np.r_[0.2, np.nan, 0.6], GOOD_UNLABELLED), "finite values"),
    ((GOOD_Y[:, None], GOOD_YHAT[:, None], np.ones((4, 2))), "column"),
], ids=["n<2", "n>=N", "flat", "flat-truths", "lengths", "range", "range-unlabelled", "nan",
        "columns"])
def test_ppi_bad_input(arguments: tuple[np.ndarray, ...], fragment: str) -> None:
    with pytest.raises(EpslError, match=fragment) as error:
        ppi_mean_ci(*arguments)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_alpha_outside_unit_interval(alpha: float) -> None:
    for call in (lambda: ppi_mean_ci(GOOD_Y, GOOD_YHAT, GOOD_UNLABELLED, alpha),
                 lambda: conformal_floor(np.ones(3), np.ones(3), alpha),
                 lambda: cross_ppi_mean_ci(GOOD_Y, GOOD_YHAT, GOOD_UNLABELLED[:, None], alpha),
                 lambda: combined_mean_ci(np.ones((4, 1)), np.r_[0, 1, 1, 0],
                                          np.ones((3, 1)), alpha)):
        with pytest.raises(EpslError, match="alpha must lie strictly between 0 and 1"):
            call()


def test_cross_and_floor_bad_input() -> None:
    with pytest.raises(EpslError, match=r"\(N_u, K\) matrix"):
        cross_ppi_mean_ci(GOOD_Y, GOOD_YHAT, GOOD_UNLABELLED)
    with pytest.raises(EpslError, match="fold_sizes must give 1 positive"):
        cross_ppi_mean_ci(GOOD_Y, GOOD_YHAT, GOOD_UNLABELLED[:, None], fold_sizes=[1, 2])
    with pytest.raises(EpslError, match="one 0/1 truth per row"):
        cross_fit_logistic(np.ones((4, 1)), np.r_[0, 1, 0.5, 1], np.ones((3, 1)))
    with pytest.raises(EpslError, match="finite values"):
        cross_fit_logistic(np.r_[0, np.inf, 1, 2], np.r_[0, 1, 0, 1], np.ones(3))
    with pytest.raises(EpslError, match="folds >= 2"):
        cross_fit_logistic(np.ones((4, 1)), np.r_[0, 1, 0, 1], np.ones((3, 1)), folds=1)
    with pytest.raises(EpslError, match="no spread: all 4 truths are 0"):
        combined_mean_ci(np.arange(4.0), np.zeros(4), np.arange(3.0), folds=2)
    with pytest.raises(EpslError, match="so the cross-fitted predictor learned nothing"):
        cross_ppi_mean_ci(np.zeros(3), GOOD_YHAT, GOOD_UNLABELLED[:, None])
    with pytest.raises(EpslError, match="two vectors of one length"):
        conformal_floor(np.ones(3), np.ones(4))
    with pytest.raises(EpslError, match=">= 0"):
        conformal_floor(np.r_[1.0, np.nan], np.ones(2))
