"""The whole study of the paper from a preset (:mod:`epsl.study.config`): train the grid of
defenses, diagnose, attack, audit, and render the figures and the comparison report. Each stage
is one function below.

Every stage writes its outputs atomically through :mod:`epsl.results.records` and is skipped when a
result made from the same checkpoint content, examples and settings is already there, so an
interrupted run resumes where it stopped; ``force=True`` recomputes everything.

Layout of ``out``::

    out/preset.json                    the resolved preset (with overrides)
    out/models/<name>.safetensors      one checkpoint per defense (a train preset's), reused only
                                       when trained with the preset's config (check_trained)
    out/runs/<name>/...                diagnostics, eps* (minimal), attacks, audit, activations,
                                       landscape
    out/comparison.{csv,md}, out/report.html, out/figures/   tables and figures
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from epsl.analysis.tables import headline as headline_table
from epsl.analysis.tables import seed_summary, seed_table
from epsl.attacks import sweep
from epsl.attacks.audit import AuditConfig, check_dependencies
from epsl.attacks.eps_star import MinimalResult, check_minimal_dependencies
from epsl.bounds.radius import CertifyOptions
from epsl.defenses.resume import config_difference
from epsl.defenses.train import TrainConfig, train
from epsl.errors import EpslError, check_progress
from epsl.models.checkpoint import read_metadata, weights_file
from epsl.norms import max_radius
from epsl.results.files import (
    check_out_dir,
    check_writable,
    on_disk,
    read_json,
    read_table,
    safe_name,
    write_json,
    write_table,
    write_text,
)
from epsl.results.records import Result, file_sha256, reusable
from epsl.runs.audit import AuditRunConfig, ensure_audit
from epsl.runs.certify import CertifyConfig, ensure_certify
from epsl.runs.compare import PRODUCTS, CompareConfig, compare
from epsl.runs.context import DataConfig, Evaluation, provenance
from epsl.runs.diagnose import (
    ActivationsConfig,
    LandscapeConfig,
    ensure_diagnostics,
    run_activations,
    run_landscape,
)
from epsl.runs.eps_star import ensure_calibration
from epsl.study.config import ModelSpec, Preset, ThreatModel, check_same_preset

Log = Callable[[str], None]


@dataclass(frozen=True)
class ReproduceResult:
    out: Path
    checkpoints: dict[str, Path]  # a model source's spec (robustbench:...) as a Path
    ran: list[str]  # stages computed in this call
    skipped: list[str]  # stages whose outputs already existed
    report: Path | None
    seconds: float
    headline: str = ""  # the headline table and audit verdicts (Markdown), as in headline.md


STAGE_FILE = "stages.json"


def _stage_record(out: Path) -> dict[str, Any]:
    path = out / STAGE_FILE
    return read_json(path) if path.exists() else {}


def _mark(out: Path, stage: str, made_from: Any) -> None:
    record = _stage_record(out)
    record[stage] = made_from
    write_json(out / STAGE_FILE, record)


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


# --------------------------------------------------------------------------- stages


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


def stage_minimal(preset: Preset, ev: Evaluation, folder: Path, say: Log) -> bool:
    """ε* per example and the report card of Eq. 4 (:mod:`epsl.runs.eps_star`) into ``folder``,
    before the audit, which re-scores its points. ε_L comes from the run folder's diagnostics,
    written there as the comparison writes them, and both are found by the functions the
    comparison calls, so it reuses both."""
    assert preset.minimal is not None
    eq4, _ = ensure_diagnostics(ev, folder.parent, preset.grid(), norm=preset.norm)
    return ensure_calibration(ev, folder, preset.minimal, preset.grid(), eq4, say)[1]


def stage_certify(preset: Preset, data: DataConfig, ev: Evaluation, folder: Path,
                  say: Log) -> bool:
    """ε_cert (CROWN) on the first ``[certify] images`` examples beside ε_L and ε* from the
    run folder (:func:`stage_minimal`'s), and the three-way card, into ``folder``."""
    settings = preset.certify
    assert preset.minimal is not None
    part = replace(ev, data=ev.data.subset(settings.images))
    eq4, _ = ensure_diagnostics(ev, folder.parent, preset.grid(), norm=preset.norm)
    minimal = read_table(folder.parent / "minimal" / "minimal.csv")
    record = read_json(folder.parent / "minimal" / "minimal.json")
    n = len(part.data)
    seconds = float(sum(record.get("seconds", {}).values())) * n / max(len(minimal), 1)
    config = CertifyConfig(data=data, minimal=preset.minimal, eps=preset.grid(),
                           options=CertifyOptions(method=settings.method, steps=settings.steps))
    _, computed = ensure_certify(part, folder, config,
                                 eps_l=eq4["eps_l"].to_numpy()[:n],
                                 eps_star=minimal["eps_star"].to_numpy()[:n],
                                 eps_star_seconds=seconds, log=say)
    return computed


def audit_config(preset: Preset) -> AuditConfig:
    """The study's audit: ``[audit]``'s mode and Square budget, ``[attacks]``'s seed, PGD-k
    and step size, and ``[minimal]``'s ensemble (whose points it re-scores)."""
    a = preset.attacks
    settings: dict[str, Any] = {"seed": a.seed, "pgd_steps": a.pgd_steps,
                                "step_size": a.pgd_step_size, "minimal": preset.minimal}
    settings.update(preset.audit.budgets())
    return AuditConfig.quick(**settings) if preset.audit.quick else AuditConfig(**settings)


def stage_audit(preset: Preset, spec: ModelSpec, data: DataConfig, ev: Evaluation,
                checkpoints: dict[str, Path], folder: Path, say: Log) -> bool:
    """The audit (worst case over the paper's and stronger attacks, the minimum-norm ensemble,
    gradient-masking checks) on the first ``[audit] limit`` examples, transferred from
    ``[attacks] transfer_from``; ε* comes from :func:`stage_minimal`'s points."""
    part = replace(ev, data=ev.data.subset(preset.audit.limit))
    transfer = preset.attacks.transfer_from
    source = str(checkpoints[transfer]) if transfer and transfer != spec.name else None
    config = AuditRunConfig(data=data, eps=preset.eps, audit=audit_config(preset),
                            source=source, norm=preset.norm)

    def points() -> MinimalResult | None:
        if preset.minimal is None:
            return None
        return MinimalResult.load(folder.parent / "minimal").subset(slice(0, len(part.data)))

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


def _grid_config(preset: Preset, checkpoints: dict[str, Path], **settings: Any) -> CompareConfig:
    """The :class:`~epsl.runs.compare.CompareConfig` of the grid ``checkpoints`` with the preset's
    ε, data, paper's attacks and ε* ensemble (no audit); ``settings`` set the other fields."""
    transfer = preset.attacks.transfer_from
    reported = tuple(m.reported for m in preset.models)
    return CompareConfig(
        checkpoints=tuple(str(checkpoints[m.name]) for m in preset.models),
        data=replace(preset.data(), checkpoint=None),
        source=str(checkpoints[transfer]) if transfer else None,
        pgd_steps=preset.attacks.pgd_steps, restarts=preset.attacks.restarts,
        audit=False, seed=preset.attacks.seed,
        names=tuple(m.name for m in preset.models),
        reported=reported if any(r is not None for r in reported) else (),
        **{"eps": preset.eps, "norm": preset.norm, "step_size": preset.attacks.pgd_step_size,
           "minimal": preset.minimal, **settings})


def _compare_grid(preset: Preset, checkpoints: dict[str, Path], folder: Path, say: Log,
                  **settings: Any) -> None:
    """:func:`epsl.runs.compare.compare` of the grid ``checkpoints`` into ``folder`` (see
    :func:`_grid_config`); ``settings`` set the other :class:`~epsl.runs.compare.CompareConfig`
    fields (ε grid, figures, title, minimal)."""
    compare(_grid_config(preset, checkpoints, **settings), folder, overwrite=True,
            log=lambda m: say(f"  {m}"))


def _made_from(checkpoints: dict[str, Path], model_dir: str | None = None) -> dict[str, str]:
    """What a comparison stage was made from: every checkpoint's content hash (a model
    source's: its weights file's under ``model_dir``)."""
    return {name: file_sha256(weights_file(path, model_dir))
            for name, path in checkpoints.items()}


def stage_compare(preset: Preset, checkpoints: dict[str, Path], out: Path, say: Log) -> bool:
    """:func:`epsl.runs.compare.compare` on the grid: the diagnostics (Eq. 4), the paper's
    white-box and transfer attacks, the comparison table, figures and the HTML report, copied
    to the top of ``out``. Reused only for exactly these models with exactly these weights."""
    runs = out / "runs"
    # the comparison reads the audit and eps* tables: switching either on or off, or another
    # ensemble, rebuilds it
    minimal = None if preset.minimal is None else preset.minimal.reuse_settings()
    reported = {m.name: asdict(m.reported) for m in preset.models if m.reported is not None}
    made_from = {**_made_from(checkpoints, preset.model_dir),
                 "~stages": {"audit": preset.audit.enabled, "minimal": minimal,
                             "transfer_from": preset.attacks.transfer_from,
                             **({"reported": reported} if reported else {}),
                             **({"certify": asdict(preset.certify)}
                                if preset.certify.enabled and minimal is not None else {})}}
    if _stage_record(out).get("compare") == made_from and (out / "report.html").exists():
        return False
    say("diagnostics, attacks, comparison, figures and report")
    _compare_grid(preset, checkpoints, runs, say, eps_grid=preset.eps_grid, figures=True,
                  title=f"The {preset.name} study: {preset.description}"
                  if preset.description else f"The {preset.name} study")
    _copy_products(runs, out)
    _mark(out, "compare", made_from)
    return True


def stage_threat_model(preset: Preset, section: ThreatModel, checkpoints: dict[str, Path],
                       out: Path, say: Log) -> bool:
    """A ``[[threat_models]]`` section: :func:`epsl.runs.compare.compare` of the grid in
    ``section.norm`` at ``section.eps`` (ε_L, ε* with the section's ensemble, the paper's
    attacks with the default step size of the norm, no audit) into ``out/<norm>/runs``, its
    tables, report and figures copied to ``out/<norm>``. Reused only for these weights and
    this section."""
    folder = out / section.norm
    minimal = section.minimal
    made_from = {**_made_from(checkpoints, preset.model_dir),
                 "~section": {"norm": section.norm, "eps": section.eps,
                              "eps_grid": list(section.eps_grid),
                              "minimal": None if minimal is None else minimal.reuse_settings(),
                              "transfer_from": preset.attacks.transfer_from}}
    stage = f"compare {section.norm}"
    if _stage_record(out).get(stage) == made_from and (folder / "report.html").exists():
        return False
    say(f"the {section.norm} section: eps_L, eps*, attacks, report card and figures")
    _compare_grid(preset, checkpoints, folder / "runs", say, eps=section.eps,
                  eps_grid=section.eps_grid, norm=section.norm, step_size=None,
                  minimal=minimal, figures=True,
                  title=f"The {preset.name} study in {section.norm} (eps = {section.eps:g})")
    _copy_products(folder / "runs", folder)
    _mark(out, stage, made_from)
    return True


def _copy_products(runs: Path, folder: Path) -> None:
    """The comparison's tables, report and figures from ``runs`` to ``folder``."""
    with on_disk() as writer:
        if writer:
            for name in PRODUCTS:
                if (runs / name).is_file():  # paired.csv only when there is a pair to test
                    shutil.copyfile(runs / name, folder / name)
            if (folder / "figures").exists():
                shutil.rmtree(folder / "figures")
            shutil.copytree(runs / "figures", folder / "figures")


def seed_folder(out: Path, seed: int) -> Path:
    """Where the models of an extra training seed are evaluated: ``out/runs/seed<k>``."""
    return out / "runs" / f"seed{seed}"


def stage_seed_compare(preset: Preset, seed: int, checkpoints: dict[str, Path], out: Path,
                       say: Log) -> bool:
    """The grid trained under an extra seed: Eq. 4 and the paper's white-box and transfer
    attacks at the preset's ε (no ε grid, figures, ε* or audit), by :func:`epsl.runs.compare.compare`
    into :func:`seed_folder`; the attacks keep the preset's attack seed."""
    made_from = _made_from(checkpoints)
    folder = seed_folder(out, seed)
    stage = f"compare seed{seed}"
    if _stage_record(out).get(stage) == made_from and (folder / "comparison.csv").exists():
        return False
    say(f"diagnostics and attacks, training seed {seed}")
    _compare_grid(preset, checkpoints, folder, say, figures=False, minimal=None,
                  title=f"The {preset.name} study, training seed {seed}")
    _mark(out, stage, made_from)
    return True


def stage_seeds(preset: Preset, out: Path) -> Any:
    """``seeds.csv`` (one row per model and training seed) and ``seeds_summary.csv`` (per
    model, the mean and standard deviation over the seeds) from every seed's comparison; None
    with a single seed."""
    if not preset.extra_seeds:
        return None
    assert preset.train is not None  # extra seeds are a train preset's
    tables = {preset.train.seed: read_table(out / "comparison.csv")}
    tables |= {seed: read_table(seed_folder(out, seed) / "comparison.csv")
               for seed in preset.extra_seeds}
    per_seed = seed_table(tables)
    summary = seed_summary(per_seed)
    write_table(per_seed, out / "seeds.csv")
    write_table(summary, out / "seeds_summary.csv")
    return summary


def stage_headline(preset: Preset, out: Path, recompute: bool, seeds: Any = None) -> str:
    """The few columns a terminal shows, the audit verdicts, the paired tests and the spread
    over training seeds, from the tables on disk, kept in ``headline.md``."""
    path = out / "headline.md"
    if not recompute and path.exists():
        return path.read_text()
    paired = read_table(out / "paired.csv") if (out / "paired.csv").is_file() else None
    sections = {section.norm: read_table(out / section.norm / "comparison.csv")
                for section in preset.threat_models
                if (out / section.norm / "comparison.csv").is_file()}
    text = headline_table(read_table(out / "comparison.csv"),
                          source_run=preset.attacks.transfer_from, paired=paired, seeds=seeds,
                          sections=sections)
    if preset.kind == "evaluate":
        text = evaluated_note(preset) + "\n" + text
    write_text(path, text)
    return text


def evaluated_note(preset: Preset) -> str:
    """What an ``evaluate`` study ran and did not, for the top of its headline."""
    ran = ["ε_L (Eq. 4)", "the paper's white-box attacks"]
    if preset.attacks.transfer_from:
        ran.append(f"transfer attacks from {preset.attacks.transfer_from}")
    if preset.minimal is not None:
        ran.append("ε* and the report card of Eq. 4")
    if preset.certify.enabled and preset.minimal is not None:
        ran.append("the certified floor")
    if preset.audit.enabled:
        limits = [n for n in (preset.audit.limit, preset.limit) if n is not None]
        ran.append(f"the audit (on the first {min(limits):,} examples at most)" if limits
                   else "the audit")
    if preset.attacks.sweep_model:
        ran.append(f"the PGD sweeps on {preset.attacks.sweep_model}")
    skipped = ["training (the models are their checkpoints)", "the activations and loss "
               "landscapes of trained defenses", "extra training seeds"]
    if not preset.attacks.transfer_from:
        skipped.append("transfer attacks (no transfer_from)")
    if not preset.attacks.sweep_model:
        skipped.append("the PGD sweeps (no sweep_model)")
    count = len(preset.models)
    return (f"Evaluated {count} checkpoint{'s' if count > 1 else ''} "
            f"({', '.join(m.name for m in preset.models)}); ran {', '.join(ran)}; not run: "
            f"{', '.join(skipped)}.\n")


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
    load_split(data.dataset, "test", data=data.data, data_root=data.data_root,
               limit=data.limit, sample=data.sample, sample_seed=data.sample_seed)


# --------------------------------------------------------------------------- the study


def reproduce(preset: Preset, out: Path | str, *, force: bool = False,
              log: Log | None = None,
              progress: Callable[[int], None] | None = None) -> ReproduceResult:
    """Run the study of ``preset`` into ``out``: :func:`stage_train` for every model of the
    grid; per model :func:`stage_activations`, :func:`stage_landscape` (random and adversarial
    directions), :func:`stage_minimal`, :func:`stage_audit` and, on the sweep model,
    :func:`stage_sweeps`; then
    :func:`stage_compare` and :func:`stage_headline`. A stage whose result is on disk, made
    from the same inputs, is skipped."""
    check_progress(progress)
    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EpslError(f"out={out} exists and is not a folder")
    check_writable(out)
    if preset.audit.enabled:  # fail now, not after training the grid
        check_dependencies(audit_config(preset))
    if preset.minimal is not None:
        check_minimal_dependencies(preset.minimal)
    for section in preset.threat_models:
        if section.minimal is not None:
            check_minimal_dependencies(section.minimal)
    with on_disk() as writer:
        for child in ("models", "runs", "figures", STAGE_FILE) if force and writer else ():
            target = out / child
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    evaluate = preset.kind == "evaluate"
    checkpoints = {spec.name: Path(preset.checkpoint(spec, out)) for spec in preset.models}
    if evaluate:
        _check_checkpoints(preset, checkpoints)
    else:
        _check_examples(preset)
        for seed in (None, *preset.extra_seeds):  # before any training or writing
            where = checkpoints if seed is None else seed_checkpoints(preset, out, seed)
            for spec in preset.models:
                check_trained(preset, spec, where[spec.name], seed)
    check_out_dir(out, [], overwrite=True)
    check_same_preset(out, preset, force)
    ran: list[str] = []
    skipped: list[str] = []

    def note(stage: str, computed: bool) -> None:
        (ran if computed else skipped).append(stage)

    for spec in preset.models if not evaluate else ():
        note(f"train {spec.name}", stage_train(preset, spec, checkpoints[spec.name], say,
                                               progress))
    for spec in preset.models:
        folder = out / "runs" / safe_name(spec.name, "model name")
        data = preset.data().for_checkpoint(checkpoints[spec.name])
        ev = data.prepare()
        if not evaluate:  # the figures of the trained defenses
            note(f"activations {spec.name}",
                 stage_activations(spec, data, ev, folder / "activations", say))
            for direction in ("random", "adversarial"):
                note(f"landscape-{direction} {spec.name}",
                     stage_landscape(preset, spec, data, ev, direction,
                                     folder / f"landscape-{direction}", say))
        if preset.minimal is not None:
            note(f"minimal {spec.name}", stage_minimal(preset, ev, folder / "minimal", say))
            if preset.certify.enabled:
                note(f"certify {spec.name}",
                     stage_certify(preset, data, ev, folder / "certify", say))
        if preset.audit.enabled:
            note(f"audit {spec.name}", stage_audit(preset, spec, data, ev, checkpoints,
                                                   folder / "audit", say))
        if preset.attacks.sweep_model == spec.name:
            note(f"sweeps {spec.name}", stage_sweeps(preset, spec, ev, folder / "sweeps", say))
    note("compare", stage_compare(preset, checkpoints, out, say))
    for section in preset.threat_models:
        note(f"compare {section.norm}",
             stage_threat_model(preset, section, checkpoints, out, say))
    for seed in preset.extra_seeds:
        seeded = seed_checkpoints(preset, out, seed)
        for spec in preset.models:
            note(f"train {spec.name} seed{seed}",
                 stage_train(preset, spec, seeded[spec.name], say, progress, seed=seed))
        note(f"compare seed{seed}", stage_seed_compare(preset, seed, seeded, out, say))
    recompute = (any(stage.startswith("compare") for stage in ran)
                 or not (out / "headline.md").exists())
    headline = stage_headline(preset, out, recompute,
                              seeds=stage_seeds(preset, out) if recompute else None)
    report = out / "report.html"
    return ReproduceResult(out, checkpoints, ran, skipped, report if report.exists() else None,
                           time.perf_counter() - t0, headline)
