"""The per-model stages of a study (:func:`epsl.study.run.reproduce` runs them in order for
each model of the grid, after training): the activations and loss landscapes of a trained
defense, ε* and the report card of Eq. 4, the certified floor, the audit and, on the sweep
model, the PGD sweeps. Each writes one result into ``out/runs/<name>/<stage>`` through
:mod:`epsl.results.records` and returns False when a result of the same origin is already
there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from epsl.attacks import sweep
from epsl.attacks.audit import AuditConfig
from epsl.attacks.eps_star import EpsStarResult
from epsl.certify.radius import CertifyOptions
from epsl.norms import max_radius
from epsl.results.files import read_json, read_table
from epsl.results.records import Result, reusable
from epsl.runs.audit import AuditRunConfig, ensure_audit
from epsl.runs.certify import CertifyConfig, ensure_certify
from epsl.runs.context import DataConfig, Evaluation, provenance
from epsl.runs.diagnose import (
    ActivationsConfig,
    LandscapeConfig,
    ensure_diagnostics,
    run_activations,
    run_landscape,
)
from epsl.runs.eps_star import ensure_eps_star
from epsl.study.preset import ModelSpec, Preset

__all__ = ["Log", "audit_config", "labelled_settings", "stage_activations", "stage_audit", "stage_certify",
           "stage_landscape", "stage_eps_star", "stage_sweeps"]

#: where a stage says what it computes: one line at a time
Log = Callable[[str], None]


def stage_activations(spec: ModelSpec, data: DataConfig, ev: Evaluation, folder: Path,
                      say: Log) -> bool:
    """Penultimate and logit activations (Figures 10, 11) into ``folder``; ``ev`` is
    ``data`` prepared."""
    config = ActivationsConfig(data=data)
    if reusable(folder, "activations", provenance(ev, config.reuse_settings())):
        return False
    say(f"activations {spec.name}")
    run_activations(config, evaluation=ev).save(folder, overwrite=True)
    return True


def stage_landscape(preset: Preset, spec: ModelSpec, data: DataConfig, ev: Evaluation,
                    direction: str, folder: Path, say: Log) -> bool:
    """The loss landscape (Figure 5: random, Figure 9: adversarial direction) around the
    first ``[landscape] images`` images into ``folder``."""
    ls = preset.landscape
    images = replace(ev, data=ev.data.subset(ls.images))
    config = LandscapeConfig(data=replace(data, limit=ls.images),
                             direction=direction, span=ls.span, steps=ls.steps,
                             seed=preset.attacks.seed)
    if reusable(folder, "landscape", provenance(images, config.reuse_settings())):
        return False
    say(f"landscape ({direction}) {spec.name}")
    run_landscape(config, evaluation=images).save(folder, overwrite=True)
    return True


def stage_eps_star(preset: Preset, ev: Evaluation, folder: Path, say: Log) -> bool:
    """ε* per example and the report card of Eq. 4 (:mod:`epsl.runs.eps_star`) into ``folder``,
    before the audit, which re-scores its points. ε_L comes from the run folder's diagnostics,
    written there as the comparison writes them, and both are found by the functions the
    comparison calls, so it reuses both."""
    assert preset.eps_star is not None
    eq4, _ = ensure_diagnostics(ev, folder.parent, preset.grid(), norm=preset.norm)
    return ensure_eps_star(ev, folder, preset.eps_star, preset.grid(), eq4, say)[1]


def stage_certify(preset: Preset, data: DataConfig, ev: Evaluation, folder: Path,
                  say: Log) -> bool:
    """ε_cert (CROWN) on the first ``[certify] images`` examples beside ε_L and ε* from the
    run folder (:func:`stage_eps_star`'s), and the three-way card, into ``folder``."""
    settings = preset.certify
    assert preset.eps_star is not None
    part = replace(ev, data=ev.data.subset(settings.images))
    eq4, _ = ensure_diagnostics(ev, folder.parent, preset.grid(), norm=preset.norm)
    eps_star = read_table(folder.parent / "eps_star" / "eps_star.csv")
    record = read_json(folder.parent / "eps_star" / "eps_star.json")
    n = len(part.data)
    seconds = float(sum(record.get("seconds", {}).values())) * n / max(len(eps_star), 1)
    config = CertifyConfig(data=data, eps_star=preset.eps_star, eps=preset.grid(),
                           options=CertifyOptions(method=settings.method, steps=settings.steps))
    _, computed = ensure_certify(part, folder, config,
                                 eps_l=eq4["eps_l"].to_numpy()[:n],
                                 eps_star=eps_star["eps_star"].to_numpy()[:n],
                                 eps_star_seconds=seconds, log=say)
    return computed


def audit_config(preset: Preset) -> AuditConfig:
    """The study's audit: ``[audit]``'s budgets (whose PGD-k is ``[attacks]``'), ``[attacks]``'s
    seed, and ``[eps_star]``'s ensemble (whose points it re-scores)."""
    return AuditConfig(budgets=preset.audit.budgets, eps_star=preset.eps_star,
                       seed=preset.attacks.seed)


def labelled_settings(preset: Preset) -> dict[str, Any]:
    """The :class:`~epsl.runs.compare.CompareConfig` fields of a study that audits a random
    sample (``[audit] labelled``): the sample, the predictor and the floor's α, the study's
    audit (whose ensemble finds the floor's ε* on the sample), CROWN beside the floor where
    ``[certify]`` is on, and no ε* on every example. Empty for any other study."""
    audit = preset.audit
    if not audit.enabled or audit.labelled is None:
        return {}
    certify = preset.certify
    return {"labelled": audit.labelled, "labelled_seed": audit.labelled_seed,
            "predictor": audit.predictor, "alpha": audit.alpha, "eps_star": None,
            "labelled_audit": audit_config(preset),
            "labelled_certify": CertifyOptions(method=certify.method, steps=certify.steps)
            if certify.enabled and preset.eps_star is not None else None}


def stage_audit(preset: Preset, spec: ModelSpec, data: DataConfig, ev: Evaluation,
                checkpoints: dict[str, Path], folder: Path, say: Log) -> bool:
    """The audit (worst case over the paper's and stronger attacks, the minimum-norm ensemble,
    gradient-masking checks) on the first ``[audit] limit`` examples, transferred from
    ``[attacks] transfer_from``; ε* comes from :func:`stage_eps_star`'s points."""
    part = replace(ev, data=ev.data.subset(preset.audit.limit))
    transfer = preset.attacks.transfer_from
    source = str(checkpoints[transfer]) if transfer and transfer != spec.name else None
    config = AuditRunConfig(data=data, eps=preset.eps, audit=audit_config(preset),
                            source=source, norm=preset.norm)

    def points() -> EpsStarResult | None:
        if preset.eps_star is None:
            return None
        return EpsStarResult.load(folder.parent / "eps_star").subset(slice(0, len(part.data)))

    return ensure_audit(config, folder, part, points=points, log=say)


def stage_sweeps(preset: Preset, spec: ModelSpec, ev: Evaluation, folder: Path,
                 say: Log) -> bool:
    """PGD steps (Table 11) and restarts (Table 10) sweeps and the unbounded-ε check
    (Table 9) on the sweep model, as one attack table."""
    a, seed = preset.attacks, preset.attacks.seed
    whole = max_radius(preset.norm, ev.data.x[0].numel())  # the unbounded radius: the box
    plan: dict[str, dict[str, Any]] = {
        "steps": {"eps": [preset.eps], "steps": list(a.sweep_steps), "restarts": [1]},
        "restarts": {"eps": [preset.eps], "steps": [a.pgd_steps],
                     "restarts": list(a.sweep_restarts), "step_size": a.pgd_step_size},
        "unbounded": {"eps": [whole], "steps": [100], "restarts": [1]}}
    if preset.norm != "linf":
        plan = {name: {**setting, "norm": preset.norm} for name, setting in plan.items()}
    origin = provenance(ev, {"sweeps": plan, "seed": seed})
    if reusable(folder, "attack", origin):
        return False
    say(f"PGD steps / restarts sweeps and unbounded eps on {spec.name}")
    x, y = ev.data.x.to(ev.device), ev.data.y.to(ev.device)
    frame = pd.concat([sweep(ev.model, x, y, attack="pgd", seed=seed, **setting)
                       for setting in plan.values()], ignore_index=True)
    Result("attack", {"eps": preset.eps, "norm": preset.norm, "steps": list(a.sweep_steps),
                      "restarts": list(a.sweep_restarts), "unbounded_eps": whole},
           origin, frame).save(folder, overwrite=True)
    return True
