"""A whole study as data: the frozen dataclasses a preset is read into (:mod:`epsl.study.config`
reads the TOML and JSON forms). The dataclasses are the schema: their field types decide what
a value may be (``[train] epochs = "3"`` is refused) and each class checks its own ranges in
``__post_init__``, so a preset that would fail part-way through a study is refused before
anything is trained or written.

Two kinds (``kind``): ``train`` (the default) trains a grid of defenses of one ``arch`` with
``[train]``; ``evaluate`` (``zoo-cifar10-linf``) trains nothing, and each ``[[models]]`` entry
names a ``checkpoint`` (a model source or a file) and, optionally, the accuracies a leaderboard
``reported`` for it. Both share every evaluation section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from epsl.analysis.estimates import DEFAULT_PREDICTOR, PREDICTORS
from epsl.attacks.audit_plan import AuditBudgets
from epsl.attacks.eps_star import EpsStarConfig
from epsl.defenses import DefenseConfig
from epsl.defenses.train import TrainConfig
from epsl.errors import EpslError, check_seed
from epsl.norms import check_radius, parse_norm
from epsl.results.files import safe_name
from epsl.runs.compare import ReportedAccuracy
from epsl.runs.context import DataConfig

__all__ = ["KINDS", "AttackSettings", "AuditSettings", "CertifySettings", "LandscapeSettings",
           "ModelSpec", "Preset", "ThreatModel"]

#: what a preset's study does with its models: ``train`` the grid of defenses, or ``evaluate``
#: checkpoints made elsewhere (each ``[[models]]`` entry names one), with no training stage
KINDS = ("train", "evaluate")


def _at_least_one(section: str, **counts: int | None) -> None:
    for key, count in counts.items():
        if count is not None and count < 1:
            raise EpslError(f"{section}{key} must be at least 1 (got {count})")


def _number(section: str, key: str, value: float | None, *, zero: bool) -> None:
    """A finite number > 0 (>= 0 with ``zero``), or None."""
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise EpslError(f"{section}{key} must be a finite number {'>=' if zero else '>'} 0 "
                        f"(got {value})")


def _choice(key: str, value: str, names: list[str]) -> None:
    if value not in names:
        raise EpslError(f"unknown {key} {value!r}; choose from {', '.join(names)}")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study: a name and, in a ``train`` preset, the defense terms it is
    trained with (see :class:`DefenseConfig`); in an ``evaluate`` preset, the ``checkpoint``
    it is (a model source such as ``robustbench:cifar10/Linf/Wong2020Fast``, or a checkpoint
    file) and, where a leaderboard reports its accuracies, ``reported``
    (:class:`epsl.runs.compare.ReportedAccuracy`), set beside epsl's worst case."""

    name: str
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    checkpoint: str | None = None
    reported: ReportedAccuracy | None = None


@dataclass(frozen=True)
class AttackSettings:
    """``[attacks]``: the paper's PGD-k, the transfer source and the sanity-check sweeps."""

    SECTION: ClassVar[str] = "[attacks] "
    seed: int = 0  # random starts, landscapes' directions, torchattacks: not the training seed
    pgd_steps: int = 20
    pgd_step_size: float | None = None  # default 2.5 * eps / steps; also the audit's PGD-k
    restarts: int = 1
    transfer_from: str | None = "natural"
    sweep_model: str | None = None
    sweep_steps: tuple[int, ...] = (1, 5, 10, 20, 40)
    sweep_restarts: tuple[int, ...] = (1, 2, 5)

    def __post_init__(self) -> None:
        _at_least_one(self.SECTION, pgd_steps=self.pgd_steps, restarts=self.restarts)
        for key, values in (("sweep_steps", self.sweep_steps),
                            ("sweep_restarts", self.sweep_restarts)):
            for value in values:
                _at_least_one(self.SECTION, **{key: value})
        _number(self.SECTION, "pgd_step_size", self.pgd_step_size, zero=False)
        check_seed(self.seed, f"{self.SECTION}seed")


@dataclass(frozen=True)
class AuditSettings:
    """``[audit]``: whether and on how many examples to audit, and how hard its attacks work
    (:class:`~epsl.attacks.audit_plan.AuditBudgets`). In the TOML, ``quick = true`` starts from
    :meth:`AuditBudgets.quick` and any budget key overrides it; the audit's PGD-k is
    ``[attacks]``'s ``pgd_steps`` and ``pgd_step_size``.

    ``labelled = n`` audits a seeded uniform random sample of n of the study's examples
    (``labelled_seed``) instead of the first ``limit``, which it replaces: the study then
    estimates each model's robust accuracy on all of them at ε_L's cost
    (:mod:`epsl.runs.estimate`, with ``predictor`` on every example and the floor's
    ``alpha``), finds ε* on the labelled examples only, and compares the models on the same
    ones."""

    SECTION: ClassVar[str] = "[audit] "
    enabled: bool = True
    limit: int | None = 200
    budgets: AuditBudgets = field(default_factory=AuditBudgets)
    labelled: int | None = None
    labelled_seed: int = 0
    predictor: str = DEFAULT_PREDICTOR
    alpha: float = 0.05

    def __post_init__(self) -> None:
        _at_least_one(self.SECTION, limit=self.limit)
        if not isinstance(self.budgets, AuditBudgets):
            raise EpslError(f"{self.SECTION}budgets must be an AuditBudgets "
                            f"(got {self.budgets!r})")
        _choice(f"{self.SECTION}predictor", self.predictor, list(PREDICTORS))
        check_seed(self.labelled_seed, f"{self.SECTION}labelled_seed")
        if not 0 < self.alpha < 1:
            raise EpslError(f"{self.SECTION}alpha must be in (0, 1) (got {self.alpha})")
        if self.labelled is not None:
            if not self.enabled:
                raise EpslError(f"{self.SECTION}labelled = {self.labelled} audits a random "
                                "sample, but the audit is off (enabled = false, --no-audit): "
                                "switch it on or drop labelled")
            least = 3 if self.predictor == "combined" else 2
            if self.labelled < least:
                raise EpslError(f"{self.SECTION}labelled must be at least {least} (got "
                                f"{self.labelled}): an interval needs the spread of the "
                                "audited examples")
            object.__setattr__(self, "limit", None)  # the sample replaces the first examples


@dataclass(frozen=True)
class LandscapeSettings:
    """``[landscape]``: the loss landscapes of Figures 5 and 9."""

    SECTION: ClassVar[str] = "[landscape] "
    images: int = 8
    span: float = 0.3
    steps: int = 21

    def __post_init__(self) -> None:
        _at_least_one(self.SECTION, images=self.images)
        if self.steps < 2:
            raise EpslError(f"{self.SECTION}steps must be at least 2 (got {self.steps})")
        _number(self.SECTION, "span", self.span, zero=False)


@dataclass(frozen=True)
class CertifySettings:
    """``[certify]``: ε_cert (CROWN, :mod:`epsl.certify.radius`) on the first ``images`` test
    images of every model of the main seed, bisected on [0, ε*] ``steps`` times, and the
    three-way card of Eq. 4 (provably conservative, provably optimistic, undecided). Off unless
    ``enabled``; ℓ∞ studies only."""

    SECTION: ClassVar[str] = "[certify] "
    enabled: bool = False
    images: int = 32
    steps: int = 8
    method: str = "crown"

    def __post_init__(self) -> None:
        _at_least_one(self.SECTION, images=self.images, steps=self.steps)
        _choice(f"{self.SECTION}method", self.method, ["crown", "ibp"])


@dataclass(frozen=True)
class ThreatModel:
    """``[[threat_models]]``: one more section of the study in another ℓp norm, on the same
    models and examples: ε_L, ε* (``eps_star``, in ``norm``; None: no ε*) and the paper's
    attacks in ``norm`` at ``eps``, the report card and the figures, into ``out/<norm>/`` (no
    audit: the study's audit is in its main norm). In the TOML, ``[threat_models.eps_star]``
    sets the ensemble's budgets like ``[eps_star]`` does; without it the section runs the norm's
    default ensemble, and ``enabled = false`` (or ``--no-min-norm``) switches it off."""

    SECTION: ClassVar[str] = "[[threat_models]] "
    norm: str
    eps: float
    eps_grid: tuple[float, ...] = ()
    eps_star: EpsStarConfig | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "norm", parse_norm(self.norm).value)
            check_radius(self.norm, self.eps)
            check_radius(self.norm, self.eps_grid, name="eps_grid")
        except EpslError as exc:
            raise EpslError(f"{self.SECTION}{exc}") from None
        if self.eps_star is not None and self.eps_star.norm != self.norm:
            raise EpslError(f"{self.SECTION}eps_star runs in {self.eps_star.norm}, the section "
                            f"in {self.norm}")

    def grid(self) -> list[float]:
        """ε and ``eps_grid``, sorted."""
        return sorted({self.eps, *self.eps_grid})


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A whole study: data, architecture, the grid of defenses and the evaluation settings;
    or, with ``kind = "evaluate"``, checkpoints made elsewhere (no architecture, no
    ``[train]``: each model names its ``checkpoint``) and the same evaluation settings."""

    name: str
    dataset: str
    models: tuple[ModelSpec, ...]
    eps: float
    kind: str = "train"
    #: the architecture every model of a ``train`` preset is trained as (None in ``evaluate``)
    arch: str | None = None
    description: str = ""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    eps_grid: tuple[float, ...] = ()
    limit: int | None = None
    #: a seeded random sample of N test examples instead of the first ``limit`` (it replaces
    #: ``limit``; drawn by :func:`epsl.data.sample_indices` with ``sample_seed``)
    sample: int | None = None
    sample_seed: int = 0
    device: str = "auto"
    data_root: str | None = None
    #: a ``.npz`` of test examples (``x`` in [0, 1], ``y``) instead of the dataset's test split
    data_file: str | None = None
    #: the folder of model sources' weights (RobustBench's ``MODEL_DIR/DATASET/THREAT/NAME.pt``)
    model_dir: str | None = None
    #: ``[train]``: how every model of the grid is trained, read straight into the library's
    #: :class:`epsl.defenses.train.TrainConfig`; its dataset, architecture, data root and device are the
    #: preset's own and each model's defense is its ``[[models]]`` entry's. None in an
    #: ``evaluate`` preset, which trains nothing.
    train: TrainConfig | None = field(default_factory=TrainConfig)
    #: ``[train] extra_seeds``: every model trained again under each seed and evaluated with
    #: Eq. 4 and the paper's attacks at eps (mean and sd over the seeds)
    extra_seeds: tuple[int, ...] = ()
    attacks: AttackSettings = field(default_factory=AttackSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    landscape: LandscapeSettings = field(default_factory=LandscapeSettings)
    #: ``[eps_star]``: ε* per example (the minimum-norm ensemble, read straight into
    #: :class:`epsl.attacks.eps_star.EpsStarConfig`) and the report card of Eq. 4 for every model of the
    #: main seed; the audit counts it as an attack. ``enabled = false`` in the TOML: None.
    eps_star: EpsStarConfig | None = field(default_factory=EpsStarConfig)
    #: the threat model of ``eps``, ``eps_grid``, ε*, the attacks and the audit: ``linf`` (the
    #: paper's), ``l2`` or ``l1``
    norm: str = "linf"
    #: ``[[threat_models]]``: sections of the study in other norms (:class:`ThreatModel`)
    threat_models: tuple[ThreatModel, ...] = ()
    #: ``[certify]``: the certified floor and the three-way card (:class:`CertifySettings`)
    certify: CertifySettings = field(default_factory=CertifySettings)

    def __post_init__(self) -> None:
        from epsl.attacks.audit import ensemble_in
        from epsl.data import DATASETS
        from epsl.device import DEVICES
        from epsl.models import MODELS

        _choice("kind", self.kind, list(KINDS))
        _choice("dataset", self.dataset, DATASETS.names())
        if self.kind == "train":
            if self.arch is None:
                raise EpslError("a train preset needs arch, the architecture of its grid")
            _choice("arch", self.arch, MODELS.names())
        _choice("device", self.device, list(DEVICES))
        object.__setattr__(self, "norm", parse_norm(self.norm).value)
        check_radius(self.norm, self.eps)
        check_radius(self.norm, self.eps_grid, name="eps_grid")
        object.__setattr__(self, "eps_star", ensemble_in(self.eps_star, self.norm))
        norms = [self.norm, *(t.norm for t in self.threat_models)]
        if len(set(norms)) != len(norms):
            raise EpslError(f"each norm once: norm = {self.norm!r} and [[threat_models]] "
                            f"norms {[t.norm for t in self.threat_models]}")
        _at_least_one("", limit=self.limit, sample=self.sample)
        check_seed(self.sample_seed, "sample_seed")
        for seed in self.extra_seeds:
            check_seed(seed, "[train] extra_seeds")
        if self.certify.enabled and self.norm != "linf":
            raise EpslError(f"[certify] bounds the l_inf ball only; this study's norm is "
                            f"{self.norm} (set [certify] enabled = false)")
        if self.kind == "evaluate":
            self._check_evaluate()
        else:
            self._check_train()
        if not self.models:
            raise EpslError("no [[models]]")
        names = [safe_name(m.name, "model name") for m in self.models]  # file names in out
        if len(set(names)) != len(names):
            raise EpslError(f"model names must be unique ({names})")
        for ref in (self.attacks.transfer_from, self.attacks.sweep_model):
            if ref is not None and ref not in names:
                raise EpslError(f"{ref!r} names no model of the grid")

    def _check_train(self) -> None:
        if self.train is None:
            raise EpslError("a train preset needs its [train] settings")
        given = [m.name for m in self.models if m.checkpoint is not None or m.reported]
        if given:
            raise EpslError(f"models {given} name a checkpoint or reported accuracies: a train "
                            "preset trains its models; set kind = \"evaluate\" to evaluate "
                            "checkpoints")
        seeds = [self.train.seed, *self.extra_seeds]
        if len(set(seeds)) != len(seeds):
            raise EpslError(f"[train] seed and extra_seeds must all differ (got {seeds})")
        if self.train.weight_decay is not None:
            _number("[train] ", "weight_decay", self.train.weight_decay, zero=True)
        assert self.arch is not None
        # the training config follows the preset's data, architecture and device
        object.__setattr__(self, "train", replace(
            self.train, dataset=self.dataset, arch=self.arch,
            arch_kwargs=dict(self.arch_kwargs), data_root=self.data_root, device=self.device))

    def _check_evaluate(self) -> None:
        """An ``evaluate`` preset trains nothing: no architecture, ``[train]`` or extra seeds,
        and every model names the checkpoint it is, without a defense."""
        trained = {"arch": self.arch is not None, "arch_kwargs": bool(self.arch_kwargs),
                   "[train]": self.train is not None, "extra_seeds": bool(self.extra_seeds)}
        if any(trained.values()):
            keys = ", ".join(k for k, v in trained.items() if v)
            raise EpslError(f"an evaluate preset trains nothing: remove {keys} (each model's "
                            "architecture comes with its checkpoint)")
        missing = [m.name for m in self.models if not m.checkpoint]
        if missing:
            raise EpslError(f"models {missing} name no checkpoint: each model of an evaluate "
                            "preset gives one (checkpoint = \"robustbench:cifar10/Linf/"
                            "Wong2020Fast\" or a file)")
        defended = [m.name for m in self.models if m.defense != DefenseConfig()]
        if defended:
            raise EpslError(f"models {defended} give defense terms: an evaluate preset trains "
                            "nothing, its models are their checkpoints")

    def checkpoint(self, spec: ModelSpec, out: Path) -> str:
        """The checkpoint ``spec`` is evaluated from: its own (``evaluate``), else where
        ``epsl reproduce`` trains it into ``out``."""
        if spec.checkpoint is not None:
            return spec.checkpoint
        return str(out / "models" / f"{safe_name(spec.name, 'model name')}.safetensors")

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)

    def grid(self) -> list[float]:
        """ε and ``eps_grid``, sorted: the radii every summary reports."""
        return sorted({self.eps, *self.eps_grid})

    def data(self) -> DataConfig:
        """The study's examples (every model of the grid is evaluated on them)."""
        return DataConfig(dataset=self.dataset, data=self.data_file,
                          data_root=self.data_root,
                          limit=None if self.sample is not None else self.limit,
                          sample=self.sample, sample_seed=self.sample_seed,
                          device=self.device, model_dir=self.model_dir)
