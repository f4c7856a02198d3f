"""The stages of a study over the whole grid, after the per-model ones
(:mod:`epsl.study.stages`): the comparison (:func:`epsl.runs.compare.compare`) in the study's
norm, one per ``[[threat_models]]`` section and one per extra training seed, the spread over
training seeds and the headline. A comparison stage is recorded in ``out/stages.json`` with
what it was made from (every checkpoint's content hash and the settings it read) and reused
only for the same.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from epsl.analysis.estimates import study_estimates
from epsl.analysis.folders import Run, load_run
from epsl.analysis.headline import estimates_section
from epsl.analysis.headline import headline as headline_table
from epsl.analysis.labelled import labelled_estimates
from epsl.analysis.seeds import seed_summary, seed_table
from epsl.errors import EpslError
from epsl.models.checkpoint import weights_file
from epsl.results.files import on_disk, read_json, read_table, write_json, write_table, write_text
from epsl.results.records import file_sha256
from epsl.runs.compare import PRODUCTS, CompareConfig, compare
from epsl.study.preset import Preset, ThreatModel
from epsl.study.stages import Log, labelled_settings

__all__ = ["ESTIMATES_FILE", "STAGE_FILE", "evaluated_note", "seed_folder", "stage_compare",
           "stage_estimates", "stage_headline", "stage_seed_compare", "stage_seeds",
           "stage_threat_model"]

#: in a study folder: each comparison stage and what it was made from
STAGE_FILE = "stages.json"
#: in a study folder: robust accuracy at ε_L's cost per model (:func:`stage_estimates`)
ESTIMATES_FILE = "estimates.csv"


def _stage_record(out: Path) -> dict[str, Any]:
    path = out / STAGE_FILE
    return read_json(path) if path.exists() else {}


def _mark(out: Path, stage: str, made_from: Any) -> None:
    record = _stage_record(out)
    record[stage] = made_from
    write_json(out / STAGE_FILE, record)


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
           "eps_star": preset.eps_star, **settings})


def _compare_grid(preset: Preset, checkpoints: dict[str, Path], folder: Path, say: Log,
                  **settings: Any) -> None:
    """:func:`epsl.runs.compare.compare` of the grid ``checkpoints`` into ``folder`` (see
    :func:`_grid_config`); ``settings`` set the other :class:`~epsl.runs.compare.CompareConfig`
    fields (ε grid, figures, title, eps_star)."""
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
    labelled = labelled_settings(preset)
    # the comparison reads the audit and eps* tables: switching either on or off, or another
    # ensemble, rebuilds it
    eps_star = None if preset.eps_star is None else preset.eps_star.reuse_settings()
    reported = {m.name: asdict(m.reported) for m in preset.models if m.reported is not None}
    made_from = {**_made_from(checkpoints, preset.model_dir),
                 "~stages": {"audit": preset.audit.enabled, "eps_star": eps_star,
                             **({"labelled": asdict(preset.audit)} if labelled else {}),
                             "transfer_from": preset.attacks.transfer_from,
                             **({"reported": reported} if reported else {}),
                             **({"certify": asdict(preset.certify)}
                                if preset.certify.enabled and eps_star is not None else {})}}
    if _stage_record(out).get("compare") == made_from and (out / "report.html").exists():
        return False
    say("diagnostics, attacks, comparison, figures and report")
    _compare_grid(preset, checkpoints, runs, say, eps_grid=preset.eps_grid, figures=True,
                  title=f"The {preset.name} study: {preset.description}"
                  if preset.description else f"The {preset.name} study", **labelled)
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
    eps_star = section.eps_star
    made_from = {**_made_from(checkpoints, preset.model_dir),
                 "~section": {"norm": section.norm, "eps": section.eps,
                              "eps_grid": list(section.eps_grid),
                              "eps_star": None if eps_star is None else eps_star.reuse_settings(),
                              "transfer_from": preset.attacks.transfer_from}}
    stage = f"compare {section.norm}"
    if _stage_record(out).get(stage) == made_from and (folder / "report.html").exists():
        return False
    say(f"the {section.norm} section: eps_L, eps*, attacks, report card and figures")
    _compare_grid(preset, checkpoints, folder / "runs", say, eps=section.eps,
                  eps_grid=section.eps_grid, norm=section.norm, step_size=None,
                  eps_star=eps_star, figures=True,
                  title=f"The {preset.name} study in {section.norm} (eps = {section.eps:g})")
    _copy_products(folder / "runs", folder)
    _mark(out, stage, made_from)
    return True


def _copy_products(runs: Path, folder: Path) -> None:
    """The comparison's tables, report and figures from ``runs`` to ``folder``."""
    with on_disk() as writer:
        if writer:
            for name in PRODUCTS:
                # the study writes its own estimates table (stage_estimates); paired.csv and
                # estimate_pairs.csv only when the comparison wrote them, never an earlier one's
                if name == ESTIMATES_FILE:
                    continue
                if (runs / name).is_file():
                    shutil.copyfile(runs / name, folder / name)
                else:
                    (folder / name).unlink(missing_ok=True)
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
    _compare_grid(preset, checkpoints, folder, say, figures=False, eps_star=None,
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


def _study_runs(preset: Preset, out: Path) -> list[Run]:
    """The main norm's run folders of the grid, ``out/runs/<name>``, that hold a result."""
    runs = []
    for spec in preset.models:
        try:
            runs.append(load_run(out / "runs" / spec.name))
        except EpslError:  # no folder or no result in it: the model has no section row
            continue
    return runs


def stage_estimates(preset: Preset, out: Path, recompute: bool) -> bool:
    """Robust accuracy at ε_L's cost, from the full tables on disk (no attack is run):
    :func:`~epsl.analysis.estimates.study_estimates` of the main norm's models with the
    audit, the diagnostics and PGD CW on every image, seeded, so the same tables give the same
    ``estimates.csv`` and ``estimates.md``. A study that audits a random sample (``[audit]
    labelled``) instead reads each model's estimate from ``runs/<name>/estimate/``
    (:func:`~epsl.analysis.labelled.labelled_estimates`) and the pairs from
    ``estimate_pairs.csv``. Computed again with ``recompute`` or when ``estimates.csv`` is
    missing; without the audit or such a model, nothing is written and an earlier section is
    removed. Returns whether it was computed."""
    path = out / ESTIMATES_FILE
    if not recompute and path.exists():
        return False
    labelled = bool(labelled_settings(preset))
    runs = _study_runs(preset, out) if preset.audit.enabled else []
    frame = labelled_estimates(runs) if labelled else study_estimates(runs)
    # an earlier study's section never stays beside this one's tables
    _remove(out, [] if not frame.empty else [ESTIMATES_FILE, "estimates.md"])
    if frame.empty:
        return False
    write_table(frame, path)
    pairs = _pairs(out) if labelled else None
    write_text(out / "estimates.md", estimates_section(frame, pairs).lstrip("\n"))
    return True


def _remove(out: Path, names: list[str]) -> None:
    """The files ``names`` of ``out`` removed (by the writing rank)."""
    with on_disk() as writer:
        for name in names if writer else ():
            (out / name).unlink(missing_ok=True)


def _pairs(out: Path) -> Any:
    """A labelled study's paired estimates (``estimate_pairs.csv``, the comparison's), or
    None."""
    path = out / "estimate_pairs.csv"
    return read_table(path) if path.is_file() else None


def stage_headline(preset: Preset, out: Path, recompute: bool, seeds: Any = None) -> str:
    """The few columns a terminal shows, the audit verdicts, the paired tests, the spread
    over training seeds and robust accuracy at ε_L's cost (:func:`stage_estimates`), from the
    tables on disk, kept in ``headline.md``."""
    path = out / "headline.md"
    if not recompute and path.exists():
        return path.read_text()
    paired = read_table(out / "paired.csv") if (out / "paired.csv").is_file() else None
    sections = {section.norm: read_table(out / section.norm / "comparison.csv")
                for section in preset.threat_models
                if (out / section.norm / "comparison.csv").is_file()}
    estimates = read_table(out / ESTIMATES_FILE) if (out / ESTIMATES_FILE).is_file() else None
    text = headline_table(read_table(out / "comparison.csv"),
                          source_run=preset.attacks.transfer_from, paired=paired, seeds=seeds,
                          sections=sections, estimates=estimates,
                          estimate_pairs=_pairs(out) if labelled_settings(preset) else None)
    if preset.kind == "evaluate":
        text = evaluated_note(preset) + "\n" + text
    write_text(path, text)
    return text


def evaluated_note(preset: Preset) -> str:
    """What an ``evaluate`` study ran and did not, for the top of its headline."""
    ran = ["ε_L (Eq. 4)", "the paper's white-box attacks"]
    if preset.attacks.transfer_from:
        ran.append(f"transfer attacks from {preset.attacks.transfer_from}")
    if preset.eps_star is not None and not labelled_settings(preset):
        ran.append("ε* and the report card of Eq. 4")
        if preset.certify.enabled:
            ran.append("the certified floor")
    if labelled_settings(preset):
        star = preset.eps_star is not None
        parts = (["ε*"] if star else []) + ["the audit"] + (
            ["the certified floor"] if star and preset.certify.enabled else [])
        ran.append(f"{', '.join(parts[:-1])}{' and ' if len(parts) > 1 else ''}{parts[-1]} on "
                   f"{preset.audit.labelled:,} examples drawn at random (seed "
                   f"{preset.audit.labelled_seed}), and robust accuracy on all of them at ε_L's "
                   "cost")
    elif preset.audit.enabled:
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
