"""Presets read, changed and written: a TOML file (``epsl/study/presets/*.toml`` or a user's
path) or the JSON form of ``preset.json`` read into the frozen dataclasses of
:mod:`epsl.study.preset` (:func:`load_preset`, :func:`preset_from_dict`), each section checked
against its dataclass's fields; :func:`override` for the command line's changes;
:func:`preset_to_dict` and :func:`check_same_preset` for the study folder's ``preset.json``.
The dataclasses are re-exported here.

    >>> preset = load_preset("digits")
    >>> quick = override(preset, **{"train.epochs": 1, "limit": 50})
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import asdict, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from epsl.attacks.audit_plan import AuditBudgets
from epsl.attacks.eps_star import EpsStarConfig
from epsl.defenses import DefenseConfig
from epsl.defenses.train import TrainConfig
from epsl.errors import EpslError
from epsl.norms import parse_norm
from epsl.results.files import read_json, to_json, write_json
from epsl.runs.compare import ReportedAccuracy
from epsl.study.preset import (
    KINDS,
    AttackSettings,
    AuditSettings,
    CertifySettings,
    LandscapeSettings,
    ModelSpec,
    Preset,
    ThreatModel,
)

__all__ = ["AUDIT_SETTINGS", "KINDS", "PRESETS", "PRESET_FILE", "TRAIN_FROM_PRESET", "AttackSettings",
           "AuditSettings", "CertifySettings", "LandscapeSettings", "ModelSpec", "Preset",
           "ThreatModel", "check_same_preset", "load_preset", "override", "preset_from_dict",
           "preset_to_dict"]

PRESETS = ("digits", "fashion-mnist", "mnist-paper", "cifar10-paper", "cifar100-paper",
           "zoo-cifar10-linf")
PRESET_FILE = "preset.json"  # in a study folder: the resolved preset


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


#: the keys of ``[audit]`` that are not budgets
AUDIT_SETTINGS = ("enabled", "limit", "labelled", "labelled_seed", "predictor", "alpha")


def _audit(raw: Any, where: str, attacks: AttackSettings) -> AuditSettings:
    """``[audit]``: ``enabled``, ``limit`` and the budgets of its attacks, as keys of
    :class:`AuditBudgets` on its defaults or, with ``quick = true``, on
    :meth:`AuditBudgets.quick` (the JSON form holds them whole, in ``budgets``). The audit's
    PGD-k is ``[attacks]``'s: its ``pgd_steps`` and ``pgd_step_size``."""
    where = f"{where} [audit]"
    if not isinstance(raw, dict):
        raise EpslError(f"{where}: expected a table of settings (got {raw!r})")
    raw = dict(raw)
    settings = {key: raw.pop(key) for key in AUDIT_SETTINGS if key in raw}
    quick = raw.pop("quick", False)
    if not isinstance(quick, bool):
        raise EpslError(f"{where}: quick must be true or false (got {quick!r})")
    elsewhere = sorted(set(raw) & {"pgd_steps", "step_size"})
    if elsewhere:
        raise EpslError(f"{where}: the audit's PGD-k is [attacks]' pgd_steps and pgd_step_size; "
                        f"remove {', '.join(elsewhere)} here")
    given = raw.pop("budgets", None)
    if given is not None and (raw or quick):
        raise EpslError(f"{where}: give the budgets either as keys of [audit] or as its "
                        "budgets table, not both")
    base = asdict(AuditBudgets.quick() if quick else AuditBudgets())
    budgets = {**base, **(raw if given is None else given),
               "pgd_steps": attacks.pgd_steps, "step_size": attacks.pgd_step_size}
    return _section(AuditSettings, {**settings,
                                    "budgets": _section(AuditBudgets, budgets, where)}, where)


def _eps_star(raw: Any, where: str, seed: int = 0) -> EpsStarConfig | None:
    """``[eps_star]`` as the library's :class:`EpsStarConfig` (None with ``enabled = false``;
    the JSON form writes null); its ``seed`` defaults to ``seed``, the attacks' own."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise EpslError(f"{where} [eps_star]: expected a table of settings (got {raw!r})")
    raw = dict(raw)
    enabled = raw.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise EpslError(f"{where} [eps_star]: enabled must be true or false (got {enabled!r})")
    raw.setdefault("seed", seed)
    section = _section(EpsStarConfig, raw, f"{where} [eps_star]")
    return section if enabled else None


def former_section(raw: dict[str, Any], where: str) -> Any:
    """The ``[minimal]`` table of a preset written for epsl 0.2.0, which is ``[eps_star]``
    today (removed from ``raw``), or ``{}``; both at once is a one-line error."""
    if "minimal" in raw and "eps_star" in raw:
        raise EpslError(f"{where}: [minimal] is the former name of [eps_star]; keep one")
    return raw.pop("minimal", {})


def _threat_models(raw: Any, where: str, seed: int = 0) -> tuple[ThreatModel, ...]:
    """``[[threat_models]]`` tables, each with an optional ``[threat_models.eps_star]`` table
    read like ``[eps_star]`` in the section's norm (default: the norm's default ensemble)."""
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise EpslError(f"{where}: threat_models must be a list of [[threat_models]] tables")
    sections = []
    for entry in raw:
        entry = dict(entry)
        norm = entry.get("norm")
        if not isinstance(norm, str):
            raise EpslError(f"{where} [[threat_models]]: each needs norm = \"l2\" or \"l1\"")
        eps_star = entry.pop("eps_star", former_section(entry, f"{where} [[threat_models]]"))
        if isinstance(eps_star, dict):
            eps_star = {"norm": norm, **eps_star}
        entry["eps_star"] = _eps_star(eps_star, f"{where} [[threat_models]] {norm}", seed=seed)
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
    sections = {"attacks": AttackSettings, "landscape": LandscapeSettings,
                "certify": CertifySettings}
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
    parsed["audit"] = _audit(raw.pop("audit", {}), where, parsed["attacks"])
    eps_star = raw.pop("eps_star", former_section(raw, where))
    if isinstance(eps_star, dict) and isinstance(raw.get("norm"), str):
        eps_star = {"norm": raw["norm"], **eps_star}  # the ensemble runs in the study's norm
    parsed["eps_star"] = _eps_star(eps_star, where, seed=parsed["attacks"].seed)
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
        if section == "eps_star":
            top[section] = _override_eps_star(preset.eps_star, values)
            if values.get("enabled", True) is False:  # eps* off in every norm's section
                top["threat_models"] = tuple(replace(t, eps_star=None)
                                             for t in preset.threat_models)
            continue
        if section == "audit":
            top[section] = _override_audit(preset.audit, values)
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
    if "attacks" in top:  # the audit's PGD-k follows the paper's
        audit = top.get("audit", preset.audit)
        top["audit"] = replace(audit, budgets=replace(
            audit.budgets, pgd_steps=top["attacks"].pgd_steps,
            step_size=top["attacks"].pgd_step_size))
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


def _override_eps_star(current: EpsStarConfig | None,
                      values: dict[str, Any]) -> EpsStarConfig | None:
    """``eps_star.enabled=False`` switches ε* off; other keys change the ensemble."""
    values = dict(values)
    if values.pop("enabled", True) is False:
        return None
    try:
        base = current if current is not None else _eps_star({}, "preset")
        return replace(base, **values)
    except TypeError as exc:
        raise EpslError(f"preset [eps_star]: {exc}") from None


def preset_to_dict(preset: Preset) -> dict[str, Any]:
    """The JSON form written to ``preset.json`` (read back by :func:`preset_from_dict`)."""
    import json

    d = json.loads(to_json(asdict(preset)))
    for key in TRAIN_FROM_PRESET if d["train"] is not None else ():  # the preset's own
        d["train"].pop(key, None)
    return d  # type: ignore[no-any-return]


def _override_audit(audit: AuditSettings, values: dict[str, Any]) -> AuditSettings:
    """``audit`` with ``values`` set: ``enabled``, ``limit``, the labelled sample's settings
    or any budget."""
    values = dict(values)
    settings = {key: values.pop(key) for key in AUDIT_SETTINGS if key in values}
    try:
        return replace(audit, budgets=replace(audit.budgets, **values), **settings)
    except TypeError as exc:
        raise EpslError(f"preset [audit]: {exc}") from None


def _results_key(preset: Preset) -> dict[str, Any]:
    """The settings that determine results already on disk: everything but which models and
    stages a call runs, ε*'s ensemble and the other norms' sections (their results are keyed
    on their own provenance, and the comparison's stage record names what it read)."""
    d = preset_to_dict(preset)
    # the weights' folder neither: every result is keyed on the weights' own content hash
    for key in ("models", "description", "eps_star", "threat_models", "certify", "model_dir"):
        d.pop(key, None)
    # which examples the audit runs on is in each audit's, estimate's and comparison's own
    # provenance (the first [audit] limit, or the labelled draw)
    for key in ("enabled", "limit", "labelled", "labelled_seed", "predictor", "alpha"):
        d["audit"].pop(key, None)
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
