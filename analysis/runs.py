"""Read saved run folders (tables and JSON only, never a model) and name each run by its defense.

A *run folder* holds any of the tables that ``epsl diagnose``, ``epsl activations``,
``epsl landscape``, ``epsl attack`` and ``epsl audit`` write, either directly or in
subfolders (up to two levels deep, e.g. ``run/attacks/pgd/attack.csv``):

- ``diagnostics.csv`` / ``.parquet``: one row per example, ``index, label, pred, correct,
  logit_gap, grad_gap_l1, grad_cosine, eps_l, rival, grad_l1_label, grad_l1_rival,
  logit_0 .. logit_{K-1}``; ``summary.json`` beside it (``n, clean_accuracy, eps,
  predicted_accuracy, checkpoint, model``).
- ``activations.csv``: ``layer, unit, activation_sum, activation_abs_sum, active_count``.
- ``landscape.csv``: ``image, index, label, direction, eps1, eps2, loss``.
- ``attack.csv``: one row per example per setting, ``index, label, attack, loss_name, eps,
  steps, restarts, step_size, random_start, source, correct, loss, margin, pred``.
- ``audit.csv`` (``index, label, clean_correct, <attack>..., robust, broken_by``) and
  ``audit.json`` (``accuracies, warnings, verdict``).

Several ``attack.csv`` / ``landscape.csv`` / ``activations.csv`` files in one run are
concatenated; the shallowest ``diagnostics`` and ``audit`` tables are used.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from epsl.errors import EpslError
from epsl.io import read_json, read_table

TABLE_FILES: dict[str, tuple[str, ...]] = {
    "diagnostics": ("diagnostics.parquet", "diagnostics.csv"),
    "activations": ("activations.parquet", "activations.csv"),
    "landscape": ("landscape.parquet", "landscape.csv"),
    "attack": ("attack.parquet", "attack.csv"),
    "audit": ("audit.parquet", "audit.csv"),
}
_CONCATENATED = ("activations", "landscape", "attack")
_MAX_DEPTH = 2


@dataclass(frozen=True)
class Run:
    """One model's saved results, read from disk.

    ``meta`` is the checkpoint metadata (``arch``, ``dataset``, ``train_config`` with its
    ``defense`` dict, ``metrics``); ``summary`` is the diagnostics ``summary.json``.
    Tables that the folder does not hold are ``None``.
    """

    name: str
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    diagnostics: pd.DataFrame | None = None
    activations: pd.DataFrame | None = None
    landscape: pd.DataFrame | None = None
    attack: pd.DataFrame | None = None
    attack_summary: dict[str, Any] = field(default_factory=dict)
    audit: pd.DataFrame | None = None
    audit_summary: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def defense(self) -> dict[str, Any]:
        """The ``train_config.defense`` dict of the checkpoint metadata ({} when unknown)."""
        return defense_params(self.meta)

    def tables(self) -> list[str]:
        """Names of the tables this run holds."""
        return [k for k in TABLE_FILES if getattr(self, k) is not None]

    @property
    def num_classes(self) -> int:
        """K, from the ``logit_*`` columns of the diagnostics (0 without diagnostics)."""
        return len(logit_columns(self.diagnostics)) if self.diagnostics is not None else 0


def logit_columns(frame: pd.DataFrame) -> list[str]:
    """The ``logit_0 .. logit_{K-1}`` columns, in class order."""
    cols = [c for c in frame.columns if c.startswith("logit_") and c[6:].isdigit()]
    return sorted(cols, key=lambda c: int(c[6:]))


def _find(root: Path, names: Sequence[str]) -> list[Path]:
    """Files named ``names`` under ``root`` (depth <= 2), shallowest first, one per folder."""
    found: list[Path] = []
    folders = [root]
    for _ in range(_MAX_DEPTH + 1):
        next_folders: list[Path] = []
        for folder in folders:
            for name in names:
                if (folder / name).is_file():
                    found.append(folder / name)
                    break
            next_folders += sorted(p for p in folder.iterdir()
                                   if p.is_dir() and not p.name.startswith("."))
        folders = next_folders
    return found


def _json_beside(table: Path, name: str) -> dict[str, Any]:
    path = table.parent / name
    if path.is_file():
        obj = read_json(path)
        return obj if isinstance(obj, dict) else {}
    return {}


def read_safetensors_metadata(path: Path | str) -> dict[str, Any]:
    """The epsl metadata of a ``.safetensors`` checkpoint, read from its JSON header.

    The safetensors format is 8 bytes (little-endian header length) then a JSON header whose
    ``__metadata__`` holds string values; epsl stores its metadata as JSON under ``epsl``.
    Read here without torch so that analysis stays model-free.
    """
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                return {}
            header = json.loads(f.read(length))
        raw = (header.get("__metadata__") or {}).get("epsl")
        meta = json.loads(raw) if raw else {}
        return meta if isinstance(meta, dict) else {}
    except (OSError, struct.error, ValueError, AttributeError):
        return {}


def _meta_from(jsons: Iterable[dict[str, Any]], root: Path) -> tuple[dict[str, Any], str | None]:
    """Checkpoint metadata and path from whichever JSON carries it, else a checkpoint file."""
    checkpoint: str | None = None
    for record in jsons:
        # provenance sits at the top level or under "metadata" (audit.json)
        nested = record.get("metadata")
        for obj in (record, nested if isinstance(nested, dict) else {}):
            checkpoint = checkpoint or _checkpoint_path(obj)
            model = obj.get("model")
            if isinstance(model, dict) and model:
                return model, checkpoint
    candidates = sorted(root.glob("*.safetensors"))
    if checkpoint is not None:
        candidates.insert(0, Path(checkpoint))
    for path in candidates:
        if path.is_file():
            meta = read_safetensors_metadata(path)
            if meta:
                return meta, checkpoint or str(path)
    return {}, checkpoint


def _checkpoint_path(obj: dict[str, Any]) -> str | None:
    value = obj.get("checkpoint") or obj.get("target")
    if isinstance(value, dict):
        value = value.get("path")
    return value if isinstance(value, str) else None


def load_run(path: Path | str, *, label: str | None = None) -> Run:
    """Read every recognised table under ``path``; raise ``EpslError`` when there is none."""
    root = Path(path)
    if not root.is_dir():
        raise EpslError(f"{root}: no such folder")
    tables: dict[str, pd.DataFrame | None] = {}
    sources: dict[str, list[Path]] = {}
    for key, names in TABLE_FILES.items():
        files = _find(root, names)
        sources[key] = files
        if not files:
            tables[key] = None
        elif key in _CONCATENATED:
            tables[key] = pd.concat([read_table(f) for f in files], ignore_index=True)
        else:
            tables[key] = read_table(files[0])
    if all(t is None for t in tables.values()):
        expected = ", ".join(names[-1] for names in TABLE_FILES.values())
        raise EpslError(f"{root}: no recognised tables (expected any of {expected})")
    summary = _json_beside(sources["diagnostics"][0], "summary.json") if sources["diagnostics"] \
        else {}
    attack_summary = (_json_beside(sources["attack"][0], "summary.json")
                      or _json_beside(sources["attack"][0], "attack.json")) \
        if sources["attack"] else {}
    audit_summary = _json_beside(sources["audit"][0], "audit.json") if sources["audit"] else {}
    extra = [_json_beside(f, name) for k in ("activations", "landscape") for f in sources[k]
             for name in (f"{k}.json", "summary.json")]
    meta, checkpoint = _meta_from([summary, audit_summary, attack_summary, *extra], root)
    if checkpoint and "checkpoint" not in summary:
        summary = {**summary, "checkpoint": checkpoint}
    run = Run(name=root.resolve().name, path=root, meta=meta, summary=summary,
              attack_summary=attack_summary, audit_summary=audit_summary,
              diagnostics=tables["diagnostics"], activations=tables["activations"],
              landscape=tables["landscape"], attack=tables["attack"], audit=tables["audit"])
    return replace(run, label=label or defense_label(meta, fallback=run.name))


def load_runs(paths: Sequence[Path | str]) -> list[Run]:
    """Load several run folders and make their labels unique (see :func:`unique_labels`)."""
    runs = [load_run(p) for p in paths]
    labels = unique_labels(runs)
    return [replace(r, label=lab) for r, lab in zip(runs, labels, strict=True)]


def unique_labels(runs: Sequence[Run]) -> list[str]:
    """Run labels, disambiguated by training length, then by folder name, when they clash."""
    labels = [r.label for r in runs]
    for attempt in ("steps", "name"):
        counts = pd.Series(labels).value_counts()
        if counts.max() <= 1:
            break
        for i, r in enumerate(runs):
            if counts[labels[i]] > 1:
                suffix = _steps_text(r.meta) if attempt == "steps" else r.name
                if suffix:
                    labels[i] = f"{labels[i]} ({suffix})"
    return labels


def defense_params(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``train_config.defense`` of checkpoint metadata, or {} when absent."""
    config = meta.get("train_config") or {}
    defense = config.get("defense") if isinstance(config, Mapping) else None
    return dict(defense) if isinstance(defense, Mapping) else {}


def _num(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if math.isnan(number) else number


def _fmt(value: float) -> str:
    return f"{value:g}"


def _steps_text(meta: Mapping[str, Any]) -> str:
    config = meta.get("train_config") or {}
    if not isinstance(config, Mapping):
        return ""
    for key, unit in (("steps", "k"), ("epochs", "epochs")):
        value = config.get(key, meta.get(key) if key == "steps" else None)
        if value:
            n = int(value)
            if unit == "k":
                return f"k={n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"k={n}"
            return f"{n} {unit}"
    return ""


def defense_label(meta: Mapping[str, Any], *, fallback: str = "unknown") -> str:
    """A short name for a model from its training metadata, for legends and tables.

    Examples: ``natural``, ``noise σ=0.5``, ``LS α=0.75 + σ=0.3``, ``LSq β=2 + σ=0.5``,
    ``PGD-7 ε=0.3``, ``FGSM ε=0.3 + LS α=0.2``. Without a ``train_config`` the label is
    ``fallback`` (a folder or checkpoint name).
    """
    config = meta.get("train_config")
    if not isinstance(config, Mapping):
        return fallback
    defense = defense_params(meta)
    alpha = _num(defense.get("label_smoothing"))
    beta = _num(defense.get("logit_squeeze"))
    sigma = _num(defense.get("noise_sigma"))
    adv = str(defense.get("adv") or "none").lower()
    parts: list[str] = []
    if adv not in ("none", "", "false"):
        steps = int(_num(defense.get("adv_steps")))
        name = adv.upper() + (f"-{steps}" if adv == "pgd" and steps else "")
        eps = _num(defense.get("adv_eps"))
        if eps:
            name += f" ε={_fmt(eps)}"
        kappa = defense.get("adv_kappa")
        if kappa is not None and _num(kappa):
            name += f" κ={_fmt(_num(kappa))}"
        parts.append(name)
    if alpha:
        parts.append(f"LS α={_fmt(alpha)}")
    if beta:
        parts.append(f"LSq β={_fmt(beta)}")
    if sigma:
        parts.append(f"σ={_fmt(sigma)}" if parts else f"noise σ={_fmt(sigma)}")
    return " + ".join(parts) if parts else "natural"


def defense_kind(meta: Mapping[str, Any]) -> str:
    """The role of a run in the noise ablations of Figures 3 and 8.

    One of ``natural``, ``noise``, ``ls``, ``ls+noise``, ``lsq``, ``lsq+noise``, ``adv``,
    ``other`` (several regularisers at once) or ``unknown`` (no training config).
    """
    if not isinstance(meta.get("train_config"), Mapping):
        return "unknown"
    d = defense_params(meta)
    alpha, beta, sigma = (_num(d.get(k)) for k in ("label_smoothing", "logit_squeeze",
                                                     "noise_sigma"))
    adv = str(d.get("adv") or "none").lower() not in ("none", "", "false")
    if adv:
        return "adv" if not (alpha or beta) else "other"
    if alpha and beta:
        return "other"
    reg = "ls" if alpha else "lsq" if beta else ""
    if not reg:
        return "noise" if sigma else "natural"
    return f"{reg}+noise" if sigma else reg
