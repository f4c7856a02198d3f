"""``epsl compare``: Table 1 and Tables 2-4 of the paper for several checkpoints at one ε.

For each checkpoint, on the same examples, compute (or reuse from an earlier run) the ε_L
diagnostics (Eq. 4) and ε*, the smallest perturbation that really flips each example
(:mod:`epsl.minimal`, with the report card of Eq. 4), and the paper's attacks: white-box FGSM
(no random start) and PGD-k (random start) on the cross-entropy and CW losses, and, with a
``source`` checkpoint (a naturally trained model in the paper), black-box transfer FGSM and
PGD-k on the CW loss. Optionally run the robustness audit. Tables are written per model under
``out/<model-name>/`` in the layout ``epsl figures`` reads; then the comparison (CSV,
Markdown) and a self-contained HTML report with the figures are written to ``out``.

Layout::

    out/<name>/diagnostics.{csv,json,safetensors}   (as epsl diagnose writes them)
    out/<name>/minimal/minimal.{csv,json,safetensors} (as epsl calibrate writes them)
    out/<name>/attacks/attack.{csv,json}            (one row per example per setting)
    out/<name>/audit/audit.{csv,json}               (with audit=True)
    out/comparison.csv, comparison.md, report.html, compare.json, figures/...

Every file is owned by :mod:`epsl.records`; a per-model result is reused only when its
provenance (checkpoint content, examples, source, settings) is the one asked for.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import epsl
from epsl import sources
from epsl.analysis.figures import render_all
from epsl.analysis.paired import paired_tests
from epsl.analysis.report import audit_notes, write_report
from epsl.analysis.runs import Run, load_runs
from epsl.analysis.tables import comparison_table, write_comparison
from epsl.attacks import default_step_size, sweep
from epsl.audit import AuditConfig, audit, audit_settings, check_dependencies
from epsl.calibrate import (
    calibration_result,
    minimal_provenance,
    reusable_minimal,
    save_calibration,
)
from epsl.context import Evaluation, check_fits, load_model, prepare, provenance
from epsl.diagnostics import diagnose
from epsl.diagnostics.runs import diagnostics_result, save_diagnostics
from epsl.errors import EpslError
from epsl.io import check_out_dir
from epsl.minimal import (
    MinimalConfig,
    MinimalResult,
    check_minimal_dependencies,
    minimal_perturbation,
)
from epsl.records import Result, file_sha256, kind, load, reusable

PRODUCTS = kind("comparison").files()
Progress = Callable[[str], None]


@dataclass(frozen=True)
class CompareConfig:
    """What ``epsl compare`` evaluates; ε and step sizes in pixel units on the [0,1] scale.

    Attributes:
        checkpoints: the models to compare (epsl ``.safetensors`` or foreign with ``arch``).
        eps: the ℓ∞ radius of every table column.
        eps_grid: extra radii for the accuracy-against-ε figure (FGSM and PGD, xent only).
        source: checkpoint whose adversarial examples are transferred (black-box columns).
        pgd_steps, restarts, step_size: PGD-k (step size default ``2.5 * eps / steps``).
        audit: also run :func:`epsl.audit.audit` (quick settings) for the worst case.
        minimal: find ε* per example (:func:`epsl.minimal.minimal_perturbation`) and the
            report card of Eq. 4; the audit counts it as one more attack.
        fmn_steps, fab_steps: the budgets of its attacks (Foolbox FMN, torchattacks FAB).
        figures: render the figures into ``out/figures`` and embed them in the report.
    """

    checkpoints: tuple[str, ...]
    eps: float
    dataset: str | None = None
    data: str | None = None
    data_root: str | None = None
    download: bool = False
    split: str = "test"
    limit: int | None = None
    arch: str | None = None
    model: str | None = None
    model_dir: str | None = None
    source: str | None = None
    pgd_steps: int = 40
    restarts: int = 1
    step_size: float | None = None
    cw_confidence: float = 50.0
    eps_grid: tuple[float, ...] = ()
    audit: bool = False
    minimal: bool = True
    fmn_steps: int = 100
    fab_steps: int = 50
    figures: bool = True
    seed: int = 0
    batch_size: int | None = 256
    device: str = "auto"
    title: str | None = None  # of the report (default: what is compared, at which eps)

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise EpslError("give at least one checkpoint to compare")
        for e in (self.eps, *self.eps_grid):
            if not 0 < e <= 1:
                raise EpslError(f"eps must lie in (0, 1] in pixel units (got {e})")
        if self.pgd_steps < 1 or self.restarts < 1:
            raise EpslError("--pgd-steps and --restarts must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise EpslError(f"--limit must be at least 1 (got {self.limit})")
        if self.fmn_steps < 1 or self.fab_steps < 1:
            raise EpslError("--fmn-steps and --fab-steps must be at least 1")


@dataclass(frozen=True)
class CompareResult:
    """The comparison table (one row per checkpoint), the runs it was built from and the
    files written."""

    table: pd.DataFrame
    runs: tuple[Run, ...]
    out: Path
    report: Path
    reused: dict[str, list[str]] = field(default_factory=dict)
    paired: pd.DataFrame = field(default_factory=pd.DataFrame)  # paired_tests at eps


def model_names(checkpoints: Sequence[str]) -> list[str]:
    """Folder names for checkpoints: the file stem, made unique with the parent folder, then a
    counter."""
    stems = [Path(c).stem for c in checkpoints]
    names = []
    for path, stem in zip(checkpoints, stems, strict=True):
        name = stem if stems.count(stem) == 1 else f"{Path(path).parent.name}-{stem}"
        name = re.sub(r"[^A-Za-z0-9._+=-]+", "-", name).strip("-") or "model"
        while name in names:
            name += "-2"
        names.append(name)
    return names


def _settings(config: CompareConfig) -> list[dict[str, Any]]:
    """The attack settings of Tables 1-4: (attack, loss, eps, black-box?)."""
    grid = sorted({config.eps, *config.eps_grid})
    white = [{"attack": a, "loss": loss, "eps": [config.eps]} for a in ("fgsm", "pgd")
             for loss in ("xent", "cw")]
    extra = [e for e in grid if not math.isclose(e, config.eps)]
    if extra:
        white += [{"attack": a, "loss": "xent", "eps": extra} for a in ("fgsm", "pgd")]
    black = [{"attack": a, "loss": "cw", "eps": [config.eps], "transfer": True}
             for a in ("fgsm", "pgd")] if config.source else []
    return white + black


def _covered(attack: pd.DataFrame, setting: dict[str, Any], config: CompareConfig) -> bool:
    rows = attack[(attack["attack"] == setting["attack"])
                  & (attack["loss_name"] == setting["loss"])]
    source = rows["source"].astype(object).fillna("").astype(str) != ""
    rows = rows[source == bool(setting.get("transfer"))]
    if setting["attack"] == "pgd":
        rows = rows[(rows["steps"] == config.pgd_steps) & (rows["restarts"] == config.restarts)]
    return all(bool((rows["eps"] - e).abs().lt(1e-9).any()) for e in setting["eps"])


def _attack_frame(ev: Evaluation, config: CompareConfig, source_model: torch.nn.Module | None,
                  settings: Sequence[dict[str, Any]]) -> pd.DataFrame:
    frames = []
    for setting in settings:
        extra: dict[str, Any] = {"loss": setting["loss"], "batch_size": config.batch_size,
                                 "cw_confidence": config.cw_confidence}
        if setting["attack"] == "pgd":
            extra.update(steps=[config.pgd_steps], restarts=[config.restarts],
                         seed=config.seed, random_start=True)
            if config.step_size is not None:
                extra["step_size"] = config.step_size
        transfer = bool(setting.get("transfer"))
        frames.append(sweep(ev.model, ev.data.x.to(ev.device), ev.data.y.to(ev.device),
                            attack=setting["attack"], eps=setting["eps"],
                            source=source_model if transfer else None,
                            source_name=str(config.source) if transfer else "", **extra))
    return pd.concat(frames, ignore_index=True)


def attack_settings(config: CompareConfig) -> dict[str, Any]:
    """What decides whether an attack table on disk can be extended: the random starts' seed,
    the CW κ and the PGD step size (each row carries its attack, loss, ε, steps, restarts)."""
    return {"seed": config.seed, "cw_confidence": config.cw_confidence,
            "step_size": config.step_size}


def audit_config(config: CompareConfig) -> AuditConfig:
    """The audit ``compare --audit`` runs: the quick settings, seeded like the attacks, with
    the minimum-norm ensemble that the comparison's ε* uses."""
    return AuditConfig.quick(seed=config.seed, minimal_norm=config.minimal,
                             fmn_steps=config.fmn_steps, fab_steps=config.fab_steps)


def minimal_config(config: CompareConfig) -> MinimalConfig:
    """The minimum-norm ensemble of the comparison (the same as its audit's)."""
    return MinimalConfig(fmn_steps=config.fmn_steps, fab_steps=config.fab_steps,
                         seed=config.seed, batch_size=config.batch_size)


def _prepare(checkpoint: str, config: CompareConfig) -> Evaluation:
    return prepare(checkpoint, dataset=config.dataset, data=config.data, split=config.split,
                   limit=config.limit, arch=config.arch, model=config.model,
                   data_root=config.data_root, download=config.download,
                   model_dir=config.model_dir, device=config.device)


def ensure_diagnostics(ev: Evaluation, folder: Path, grid: Sequence[float],
                       say: Progress) -> tuple[pd.DataFrame, bool]:
    """The ε_L diagnostics of ``ev`` in ``folder``: reused when made from this checkpoint and
    these examples (with their tensors), else computed and saved. Returns ``(table,
    computed)``; ``compare`` and ``reproduce``'s ε* stage share it, so ε_L is computed once."""
    if (reusable(folder, "diagnostics", provenance(ev, {}))
            and (folder / "diagnostics.safetensors").is_file()):
        table = load(folder, "diagnostics").table
        assert table is not None
        return table, False
    say(f"{folder.name}: eps_L diagnostics on {len(ev.data)} examples")
    result = diagnose(ev.model, ev.data.x, ev.data.y, device=ev.device)
    record = diagnostics_result(ev, result, grid, {})
    save_diagnostics(folder, result, record, overwrite=True)
    assert record.table is not None
    return record.table, True


def evaluate_model(checkpoint: str, folder: Path, config: CompareConfig, *,
                   source_model: torch.nn.Module | None = None,
                   progress: Progress | None = None,
                   evaluation: Evaluation | None = None) -> list[str]:
    """Write (or reuse) one model's diagnostics, attacks and audit under ``folder``; return
    what was reused. ``evaluation`` is ``checkpoint`` already prepared on the data."""
    say = progress or (lambda _msg: None)
    ev = evaluation if evaluation is not None else _prepare(checkpoint, config)
    n, reused = len(ev.data), []
    grid = sorted({config.eps, *config.eps_grid})
    eq4, computed = ensure_diagnostics(ev, folder, grid, say)
    if not computed:
        reused.append("diagnostics")
    points: MinimalResult | None = None  # eps* computed in this call, for the audit
    if config.minimal:
        minimal = minimal_config(config)
        if reusable_minimal(folder / "minimal", minimal_provenance(ev, minimal)):
            reused.append("minimal")
        else:
            say(f"{folder.name}: eps* (minimum-norm attacks) on {n} examples")
            points = minimal_perturbation(ev.model, ev.data.x, ev.data.y, config=minimal)
            save_calibration(folder / "minimal", points,
                             calibration_result(ev, points, eq4["eps_l"], eq4["rival"],
                                                minimal, grid), overwrite=True)
    attacks = provenance(ev, attack_settings(config), source=config.source)
    found = reusable(folder / "attacks", "attack", attacks)
    existing = found.table if found is not None and found.table is not None else pd.DataFrame()
    settings = _settings(config)
    missing = [s for s in settings if existing.empty or not _covered(existing, s, config)]
    if not missing:
        reused.append("attacks")
    else:
        say(f"{folder.name}: {len(missing)} attack settings at eps={config.eps:g}")
        frame = pd.concat([existing, _attack_frame(ev, config, source_model, missing)],
                          ignore_index=True)
        summary = {"n": n, "eps": config.eps, "pgd_steps": config.pgd_steps,
                   "restarts": config.restarts, "step_size": config.step_size
                   or default_step_size(config.eps, config.pgd_steps),
                   "source": config.source}
        Result("attack", summary, attacks, frame).save(folder / "attacks", overwrite=True)
    if config.audit:
        audit_with = audit_config(config)
        audited_by = provenance(ev, audit_settings(audit_with, config.eps),
                                source=config.source)
        if reusable(folder / "audit", "audit", audited_by):
            reused.append("audit")
        else:
            if points is None and config.minimal:  # reused from disk: re-score its points
                points = MinimalResult.load(folder / "minimal")
            say(f"{folder.name}: audit at eps={config.eps:g}")
            audited = audit(ev.model, ev.data.x, ev.data.y, eps=config.eps,
                            source=source_model, config=audit_with, minimal=points)
            audited.save(folder / "audit", provenance=audited_by)
    return reused


def _check_inputs(config: CompareConfig) -> tuple[list[Evaluation], torch.nn.Module | None]:
    """Load every checkpoint and the source and check each against the data, so that a bad
    input fails before anything is computed or written."""
    evaluations = [_prepare(checkpoint, config) for checkpoint in config.checkpoints]
    datasets = {ev.data.info.name for ev in evaluations}
    if len(datasets) > 1:
        each = ", ".join(f"{ev.checkpoint}: {ev.data.info.name}" for ev in evaluations)
        raise EpslError(f"the checkpoints are evaluated on different datasets ({each}); "
                        "compare models of one dataset or pass --dataset")
    if not config.source:
        return evaluations, None
    first = evaluations[0]
    foreign = sources.parse(config.source) is not None
    source_model, source_meta, _ = load_model(config.source, arch=None if foreign else config.arch,
                                              dataset=config.dataset, model_dir=config.model_dir,
                                              device=first.device)
    check_fits(source_model, source_meta, first.data, config.source, first.device)
    return evaluations, source_model


def compare(config: CompareConfig, out: Path | str, *, overwrite: bool = False,
            progress: Progress | None = None) -> CompareResult:
    """Evaluate every checkpoint of ``config`` and write the comparison and report to ``out``.

    Per-model tables already under ``out/<name>/`` for the same checkpoint and number of
    examples are reused, and only missing attack settings are run.
    """
    check_out_dir(out, PRODUCTS, overwrite, create=False)
    if config.audit:
        check_dependencies(audit_config(config))
    if config.minimal:
        check_minimal_dependencies(minimal_config(config))
    evaluations, source_model = _check_inputs(config)
    out = check_out_dir(out, PRODUCTS, overwrite)
    names = model_names(config.checkpoints)
    reused = {}
    for ev, name in zip(evaluations, names, strict=True):
        reused[name] = evaluate_model(ev.checkpoint, out / name, config,
                                      source_model=source_model, progress=progress,
                                      evaluation=ev)
    runs = load_runs([out / name for name in names])
    table = comparison_table(runs, eps=config.eps)
    paired = paired_tests(runs, eps=config.eps)
    write_comparison(out, table, paired=paired)
    entries: list[dict[str, Any]] = []
    if config.figures:
        entries = [{**e, "png": f"figures/{e['png']}", "svg": f"figures/{e['svg']}"}
                   for e in render_all(runs, out / "figures", eps=config.eps)]
    models = {name: {"checkpoint": ev.checkpoint,
                     "checkpoint_sha256": file_sha256(ev.weights)}
              for name, ev in zip(names, evaluations, strict=True)}
    record = {"config": dataclasses.asdict(config), "models": models, "reused": reused,
              "figures": entries, "epsl_version": epsl.__version__}
    report = write_report(out, table, entries, notes=audit_notes(runs), paired=paired,
                          config=record["config"],
                          title=config.title or f"Comparison of {len(names)} models at "
                                                f"ε = {config.eps:g}")
    Result("comparison", record).save(out, overwrite=True)
    return CompareResult(table, tuple(runs), out, report, reused, paired)
