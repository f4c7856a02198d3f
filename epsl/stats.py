"""Uncertainty of accuracies, torch-free: the exact binomial interval of an accuracy and the
exact McNemar test of two classifiers on the same examples. Used by the library's records and
commands and by :mod:`epsl.analysis`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper–Pearson) interval of a binomial proportion ``k / n`` (scipy's
    ``binomtest(k, n).proportion_ci(method="exact")``); (nan, nan) without examples."""
    if n <= 0:
        return math.nan, math.nan
    interval = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence,
                                                             method="exact")
    return float(interval.low), float(interval.high)


@dataclass(frozen=True)
class PairedTest:
    """Two classifiers' outcomes on the same n examples (True: correct/robust).

    ``only_a``/``only_b``: examples only A (only B) gets right, the discordant pairs;
    ``difference`` = accuracy(B) − accuracy(A) with its 95% interval (Newcombe's hybrid score
    interval for paired proportions, 1998, method 10); ``p_value``: the exact McNemar test,
    two-sided: the binomial test of ``only_b`` successes in ``only_a + only_b`` trials with
    p = 1/2 (1 when there is no discordant pair). It assumes only that the examples are
    independent; the pairing removes the variation shared by the two classifiers.
    """

    n: int
    accuracy_a: float
    accuracy_b: float
    only_a: int
    only_b: int
    difference: float
    difference_lo: float
    difference_hi: float
    p_value: float


def mcnemar(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray,
            confidence: float = 0.95) -> PairedTest:
    """Exact McNemar test and the paired difference of B against A (see :class:`PairedTest`)."""
    a_ok, b_ok = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a_ok.shape != b_ok.shape or a_ok.ndim != 1 or not len(a_ok):
        raise ValueError("paired outcomes must be two non-empty vectors of one length")
    n = len(a_ok)
    both = int((a_ok & b_ok).sum())
    only_a, only_b = int((a_ok & ~b_ok).sum()), int((~a_ok & b_ok).sum())
    neither = n - both - only_a - only_b
    discordant = only_a + only_b
    p_value = (float(stats.binomtest(only_b, discordant, 0.5).pvalue) if discordant else 1.0)
    # Newcombe (1998), method 10: Wilson limits of each margin, corrected for the pairing
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = _wilson(both + only_a, n, confidence)
    l2, u2 = _wilson(both + only_b, n, confidence)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = 0.0 if margins == 0 else (both * neither - only_a * only_b) / math.sqrt(margins)
    delta = math.sqrt(max((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2,
                          0.0))
    epsilon = math.sqrt(max((u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2,
                            0.0))
    difference = p2 - p1
    return PairedTest(n, p1, p2, only_a, only_b, difference, max(difference - delta, -1.0),
                      min(difference + epsilon, 1.0), p_value)


def _wilson(k: int, n: int, confidence: float) -> tuple[float, float]:
    interval = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence,
                                                             method="wilson")
    return float(interval.low), float(interval.high)




def accuracy_interval(accuracy: float, n: int) -> tuple[float, float]:
    """:func:`clopper_pearson` of an accuracy that is a mean over ``n`` examples."""
    return clopper_pearson(round(accuracy * n), n)


def with_interval(accuracy: float, n: int) -> str:
    """``76.9% [72.2, 81.1]``: an accuracy over ``n`` examples and its 95% interval."""
    lo, hi = accuracy_interval(accuracy, n)
    return f"{accuracy:.1%} [{100 * lo:.1f}, {100 * hi:.1f}]"


__all__ = ["PairedTest", "accuracy_interval", "clopper_pearson", "mcnemar", "with_interval"]
