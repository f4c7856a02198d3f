"""Accuracies from per-example tables: every accuracy here is a mean over rows.

Equation 4 of Shafahi et al. predicts that an example survives an ℓ∞ attack of size ε when
ε < ε_L = min_ȳ (z_y − z_ȳ) / ‖∇ₓz_y − ∇ₓz_ȳ‖₁ (negative for misclassified examples), so the
predicted accuracy at ε is the fraction of rows with ``eps_l > eps`` (Table 1's last column).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from epsl.stats import PairedTest, clopper_pearson, mcnemar

__all__ = ["PairedTest", "attack_accuracies", "normalise_attacks", "clopper_pearson", "main_eps", "mcnemar",
           "pick_eps", "predicted_accuracy", "strongest_setting", "with_intervals"]

ATTACK_KEYS = ["attack", "loss_name", "eps", "steps", "restarts", "transfer"]


def predicted_accuracy(diagnostics: pd.DataFrame, eps: float | Sequence[float] | np.ndarray
                       ) -> Any:
    """Eq. 4 predicted accuracy: mean of ``eps_l > eps`` over examples; vectorised over ``eps``.

    ``diagnostics``: one row per example with an ``eps_l`` column (pixel units, [0,1] scale).
    """
    eps_l = diagnostics["eps_l"].to_numpy(dtype=float)
    grid = np.atleast_1d(np.asarray(eps, dtype=float))
    acc = (eps_l[None, :] > grid[:, None]).mean(axis=1)
    return float(acc[0]) if np.ndim(eps) == 0 else acc


def is_transfer(attack: pd.DataFrame) -> pd.Series:
    """True for black-box rows: a non-empty ``source`` (other than 'white-box'/'none'/'self'),
    or an attack named ``transfer*``."""
    transfer = attack["attack"].astype(str).str.lower().str.startswith("transfer")
    if "source" in attack.columns:
        source = attack["source"].astype(object).fillna("").astype(str).str.strip().str.lower()
        transfer |= ~source.isin(["", "none", "nan", "white-box", "whitebox", "self", "false"])
    return transfer


def normalise_attacks(attack: pd.DataFrame) -> pd.DataFrame:
    """An attack table with every setting column in one spelling: ``transfer`` (bool),
    ``attack`` and ``loss_name`` lower case, ``steps``/``restarts`` integers (1 when absent),
    ``correct`` bool."""
    frame = attack.assign(transfer=is_transfer(attack))
    for column, default in (("loss_name", "xent"), ("steps", 1), ("restarts", 1)):
        if column not in frame.columns:
            frame[column] = default
    frame["attack"] = frame["attack"].astype(str).str.lower().str.removeprefix("transfer-")
    frame["loss_name"] = frame["loss_name"].fillna("xent").astype(str).str.lower()
    frame["steps"] = frame["steps"].fillna(1).astype(int)
    frame["restarts"] = frame["restarts"].fillna(1).astype(int)
    frame["correct"] = frame["correct"].astype(str).str.lower().isin(["true", "1", "1.0"])
    return frame


def attack_accuracies(attack: pd.DataFrame) -> pd.DataFrame:
    """One row per attack setting: ``attack, loss_name, eps, steps, restarts, transfer,
    accuracy, n`` where ``accuracy`` is the mean of ``correct`` over that setting's examples,
    each example counted once."""
    frame = normalise_attacks(attack)
    if "index" in frame.columns:  # a setting saved twice (a sweep repeating the table's PGD-k)
        # counts each example once, robust only if it survived every run of that setting
        frame = frame.groupby([*ATTACK_KEYS, "index"], sort=False)["correct"].all().reset_index()
    grouped = frame.groupby(ATTACK_KEYS, sort=True)["correct"]
    out = pd.DataFrame({"accuracy": grouped.mean(), "n": grouped.size()}).reset_index()
    return out


def strongest_setting(accuracies: pd.DataFrame) -> pd.DataFrame:
    """Per (attack, loss_name, eps, transfer), the setting with the most steps, then the most
    restarts: the number a paper table would report for "PGD-k"."""
    order = accuracies.sort_values(["steps", "restarts"])
    return order.groupby(["attack", "loss_name", "eps", "transfer"], sort=True).tail(1)\
        .reset_index(drop=True)


def pick_eps(values: Sequence[float], eps: float | None) -> float | None:
    """The value in ``values`` closest to ``eps`` (within 1e-6 relative); the largest when
    ``eps`` is None; None when nothing matches."""
    values = sorted({float(v) for v in values if pd.notna(v)})
    if not values:
        return None
    if eps is None:
        return values[-1]
    matches = [v for v in values if np.isclose(v, eps, rtol=1e-6, atol=1e-9)]
    return matches[0] if matches else None


def main_eps(attack: pd.DataFrame, summary: dict[str, Any] | None = None) -> float | None:
    """The ε a run's attacks were made for: ``summary['eps']`` when it is a number, else the ε
    with the most distinct (attack, loss, source) settings (the largest on ties)."""
    value = (summary or {}).get("eps")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if attack.empty:
        return None
    keys = [c for c in ("attack", "loss_name", "source") if c in attack.columns]
    counts = attack.drop_duplicates(["eps", *keys]).groupby("eps").size()
    best = counts[counts == counts.max()].index
    return float(max(best))


def with_intervals(accuracies: pd.DataFrame) -> pd.DataFrame:
    """:func:`attack_accuracies` (columns ``accuracy`` and ``n``) with the 95% Clopper–Pearson
    bounds ``lo`` and ``hi`` of every row."""
    bounds = [clopper_pearson(round(acc * n), int(n))
              for acc, n in zip(accuracies["accuracy"], accuracies["n"], strict=True)]
    return accuracies.assign(lo=[b[0] for b in bounds], hi=[b[1] for b in bounds])
