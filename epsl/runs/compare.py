"""``epsl compare``: Table 1 and Tables 2-4 of the paper for several checkpoints at one ε.

For each checkpoint, on the same examples, compute (or reuse from an earlier run) the ε_L
diagnostics (Eq. 4) and ε*, the smallest perturbation that really flips each example
(:mod:`epsl.attacks.eps_star`, with the report card of Eq. 4), and the paper's attacks: white-box FGSM
(no random start) and PGD-k (random start) on the cross-entropy and CW losses, and, with a
``source`` checkpoint (a naturally trained model in the paper), black-box transfer FGSM and
PGD-k on the CW loss. Optionally run the robustness audit. Tables are written per model under
``out/<model-name>/`` in the layout ``epsl figures`` reads; then the comparison (CSV,
Markdown) and a self-contained HTML report with the figures are written to ``out``.

Layout::

    out/<name>/diagnostics.{csv,json,safetensors}   (as epsl diagnose writes them)
    out/<name>/eps_star/eps_star.{csv,json,safetensors} (as epsl eps-star writes them)
    out/<name>/attacks/attack.{csv,json}            (one row per example per setting)
    out/<name>/audit/audit.{csv,json}               (with audit=True)
    out/comparison.csv, comparison.md, report.html, compare.json, figures/...

Every file is owned by :mod:`epsl.results.records`; a per-model result is reused only when its
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

from epsl.analysis.estimates import DEFAULT_PREDICTOR
from epsl.analysis.figures import render_all
from epsl.analysis.folders import Run, load_runs
from epsl.analysis.paired import paired_tests
from epsl.analysis.report import audit_notes, write_report
from epsl.analysis.tables import comparison_table, with_reported, write_comparison
from epsl.attacks import default_step_size, sweep
from epsl.attacks.audit import AuditConfig, check_dependencies, ensemble_in
from epsl.attacks.eps_star import EpsStarConfig, EpsStarResult, check_eps_star_dependencies
from epsl.certify.radius import CertifyOptions
from epsl.errors import EpslError, check_seed
from epsl.models import sources
from epsl.norms import check_radius, parse_norm
from epsl.results.files import check_out_dir, safe_name
from epsl.results.records import (
    Result,
    article,
    check_replaceable,
    clear,
    file_sha256,
    invalidate,
    kind,
    load,
    record_path,
    reusable,
)
from epsl.runs.audit import AuditRunConfig, ensure_audit
from epsl.runs.context import DataConfig, Evaluation, load_source, provenance
from epsl.runs.diagnose import ensure_diagnostics
from epsl.runs.eps_star import ensure_eps_star
from epsl.runs.estimate import CheapAttack, EstimateConfig, estimate_models
from epsl.version import __version__

PRODUCTS = kind("comparison").files()
Log = Callable[[str], None]


@dataclass(frozen=True)
class ReportedAccuracy:
    """What a leaderboard reports for one model, to set beside epsl's own numbers
    (:func:`epsl.analysis.tables.with_reported`): the clean accuracy and the robust accuracy
    under ``attack``, as fractions in [0, 1] on the leaderboard's own test examples, and
    where they come from (``source``: a page or file a reader can check)."""

    clean: float
    robust: float
    source: str
    attack: str = "AutoAttack"

    def __post_init__(self) -> None:
        for name in ("clean", "robust"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float)\
                    or not 0 <= value <= 1:
                raise EpslError(f"reported {name} accuracy must be a fraction in [0, 1] "
                                f"(got {value!r}; 43.21% is 0.4321)")
        if not self.source.strip():
            raise EpslError("say where the reported accuracies come from (source)")


@dataclass(frozen=True)
class CompareConfig:
    """What ``epsl compare`` evaluates; ε and step sizes in pixel units on the [0,1] scale,
    in the threat model ``norm``.

    Attributes:
        checkpoints: the models to compare (epsl ``.safetensors``, a model source, or foreign
            with ``data.arch``).
        eps: the radius of every table column, in ``norm``.
        norm: ``"linf"`` (the paper's), ``"l2"`` or ``"l1"``: ε_L, ε*, every attack and the
            audit are in it (FGSM is FGM outside ℓ∞).
        data: the examples every checkpoint is evaluated on and how they are loaded (its
            ``checkpoint`` is left unset: each of ``checkpoints`` fills it).
        eps_grid: extra radii for the accuracy-against-ε figure (FGSM and PGD, xent only).
        source: checkpoint whose adversarial examples are transferred (black-box columns).
        pgd_steps, restarts, step_size: PGD-k (step size default ``2.5 * eps / steps``).
        audit: also run :func:`epsl.attacks.audit.audit` (quick settings) for the worst case.
        eps_star: the minimum-norm ensemble that finds ε* per example
            (:func:`epsl.attacks.eps_star.find_eps_star`) for the report card of Eq. 4; the
            audit counts it as one more attack. None: no ε*. The default ℓ∞ ensemble follows
            ``norm`` (:func:`epsl.attacks.audit.ensemble_in`); another must run in ``norm``.
        figures: render the figures into ``out/figures`` and embed them in the report.
        seed, batch_size: the attacks' random starts and examples per pass.
        names: the folder (and ``run``) name of each checkpoint; empty: from the file names
            (:func:`model_names`).
        reported: a leaderboard's accuracies for each checkpoint (None: none reported), set
            beside epsl's clean accuracy and worst case in the table; empty: none.
        labelled: also estimate each model's robust accuracy at ε from the full audit on this
            many images, the same seeded sample for every model (``labelled_seed``), and the
            cheap ``predictor`` on all (:mod:`epsl.runs.estimate`); and each pair's difference
            from the same images. None: no estimate.
        labelled_audit: the audit of the labelled images, whose ensemble also finds their ε*
            for the floor (None: :meth:`audit_config`, batched like the attacks).
        labelled_certify: also ε_cert (CROWN) of the labelled images, beside the floor.
        alpha: with ``labelled``, the floor's miss rate (ε* ≥ eps_floor with probability
            ≥ 1 − alpha).
    """

    checkpoints: tuple[str, ...]
    eps: float
    data: DataConfig = field(default_factory=DataConfig)
    source: str | None = None
    pgd_steps: int = 40
    restarts: int = 1
    step_size: float | None = None
    cw_confidence: float = 50.0
    eps_grid: tuple[float, ...] = ()
    audit: bool = False
    eps_star: EpsStarConfig | None = field(default_factory=EpsStarConfig)
    figures: bool = True
    seed: int = 0
    batch_size: int | None = 256
    title: str | None = None  # of the report (default: what is compared, at which eps)
    norm: str = "linf"
    names: tuple[str, ...] = ()
    reported: tuple[ReportedAccuracy | None, ...] = ()
    labelled: int | None = None
    labelled_seed: int = 0
    predictor: str = DEFAULT_PREDICTOR
    labelled_audit: AuditConfig | None = None
    labelled_certify: CertifyOptions | None = None
    alpha: float = 0.05

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", parse_norm(self.norm).value)
        if not self.checkpoints:
            raise EpslError("give at least one checkpoint to compare")
        if not isinstance(self.data, DataConfig):
            raise EpslError(f"data must be a DataConfig (got {self.data!r})")
        if self.eps_star is not None and not isinstance(self.eps_star, EpsStarConfig):
            raise EpslError(f"eps_star must be an EpsStarConfig or None (got {self.eps_star!r})")
        object.__setattr__(self, "eps_star", ensemble_in(self.eps_star, self.norm))
        if self.data.checkpoint is not None:
            raise EpslError("CompareConfig.data names no checkpoint: the checkpoints are "
                            "CompareConfig.checkpoints")
        check_radius(self.norm, self.eps)
        check_radius(self.norm, self.eps_grid, name="eps_grid")
        check_seed(self.seed)
        if self.pgd_steps < 1 or self.restarts < 1:
            raise EpslError("pgd_steps and restarts must be at least 1")
        for key in ("names", "reported"):
            given = getattr(self, key)
            if given and len(given) != len(self.checkpoints):
                raise EpslError(f"{key}: one per checkpoint ({len(given)} for "
                                f"{len(self.checkpoints)} checkpoints)")
        if len(set(self.names)) != len(self.names):
            raise EpslError(f"names must be unique (got {list(self.names)})")
        for name in self.names:  # each is a folder of out: refused here, before any work
            safe_name(name, "model name")
        if self.labelled is not None:
            self.estimate_run(".")  # its checks, before any work

    def grid(self) -> list[float]:
        """ε and the extra radii, sorted: the columns of the diagnostics and ε* summaries."""
        return sorted({self.eps, *self.eps_grid})

    def attack_reuse_settings(self) -> dict[str, Any]:
        """What decides whether an attack table on disk can be extended: the random starts'
        seed, the CW κ and the PGD step size (each row carries its attack, loss, ε, steps,
        restarts)."""
        norm = {} if self.norm == "linf" else {"norm": self.norm}
        return {"seed": self.seed, "cw_confidence": self.cw_confidence,
                "step_size": self.step_size, **norm}

    def audit_config(self) -> AuditConfig:
        """The audit ``compare --audit`` runs: the quick settings, seeded like the attacks,
        with the minimum-norm ensemble that the comparison's ε* uses."""
        return AuditConfig.quick(seed=self.seed, eps_star=self.eps_star)

    def estimate_run(self, checkpoint: str) -> EstimateConfig:
        """The estimate of ``compare --labelled`` on ``checkpoint``: ``labelled_audit`` (else
        the quick settings of :meth:`audit_config`, batched like the attacks), transferred from
        ``source`` (unless it is the checkpoint), on the labelled images; the comparison's own
        white-box PGD-k (CW) on all (:meth:`cheap_attack`), whose rows it reads back."""
        assert self.labelled is not None
        audit = self.labelled_audit or dataclasses.replace(self.audit_config(),
                                                           batch_size=self.batch_size)
        return EstimateConfig(data=self.data.for_checkpoint(checkpoint), eps=(self.eps,),
                              labelled=self.labelled, labelled_seed=self.labelled_seed,
                              predictor=self.predictor, alpha=self.alpha, norm=self.norm,
                              attack=self.cheap_attack(), audit=audit,
                              certify=self.labelled_certify,
                              source=None if self.source == checkpoint else self.source)

    def cheap_attack(self) -> CheapAttack:
        """The comparison's white-box PGD-k with the CW loss, as the estimate's cheap attack."""
        return CheapAttack(steps=self.pgd_steps, step_size=self.step_size,
                           restarts=self.restarts, cw_confidence=self.cw_confidence,
                           seed=self.seed)

    def audit_run(self, checkpoint: str) -> AuditRunConfig:
        """:meth:`audit_config` on ``checkpoint`` at ε, with the comparison's source."""
        return AuditRunConfig(data=self.data.for_checkpoint(checkpoint), eps=self.eps,
                              audit=self.audit_config(), source=self.source, norm=self.norm)


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
    #: with ``labelled``: each model's estimate and each pair's (estimates.csv,
    #: estimate_pairs.csv)
    estimates: tuple[pd.DataFrame, pd.DataFrame] | None = None


def model_names(checkpoints: Sequence[str]) -> list[str]:
    """Folder names for checkpoints: the file stem, made unique with the parent folder, then a
    counter."""
    stems = [Path(c).stem for c in checkpoints]
    names = []
    for path, stem in zip(checkpoints, stems, strict=True):
        name = stem if stems.count(stem) == 1 else f"{Path(path).parent.name}-{stem}"
        name = re.sub(r"[^A-Za-z0-9._+=-]+", "-", name).strip("-.") or "model"
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
    if "norm" in rows:  # tables written before other norms have no norm column: l_inf
        rows = rows[rows["norm"].astype(object).fillna("linf") == config.norm]
    if setting["attack"] == "pgd":
        rows = rows[(rows["steps"] == config.pgd_steps) & (rows["restarts"] == config.restarts)]
    return all(bool((rows["eps"] - e).abs().lt(1e-9).any()) for e in setting["eps"])


def _attack_frame(ev: Evaluation, config: CompareConfig, source_model: torch.nn.Module | None,
                  settings: Sequence[dict[str, Any]]) -> pd.DataFrame:
    frames = []
    for setting in settings:
        extra: dict[str, Any] = {"loss": setting["loss"], "batch_size": config.batch_size,
                                 "cw_confidence": config.cw_confidence}
        if config.norm != "linf":
            extra["norm"] = config.norm
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


def _attacks(ev: Evaluation, folder: Path, config: CompareConfig,
             source_model: torch.nn.Module | None, log: Log, overwrite: bool) -> bool:
    """The paper's attack table of ``ev`` in ``folder``, extended by the settings it lacks;
    True when any ran. An attack table of another origin is replaced only with
    ``overwrite``."""
    origin = provenance(ev, config.attack_reuse_settings(), source=config.source)
    found = reusable(folder, "attack", origin)
    if found is None:
        check_replaceable(folder, "attack", origin, overwrite)
    existing = found.table if found is not None and found.table is not None else pd.DataFrame()
    missing = [s for s in _settings(config)
               if existing.empty or not _covered(existing, s, config)]
    if not missing:
        return False
    log(f"{folder.parent.name}: {len(missing)} attack settings at eps={config.eps:g}")
    frame = pd.concat([existing, _attack_frame(ev, config, source_model, missing)],
                      ignore_index=True)
    summary = {"n": len(ev.data), "eps": config.eps, "norm": config.norm,
               "pgd_steps": config.pgd_steps,
               "restarts": config.restarts,
               "step_size": config.step_size or default_step_size(config.eps, config.pgd_steps),
               "source": config.source}
    Result("attack", summary, origin, frame).save(folder, overwrite=True)
    return True


def drop_other_origin(folder: Path, name: str, ev: Evaluation, overwrite: bool) -> None:
    """Remove (only with ``overwrite``; else refuse) the record of a result this call does not
    compute (an audit without ``audit=True``, ε* without ``eps_star``) when an earlier run left
    it in ``folder`` for another model, so the comparison never shows it as this model's.
    (Its examples may be a part of these: the study audits the first ``[audit] limit`` of
    them.)"""
    if not record_path(folder, name).is_file():
        return
    try:
        found = load(folder, name, table=False).provenance
    except EpslError:
        found = None
    mine = provenance(ev, {})
    if found is not None and mine.same_origin(dataclasses.replace(
            found, data=mine.data, settings={}, source=None)):
        return  # this model's (on these examples or a part of them)
    if not overwrite:
        raise EpslError(f"{folder} holds {article(name)} {name} result of another origin (another "
                        f"model, or other examples), which this comparison would show as "
                        f"{folder.parent.name}'s; pass overwrite=True to remove it, or choose "
                        "another out folder")
    invalidate(folder, name)


def evaluate_model(ev: Evaluation, folder: Path, config: CompareConfig, *,
                   source_model: torch.nn.Module | None = None,
                   log: Log | None = None, overwrite: bool = False) -> list[str]:
    """Write (or reuse) one model's diagnostics, ε*, attacks and audit under ``folder``;
    return what was reused. ``ev`` is the checkpoint prepared on ``config.data``. A result of
    another origin already in ``folder`` is replaced only with ``overwrite``."""
    say = log or (lambda _msg: None)
    reused = []
    eq4, computed = ensure_diagnostics(ev, folder, config.grid(), say, norm=config.norm,
                                       overwrite=overwrite)
    if not computed:
        reused.append("diagnostics")
    points: EpsStarResult | None = None  # eps* computed in this call, for the audit
    if config.eps_star is None:
        drop_other_origin(folder / "eps_star", "eps_star", ev, overwrite)
    else:
        result, computed = ensure_eps_star(ev, folder / "eps_star", config.eps_star,
                                              config.grid(), eq4, say, overwrite=overwrite)
        if computed:
            points = result.tensors  # type: ignore[assignment]
        else:
            reused.append("eps_star")
    if not _attacks(ev, folder / "attacks", config, source_model, say, overwrite):
        reused.append("attacks")
    if not config.audit:
        drop_other_origin(folder / "audit", "audit", ev, overwrite)
    else:
        def eps_star() -> EpsStarResult | None:
            if points is None and config.eps_star is not None:  # reused: re-score its points
                return EpsStarResult.load(folder / "eps_star")
            return points

        if not ensure_audit(config.audit_run(ev.checkpoint), folder / "audit", ev,
                            points=eps_star, source_model=source_model, log=say,
                            overwrite=overwrite):
            reused.append("audit")
    return reused


def _check_inputs(config: CompareConfig) -> tuple[list[Evaluation], torch.nn.Module | None]:
    """Load every checkpoint and the source and check each against the data, so that a bad
    input fails before anything is computed or written."""
    evaluations = [config.data.for_checkpoint(c).prepare() for c in config.checkpoints]
    dim = evaluations[0].data.x[0].numel()
    check_radius(config.norm, [config.eps, *config.eps_grid], dim)
    datasets = {ev.data.info.name for ev in evaluations}
    if len(datasets) > 1:
        each = ", ".join(f"{ev.checkpoint}: {ev.data.info.name}" for ev in evaluations)
        raise EpslError(f"the checkpoints are evaluated on different datasets ({each}); "
                        "compare models of one dataset or name the dataset")
    foreign = config.source is not None and sources.parse(config.source) is not None
    source_model = load_source(config.source, evaluations[0],
                               arch=None if foreign else config.data.arch,
                               dataset=config.data.dataset)
    return evaluations, source_model


def compare(config: CompareConfig, out: Path | str, *, overwrite: bool = False,
            log: Log | None = None) -> CompareResult:
    """Evaluate every checkpoint of ``config`` and write the comparison and report to ``out``.

    Per-model results already under ``out/<name>/`` made from the same model, examples and
    settings are reused, and only missing attack settings are run; results of another origin
    there are replaced only with ``overwrite``. With ``overwrite``, the comparison's own files
    are removed before anything runs, so a run cut short never leaves the previous report.
    ``log`` is told what runs.
    """
    check_out_dir(out, PRODUCTS, overwrite, create=False)
    if config.audit:
        check_dependencies(config.audit_config())
    if config.eps_star is not None:
        check_eps_star_dependencies(config.eps_star)
    evaluations, source_model = _check_inputs(config)
    out = check_out_dir(out, PRODUCTS, overwrite)
    clear(out, "comparison")
    names = [safe_name(name, "model name")
             for name in list(config.names) or model_names(config.checkpoints)]
    reused = {name: evaluate_model(ev, out / name, config, source_model=source_model, log=log,
                                   overwrite=overwrite)
              for ev, name in zip(evaluations, names, strict=True)}
    if config.labelled is None:  # an earlier --labelled run's estimate is not this one's
        for name in names:
            clear(out / name / "estimate", "estimate")
    runs = load_runs([out / name for name in names])
    table = comparison_table(runs, eps=config.eps)
    if any(r is not None for r in config.reported):
        table = with_reported(table, {name: dataclasses.asdict(r) for name, r in
                                      zip(names, config.reported, strict=True) if r is not None})
    paired = paired_tests(runs, eps=config.eps)
    write_comparison(out, table, paired=paired)
    estimates = None if config.labelled is None else estimate_models(
        [(name, ev, config.estimate_run(ev.checkpoint))
         for ev, name in zip(evaluations, names, strict=True)], out, log=log, overwrite=overwrite)
    entries: list[dict[str, Any]] = []
    if config.figures:
        entries = [{**e, "png": f"figures/{e['png']}", "svg": f"figures/{e['svg']}"}
                   for e in render_all(runs, out / "figures", eps=config.eps)]
    models = {name: {"checkpoint": ev.checkpoint,
                     "checkpoint_sha256": file_sha256(ev.weights)}
              for name, ev in zip(names, evaluations, strict=True)}
    record = {"config": dataclasses.asdict(config), "models": models, "reused": reused,
              "figures": entries, "epsl_version": __version__}
    if estimates is not None:
        record["estimates"] = {"models": estimates[0].to_dict("records"),
                               "pairs": estimates[1].to_dict("records")}
    report = write_report(out, table, entries, notes=audit_notes(runs), paired=paired,
                          config=record["config"],
                          title=config.title or f"Comparison of {len(names)} models at "
                                                f"ε = {config.eps:g}"
                                                + ("" if config.norm == "linf"
                                                   else f" ({config.norm})"))
    Result("comparison", record).save(out, overwrite=True)
    return CompareResult(table, tuple(runs), out, report, reused, paired, estimates)


__all__ = ["PRODUCTS", "CompareConfig", "CompareResult", "ReportedAccuracy", "compare", "drop_other_origin",
           "evaluate_model", "model_names"]
