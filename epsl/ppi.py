"""Robust accuracy from a small audited sample and a cheap predictor on every image, torch-free:
prediction-powered inference (PPI) for a mean, cross-prediction-powered inference for a learned
predictor, and a split-conformal per-example floor under ε*.

The setting: N images; the expensive truth ``y`` (the full audit's ``robust``, 0/1) on a uniform
random sample of n of them, and a cheap prediction ``yhat`` in [0, 1] on every image (Eq. 4's
``eps_l > eps``, a cheap attack's survival, or a learned probability). The one assumption is that
the labelled images are a uniform random sample of the same pool as the unlabelled ones.

- **PPI++** (Angelopoulos, Bates, Fannjiang, Jordan, Zrnic, *Science* 382, 2023; Angelopoulos,
  Duchi, Zrnic, *PPI++: Efficient Prediction-Powered Inference*, arXiv:2311.01453, 2023): the
  estimate ``θ̂_λ = λ·mean(ŷ_unlabelled) + mean(y − λ·ŷ)`` is unbiased for every λ, whatever the
  predictor's bias, and its normal interval ``θ̂_λ ± z_{1−α/2}·sqrt(λ²·σ̂²(ŷ_u)/N_u + σ̂²(y −
  λŷ)/n)`` is valid as n grows. λ is tuned to minimise the variance (:func:`power_tuning`), so the
  interval is never much wider than the classical one (λ = 0) and narrower whenever the predictor
  correlates with the truth. :func:`ppi_mean_ci` computes exactly what ppi_py 0.2.3's
  ``ppi_mean_ci(Y, Yhat, Yhat_unlabeled, alpha, lam=None)`` does (tests/test_ppi.py checks it);
  it is written here so that the library needs no numba, statsmodels and gdown (ppi_py's
  dependencies, 4.6 s to import), and ppi_py is in the ``test`` extra only.
- **Cross-PPI** (Zrnic & Candès, *Cross-prediction-powered inference*, PNAS 121, 2024): a
  predictor learned from the labelled images themselves is cross-fitted: K models, each trained
  without one fold; the labelled images get the prediction of the model that did not see them,
  the unlabelled ones the average of all K. :func:`cross_ppi_mean_ci` matches ppi_py 0.2.3's
  ``crossppi_mean_ci``; :func:`cross_fit_logistic` learns a calibrated probability from any
  features (ridge logistic regression, Newton's method); :func:`combined_mean_ci` does both.
- **The conformal floor** (split conformal prediction; Vovk, Gammerman, Shafer, *Algorithmic
  Learning in a Random World*, 2005; Lei et al., JASA 2018): ``q`` is a low order statistic of
  ε*/ε_L over the labelled, correctly classified images, so that ε* ≥ q·ε_L for a new image of
  the same pool with probability at least 1 − α (:func:`conformal_floor`). ε* is the attacks'
  best, an upper estimate of the true minimum, so the floor is a statistical floor under the
  attacks, not a certificate.

Every interval here is two-sided; ``alpha`` is its miscoverage (0.05: a 95% interval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

from epsl.errors import EpslError, check_seed

__all__ = ["ConformalFloor", "CrossFit", "LogisticModels", "MeanInterval", "classical_mean_ci",
           "combined_mean_ci", "conformal_floor", "cross_fit_logistic", "cross_ppi_mean_ci",
           "fit_logistic", "power_tuning", "ppi_mean_ci"]

#: a number, or one per coordinate of a vector mean
Estimate = float | NDArray[np.float64]


@dataclass(frozen=True)
class MeanInterval:
    """A prediction-powered estimate of a mean with its interval, beside the classical one.

    Floats for a scalar mean, (d,) arrays for a vector mean (one interval per coordinate).
    ``lam`` is the power-tuning weight λ of the predictions (1 for cross-PPI, 0 gives the
    classical interval); ``classical_*`` is the normal interval on the n labelled values alone,
    ``mean(y) ± z_{1−α/2}·σ̂(y)/√n``; ``labelled`` is n, ``unlabelled`` N_u.
    """

    estimate: Estimate
    low: Estimate
    high: Estimate
    lam: float
    classical_estimate: Estimate
    classical_low: Estimate
    classical_high: Estimate
    labelled: int
    unlabelled: int
    alpha: float

    @property
    def width(self) -> Estimate:
        """``high − low``."""
        return self.high - self.low

    @property
    def classical_width(self) -> Estimate:
        """The classical interval's ``high − low``."""
        return self.classical_high - self.classical_low

    @property
    def effective_labelled(self) -> Estimate:
        """n·(classical width / PPI width)²: how many labelled images the classical interval
        would need to be as narrow as this one (interval widths shrink as 1/√n)."""
        return self.labelled * (self.classical_width / self.width) ** 2


@dataclass(frozen=True)
class CrossFit:
    """Cross-fitted predictions (Zrnic & Candès 2024): ``labelled`` (n,): each labelled image's
    prediction by the model trained without its fold; ``unlabelled`` (N_u, K): every fold model's
    prediction on every unlabelled image; ``fold_sizes`` (K,): the labelled images per fold."""

    labelled: NDArray[np.float64]
    unlabelled: NDArray[np.float64]
    fold_sizes: NDArray[np.int64]


@dataclass(frozen=True)
class ConformalFloor:
    """A split-conformal floor ε* ≥ q·ε_L (see :func:`conformal_floor`).

    ``q``: the quantile (0 when ``trivial``); ``alpha``: the miscoverage; ``calibration``: the
    m labelled images with ε_L > 0 it was computed from; ``rank``: k = ⌊α(m + 1)⌋, q is the k-th
    smallest ratio; ``trivial``: m + 1 < 1/α, too few images for any floor above 0.
    """

    q: float
    alpha: float
    calibration: int
    rank: int
    trivial: bool

    def floor(self, eps_l: ArrayLike) -> NDArray[np.float64]:
        """The floor ``q·ε_L`` per image, 0 where ε_L ≤ 0 (misclassified: ε* = 0)."""
        values = np.asarray(eps_l, dtype=np.float64)
        floors = np.zeros_like(values)
        positive = values > 0
        floors[positive] = self.q * values[positive]
        return floors


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise EpslError(f"alpha must lie strictly between 0 and 1 (got {alpha!r})")


def _as_2d(values: ArrayLike, name: str, value_range: tuple[float, float]) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim not in (1, 2):
        raise EpslError(f"{name} must be a vector or an (n, d) matrix (got shape {array.shape})")
    low, high = value_range
    if not np.isfinite(array).all() or (array < low).any() or (array > high).any():
        raise EpslError(f"{name} must hold finite values in [{low:g}, {high:g}]")
    return array[:, None] if array.ndim == 1 else array


def _check_samples(y: ArrayLike, yhat: ArrayLike, yhat_unlabelled: ArrayLike, alpha: float,
                   value_range: tuple[float, float]
                   ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    _check_alpha(alpha)
    y2, yhat2 = _as_2d(y, "y", value_range), _as_2d(yhat, "yhat", value_range)
    unlabelled = _as_2d(yhat_unlabelled, "yhat_unlabelled", value_range)
    if y2.shape != yhat2.shape:
        raise EpslError(f"y and yhat must have one shape: one prediction per labelled value "
                        f"(got {np.shape(y)} and {np.shape(yhat)})")
    if unlabelled.shape[1] != y2.shape[1]:
        raise EpslError(f"yhat_unlabelled must have y's {y2.shape[1]} column(s) "
                        f"(got {unlabelled.shape[1]})")
    if len(y2) < 2:
        raise EpslError(f"at least 2 labelled images are needed (got {len(y2)})")
    if len(unlabelled) < 1:
        raise EpslError("no unlabelled image: label fewer images than the pool holds "
                        "(with every image labelled, use the full audit itself)")
    flat = (np.ptp(y2, axis=0) == 0) & (np.ptp(yhat2, axis=0) == 0)
    if flat.any():
        raise EpslError(f"the labelled sample has no spread: all {len(y2)} truths are "
                        f"{y2[0, flat][0]:g} and all their predictions {yhat2[0, flat][0]:g}; "
                        "label more images")
    return y2, yhat2, unlabelled


def _shape_like(values: NDArray[np.float64], y: ArrayLike) -> Estimate:
    return float(values[0]) if np.ndim(y) == 1 else values


def _interval(estimate: NDArray[np.float64], std_error: NDArray[np.float64], alpha: float,
              y: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``estimate ± z_{1−α/2}·std_error``; refuses a zero-width interval in one line."""
    if (std_error == 0).any():
        raise EpslError(f"the labelled sample has no spread: its {len(y)} truths and "
                        "predictions give an interval of zero width; label more images")
    z = special.ndtri(1 - alpha / 2)
    return estimate - z * std_error, estimate + z * std_error


def _classical(y2: NDArray[np.float64], alpha: float) -> list[NDArray[np.float64]]:
    mean = y2.mean(axis=0)
    half = special.ndtri(1 - alpha / 2) * y2.std(axis=0) / math.sqrt(len(y2))
    return [mean, mean - half, mean + half]


def classical_mean_ci(y: ArrayLike, alpha: float = 0.05) -> tuple[Estimate, Estimate, Estimate]:
    """``(estimate, low, high)``: the normal interval of a mean from the labelled values alone,
    ``mean(y) ± z_{1−α/2}·σ̂(y)/√n`` (σ̂ with divisor n, as ppi_py's ``classical_mean_ci``);
    per coordinate for an (n, d) ``y``."""
    _check_alpha(alpha)
    values = _as_2d(y, "y", (-math.inf, math.inf))
    if len(values) < 2:
        raise EpslError(f"at least 2 labelled images are needed (got {len(values)})")
    mean, low, high = (_shape_like(c, y) for c in _classical(values, alpha))
    return mean, low, high


def power_tuning(y: ArrayLike, yhat: ArrayLike, yhat_unlabelled: ArrayLike) -> float:
    """The variance-minimising λ of PPI++ (Angelopoulos, Duchi, Zrnic 2023, Example 6.1 and
    ppi_py's ``_calc_lam_glm`` with an identity Hessian), clipped to [0, 1]:

        λ = tr(2·Ĉov(y, ŷ)) / (2·(1 + n/N_u)·tr(V̂ar(ŷ over all n + N_u images)))

    with Ĉov the labelled covariance (divisor n) and V̂ar the sample covariance (divisor
    n + N_u − 1). One λ for all coordinates of a vector mean (ppi_py's ``"overall"`` mode). A
    predictor that is constant on every image carries nothing: λ = 0 (where ppi_py gives nan).
    """
    y2 = np.asarray(y, dtype=np.float64)
    y2 = y2.reshape(len(y2), -1)
    yhat2 = np.asarray(yhat, dtype=np.float64).reshape(y2.shape)
    unlabelled = np.asarray(yhat_unlabelled, dtype=np.float64).reshape(-1, y2.shape[1])
    n, big_n = len(y2), len(unlabelled)
    y_centred, yhat_centred = y2 - y2.mean(axis=0), yhat2 - yhat2.mean(axis=0)
    covariance = 2 * float(np.einsum("id,id->", y_centred, yhat_centred)) / n
    everything = np.concatenate([yhat2, unlabelled])
    variance = float(everything.var(axis=0, ddof=1).sum())
    if variance == 0:
        return 0.0
    return float(np.clip(covariance / (2 * (1 + n / big_n) * variance), 0.0, 1.0))


def ppi_mean_ci(y: ArrayLike, yhat: ArrayLike, yhat_unlabelled: ArrayLike, alpha: float = 0.05,
                lam: float | None = None, *, value_range: tuple[float, float] = (0.0, 1.0)
                ) -> MeanInterval:
    """The PPI++ estimate and interval of E[y] (Angelopoulos et al. 2023, Eq. 6 and Sec. 6).

    ``θ̂ = λ·mean(ŷ_u) + mean(y − λ·ŷ)``, interval ``θ̂ ± z_{1−α/2}·sqrt(λ²σ̂²(ŷ_u)/N_u +
    σ̂²(y − λŷ)/n)`` (σ̂ with divisor n resp. N_u), exactly as ppi_py 0.2.3's ``ppi_mean_ci``.

    Args:
        y: (n,) or (n, d) truths of the labelled images (the audit's ``robust``, 0/1); an
            (n, d) ``y`` is a vector mean with one interval per coordinate, e.g. d models'
            robustness on the same labelled images.
        yhat: the predictions on the same labelled images, ``y``'s shape.
        yhat_unlabelled: (N_u,) or (N_u, d) predictions on the unlabelled rest of the pool.
        alpha: miscoverage in (0, 1); 0.05 gives a 95% interval.
        lam: the weight λ of the predictions; ``None`` tunes it (:func:`power_tuning`), 1 is
            the original PPI, 0 the classical interval.
        value_range: the range every value must lie in: (0, 1) for accuracies, (−1, 1) for
            paired differences of two models' 0/1 outcomes.

    Raises ``EpslError`` on n < 2, no unlabelled image, shapes that disagree, values out of
    range, α outside (0, 1), or a labelled sample with no spread (a zero-width interval).
    """
    y2, yhat2, unlabelled = _check_samples(y, yhat, yhat_unlabelled, alpha, value_range)
    n, big_n = len(y2), len(unlabelled)
    weight = power_tuning(y2, yhat2, unlabelled) if lam is None else float(lam)
    estimate = weight * unlabelled.mean(axis=0) + (y2 - weight * yhat2).mean(axis=0)
    std_error = np.sqrt((weight * unlabelled).std(axis=0) ** 2 / big_n
                        + (y2 - weight * yhat2).std(axis=0) ** 2 / n)
    low, high = _interval(estimate, std_error, alpha, y2)
    mean, classical_low, classical_high = (_shape_like(c, y) for c in _classical(y2, alpha))
    return MeanInterval(_shape_like(estimate, y), _shape_like(low, y), _shape_like(high, y),
                        weight, mean, classical_low, classical_high, labelled=n,
                        unlabelled=big_n, alpha=alpha)


def cross_ppi_mean_ci(y: ArrayLike, yhat: ArrayLike, yhat_unlabelled: ArrayLike,
                      alpha: float = 0.05, *, fold_sizes: ArrayLike | None = None
                      ) -> MeanInterval:
    """The cross-PPI estimate and interval of E[y] (Zrnic & Candès 2024, Eqs. 3 and 5).

    ``θ̂ = mean_u(Σ_j w_j·f_j(x̃)) − mean(f_{j(i)}(x_i) − y_i)``, interval ``θ̂ ±
    z_{1−α/2}·sqrt(σ̂²(Σ_j w_j f_j(x̃))/N_u + σ̂²(ŷ − y)/n)``, with fold weights ``w_j = n_j/n``:
    equal folds give ppi_py 0.2.3's ``crossppi_mean_ci`` exactly, unequal ones keep θ̂ unbiased.

    Args:
        y: (n,) truths of the labelled images, 0/1.
        yhat: (n,) each labelled image's prediction by the fold model that did not see it.
        yhat_unlabelled: (N_u, K) each fold model's predictions on the unlabelled images.
        alpha: miscoverage in (0, 1).
        fold_sizes: (K,) labelled images per fold; ``None``: equal folds.

    Raises ``EpslError`` as :func:`ppi_mean_ci` does, and when every labelled truth is equal
    (a predictor fitted to one value is no evidence about the other; ppi_py would give an
    interval that rarely covers).
    """
    table = np.asarray(yhat_unlabelled, dtype=np.float64)
    if table.ndim != 2:
        raise EpslError(f"yhat_unlabelled must be an (N_u, K) matrix, one column per fold "
                        f"model (got shape {table.shape})")
    sizes = np.ones(table.shape[1]) if fold_sizes is None else np.asarray(fold_sizes, float)
    if sizes.shape != (table.shape[1],) or (sizes <= 0).any():
        raise EpslError(f"fold_sizes must give {table.shape[1]} positive sizes, one per column "
                        f"of yhat_unlabelled (got shape {sizes.shape})")
    _as_2d(table, "yhat_unlabelled", (0.0, 1.0))
    averaged = table @ (sizes / sizes.sum())
    if np.ndim(y) != 1:
        raise EpslError(f"y must be a vector of 0/1 truths (got shape {np.shape(y)})")
    y2, yhat2, unlabelled = _check_samples(y, yhat, averaged, alpha, (0.0, 1.0))
    if np.ptp(y2) == 0:  # a predictor learned from one truth says nothing about the other
        raise EpslError(f"the labelled sample has no spread: all {len(y2)} truths are "
                        f"{y2[0, 0]:g}, so the cross-fitted predictor learned nothing; "
                        "label more images")
    n, big_n = len(y2), len(unlabelled)
    estimate = unlabelled.mean(axis=0) + (y2 - yhat2).mean(axis=0)
    std_error = np.sqrt(unlabelled.var(axis=0) / big_n + (yhat2 - y2).var(axis=0) / n)
    low, high = _interval(estimate, std_error, alpha, y2)
    mean, classical_low, classical_high = (float(c[0]) for c in _classical(y2, alpha))
    return MeanInterval(float(estimate[0]), float(low[0]), float(high[0]), 1.0, mean,
                        classical_low, classical_high, labelled=n, unlabelled=big_n,
                        alpha=alpha)


@dataclass(frozen=True)
class LogisticModels:
    """K ridge logistic regressions fitted by :func:`fit_logistic`: ``theta`` (K, p + 1), the
    slopes on the standardised features then the intercept; ``mean`` and ``scale`` (K, p), each
    model's standardisation (its training rows' weighted mean and spread)."""

    theta: NDArray[np.float64]
    mean: NDArray[np.float64]
    scale: NDArray[np.float64]

    def design(self, features: ArrayLike) -> NDArray[np.float64]:
        """(K, n, p + 1): each model's standardised (n, p) features and a column of ones."""
        x = np.asarray(features, dtype=np.float64)
        x = x.reshape(len(x), -1)
        standard = (x[None, :, :] - self.mean[:, None, :]) / self.scale[:, None, :]
        return np.concatenate([standard, np.ones(standard.shape[:2] + (1,))], axis=2)

    def predict(self, features: ArrayLike) -> NDArray[np.float64]:
        """(K, n) probabilities P(y = 1 | features) of each model on (n, p) features."""
        return special.expit((self.design(features) @ self.theta[:, :, None])[:, :, 0])


def _logistic_loss(design: NDArray[np.float64], y: NDArray[np.float64],
                   weights: NDArray[np.float64], penalty: NDArray[np.float64],
                   theta: NDArray[np.float64]) -> NDArray[np.float64]:
    logits = (design @ theta[:, :, None])[:, :, 0]
    nll = np.logaddexp(0.0, logits) - y * logits
    return (weights * nll).sum(axis=1) + 0.5 * (penalty * theta**2).sum(axis=1)


def _newton(design: NDArray[np.float64], y: NDArray[np.float64], weights: NDArray[np.float64],
            penalty: NDArray[np.float64], max_steps: int) -> NDArray[np.float64]:
    """Minimise :func:`_logistic_loss` for all K models at once: Newton's method with a
    halving (Armijo) line search per model, from θ = 0."""
    k, p = design.shape[0], design.shape[2]
    theta = np.zeros((k, p))
    loss = _logistic_loss(design, y, weights, penalty, theta)
    for _ in range(max_steps):
        prob = special.expit((design @ theta[:, :, None])[:, :, 0])
        residual = (weights * (prob - y))[:, None, :]
        gradient = (residual @ design)[:, 0, :] + penalty * theta
        curvature = (weights * prob * (1 - prob))[:, :, None] * design
        hessian = design.transpose(0, 2, 1) @ curvature + penalty[:, :, None] * np.eye(p)
        step = np.linalg.solve(hessian, gradient[:, :, None])[:, :, 0]
        decrease = np.einsum("kp,kp->k", gradient, step)  # the squared Newton decrement
        if decrease.max() < 1e-12:
            break
        size = np.ones(k)
        for _ in range(30):
            trial = _logistic_loss(design, y, weights, penalty, theta - size[:, None] * step)
            short = trial > loss - 1e-4 * size * decrease
            if not short.any():
                break
            size = np.where(short, size / 2, size)
        theta = theta - size[:, None] * step
        loss = _logistic_loss(design, y, weights, penalty, theta)
    return theta


def fit_logistic(features: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None, *,
                 ridge: float = 1.0, max_steps: int = 100) -> LogisticModels:
    """K ridge logistic regressions of ``y`` on ``features``, one per row of ``weights``.

    Each minimises ``Σ_i w_i·[log(1 + e^{z_i}) − y_i·z_i] + ridge/2·(‖β‖² + 10⁻³·b²)`` with
    ``z_i = ((x_i − μ)/s)·β + b``, μ and s the weighted mean and spread of the features (so the
    ridge does not depend on their units). The ridge keeps β finite on separable data (a cheap
    attack that never lets a non-robust image through); the small intercept penalty keeps b
    finite when every training truth is equal.

    Args:
        features: (n, p) finite features.
        y: (n,) 0/1 truths.
        weights: (K, n) non-negative weights, one row per model (0: left out); ``None``: one
            model on every row.
        ridge: the penalty on the standardised slopes, > 0.
        max_steps: Newton steps at most.
    """
    x = np.asarray(features, dtype=np.float64)
    x = x.reshape(len(x), -1)
    w = np.ones((1, len(x))) if weights is None else np.asarray(weights, dtype=np.float64)
    total = w.sum(axis=1, keepdims=True)
    mean = w @ x / total
    spread = np.sqrt(np.maximum(w @ x**2 / total - mean**2, 0.0))
    models = LogisticModels(np.zeros(0), mean, np.where(spread > 1e-12, spread, 1.0))
    design = models.design(x)
    penalty = np.full(design.shape[::2], float(ridge))
    penalty[:, -1] *= 1e-3
    theta = _newton(design, np.asarray(y, dtype=np.float64), w, penalty, max_steps)
    return LogisticModels(theta, models.mean, models.scale)


def _check_features(features: ArrayLike, name: str) -> NDArray[np.float64]:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim not in (1, 2) or not np.isfinite(array).all():
        raise EpslError(f"{name} must be an (n,) or (n, p) array of finite values "
                        f"(got shape {array.shape})")
    return array.reshape(len(array), -1)


def cross_fit_logistic(features: ArrayLike, y: ArrayLike, features_unlabelled: ArrayLike, *,
                       folds: int = 10, seed: int = 0, ridge: float = 1.0) -> CrossFit:
    """Cross-fitted calibrated probabilities P(y = 1 | features) (Zrnic & Candès 2024, Alg. 1).

    The labelled images are split at random (``seed``) into K = min(``folds``, n) folds of
    nearly equal size; the j-th ridge logistic model (:func:`fit_logistic`) is trained on the
    others and predicts its own fold and every unlabelled image. No model ever predicts an image
    it was trained on, which keeps :func:`cross_ppi_mean_ci` valid whatever the features.

    Args:
        features: (n, p) features of the labelled images (e.g. ε_L/ε, the cheap attack's 0/1
            outcome and its margin); y: (n,) their 0/1 truths.
        features_unlabelled: (N_u, p) the same features on the unlabelled images.
        folds: K ≥ 2; seed: the fold assignment's; ridge: the logistic penalty.
    """
    x, x_unlabelled = _check_features(features, "features"), \
        _check_features(features_unlabelled, "features_unlabelled")
    truth = np.asarray(y, dtype=np.float64)
    if truth.shape != (len(x),) or not np.isin(truth, (0.0, 1.0)).all():
        raise EpslError(f"y must hold one 0/1 truth per row of features ({len(x)}), "
                        f"got shape {truth.shape}")
    if x_unlabelled.shape[1] != x.shape[1]:
        raise EpslError(f"features_unlabelled must have the {x.shape[1]} column(s) of features "
                        f"(got {x_unlabelled.shape[1]})")
    if not isinstance(folds, int | np.integer) or folds < 2 or len(x) < 3:
        raise EpslError(f"cross-fitting needs folds >= 2 (got {folds!r}) and at least 3 "
                        f"labelled images (got {len(x)})")
    if not ridge > 0:
        raise EpslError(f"ridge must be positive (got {ridge!r})")
    check_seed(seed)
    order = np.random.default_rng(seed).permutation(len(x))
    parts = np.array_split(order, min(folds, len(x)))
    held_out = np.zeros((len(parts), len(x)), dtype=bool)
    for j, part in enumerate(parts):
        held_out[j, part] = True
    models = fit_logistic(x, truth, (~held_out).astype(np.float64), ridge=ridge)
    on_labelled = models.predict(x)
    return CrossFit(labelled=on_labelled[held_out.argmax(axis=0), np.arange(len(x))],
                    unlabelled=models.predict(x_unlabelled).T,
                    fold_sizes=held_out.sum(axis=1))


def combined_mean_ci(features: ArrayLike, y: ArrayLike, features_unlabelled: ArrayLike,
                     alpha: float = 0.05, *, folds: int = 10, seed: int = 0,
                     ridge: float = 1.0) -> MeanInterval:
    """Cross-PPI with a learned predictor: :func:`cross_fit_logistic` then
    :func:`cross_ppi_mean_ci` (arguments as there)."""
    _check_alpha(alpha)
    fit = cross_fit_logistic(features, y, features_unlabelled, folds=folds, seed=seed,
                             ridge=ridge)
    return cross_ppi_mean_ci(y, fit.labelled, fit.unlabelled, alpha, fold_sizes=fit.fold_sizes)


def conformal_floor(eps_star: ArrayLike, eps_l: ArrayLike, alpha: float = 0.05
                    ) -> ConformalFloor:
    """The split-conformal floor ε* ≥ q·ε_L from the labelled images' ε* and ε_L.

    Over the m labelled images with ε_L > 0 (correctly classified), the ratios
    ``r_i = ε*_i / ε_L,i`` are sorted and ``q = r_(k)``, the k-th smallest, with
    ``k = ⌊α(m + 1)⌋``. For a new image exchangeable with them, its ratio's rank among the
    m + 1 is uniform, so ``P(ε* ≥ q·ε_L) ≥ 1 − k/(m + 1) ≥ 1 − α`` (and at most
    ``1 − α + 1/(m + 1)`` without ties). With m + 1 < 1/α, k = 0: no order statistic is low
    enough, q = 0 and ``trivial`` is set. ε* = +inf (no attack broke the image) is allowed.

    Args:
        eps_star: (n,) the labelled images' ε* (≥ 0, +inf allowed).
        eps_l: (n,) their ε_L (Eq. 4; ≤ 0 when misclassified), finite.
        alpha: miscoverage in (0, 1).
    """
    _check_alpha(alpha)
    star, lipschitz = np.asarray(eps_star, dtype=np.float64), np.asarray(eps_l, dtype=np.float64)
    if star.ndim != 1 or star.shape != lipschitz.shape:
        raise EpslError(f"eps_star and eps_l must be two vectors of one length "
                        f"(got shapes {star.shape} and {lipschitz.shape})")
    if np.isnan(star).any() or (star < 0).any() or not np.isfinite(lipschitz).all():
        raise EpslError("eps_star must hold values >= 0 (+inf allowed) and eps_l finite values")
    kept = lipschitz > 0
    ratios = np.sort(star[kept] / lipschitz[kept])
    m = len(ratios)
    rank = math.floor(alpha * (m + 1) + 1e-12)
    q = float(ratios[rank - 1]) if rank >= 1 else 0.0
    return ConformalFloor(q=q, alpha=alpha, calibration=m, rank=rank, trivial=rank == 0)
