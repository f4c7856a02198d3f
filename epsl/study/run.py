"""The whole study of the paper from a preset (:mod:`epsl.study.config`): train the grid of
defenses, diagnose, attack, audit, and render the figures and the comparison report. Each stage
is one function: the training here, the per-model stages in :mod:`epsl.study.stages`, those over
the whole grid (comparisons, seeds, headline) in :mod:`epsl.study.grid`; :func:`reproduce`
checks what it can up front and runs them in order.

Every stage writes its outputs atomically through :mod:`epsl.results.records` and is skipped when a
result made from the same checkpoint content, examples and settings is already there, so an
interrupted run resumes where it stopped; ``force=True`` recomputes everything.

Layout of ``out``::

    out/preset.json                    the resolved preset (with overrides)
    out/models/<name>.safetensors      one checkpoint per defense (a train preset's), reused only
                                       when trained with the preset's config (check_trained)
    out/runs/<name>/...                diagnostics, eps*, attacks, audit, activations,
                                       landscape
    out/comparison.{csv,md}, out/report.html, out/figures/   tables and figures
    out/estimates.{csv,md}             robust accuracy at ε_L's cost, from the full tables
    out/headline.md                    the headline columns and the audit verdicts
    out/<norm>/...                     each [[threat_models]] section: its comparison, report
                                       card, report and figures, and runs/<name>/ per model

An ``evaluate`` preset (``kind = "evaluate"``, e.g. ``zoo-cifar10-linf``) trains nothing: each
model is the checkpoint its ``[[models]]`` entry names (a RobustBench model under
``model_dir``, a file), evaluated by the same stages (ε_L, the paper's attacks, ε*, the audit,
the comparison, report and headline) but for the training, the activations and landscapes of
the trained defenses and the extra seeds; the headline says so, and sets each model's
reported (leaderboard) accuracies beside epsl's worst case.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from epsl.attacks.audit import check_dependencies
from epsl.attacks.eps_star import check_eps_star_dependencies
from epsl.defenses.resume import config_difference
from epsl.defenses.train import TrainConfig, train
from epsl.errors import EpslError, check_progress
from epsl.models.checkpoint import read_metadata, weights_file
from epsl.results.files import check_out_dir, check_writable, on_disk, safe_name
from epsl.study.config import check_same_preset
from epsl.study.grid import (
    ESTIMATES_FILE,
    STAGE_FILE,
    stage_compare,
    stage_estimates,
    stage_headline,
    stage_seed_compare,
    stage_seeds,
    stage_threat_model,
)
from epsl.study.preset import ModelSpec, Preset
from epsl.study.stages import (
    Log,
    audit_config,
    labelled_settings,
    stage_activations,
    stage_audit,
    stage_certify,
    stage_eps_star,
    stage_landscape,
    stage_sweeps,
)

__all__ = ["ReproduceResult", "check_trained", "reproduce", "seed_checkpoints", "stage_train",
           "train_config"]


@dataclass(frozen=True)
class ReproduceResult:
    """What :func:`reproduce` did, and where."""

    out: Path
    checkpoints: dict[str, Path]  # a model source's spec (robustbench:...) as a Path
    ran: list[str]  # stages computed in this call
    skipped: list[str]  # stages whose outputs already existed
    report: Path | None
    seconds: float
    headline: str = ""  # the headline table and audit verdicts (Markdown), as in headline.md


def train_config(preset: Preset, spec: ModelSpec, seed: int | None = None) -> TrainConfig:
    """The :class:`epsl.defenses.train.TrainConfig` of one model of the grid: ``[train]`` with the
    model's defense, under ``seed`` (default the preset's main training seed)."""
    if preset.train is None:
        raise EpslError(f"the {preset.name} preset evaluates checkpoints and trains nothing")
    config = replace(preset.train, defense=spec.defense)
    return config if seed is None else replace(config, seed=seed)


def check_trained(preset: Preset, spec: ModelSpec, path: Path, seed: int | None = None
                  ) -> None:
    """Refuse a checkpoint at ``path``, where the study trains ``spec`` (under ``seed``), that
    was trained with another config than :func:`train_config`'s: it is never taken for the
    model, nor replaced, without ``force``. Nothing there: nothing to check."""
    if not path.exists():
        return
    found = config_difference(read_metadata(path).get("train_config"),
                              train_config(preset, spec, seed))
    if found is None:
        return
    field, there, wanted = found
    detail = ("it records no training config epsl can read" if field == "train_config"
              else f"{field} is {there!r} there, {wanted!r} in the preset")
    raise EpslError(f"{path} was not trained as the {preset.name} preset's {spec.name} "
                    f"({detail}); pass force=True to retrain it, or choose another out=PATH")


def seed_checkpoints(preset: Preset, out: Path, seed: int) -> dict[str, Path]:
    """Where the models of an extra training seed are trained:
    ``out/models/seed<k>/<name>.safetensors``."""
    return {spec.name: out / "models" / f"seed{seed}"
            / f"{safe_name(spec.name, 'model name')}.safetensors" for spec in preset.models}


def stage_train(preset: Preset, spec: ModelSpec, path: Path, say: Log,
                progress: Callable[[int], None] | None,
                seed: int | None = None) -> bool:
    """Train one model of the grid into ``path`` (resuming a partial run) under ``seed``;
    False when a complete checkpoint is there. A checkpoint there of another training config
    is refused (:func:`check_trained`)."""
    check_trained(preset, spec, path, seed)
    if path.exists() and read_metadata(path).get("complete"):
        return False
    say(f"train {spec.name} ({spec.defense.name})"
        + (f", seed {seed}" if seed is not None else ""))
    result = train(train_config(preset, spec, seed), path, resume=path.exists(),
                   progress=progress)
    acc = result.metadata.get("metrics", {}).get("test_accuracy", float("nan"))
    say(f"  {spec.name}: test accuracy {acc:.2%}")
    return True


def _check_checkpoints(preset: Preset, checkpoints: dict[str, Path]) -> None:
    """Every weights file of an ``evaluate`` preset and its examples are there, before
    anything is written (a missing one is a one-line error, not a half-made study)."""

    for spec in preset.models:
        path = weights_file(checkpoints[spec.name], preset.model_dir)
        if not path.is_file():
            raise EpslError(f"model {spec.name} ({spec.checkpoint}): no weights file at "
                            f"{path.resolve()}"
                            + ("" if preset.model_dir else "; pass model_dir, the folder "
                               "holding RobustBench's DATASET/THREAT/NAME.pt files"))
    _check_examples(preset)


def _check_examples(preset: Preset) -> None:
    """The study's examples can be read and selected (``limit`` / ``sample``), before any
    training or writing: a sample larger than the split is one line, not a trained grid."""
    from epsl.data import load_split

    data = preset.data()
    split = load_split(data.dataset, "test", data=data.data, data_root=data.data_root,
                       limit=data.limit, sample=data.sample, sample_seed=data.sample_seed)
    labelled = preset.audit.labelled if preset.audit.enabled else None
    if labelled is not None and labelled >= len(split):
        raise EpslError(f"a labelled sample of {labelled} is not smaller than the "
                        f"{len(split)} examples the study selects: label fewer, or audit them "
                        "all (no labelled)")


def _check_dependencies(preset: Preset) -> None:
    """The audit's and ε*'s optional packages are installed: fail now, not after training the
    grid."""
    if preset.audit.enabled:
        check_dependencies(audit_config(preset))
    if preset.eps_star is not None:
        check_eps_star_dependencies(preset.eps_star)
    for section in preset.threat_models:
        if section.eps_star is not None:
            check_eps_star_dependencies(section.eps_star)


def _check_grid(preset: Preset, out: Path, checkpoints: dict[str, Path]) -> None:
    """No checkpoint the study trains, under the main seed or an extra one, is there trained
    with another config (:func:`check_trained`), before any training or writing."""
    for seed in (None, *preset.extra_seeds):
        where = checkpoints if seed is None else seed_checkpoints(preset, out, seed)
        for spec in preset.models:
            check_trained(preset, spec, where[spec.name], seed)


def _remove_results(out: Path, force: bool) -> None:
    """With ``force``, the checkpoints, runs, figures and stage record of an earlier study in
    ``out`` removed (by the writing rank), so that every stage is computed again."""
    with on_disk() as writer:
        for child in ("models", "runs", "figures", STAGE_FILE, ESTIMATES_FILE, "estimates.md",
                      "headline.md") if force and writer else ():
            target = out / child
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


def _prepare_out(preset: Preset, out: Path, force: bool) -> dict[str, Path]:
    """Everything that can fail before a model is trained, checked first: ``out`` is a
    writable folder, the optional packages are there, the checkpoints of an ``evaluate``
    preset (or the examples and the checkpoints already trained) are usable and ``out`` holds
    no other study (:func:`~epsl.study.config.check_same_preset`, which then records the
    preset). With ``force`` the earlier results go first. Returns every model's checkpoint."""
    if out.exists() and not out.is_dir():
        raise EpslError(f"out={out} exists and is not a folder")
    check_writable(out)
    _check_dependencies(preset)
    _remove_results(out, force)
    checkpoints = {spec.name: Path(preset.checkpoint(spec, out)) for spec in preset.models}
    if preset.kind == "evaluate":
        _check_checkpoints(preset, checkpoints)
    else:
        _check_examples(preset)
        _check_grid(preset, out, checkpoints)
    check_out_dir(out, [], overwrite=True)
    check_same_preset(out, preset, force)
    return checkpoints


class _Stages:
    """The stages one call computed (``ran``) and those it found on disk (``skipped``)."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def note(self, stage: str, computed: bool) -> None:
        (self.ran if computed else self.skipped).append(stage)


def _model_stages(preset: Preset, spec: ModelSpec, checkpoints: dict[str, Path], out: Path,
                  say: Log, stages: _Stages) -> None:
    """The per-model stages of ``spec`` (:mod:`epsl.study.stages`) into ``out/runs/<name>``:
    the activations and landscapes of a trained defense, ε* and the certified floor, the audit
    and, on the sweep model, the sweeps. A study that audits a random sample (``[audit]
    labelled``) finds ε*, ε_cert and the audit on it in the comparison's stage
    (:func:`~epsl.study.grid.stage_compare`), not here."""
    sampled = bool(labelled_settings(preset))
    folder = out / "runs" / safe_name(spec.name, "model name")
    data = preset.data().for_checkpoint(checkpoints[spec.name])
    ev = data.prepare()
    if preset.kind != "evaluate":  # the figures of the trained defenses
        stages.note(f"activations {spec.name}",
                    stage_activations(spec, data, ev, folder / "activations", say))
        for direction in ("random", "adversarial"):
            stages.note(f"landscape-{direction} {spec.name}",
                        stage_landscape(preset, spec, data, ev, direction,
                                        folder / f"landscape-{direction}", say))
    if preset.eps_star is not None and not sampled:
        stages.note(f"eps_star {spec.name}", stage_eps_star(preset, ev, folder / "eps_star", say))
        if preset.certify.enabled:
            stages.note(f"certify {spec.name}",
                        stage_certify(preset, data, ev, folder / "certify", say))
    if preset.audit.enabled and not sampled:
        stages.note(f"audit {spec.name}", stage_audit(preset, spec, data, ev, checkpoints,
                                                      folder / "audit", say))
    if preset.attacks.sweep_model == spec.name:
        stages.note(f"sweeps {spec.name}",
                    stage_sweeps(preset, spec, ev, folder / "sweeps", say))


def _seed_stages(preset: Preset, out: Path, say: Log, progress: Callable[[int], None] | None,
                 stages: _Stages) -> None:
    """Each extra training seed: the grid trained under it (:func:`seed_checkpoints`), then
    its comparison (:func:`~epsl.study.grid.stage_seed_compare`)."""
    for seed in preset.extra_seeds:
        seeded = seed_checkpoints(preset, out, seed)
        for spec in preset.models:
            stages.note(f"train {spec.name} seed{seed}",
                        stage_train(preset, spec, seeded[spec.name], say, progress, seed=seed))
        stages.note(f"compare seed{seed}", stage_seed_compare(preset, seed, seeded, out, say))


# --------------------------------------------------------------------------- the study


def reproduce(preset: Preset, out: Path | str, *, force: bool = False,
              log: Log | None = None,
              progress: Callable[[int], None] | None = None) -> ReproduceResult:
    """Run the study of ``preset`` into ``out``: :func:`stage_train` for every model of the
    grid; per model :func:`~epsl.study.stages.stage_activations`,
    :func:`~epsl.study.stages.stage_landscape` (random and adversarial directions),
    :func:`~epsl.study.stages.stage_eps_star`, :func:`~epsl.study.stages.stage_audit` and, on
    the sweep model, :func:`~epsl.study.stages.stage_sweeps`; then
    :func:`~epsl.study.grid.stage_compare`, :func:`~epsl.study.grid.stage_estimates` and
    :func:`~epsl.study.grid.stage_headline`. A
    stage whose result is on disk, made from the same inputs, is skipped."""
    check_progress(progress)
    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    out = Path(out)
    checkpoints = _prepare_out(preset, out, force)
    stages = _Stages()
    for spec in preset.models if preset.kind != "evaluate" else ():
        stages.note(f"train {spec.name}", stage_train(preset, spec, checkpoints[spec.name], say,
                                                      progress))
    for spec in preset.models:
        _model_stages(preset, spec, checkpoints, out, say, stages)
    stages.note("compare", stage_compare(preset, checkpoints, out, say))
    for section in preset.threat_models:
        stages.note(f"compare {section.norm}",
                    stage_threat_model(preset, section, checkpoints, out, say))
    _seed_stages(preset, out, say, progress, stages)
    recompute = (any(stage.startswith("compare") for stage in stages.ran)
                 or not (out / "headline.md").exists())
    estimated = stage_estimates(preset, out, recompute)
    stages.note("estimates", estimated)
    recompute = recompute or estimated  # a study from before the section gets it
    headline = stage_headline(preset, out, recompute,
                              seeds=stage_seeds(preset, out) if recompute else None)
    report = out / "report.html"
    return ReproduceResult(out, checkpoints, stages.ran, stages.skipped,
                           report if report.exists() else None, time.perf_counter() - t0,
                           headline)
