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
    out/headline.md                    the headline columns and the audit verdicts
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from epsl.defenses import DefenseConfig
from epsl.errors import EpslError
from epsl.io import check_out_dir, check_writable, read_json, read_table, write_json, write_text

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
        _check_preset(self)

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)


def _check_preset(preset: Preset) -> None:
    """Refuse a preset that would fail part-way through a study: every name must be registered
    and every count and radius in range, so nothing is written or trained before the error."""
    from epsl.data import DATASETS
    from epsl.device import DEVICES
    from epsl.models import MODELS
    from epsl.train import OPTIMIZERS

    def fail(message: str) -> EpslError:
        return EpslError(f"preset {preset.name}: {message}")

    for key, value, names in (("dataset", preset.dataset, DATASETS.names()),
                              ("arch", preset.arch, MODELS.names()),
                              ("device", preset.device, list(DEVICES)),
                              ("[train] optimizer", preset.train.optimizer, list(OPTIMIZERS))):
        if value not in names:
            raise fail(f"unknown {key} {value!r}; choose from {', '.join(names)}")
    if not 0 < preset.eps < 1:
        raise fail(f"eps must be in (0, 1) (got {preset.eps})")
    for e in preset.eps_grid:
        if not 0 < e <= 1:
            raise fail(f"eps_grid values must be in (0, 1] (got {e})")
    t, a, ls = preset.train, preset.attacks, preset.landscape
    if t.epochs is None and t.steps is None:
        raise fail("[train] needs epochs or steps")
    counts = [("limit", preset.limit), ("[train] epochs", t.epochs), ("[train] steps", t.steps),
              ("[train] batch_size", t.batch_size), ("[train] train_limit", t.train_limit),
              ("[attacks] pgd_steps", a.pgd_steps), ("[attacks] restarts", a.restarts),
              ("[audit] limit", preset.audit.limit), ("[landscape] images", ls.images)]
    counts += [("[attacks] sweep_steps", v) for v in a.sweep_steps]
    counts += [("[attacks] sweep_restarts", v) for v in a.sweep_restarts]
    for key, count in counts:
        if count is not None and count < 1:
            raise fail(f"{key} must be at least 1 (got {count})")
    if ls.steps < 2:
        raise fail(f"[landscape] steps must be at least 2 (got {ls.steps})")
    for key, number, low_open in (("[landscape] span", ls.span, True),
                                  ("[attacks] pgd_step_size", a.pgd_step_size, True),
                                  ("[train] lr", t.lr, True),
                                  ("[train] weight_decay", t.weight_decay, False)):
        if number is None:
            continue
        if not math.isfinite(number) or number < 0 or (low_open and number == 0):
            raise fail(f"{key} must be a finite number {'>' if low_open else '>='} 0 "
                       f"(got {number})")
    if not preset.models:
        raise fail("no [[models]]")
    names = [m.name for m in preset.models]
    if len(set(names)) != len(names):
        raise fail(f"model names must be unique ({names})")
    for ref in (a.transfer_from, a.sweep_model):
        if ref is not None and ref not in names:
            raise fail(f"{ref!r} names no model of the grid")


PRESETS = ("digits", "fashion-mnist", "mnist-paper", "cifar10-paper", "cifar100-paper")


_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,),
                                        "bool": (bool,)}


def _type_ok(annotation: str, value: Any) -> bool:
    """Whether a TOML/JSON ``value`` fits a dataclass field's (string) annotation such as
    ``int | None`` or ``tuple[float, ...]``; nested dataclasses were parsed before."""
    for part in (p.strip() for p in annotation.split("|")):
        if part == "None":
            if value is None:
                return True
        elif part in _TYPES:
            kinds = _TYPES[part]
            if isinstance(value, kinds) and (part == "bool" or not isinstance(value, bool)):
                return True
        elif part.startswith("tuple[") and part.endswith(", ...]"):
            inner = part.removeprefix("tuple[").removesuffix(", ...]")
            if isinstance(value, tuple) and (inner not in _TYPES
                                             or all(_type_ok(inner, v) for v in value)):
                return True
        elif part.startswith("dict["):
            if isinstance(value, dict):
                return True
        else:
            return True
    return False


def _section(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise EpslError(f"{where}: expected a table of settings (got {raw!r})")
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise EpslError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    missing = [f.name for f in fields(cls) if f.name not in raw
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise EpslError(f"{where}: missing keys {missing}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    for f in fields(cls):
        if f.name in values and not _type_ok(str(f.type), values[f.name]):
            raise EpslError(f"{where}: {f.name} must be {f.type} (got {values[f.name]!r})")
    try:
        return cls(**values)
    except TypeError as exc:
        raise EpslError(f"{where}: {exc}") from None


def preset_from_dict(raw: dict[str, Any], where: str = "preset") -> Preset:
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
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise EpslError(f"{where}: not a TOML file (not UTF-8 text)") from None
        except OSError as exc:
            raise EpslError(f"{where}: cannot read ({exc.strerror or exc})") from None
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
        attacks = top.get("attacks", preset.attacks)
        top["attacks"] = replace(
            attacks,
            transfer_from=attacks.transfer_from if attacks.transfer_from in wanted else None,
            sweep_model=attacks.sweep_model if attacks.sweep_model in wanted else None)
    try:
        return replace(preset, **top)
    except TypeError as exc:
        raise EpslError(str(exc)) from None


def preset_to_dict(preset: Preset) -> dict[str, Any]:
    return asdict(preset)


def _results_key(preset: Preset) -> dict[str, Any]:
    """The settings that determine results already on disk: everything but which models and
    stages a call runs."""
    d = read_json_roundtrip(preset_to_dict(preset))
    for key in ("models", "description"):
        d.pop(key, None)
    d["audit"].pop("enabled", None)
    d["attacks"].pop("transfer_from", None)
    d["attacks"].pop("sweep_model", None)
    return d  # type: ignore[no-any-return]


def check_same_preset(out: Path, preset: Preset, force: bool) -> None:
    """Refuse to mix two different studies in one folder (unless ``force``): the settings and
    the defense of every model present in both must agree; running a subset of the models or
    skipping a stage is fine."""
    saved = out / "preset.json"
    if saved.exists() and not force:
        previous = read_json(saved)
        try:
            before = preset_from_dict({k: v for k, v in previous.items()}, str(saved))
        except EpslError:
            before = None
        same_models = before is not None and all(
            m.defense == before.model(m.name).defense for m in preset.models
            if m.name in {b.name for b in before.models})
        if before is None or not same_models or _results_key(before) != _results_key(preset):
            raise EpslError(f"{out} holds a study made with other settings (see {saved}); "
                            "use another --out or pass --force to recompute")
        merged = {m.name: m for m in before.models}
        merged.update({m.name: m for m in preset.models})
        preset = replace(preset, models=tuple(merged.values()))
    write_json(saved, preset_to_dict(preset))


def read_json_roundtrip(obj: Any) -> Any:
    import json

    from epsl.io import to_json

    return json.loads(to_json(obj))


# --------------------------------------------------------------------------- running a study


@dataclass(frozen=True)
class ReproduceResult:
    out: Path
    checkpoints: dict[str, Path]
    ran: list[str]  # stages computed in this call
    skipped: list[str]  # stages whose outputs already existed
    report: Path | None
    seconds: float
    headline: str = ""  # the headline table and audit verdicts (Markdown), as in headline.md


STAGE_FILE = "stages.json"


def _stage_record(out: Path) -> dict[str, Any]:
    path = out / STAGE_FILE
    return read_json(path) if path.exists() else {}


def _mark(out: Path, stage: str) -> None:
    record = _stage_record(out)
    record[stage] = True
    write_json(out / STAGE_FILE, record)


def _train_config(preset: Preset, spec: ModelSpec) -> Any:
    from epsl.train import TrainConfig

    t = preset.train
    return TrainConfig(dataset=preset.dataset, data_root=preset.data_root, arch=preset.arch,
                       arch_kwargs=dict(preset.arch_kwargs), epochs=t.epochs, steps=t.steps,
                       batch_size=t.batch_size, train_limit=t.train_limit,
                       optimizer=t.optimizer, lr=t.lr, weight_decay=t.weight_decay, seed=t.seed,
                       device=preset.device, defense=spec.defense)


def reproduce(preset: Preset, out: Path | str, *, force: bool = False,
              log: Log | None = None, progress: bool = False) -> ReproduceResult:
    """Run the study of ``preset`` into ``out``, skipping every stage whose outputs exist.

    Stages: train every model of the grid; per model, activations (Fig. 10-11) and loss
    landscapes (Fig. 5, 9) on the first images; the audit (worst case over the paper's and
    stronger attacks); PGD steps and restarts sweeps and the unbounded-eps check on the sweep
    model (Tables 9-11); then :func:`epsl.compare.compare` for the diagnostics (Eq. 4), the
    paper's white-box and transfer attacks, the comparison table, figures and the HTML report.
    """
    import shutil
    import time

    from epsl.checkpoint import read_metadata
    from epsl.train import train

    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EpslError(f"--out {out} exists and is not a folder")
    check_writable(out)
    if preset.audit.enabled:  # fail now, not after training the grid
        from epsl.audit import AuditConfig, check_dependencies

        check_dependencies(AuditConfig())
    if force and out.exists():
        for child in ("models", "runs", "figures", STAGE_FILE):
            target = out / child
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    check_out_dir(out, [], overwrite=True)
    check_same_preset(out, preset, force)
    ran: list[str] = []
    skipped: list[str] = []

    # 1. train the grid
    checkpoints: dict[str, Path] = {}
    for spec in preset.models:
        path = out / "models" / f"{spec.name}.safetensors"
        checkpoints[spec.name] = path
        if path.exists() and read_metadata(path).get("complete"):
            skipped.append(f"train {spec.name}")
            continue
        say(f"train {spec.name} ({spec.defense.name})")
        result = train(_train_config(preset, spec), path, resume=path.exists(),
                       progress=progress)
        acc = result.metadata.get("metrics", {}).get("test_accuracy", float("nan"))
        say(f"  {spec.name}: test accuracy {acc:.2%}")
        ran.append(f"train {spec.name}")

    # 2. per-model extras the comparison does not compute
    runs = out / "runs"
    for spec in preset.models:
        folder = runs / spec.name
        for stage, done in _extras(preset, spec, checkpoints, folder, say):
            (ran if done else skipped).append(f"{stage} {spec.name}")

    # 3. diagnostics, the paper's attacks, table, figures, report
    report = out / "report.html"
    if _stage_record(out).get("compare") and report.exists():
        skipped.append("compare")
    else:
        from epsl.compare import CompareConfig, compare

        transfer = preset.attacks.transfer_from
        config = CompareConfig(
            checkpoints=tuple(str(checkpoints[m.name]) for m in preset.models),
            eps=preset.eps, dataset=preset.dataset, data_root=preset.data_root,
            limit=preset.limit,
            source=str(checkpoints[transfer]) if transfer else None,
            pgd_steps=preset.attacks.pgd_steps, restarts=preset.attacks.restarts,
            step_size=preset.attacks.pgd_step_size, eps_grid=preset.eps_grid,
            audit=False, figures=True, seed=preset.train.seed, device=preset.device)
        say("diagnostics, attacks, comparison, figures and report")
        compare(config, runs, overwrite=True, progress=lambda m: say(f"  {m}"))
        for name in ("comparison.csv", "comparison.md", "report.html", "compare.json"):
            shutil.copyfile(runs / name, out / name)
        if (out / "figures").exists():
            shutil.rmtree(out / "figures")
        shutil.copytree(runs / "figures", out / "figures")
        _mark(out, "compare")
        ran.append("compare")
    summary = ""
    if (out / "comparison.csv").exists():  # the few columns a terminal shows; see headline.md
        from epsl.analysis.tables import headline

        summary = headline(read_table(out / "comparison.csv"),
                           source_run=preset.attacks.transfer_from)
        write_text(out / "headline.md", summary)
    return ReproduceResult(out, checkpoints, ran, skipped, report if report.exists() else None,
                           time.perf_counter() - t0, summary)


def _extras(preset: Preset, spec: ModelSpec, checkpoints: dict[str, Path], folder: Path,
            say: Log) -> list[tuple[str, bool]]:
    """Activations, landscapes, audit and sweeps of one model; (stage, computed?) pairs."""
    from epsl.diagnostics.runs import (
        ActivationsConfig,
        DataConfig,
        LandscapeConfig,
        provenance,
        run_activations,
        run_landscape,
    )
    from epsl.io import write_table

    ckpt = str(checkpoints[spec.name])
    data = DataConfig(checkpoint=ckpt, dataset=preset.dataset, data_root=preset.data_root,
                      limit=preset.limit, device=preset.device)
    done: list[tuple[str, bool]] = []
    evaluation = None

    def ev() -> Any:
        nonlocal evaluation
        if evaluation is None:
            evaluation = data.prepare()
        return evaluation

    if (folder / "activations" / "activations.json").exists():
        done.append(("activations", False))
    else:
        say(f"activations {spec.name}")
        stats, summary = run_activations(ActivationsConfig(data=data), evaluation=ev())
        write_table(stats.to_frame(), folder / "activations" / "activations.csv")
        write_json(folder / "activations" / "activations.json", summary)
        done.append(("activations", True))

    for direction in ("random", "adversarial"):
        sub = folder / f"landscape-{direction}"
        if (sub / "landscape.json").exists():
            done.append((f"landscape-{direction}", False))
            continue
        say(f"landscape ({direction}) {spec.name}")
        ls = preset.landscape
        config = LandscapeConfig(data=replace(data, limit=ls.images), direction=direction,
                                 span=ls.span, steps=ls.steps, seed=preset.train.seed)
        frame, summary = run_landscape(config)
        write_table(frame, sub / "landscape.csv")
        write_json(sub / "landscape.json", summary)
        done.append((f"landscape-{direction}", True))

    if preset.audit.enabled:
        if (folder / "audit" / "audit.json").exists():
            done.append(("audit", False))
        else:
            from epsl.audit import AuditConfig, audit
            from epsl.context import load_model

            say(f"audit {spec.name} at eps={preset.eps:g}")
            e = ev()
            part = e.data.subset(preset.audit.limit)
            transfer = preset.attacks.transfer_from
            source = None
            if transfer and transfer != spec.name:
                source, _, _ = load_model(checkpoints[transfer], device=e.device)
            seed, steps = preset.train.seed, preset.attacks.pgd_steps
            audit_config = (AuditConfig.quick(seed=seed, pgd_steps=steps) if preset.audit.quick
                            else AuditConfig(seed=seed, pgd_steps=steps))
            result = audit(e.model, part.x.to(e.device), part.y.to(e.device), eps=preset.eps,
                           source=source, config=audit_config)
            result.save(folder / "audit", metadata=provenance(e))
            done.append(("audit", True))

    if preset.attacks.sweep_model == spec.name:
        sweep_path = folder / "sweeps" / "attack.csv"
        if sweep_path.exists():
            done.append(("sweeps", False))
        else:
            import pandas as pd

            from epsl.attacks import sweep

            say(f"PGD steps / restarts sweeps and unbounded eps on {spec.name}")
            e = ev()
            x, y = e.data.x.to(e.device), e.data.y.to(e.device)
            a = preset.attacks
            seed = preset.train.seed
            frames = [
                sweep(e.model, x, y, attack="pgd", eps=[preset.eps], steps=list(a.sweep_steps),
                      restarts=[1], seed=seed),
                sweep(e.model, x, y, attack="pgd", eps=[preset.eps], steps=[a.pgd_steps],
                      restarts=list(a.sweep_restarts), seed=seed),
                sweep(e.model, x, y, attack="pgd", eps=[1.0], steps=[100], restarts=[1],
                      seed=seed),
            ]
            write_table(pd.concat(frames, ignore_index=True), sweep_path)
            write_json(folder / "sweeps" / "summary.json", {
                "eps": preset.eps, "steps": list(a.sweep_steps),
                "restarts": list(a.sweep_restarts), "unbounded_eps": 1.0, **provenance(e)})
            done.append(("sweeps", True))
    return done
