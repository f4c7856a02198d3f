"""The whole study of the paper from a preset: train the grid of defenses, diagnose, attack,
audit, and render the figures and the comparison report.

Presets are TOML files (``epsl/presets/*.toml``, or a user's path). Every stage writes its
outputs atomically and is skipped when they already exist, so an interrupted run resumes where
it stopped; ``force=True`` recomputes everything.

Layout of ``out``::

    out/preset.json                    the resolved preset (with overrides)
    out/models/<name>.safetensors      one checkpoint per defense
    out/runs/<name>/...                diagnostics, attacks, audit, activations, landscape
    out/comparison.{csv,md}, out/report.html, out/figures/   tables and figures
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from epsl.defenses import DefenseConfig
from epsl.errors import EpslError
from epsl.io import read_json, write_json

Log = Callable[[str], None]


@dataclass(frozen=True)
class ModelSpec:
    """One defense of the grid: a name and the defense terms (see :class:`DefenseConfig`)."""

    name: str
    defense: DefenseConfig = field(default_factory=DefenseConfig)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int | None = 15
    steps: int | None = None
    batch_size: int = 64
    train_limit: int | None = None
    optimizer: str = "auto"
    lr: float | None = None
    weight_decay: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class AttackSettings:
    pgd_steps: int = 20
    pgd_step_size: float | None = None  # default 2.5 * eps / steps
    restarts: int = 1
    transfer_from: str | None = "natural"
    sweep_model: str | None = None
    sweep_steps: tuple[int, ...] = (1, 5, 10, 20, 40)
    sweep_restarts: tuple[int, ...] = (1, 2, 5)


@dataclass(frozen=True)
class AuditSettings:
    enabled: bool = True
    limit: int | None = 200
    quick: bool = False


@dataclass(frozen=True)
class LandscapeSettings:
    images: int = 8
    span: float = 0.3
    steps: int = 21


@dataclass(frozen=True)
class Preset:
    """A whole study: data, architecture, the grid of defenses and the evaluation settings."""

    name: str
    dataset: str
    arch: str
    models: tuple[ModelSpec, ...]
    eps: float
    description: str = ""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    eps_grid: tuple[float, ...] = ()
    limit: int | None = None
    device: str = "auto"
    data_root: str | None = None
    train: TrainSettings = field(default_factory=TrainSettings)
    attacks: AttackSettings = field(default_factory=AttackSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    landscape: LandscapeSettings = field(default_factory=LandscapeSettings)

    def __post_init__(self) -> None:
        if not 0 < self.eps < 1:
            raise EpslError(f"preset {self.name}: eps must be in (0, 1) (got {self.eps})")
        if not self.models:
            raise EpslError(f"preset {self.name}: no [[models]]")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise EpslError(f"preset {self.name}: model names must be unique ({names})")
        for ref in (self.attacks.transfer_from, self.attacks.sweep_model):
            if ref is not None and ref not in names:
                raise EpslError(f"preset {self.name}: {ref!r} names no model of the grid")

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)


PRESETS = ("digits", "fashion-mnist", "mnist-paper", "cifar10-paper", "cifar100-paper")


def _section(cls: type, raw: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise EpslError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise EpslError(f"{where}: {exc}") from None


def preset_from_dict(raw: dict[str, Any], where: str = "preset") -> Preset:
    raw = dict(raw)
    models = []
    for i, entry in enumerate(raw.pop("models", [])):
        entry = dict(entry)
        name = entry.pop("name", None)
        if not name:
            raise EpslError(f"{where}: models[{i}] has no name")
        models.append(ModelSpec(name, _section(DefenseConfig, entry, f"{where} model {name}")))
    sections = {"train": TrainSettings, "attacks": AttackSettings, "audit": AuditSettings,
                "landscape": LandscapeSettings}
    parsed = {key: _section(cls, raw.pop(key, {}), f"{where} [{key}]")
              for key, cls in sections.items()}
    if "eps_grid" in raw:
        raw["eps_grid"] = tuple(raw["eps_grid"])
    return _section(Preset, {**raw, **parsed, "models": tuple(models)}, where)


def load_preset(name_or_path: str) -> Preset:
    """A bundled preset by name (``digits``, ``fashion-mnist``, ``mnist-paper``, ...) or a
    TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise EpslError(f"--preset {path}: no such file")
        text = path.read_text()
        where = str(path)
    elif name_or_path in PRESETS:
        text = resources.files("epsl.presets").joinpath(f"{name_or_path}.toml").read_text()
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
    ``None`` values are ignored, so CLI options that were not given change nothing."""
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
        current = getattr(preset, section, None)
        if current is None:
            raise EpslError(f"unknown preset section {section!r}")
        try:
            top[section] = replace(current, **values)
        except TypeError as exc:
            raise EpslError(f"preset [{section}]: {exc}") from None
    if "models" in top and isinstance(top["models"], (list, tuple)):
        wanted = list(top.pop("models"))
        missing = [m for m in wanted if m not in {s.name for s in preset.models}]
        if missing:
            raise EpslError(f"--models: {missing} not in the preset "
                            f"({[m.name for m in preset.models]})")
        top["models"] = tuple(m for m in preset.models if m.name in wanted)
    try:
        return replace(preset, **top)
    except TypeError as exc:
        raise EpslError(str(exc)) from None


def preset_to_dict(preset: Preset) -> dict[str, Any]:
    return asdict(preset)


def check_same_preset(out: Path, preset: Preset, force: bool) -> None:
    """Refuse to mix two different studies in one folder (unless ``force``)."""
    saved = out / "preset.json"
    if saved.exists() and not force:
        previous = read_json(saved)
        current = read_json_roundtrip(preset_to_dict(preset))
        if previous != current:
            raise EpslError(f"{out} holds a study made with other settings (see {saved}); "
                            "use another --out or pass --force to recompute")
    write_json(saved, preset_to_dict(preset))


def read_json_roundtrip(obj: Any) -> Any:
    import json

    from epsl.io import to_json

    return json.loads(to_json(obj))
