"""Presets: a whole study as data. A preset is a TOML file (``epsl/study/presets/*.toml`` or a
user's path) read into the frozen dataclasses below; the dataclasses are the schema. Their
field types decide what a value may be (``[train] epochs = "3"`` is refused) and each class
checks its own ranges in ``__post_init__``, so a preset that would fail part-way through a study
is refused before anything is trained or written.

Two kinds (``kind``): ``train`` (the default) trains a grid of defenses of one ``arch`` with
``[train]``; ``evaluate`` (``zoo-cifar10-linf``) trains nothing, and each ``[[models]]`` entry
names a ``checkpoint`` (a model source or a file) and, optionally, the accuracies a leaderboard
``reported`` for it. Both share every evaluation section.

    >>> preset = load_preset("digits")
    >>> quick = override(preset, **{"train.epochs": 1, "limit": 50})
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from epsl.attacks.eps_star import MinimalConfig
from epsl.defenses import DefenseConfig
from epsl.defenses.train import TrainConfig
from epsl.errors import EpslError, check_seed
from epsl.norms import check_radius, parse_norm
from epsl.results.files import read_json, safe_name, to_json, write_json
from epsl.runs.compare import ReportedAccuracy
from epsl.runs.context import DataConfig

PRESETS = ("digits", "fashion-mnist", "mnist-paper", "cifar10-paper", "cifar100-paper",
           "zoo-cifar10-linf")
#: what a preset's study does with its models: ``train`` the grid of defenses, or ``evaluate``
#: checkpoints made elsewhere (each ``[[models]]`` entry names one), with no training stage
KINDS = ("train", "evaluate")
PRESET_FILE = "preset.json"  # in a study folder: the resolved preset


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
    """``[audit]``: whether, on how many examples and how hard (``quick``) to audit;
    ``square_queries`` overrides the Square attack's budget (None: that of the mode)."""

    SECTION: ClassVar[str] = "[audit] "
    enabled: bool = True
    limit: int | None = 200
    quick: bool = False
    square_queries: int | None = None
    #: the strong PGD's, APGD's and the unbounded check's budgets (None: those of the mode)
    strong_steps: int | None = None
    strong_restarts: int | None = None
    apgd_steps: int | None = None
    unbounded_steps: int | None = None

    def __post_init__(self) -> None:
        _at_least_one(self.SECTION, limit=self.limit, square_queries=self.square_queries,
                      strong_steps=self.strong_steps, strong_restarts=self.strong_restarts,
                      apgd_steps=self.apgd_steps, unbounded_steps=self.unbounded_steps)

    def budgets(self) -> dict[str, int]:
        """The budgets set here, as :class:`epsl.attacks.audit.AuditConfig` fields."""
        return {key: value for key in ("square_queries", "strong_steps", "strong_restarts",
                                       "apgd_steps", "unbounded_steps")
                if (value := getattr(self, key)) is not None}


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
    """``[certify]``: ε_cert (CROWN, :mod:`epsl.bounds.radius`) on the first ``images`` test
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
    models and examples: ε_L, ε* (``minimal``, in ``norm``; None: no ε*) and the paper's
    attacks in ``norm`` at ``eps``, the report card and the figures, into ``out/<norm>/`` (no
    audit: the study's audit is in its main norm). In the TOML, ``[threat_models.minimal]``
    sets the ensemble's budgets like ``[minimal]`` does; without it the section runs the norm's
    default ensemble, and ``enabled = false`` (or ``--no-min-norm``) switches it off."""

    SECTION: ClassVar[str] = "[[threat_models]] "
    norm: str
    eps: float
    eps_grid: tuple[float, ...] = ()
    minimal: MinimalConfig | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "norm", parse_norm(self.norm).value)
            check_radius(self.norm, self.eps)
            check_radius(self.norm, self.eps_grid, name="eps_grid")
        except EpslError as exc:
            raise EpslError(f"{self.SECTION}{exc}") from None
        if self.minimal is not None and self.minimal.norm != self.norm:
            raise EpslError(f"{self.SECTION}minimal runs in {self.minimal.norm}, the section "
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
    #: ``[minimal]``: ε* per example (the minimum-norm ensemble, read straight into
    #: :class:`epsl.attacks.eps_star.MinimalConfig`) and the report card of Eq. 4 for every model of the
    #: main seed; the audit counts it as an attack. ``enabled = false`` in the TOML: None.
    minimal: MinimalConfig | None = field(default_factory=MinimalConfig)
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
        object.__setattr__(self, "minimal", ensemble_in(self.minimal, self.norm))
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


# --------------------------------------------------------------------------- reading


def _fits(hint: Any, value: Any) -> bool:
    """Whether a TOML/JSON ``value`` has the type of a dataclass field (``int | None``,
    ``tuple[float, ...]``...). A bool is not a number; an int is a float."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(arg, value) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint in (int, float):
        kinds = (int,) if hint is int else (int, float)
        return isinstance(value, kinds) and not isinstance(value, bool)
    if origin is tuple:
        inner = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_fits(inner, v) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "None"
    return hint.__name__ if isinstance(hint, type) and not typing.get_args(hint) else str(hint)


def _section(cls: type, raw: Any, where: str) -> Any:
    """``cls(**raw)`` checked against ``cls``'s own fields: their names, types and, through
    ``cls.__post_init__``, their ranges. Errors name ``where``."""
    if not isinstance(raw, dict):
        raise EpslError(f"{where}: expected a table of settings (got {raw!r})")
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise EpslError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    missing = [f.name for f in fields(cls) if f.name not in raw
               and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise EpslError(f"{where}: missing keys {missing}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if not _fits(hints[name], value):
            raise EpslError(f"{where}: {name} must be {_type_name(hints[name])} "
                            f"(got {value!r})")
    try:
        return cls(**values)
    except EpslError as exc:
        raise EpslError(f"{where}: {exc}") from None


#: TrainConfig fields a preset sets elsewhere: at its top, or per model (the defense)
TRAIN_FROM_PRESET = ("dataset", "data", "data_root", "arch", "arch_kwargs", "device", "defense")


def _train(raw: Any, where: str) -> tuple[TrainConfig, tuple[int, ...]]:
    """``[train]`` as the library's :class:`TrainConfig` (any of its fields but those the
    preset sets elsewhere), and its ``extra_seeds``."""
    if not isinstance(raw, dict):
        raise EpslError(f"{where} [train]: expected a table of settings (got {raw!r})")
    raw = dict(raw)
    elsewhere = sorted(set(raw) & set(TRAIN_FROM_PRESET))
    if elsewhere:
        raise EpslError(f"{where} [train]: {', '.join(elsewhere)} belong at the top of the "
                        "preset (the defense: in each [[models]] table)")
    seeds = raw.pop("extra_seeds", ())
    if not isinstance(seeds, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in seeds):
        raise EpslError(f"{where} [train]: extra_seeds must be a list of integers "
                        f"(got {seeds!r})")
    return _section(TrainConfig, raw, f"{where} [train]"), tuple(seeds)


def _minimal(raw: Any, where: str, seed: int = 0) -> MinimalConfig | None:
    """``[minimal]`` as the library's :class:`MinimalConfig` (None with ``enabled = false``;
    the JSON form writes null); its ``seed`` defaults to ``seed``, the attacks' own."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise EpslError(f"{where} [minimal]: expected a table of settings (got {raw!r})")
    raw = dict(raw)
    enabled = raw.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise EpslError(f"{where} [minimal]: enabled must be true or false (got {enabled!r})")
    raw.setdefault("seed", seed)
    section = _section(MinimalConfig, raw, f"{where} [minimal]")
    return section if enabled else None


def _threat_models(raw: Any, where: str, seed: int = 0) -> tuple[ThreatModel, ...]:
    """``[[threat_models]]`` tables, each with an optional ``[threat_models.minimal]`` table
    read like ``[minimal]`` in the section's norm (default: the norm's default ensemble)."""
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise EpslError(f"{where}: threat_models must be a list of [[threat_models]] tables")
    sections = []
    for entry in raw:
        entry = dict(entry)
        norm = entry.get("norm")
        if not isinstance(norm, str):
            raise EpslError(f"{where} [[threat_models]]: each needs norm = \"l2\" or \"l1\"")
        minimal = entry.pop("minimal", {})
        if isinstance(minimal, dict):
            minimal = {"norm": norm, **minimal}
        entry["minimal"] = _minimal(minimal, f"{where} [[threat_models]] {norm}", seed=seed)
        sections.append(_section(ThreatModel, entry, f"{where} [[threat_models]]"))
    return tuple(sections)


def preset_from_dict(raw: dict[str, Any], where: str = "preset") -> Preset:
    """A :class:`Preset` from the TOML form (``[[models]]`` tables with the defense terms
    inline) or the JSON form :func:`preset_to_dict` writes."""
    raw = dict(raw)
    models = []
    entries = raw.pop("models", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise EpslError(f"{where}: models must be a list of [[models]] tables")
    for i, entry in enumerate(entries):
        entry = dict(entry)
        if isinstance(entry.get("defense"), dict):  # the JSON form written to preset.json
            entry = {**entry.pop("defense"), **entry}
        name = entry.pop("name", None)
        if not name:
            raise EpslError(f"{where}: models[{i}] has no name")
        checkpoint = entry.pop("checkpoint", None)
        if checkpoint is not None and (not isinstance(checkpoint, str) or not checkpoint):
            raise EpslError(f"{where} model {name}: checkpoint must be a model source or a "
                            f"file (got {checkpoint!r})")
        reported = entry.pop("reported", None)
        models.append(ModelSpec(
            name, _section(DefenseConfig, entry, f"{where} model {name}"), checkpoint=checkpoint,
            reported=None if reported is None else _section(
                ReportedAccuracy, reported, f"{where} model {name} reported")))
    sections = {"attacks": AttackSettings, "audit": AuditSettings,
                "landscape": LandscapeSettings, "certify": CertifySettings}
    evaluate = raw.get("kind") == "evaluate"
    if evaluate:
        # nothing is trained, so no model is the natural transfer source unless one is named
        attacks = raw.get("attacks")
        if isinstance(attacks, dict):
            raw["attacks"] = {"transfer_from": None, **attacks}
        elif "attacks" not in raw:
            raw["attacks"] = {"transfer_from": None}
    train_section = raw.pop("train", None if evaluate else {})
    if evaluate and train_section is not None:
        raise EpslError(f"{where}: an evaluate preset trains nothing: remove its [train] "
                        "section")
    parsed_train, extra_seeds = (None, ()) if train_section is None else _train(train_section,
                                                                                 where)
    parsed = {key: _section(cls, raw.pop(key, {}), f"{where}") for key, cls in sections.items()}
    minimal = raw.pop("minimal", {})
    if isinstance(minimal, dict) and isinstance(raw.get("norm"), str):
        minimal = {"norm": raw["norm"], **minimal}  # the ensemble runs in the study's norm
    parsed["minimal"] = _minimal(minimal, where, seed=parsed["attacks"].seed)
    parsed["threat_models"] = _threat_models(raw.pop("threat_models", []), where,
                                             seed=parsed["attacks"].seed)
    parsed["train"] = parsed_train
    parsed["extra_seeds"] = raw.pop("extra_seeds", extra_seeds)
    return _section(Preset, {**raw, **parsed, "models": tuple(models)}, where)


def load_preset(name_or_path: str) -> Preset:
    """A bundled preset by name (``digits``, ``fashion-mnist``, ``mnist-paper``, ...) or a
    TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise EpslError(f"preset={path}: no such file")
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise EpslError(f"{where}: not a TOML file (not UTF-8 text)") from None
        except OSError as exc:
            raise EpslError(f"{where}: cannot read ({exc.strerror or exc})") from None
    elif name_or_path in PRESETS:
        text = resources.files("epsl.study.presets").joinpath(f"{name_or_path}.toml").read_text()
        where = f"preset {name_or_path}"
    else:
        raise EpslError(f"unknown preset {name_or_path!r}; choose from {', '.join(PRESETS)} "
                        "or give a .toml path")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EpslError(f"{where}: not valid TOML ({exc})") from None
    return preset_from_dict(raw, where)


def override(preset: Preset, **changes: Any) -> Preset:
    """A copy with top-level fields or ``section.field`` keys changed (``train.epochs=3``);
    ``None`` values are ignored, so CLI options that were not given change nothing.
    ``models`` keeps only the named models of the grid."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        if value is None:
            continue
        section, dot, name = key.partition(".")
        if dot:
            nested.setdefault(section, {})[name] = value
        else:
            top[key] = value
    for section, values in nested.items():
        if section == "train" and "extra_seeds" in values:
            values = dict(values)
            top["extra_seeds"] = tuple(values.pop("extra_seeds"))
        if section == "minimal":
            top[section] = _override_minimal(preset.minimal, values)
            if values.get("enabled", True) is False:  # eps* off in every norm's section
                top["threat_models"] = tuple(replace(t, minimal=None)
                                             for t in preset.threat_models)
            continue
        current = getattr(preset, section, None)
        if section == "train" and current is None:
            raise EpslError(f"train.{', train.'.join(values)}: the {preset.name} preset "
                            "evaluates checkpoints and trains nothing")
        if not dataclasses.is_dataclass(current):
            raise EpslError(f"unknown preset section {section!r}")
        try:
            top[section] = replace(current, **values)  # type: ignore[type-var]
        except TypeError as exc:
            raise EpslError(f"preset [{section}]: {exc}") from None
    if "norm" in top and parse_norm(top["norm"]).value != preset.norm:
        top.update(_change_norm(preset, parse_norm(top["norm"]).value, top))
    if "models" in top and isinstance(top["models"], (list, tuple)):
        wanted = list(top.pop("models"))
        missing = [m for m in wanted if m not in {s.name for s in preset.models}]
        if missing:
            raise EpslError(f"models={missing}: not in the preset "
                            f"({[m.name for m in preset.models]})")
        top["models"] = tuple(m for m in preset.models if m.name in wanted)
        attacks = top.get("attacks", preset.attacks)
        top["attacks"] = replace(
            attacks,
            transfer_from=attacks.transfer_from if attacks.transfer_from in wanted else None,
            sweep_model=attacks.sweep_model if attacks.sweep_model in wanted else None)
    try:
        return replace(preset, **top)
    except TypeError as exc:
        raise EpslError(str(exc)) from None


def _change_norm(preset: Preset, norm: str, top: dict[str, Any]) -> dict[str, Any]:
    """What moving the study to ``norm`` changes: the radius must be given in it (an ℓ∞ ε means
    nothing in ℓ2), the ε grid becomes the norm's default unless given, a section of that norm
    is dropped (it is the study now), and the default ensemble follows (:class:`Preset`)."""
    from epsl.runs.diagnose import default_eps

    if "eps" not in top:
        raise EpslError(f"norm={norm}: give eps in {norm} too (the preset's eps = "
                        f"{preset.eps:g} is a {preset.norm} radius)")
    certify = top.get("certify", preset.certify)
    return {"norm": norm, "eps_grid": top.get("eps_grid", default_eps(norm)),
            "threat_models": tuple(t for t in top.get("threat_models", preset.threat_models)
                                   if t.norm != norm),
            # the certified floor is l_inf's: another norm's study goes without it
            "certify": certify if norm == "linf" else replace(certify, enabled=False)}


def _override_minimal(current: MinimalConfig | None,
                      values: dict[str, Any]) -> MinimalConfig | None:
    """``minimal.enabled=False`` switches ε* off; other keys change the ensemble."""
    values = dict(values)
    if values.pop("enabled", True) is False:
        return None
    try:
        base = current if current is not None else _minimal({}, "preset")
        return replace(base, **values)
    except TypeError as exc:
        raise EpslError(f"preset [minimal]: {exc}") from None


def preset_to_dict(preset: Preset) -> dict[str, Any]:
    """The JSON form written to ``preset.json`` (read back by :func:`preset_from_dict`)."""
    import json

    d = json.loads(to_json(asdict(preset)))
    for key in TRAIN_FROM_PRESET if d["train"] is not None else ():  # the preset's own
        d["train"].pop(key, None)
    return d  # type: ignore[no-any-return]


def _results_key(preset: Preset) -> dict[str, Any]:
    """The settings that determine results already on disk: everything but which models and
    stages a call runs, ε*'s ensemble and the other norms' sections (their results are keyed
    on their own provenance, and the comparison's stage record names what it read)."""
    d = preset_to_dict(preset)
    # the weights' folder neither: every result is keyed on the weights' own content hash
    for key in ("models", "description", "minimal", "threat_models", "certify", "model_dir"):
        d.pop(key, None)
    d["audit"].pop("enabled", None)
    d["attacks"].pop("transfer_from", None)
    d["attacks"].pop("sweep_model", None)
    return d


def check_same_preset(out: Path, preset: Preset, force: bool) -> None:
    """Refuse to mix two different studies in one folder (unless ``force``): the settings and
    the defense of every model present in both must agree; running a subset of the models or
    skipping a stage is fine. Then record the union of both grids in ``preset.json``."""
    saved = out / PRESET_FILE
    if saved.exists() and not force:
        try:
            before: Preset | None = preset_from_dict(read_json(saved), str(saved))
        except EpslError:
            before = None
        same_models = before is not None and all(
            (m.defense, m.checkpoint) == (before.model(m.name).defense,
                                          before.model(m.name).checkpoint)
            for m in preset.models if m.name in {b.name for b in before.models})
        if before is None or not same_models or _results_key(before) != _results_key(preset):
            raise EpslError(f"{out} holds a study made with other settings (see {saved}); "
                            "use another out folder or pass force=True to recompute")
        merged = {m.name: m for m in before.models}
        merged.update({m.name: m for m in preset.models})
        preset = replace(preset, models=tuple(merged.values()))
    write_json(saved, preset_to_dict(preset))
