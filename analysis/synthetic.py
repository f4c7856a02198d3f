"""Synthetic run folders with the exact table schema of the diagnostics, attacks, audit and
minimal perturbations (ε*), for tests and documentation. Numbers are random but internally
consistent: ``eps_l`` is ``logit_gap / grad_gap_<q>``, ``correct`` is ``pred == label``, an
example survives an attack at ε roughly when ε < ε_L, and ε* scatters around ε_L, so the curves
look like real ones. numpy only, no model.

Every run is in one threat model (``norm=``: ``linf``, the default, ``l2`` or ``l1``): its
records say so, the gradient-gap column is named by the dual norm q (``grad_gap_l1``,
``grad_gap_l2``, ``grad_gap_linf``) and attack tables carry a ``norm`` column. In ℓ2 and ℓ1 the
dual-norm gradient gap is smaller than the ℓ1 one by a fixed factor (:data:`NORM_SCALE`), so
ε_L, ε* and the attack radii are larger by it; every other number is the ℓ∞ run's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from epsl.norms import Norm, max_radius, parse_norm
from epsl.results.records import Provenance, Result
from epsl.stats import accuracy_interval

from .cards import report_card
from .folders import grad_gap_column

PRESETS: dict[str, dict[str, Any]] = {
    "natural": {},
    "noise": {"noise_sigma": 0.5},
    "ls": {"label_smoothing": 0.75},
    "ls+noise": {"label_smoothing": 0.75, "noise_sigma": 0.5},
    "lsq": {"logit_squeeze": 0.5},
    "lsq+noise": {"logit_squeeze": 0.5, "noise_sigma": 0.5},
    "pgd": {"adv": "pgd", "adv_eps": 0.3, "adv_steps": 7},
}


#: how much larger ε_L, ε* and the attack radii are in each norm than in ℓ∞ (the dual-norm
#: gradient gap is smaller by this factor), loosely as on 8 x 8 digits
NORM_SCALE = {Norm.LINF: 1.0, Norm.L2: 5.0, Norm.L1: 25.0}
#: the pixels of the synthetic images (8 x 8 digits): the box that bounds ε*
PIXELS = 64


def default_eps(norm: str | Norm = "linf") -> float:
    """The attack ε of a synthetic run in ``norm``: 0.3 in ℓ∞, scaled by :data:`NORM_SCALE`."""
    return 0.3 * NORM_SCALE[parse_norm(norm)]


def defense_config(**overrides: Any) -> dict[str, Any]:
    """A full ``defense`` dict with the paper's neutral defaults, updated by ``overrides``."""
    base: dict[str, Any] = {"label_smoothing": 0.0, "logit_squeeze": 0.0, "noise_sigma": 0.0,
                            "adv": "none", "adv_eps": 0.0, "adv_steps": 0, "adv_kappa": None}
    return {**base, **overrides}


def _strength(defense: Mapping[str, Any]) -> tuple[float, float]:
    """(gradient shrink, logit-gap factor) that mimic the paper's qualitative effects."""
    alpha = float(defense.get("label_smoothing") or 0)
    beta = float(defense.get("logit_squeeze") or 0)
    sigma = float(defense.get("noise_sigma") or 0)
    adv = str(defense.get("adv") or "none") != "none"
    shrink, gap = 1.0, 1.0
    if sigma:
        shrink *= 1.5
        gap *= 1.3
    if alpha:
        shrink *= (1 + 6 * alpha) if sigma else 1.3
        gap *= 0.35 if not sigma else 0.6
    if beta:
        shrink *= (2 + 3 * beta) if sigma else 1.5
        gap *= 1.2 if sigma else 0.5
    if adv:
        shrink *= 12
        gap *= 0.5
    return shrink, gap


def model_meta(defense: Mapping[str, Any], *, steps: int = 2000, dataset: str = "digits",
               train_accuracy: float = 0.99, test_accuracy: float = 0.97) -> dict[str, Any]:
    """Checkpoint metadata in the shape ``epsl.models.checkpoint`` stores it."""
    return {"arch": "small-cnn", "dataset": dataset, "num_classes": 10,
            "train_config": {"defense": defense_config(**defense), "steps": steps},
            "metrics": {"train_accuracy": train_accuracy, "test_accuracy": test_accuracy}}


def diagnostics_frame(defense: Mapping[str, Any], *, n: int = 200, classes: int = 10,
                      seed: int = 0, norm: str | Norm = "linf") -> pd.DataFrame:
    """One row per example with the columns of ``Diagnostics.to_frame()`` in ``norm`` (the
    gradient gap named ``grad_gap_<dual norm>``)."""
    rng = np.random.default_rng(seed)
    shrink, gap_factor = _strength(defense)
    label = rng.integers(0, classes, n)
    logits = rng.normal(0, 2.0 * gap_factor, (n, classes))
    logits[np.arange(n), label] += rng.gamma(4.0, 2.5 * gap_factor, n)
    pred = logits.argmax(1)
    others = logits.copy()
    others[np.arange(n), label] = -np.inf
    rival = others.argmax(1)
    logit_gap = logits[np.arange(n), label] - logits[np.arange(n), rival]
    grad_l1_label = rng.lognormal(np.log(40.0 / shrink), 0.6, n)
    grad_l1_rival = rng.lognormal(np.log(35.0 / shrink), 0.6, n)
    cosine = np.clip(rng.normal(0.1 + 0.3 * (shrink > 3), 0.2, n), -1, 1)
    grad_gap = (grad_l1_label + grad_l1_rival) * np.sqrt(np.clip((1 - cosine) / 2, 0.01, 1))
    p = parse_norm(norm)
    if p is not Norm.LINF:
        grad_gap = grad_gap / NORM_SCALE[p]
    frame = pd.DataFrame({
        "index": np.arange(n), "label": label, "pred": pred, "correct": pred == label,
        "logit_gap": logit_gap, grad_gap_column(p): grad_gap, "grad_cosine": cosine,
        "eps_l": logit_gap / grad_gap, "rival": rival,
        "grad_l1_label": grad_l1_label, "grad_l1_rival": grad_l1_rival,
    })
    frame["logit_label"] = logits[np.arange(n), label]
    frame["logit_rival"] = logits[np.arange(n), rival]
    order = np.argsort(-logits, axis=1, kind="stable")[:, :10]
    for rank in range(order.shape[1]):
        frame[f"top_{rank + 1}"] = order[:, rank]
    for rank in range(order.shape[1]):
        frame[f"logit_top_{rank + 1}"] = np.take_along_axis(logits, order[:, rank:rank + 1], 1)[:, 0]
    return frame


def activations_frame(defense: Mapping[str, Any], *, width: int = 128, classes: int = 10,
                      n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Per-unit activation sums over ``n`` examples for the penultimate and logit layers."""
    rng = np.random.default_rng(seed + 1)
    shrink, _ = _strength(defense)
    inactive = int(width * min(0.8, 0.08 * shrink))
    magnitude = rng.lognormal(np.log(n * 0.5), 1.0, width)
    active = rng.integers(1, n + 1, width)
    dead = rng.choice(width, inactive, replace=False)
    magnitude[dead] = 0.0
    active[dead] = 0
    logit_abs = rng.lognormal(np.log(n * 3.0 / np.sqrt(shrink)), 0.3, classes)
    rows = [pd.DataFrame({"layer": "penultimate", "unit": np.arange(width),
                          "activation_sum": magnitude, "activation_abs_sum": magnitude,
                          "active_count": active}),
            pd.DataFrame({"layer": "logit", "unit": np.arange(classes),
                          "activation_sum": logit_abs * rng.uniform(-1, 1, classes),
                          "activation_abs_sum": logit_abs, "active_count": n})]
    return pd.concat(rows, ignore_index=True)


def landscape_frame(defense: Mapping[str, Any], *, images: int = 8, steps: int = 11,
                    radius: float = 0.3, seed: int = 0,
                    directions: Sequence[str] = ("random", "adversarial")) -> pd.DataFrame:
    """Cross-entropy on a ``steps`` x ``steps`` grid of (ε₁, ε₂) in [-radius, radius]."""
    rng = np.random.default_rng(seed + 2)
    shrink, _ = _strength(defense)
    grid = np.linspace(-radius, radius, steps)
    e1, e2 = np.meshgrid(grid, grid, indexing="ij")
    rows = []
    for direction in directions:
        for image in range(images):
            a, b = rng.uniform(0.5, 2.0, 2) / shrink
            tilt = 30.0 if direction == "adversarial" else 2.0
            loss = np.log1p(np.exp(8 * (a * e1**2 + b * e2**2) + tilt * e2 / shrink - 3))
            rows.append(pd.DataFrame({"image": image, "index": image,
                                      "label": int(rng.integers(0, 10)),
                                      "direction": direction, "eps1": e1.ravel(),
                                      "eps2": e2.ravel(), "loss": loss.ravel()}))
    return pd.concat(rows, ignore_index=True)


def _hardness(n: int, seed: int) -> np.ndarray:
    """Per-example factor by which an example is harder to break than its ε_L says (shared by
    the attacks and ε*, so that they agree on which examples are hard)."""
    return np.random.default_rng(seed + 3).lognormal(0, 0.3, n)


def attack_frame(diagnostics: pd.DataFrame, *, eps: Sequence[float] = (0.1, 0.2, 0.3),
                 steps: Sequence[int] = (1, 7, 20, 40), restarts: Sequence[int] = (1, 3),
                 seed: int = 0, norm: str | Norm = "linf") -> pd.DataFrame:
    """Per-example attack results in ``norm`` (its ``norm`` column): FGSM and PGD (xent, CW) at
    each ε, a PGD steps sweep and a restarts sweep at the largest ε, and a transfer PGD (CW)
    from a natural source."""
    eps_l = diagnostics["eps_l"].to_numpy()
    label = diagnostics["label"].to_numpy()
    noise = _hardness(len(eps_l), seed)
    settings: list[tuple[str, str, float, int, int, str]] = []
    for e in eps:
        for loss in ("xent", "cw"):
            settings.append(("fgsm", loss, e, 1, 1, ""))
            settings.append(("pgd", loss, e, max(steps), 1, ""))
        settings.append(("pgd", "cw", e, max(steps), 1, "natural.safetensors"))
    e_max = max(eps)
    settings += [("pgd", "xent", e_max, s, 1, "") for s in steps if s != max(steps)]
    settings += [("pgd", "xent", e_max, max(steps), r, "") for r in restarts if r != 1]
    frames = []
    for attack, loss, e, k, r, source in settings:
        strength = {"fgsm": 0.8, "pgd": 1.0 + 0.1 * np.log(k) + 0.05 * r}[attack]
        strength *= 0.6 if source else 1.0
        strength *= 1.05 if loss == "cw" else 1.0
        correct = eps_l * noise > e * strength
        frames.append(pd.DataFrame({
            "index": diagnostics["index"], "label": label, "attack": attack,
            "loss_name": loss, "eps": e, "steps": k, "restarts": r,
            "step_size": e if attack == "fgsm" else 2.5 * e / k,
            "random_start": attack == "pgd", "source": source, "correct": correct,
            "loss": np.where(correct, 0.1, 3.0), "margin": eps_l - e * strength,
            "pred": np.where(correct, label, (label + 1) % 10), "norm": parse_norm(norm).value}))
    return pd.concat(frames, ignore_index=True)


def audit_frames(attack: pd.DataFrame, clean_correct: pd.Series, eps: float
                 ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """audit.csv (per-example flags, worst case) and audit.json from attack rows at ``eps``."""
    at = attack[np.isclose(attack["eps"], eps)]
    frame = pd.DataFrame({"index": at["index"].unique()})
    first = at.drop_duplicates("index").set_index("index")
    frame["label"] = first.loc[frame["index"], "label"].to_numpy()
    frame["clean_correct"] = clean_correct.to_numpy()
    names = []
    for (attack_name, loss, k, r, source), group in at.groupby(
            ["attack", "loss_name", "steps", "restarts", "source"]):
        name = f"{'transfer-' if source else ''}{attack_name}{k if attack_name == 'pgd' else ''}"
        name += f"-{loss}" + (f"-r{r}" if r > 1 else "")
        frame[name] = group.set_index("index").loc[frame["index"], "correct"].to_numpy()
        names.append(name)
    flags = frame[["clean_correct", *names]]
    frame["robust"] = flags.all(axis=1)
    frame["broken_by"] = np.where(frame["robust"], "", flags.idxmin(axis=1))
    summary = {"eps": eps, "accuracies": {n: float(frame[n].mean()) for n in
                                          ["clean_correct", *names, "robust"]},
               "warnings": [], "verdict": f"worst-case robust accuracy "
                                          f"{frame['robust'].mean():.1%} at ε={eps:g}"}
    return frame, summary


def eps_star_frame(diagnostics: pd.DataFrame, *, seed: int = 0,
                  attacks: Sequence[str] = ("fmn", "fab"), norm: str | Norm = "linf"
                  ) -> pd.DataFrame:
    """Per-example ε* with the columns of ``epsl eps-star``'s ``eps_star.csv``: ``index, label,
    eps_star, eps_star_attack, pred_adv, eps_<attack>..., eps_l, rival, ratio, optimistic``.

    ε* is where :func:`attack_frame`'s strongest PGD breaks the example (ε_L times the same
    per-example hardness, divided by 1.45), times a log-normal jitter, bent below 1 as
    ``1 - exp(-x)`` (no ℓ∞ distance inside [0, 1]^d exceeds 1): so the ensemble is about as
    strong as PGD-40 and Eq. 4 is optimistic (ε_L > ε*) on most but not all examples. ε* is 0
    for misclassified examples (attack ``clean``) and +inf (attack ``""``) for about a tenth of
    the hard ones (ε* > 0.3), as if no attack had flipped them. In ℓ2 and ℓ1 the bend is
    ``R (1 - exp(-x / R))`` below the whole box's radius R (√64, 64) and "hard" is scaled by
    :data:`NORM_SCALE`. Each attack's own ε is ε* for
    the one that found it and larger (or +inf, a failure) for the others.
    """
    rng = np.random.default_rng(seed + 4)
    eps_l = diagnostics["eps_l"].to_numpy(dtype=np.float64)
    label = diagnostics["label"].to_numpy()
    correct = diagnostics["correct"].to_numpy(dtype=bool)
    n = len(eps_l)
    breaks = np.abs(eps_l) * _hardness(n, seed) / 1.45
    p = parse_norm(norm)
    if p is Norm.LINF:
        found = -np.expm1(-breaks * rng.lognormal(0, 0.25, n))
    else:
        box = max_radius(p, PIXELS)
        found = -box * np.expm1(-breaks * rng.lognormal(0, 0.25, n) / box)
    unbroken = correct & (found > 0.3 * NORM_SCALE[p]) & (rng.random(n) < 0.1)
    eps_star = np.where(correct, np.where(unbroken, np.inf, found), 0.0)
    winner = rng.integers(0, len(attacks), n)
    frame = pd.DataFrame({
        "index": diagnostics["index"].to_numpy(), "label": label, "eps_star": eps_star,
        "eps_star_attack": np.where(~correct, "clean", np.where(
            unbroken, "", np.asarray(attacks, dtype=object)[winner])),
        "pred_adv": np.where(correct & ~unbroken, diagnostics["rival"].to_numpy(),
                             diagnostics["pred"].to_numpy())})
    for k, name in enumerate(attacks):
        slower = eps_star * (1 + rng.exponential(0.2, n))
        failed = rng.random(n) < 0.05
        own = np.where(winner == k, eps_star, np.where(failed, np.inf, slower))
        frame[f"eps_{name}"] = np.where(correct, own, 0.0)
    frame["eps_l"] = eps_l
    frame["rival"] = diagnostics["rival"].to_numpy()
    # the ratio and the flag exactly as epsl.runs.eps_star.eps_star_table makes them
    keep = (eps_star > 0) & (eps_l > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isinf(eps_star), 0.0, eps_l / eps_star)
    frame["ratio"] = np.where(keep, ratio, np.nan)
    frame["optimistic"] = keep & (frame["ratio"] > 1)
    return frame


def eps_star_summary(table: pd.DataFrame, eps: Sequence[float], *, seed: int = 0,
                    norm: str | Norm = "linf") -> dict[str, Any]:
    """The ``eps_star.json`` numbers of ``epsl eps-star`` for ``table``: its norm, ε* accuracy
    at each ε with its 95% interval, the report card of Eq. 4 and which attack found each
    ε*."""
    n = len(table)
    star = table["eps_star"].to_numpy(dtype=np.float64)
    accuracy = {repr(e): float((star > e).mean()) for e in eps}
    attacks = [c[4:] for c in table.columns
               if c.startswith("eps_") and c not in ("eps_star", "eps_star_attack", "eps_l")]
    return {
        "n": n, "norm": parse_norm(norm).value, "eps": list(eps), "eps_star_accuracy": accuracy,
        "eps_star_accuracy_interval": {k: list(accuracy_interval(a, n))
                                       for k, a in accuracy.items()},
        "report_card": report_card(table["eps_l"], table["eps_star"], seed=seed, norm=norm),
        "found_by": {str(k): int(v) for k, v in
                     table["eps_star_attack"].replace("", "none").value_counts().items()},
        "seconds": {name: 0.0 for name in attacks},
        "eps_star": {"attacks": attacks, "seed": seed},
    }


def write_synthetic_run(out: Path | str, defense: Mapping[str, Any] | str = "natural", *,
                        n: int = 200, seed: int = 0, eps: float | None = None,
                        steps: int = 2000,
                        tables: Sequence[str] = ("diagnostics", "activations", "landscape",
                                                 "attack", "audit"),
                        norm: str | Norm = "linf") -> Path:
    """Write a run folder through :mod:`epsl.results.records`: ``diagnostics.csv`` + ``.json``,
    ``activations.csv``, ``landscape.csv``, ``attacks/attack.csv``, ``audit/audit.csv`` and,
    when ``tables`` names ``"eps_star"`` (not by default), ``eps_star/eps_star.csv``, each with its
    record. ``defense`` is a ``defense`` dict or a key of :data:`PRESETS`. Adding ``"eps_star"``
    leaves every other table unchanged (it draws from a generator of its own). Every record
    names ``norm``; ``eps`` defaults to :func:`default_eps` of it (0.3 in ℓ∞)."""
    out = Path(out)
    p = parse_norm(norm)
    eps = default_eps(p) if eps is None else eps
    spec = PRESETS[defense] if isinstance(defense, str) else dict(defense)
    diag = diagnostics_frame(spec, n=n, seed=seed, norm=p)
    test_acc = float(diag["correct"].mean())
    meta = model_meta(spec, steps=steps, test_accuracy=test_acc,
                      train_accuracy=min(1.0, test_acc + 0.02))
    origin = Provenance(checkpoint=str(out / "model.safetensors"),
                        checkpoint_sha256=f"synthetic-{seed}",
                        data={"dataset": "digits", "split": "test", "source": "synthetic",
                              "n": n, "sha256": f"synthetic-{seed}-{n}"},
                        model=meta)
    eps_list = [0.1, 0.2, 0.3] if eps == 0.3 else sorted({eps / 3, 2 * eps / 3, eps})
    if "diagnostics" in tables:
        Result("diagnostics", {
            "n": n, "norm": p.value, "clean_accuracy": test_acc, "eps": eps_list,
            "predicted_accuracy": {repr(e): float((diag["eps_l"] > e).mean()) for e in eps_list},
        }, origin, diag).save(out)
    if "activations" in tables:
        Result("activations", {"n": n}, origin,
               activations_frame(spec, n=n, seed=seed)).save(out)
    if "landscape" in tables:
        # a landscape's plane is no ball of any norm: its radius stays the ℓ∞ one
        Result("landscape", {}, origin, landscape_frame(
            spec, seed=seed, radius=eps if p is Norm.LINF else default_eps())).save(out)
    attack = attack_frame(diag, eps=eps_list, seed=seed, norm=p)
    if "attack" in tables:
        Result("attack", {"n": n, "norm": p.value}, origin, attack).save(out / "attacks")
    if "audit" in tables:
        audit, summary = audit_frames(attack, diag["correct"], eps)
        Result("audit", {**summary, "norm": p.value}, origin, audit).save(out / "audit")
    if "eps_star" in tables:
        eps_star = eps_star_frame(diag, seed=seed, norm=p)
        Result("eps_star", eps_star_summary(eps_star, eps_list, seed=seed, norm=p), origin,
               eps_star).save(out / "eps_star")
    return out


__all__ = ["NORM_SCALE", "PIXELS", "PRESETS", "activations_frame", "attack_frame", "audit_frames",
           "default_eps", "defense_config", "diagnostics_frame", "eps_star_frame",
           "eps_star_summary", "landscape_frame", "model_meta", "write_synthetic_run"]
