"""Read saved run folders (tables and JSON only, never a model) and name each run by its defense.

A *run folder* holds any of the results that ``epsl diagnose``, ``epsl activations``,
``epsl landscape``, ``epsl attack``, ``epsl audit``, ``compare`` and ``reproduce`` write,
either directly or in subfolders (up to two levels deep, e.g. ``run/attacks/attack.csv``).
Every result is read through :mod:`epsl.results.records`: its JSON record (``diagnostics.json``,
``attack.json``, ``audit.json``, ``activations.json``, ``landscape.json``,
``eps_star.json``) names its schema,
holds its provenance (and so the model's metadata, which labels the run) and sits beside its
table:

- ``diagnostics.csv`` / ``.parquet``: one row per example, ``index, label, pred, correct,
  logit_gap, grad_gap_l1, grad_cosine, eps_l, rival, grad_l1_label, grad_l1_rival,
  logit_label, logit_rival, top_1 .. top_T, logit_top_1 .. logit_top_T`` (T = min(K, 10)).
- ``activations.csv``: ``layer, unit, activation_sum, activation_abs_sum, active_count``.
- ``landscape.csv``: ``image, index, label, direction, eps1, eps2, loss``.
- ``attack.csv``: one row per example per setting, ``index, label, attack, loss_name, eps,
  steps, restarts, step_size, random_start, source, correct, loss, margin, pred``.
- ``audit.csv``: ``index, label, clean_correct, <attack>..., robust, broken_by``.
- ``eps_star.csv``: ε* per example beside ε_L (``epsl eps-star``): ``index, label, eps_star,
  eps_star_attack, pred_adv, eps_<attack>..., eps_l, rival, ratio, optimistic``; its record
  holds the report card of Eq. 4.

Several attack, landscape and activations results in one run are concatenated; the shallowest
diagnostics, audit and ε* results are used. A record of an unknown schema is refused in one line.

**The threat model.** Every diagnostics, ε*, attack and audit record's summary names
its norm (``"norm": "linf" | "l2" | "l1"``, :mod:`epsl.norms`); a record without one is ℓ∞ (an
older run). The diagnostics table's gradient-gap column is named by the dual norm
(``grad_gap_l1`` for ℓ∞, ``grad_gap_l2`` for ℓ2, ``grad_gap_linf`` for ℓ1) and attack tables may
carry a ``norm`` column. A run folder holds one norm (:attr:`Run.norm`; results that disagree
are refused in one line naming both), and runs of different norms never share a table or a
figure (:func:`common_norm`, called by :func:`load_runs`, the comparison and the figures).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from epsl.errors import EpslError
from epsl.norms import Norm, dual, parse_norm
from epsl.results.records import KINDS, TABLE_FORMATS, Result, holds, load, stored_kind

RUN_KINDS = ("diagnostics", "activations", "landscape", "attack", "audit", "eps_star", "certify")
#: the text columns of each kind's table; every other column holds numbers, or true/false in
#: :data:`BOOLEAN_COLUMNS` and the audit's per-attack columns (:func:`column_type`)
TEXT_COLUMNS: dict[str, frozenset[str]] = {
    "activations": frozenset({"layer"}), "landscape": frozenset({"direction"}),
    "attack": frozenset({"attack", "loss_name", "norm", "source"}),
    "audit": frozenset({"broken_by"}), "eps_star": frozenset({"eps_star_attack"}),
    "certify": frozenset({"group", "exact_status"}),
}
BOOLEAN_COLUMNS = frozenset({"correct", "clean_correct", "robust", "optimistic", "random_start",
                             "unbounded", "eq4_robust"})
#: the audit's columns that are not one attack's survivors (true/false, empty where it did not run)
_AUDIT_NUMBERS = frozenset({"index", "label", "grad_l1", "eps_l"})
_TRUE, _FALSE = frozenset({"true", "1", "1.0"}), frozenset({"false", "0", "0.0"})
_CONCATENATED = ("activations", "landscape", "attack")
#: the kinds whose records name the norm they were measured in (activations and landscapes
#: are not measured in one)
NORMED_KINDS = ("diagnostics", "eps_star", "attack", "audit")
_MAX_DEPTH = 2


@dataclass(frozen=True)
class Run:
    """One model's saved results, read from disk.

    ``meta`` is the checkpoint metadata (``arch``, ``dataset``, ``train_config`` with its
    ``defense`` dict, ``metrics``), from the results' provenance; ``summary`` is the
    diagnostics record (with the ``checkpoint`` it was made from); ``norm`` the threat model
    every ε, ε_L and ε* of the run is measured in (ℓ∞ for records that do not say).
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
    eps_star: pd.DataFrame | None = None
    eps_star_summary: dict[str, Any] = field(default_factory=dict)
    #: ``certify.csv`` (ε_cert beside ε_L and ε*, ``epsl certify``) and its record's summary
    certify: pd.DataFrame | None = None
    certify_summary: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    norm: Norm = Norm.LINF

    @property
    def defense(self) -> dict[str, Any]:
        """The ``train_config.defense`` dict of the checkpoint metadata ({} when unknown)."""
        return defense_params(self.meta)

    def tables(self) -> list[str]:
        """Names of the tables this run holds."""
        return [k for k in RUN_KINDS if getattr(self, k) is not None]

    @property
    def num_classes(self) -> int:
        """K: the checkpoint's ``num_classes``, else the diagnostics' logit columns (0 without
        either)."""
        if self.meta.get("num_classes"):
            return int(self.meta["num_classes"])
        return len(logit_columns(self.diagnostics)) if self.diagnostics is not None else 0

    @property
    def grad_gap_column(self) -> str:
        """The diagnostics column of Eq. 4's denominator, named by the dual norm:
        ``grad_gap_l1`` (ℓ∞), ``grad_gap_l2`` (ℓ2), ``grad_gap_linf`` (ℓ1)."""
        return grad_gap_column(self.norm)


def grad_gap_column(norm: str | Norm) -> str:
    """The diagnostics table's gradient-gap column in ``norm``: ``grad_gap_<dual norm>``."""
    return f"grad_gap_{dual(norm).value}"


def _record_norms(result: Result, path: Path) -> set[Norm]:
    """The norms one result says it was measured in: its summary's ``norm`` and, for attack
    tables, their ``norm`` column; ℓ∞ when it says none."""
    named = [result.summary.get("norm")]
    if result.table is not None and "norm" in result.table.columns:
        named += list(result.table["norm"].dropna().unique())
    norms = set()
    for value in named:
        if value is None:
            continue
        try:
            norms.add(parse_norm(str(value)))
        except EpslError as error:
            raise EpslError(f"{path}: {error}") from None
    if len(norms) > 1:
        raise EpslError(f"{path}: one result in several norms "
                        f"({', '.join(sorted(n.value for n in norms))}); recompute it")
    return norms or {Norm.LINF}


def _run_norm(results: Mapping[str, Sequence[Result]], root: Path) -> Norm:
    """The one norm of a run folder's diagnostics, eps_star, attack and audit results."""
    seen: dict[Norm, Path] = {}
    for name in NORMED_KINDS:
        for result in results.get(name, ()):
            path = (result.folder or root) / KINDS[name].record
            for norm in _record_norms(result, path):
                seen.setdefault(norm, path)
    if len(seen) > 1:
        (a, path_a), (b, path_b) = list(seen.items())[:2]
        raise EpslError(f"{root}: results of two norms in one run folder: {path_a} is "
                        f"{a.value}, {path_b} is {b.value}; keep one threat model per folder")
    return next(iter(seen), Norm.LINF)


def common_norm(runs: Sequence[Run]) -> Norm:
    """The norm all ``runs`` share (ℓ∞ for none); runs of two norms are a one-line
    ``EpslError`` naming them: their results never share a table or a figure."""
    first: dict[Norm, Run] = {}
    for run in runs:
        first.setdefault(parse_norm(run.norm), run)
    if len(first) > 1:
        (a, run_a), (b, run_b) = list(first.items())[:2]
        name_a, name_b = run_a.label or run_a.name, run_b.label or run_b.name
        raise EpslError(f"runs of two norms cannot share a table or figure: {name_a} "
                        f"({run_a.path}) is {a.value}, {name_b} ({run_b.path}) is {b.value}; "
                        "render each norm separately")
    return next(iter(first), Norm.LINF)


def logit_columns(frame: pd.DataFrame) -> list[str]:
    """The logits a diagnostics table keeps, highest first: ``logit_top_1 .. logit_top_T``
    (every logit when K <= 10, the T highest at more classes), or an older table's
    ``logit_0 .. logit_{K-1}``."""
    top = [c for c in frame.columns if c.startswith("logit_top_") and c[10:].isdigit()]
    if top:
        return sorted(top, key=lambda c: int(c[10:]))
    cols = [c for c in frame.columns if c.startswith("logit_") and c[6:].isdigit()]
    return sorted(cols, key=lambda c: int(c[6:]))


def column_type(kind: str, column: str) -> str:
    """What a column of a ``kind`` table holds: ``"text"``, ``"bool"`` (true/false, 0/1),
    ``"flag"`` (an audit attack's: true/false, empty where the attack did not run) or
    ``"number"`` (empty cells allowed: NaN)."""
    if column in TEXT_COLUMNS.get(kind, ()):
        return "text"
    if column in BOOLEAN_COLUMNS:
        return "bool"
    if kind == "audit" and column not in _AUDIT_NUMBERS:
        return "flag"
    return "number"


def _truth(value: Any) -> bool | None:
    """True or False for a cell that says so (a bool, true/false in any case, 0 or 1); None
    for anything else."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


def _bad_cell(frame: pd.DataFrame, column: str, bad: pd.Series, path: Path, wanted: str
              ) -> EpslError:
    row = int(bad.to_numpy().nonzero()[0][0])
    where = f"line {row + 2}" if path.suffix == ".csv" else f"row {row + 1}"
    return EpslError(f"{path}: column {column!r} holds {frame[column].iloc[row]!r} on {where} "
                     f"({int(bad.sum())} such cell{'s' if bad.sum() > 1 else ''}), where it "
                     f"holds {wanted} only; recompute the result")


def check_table(frame: pd.DataFrame, kind: str, path: Path) -> pd.DataFrame:
    """``frame`` (the ``kind`` table read from ``path``) with every column of the type
    :func:`column_type` gives it: numbers as numbers, true/false as bools. A cell that is
    neither (``xyz`` among numbers, ``maybe`` among true/false) is a one-line
    :class:`EpslError` naming the file, the column, the line and the value: never a figure
    drawn from it, never a ``maybe`` counted as true."""
    frame = frame.copy(deep=False)  # columns are replaced, never written into
    for column in frame.columns:
        wanted = column_type(kind, str(column))
        values = frame[column]
        if wanted == "text" or pd.api.types.is_bool_dtype(values):
            continue
        empty = values.isna()
        if wanted == "number":
            if pd.api.types.is_numeric_dtype(values):
                continue
            numbers = pd.to_numeric(values, errors="coerce")
            bad = numbers.isna() & ~empty
            if bad.any():
                raise _bad_cell(frame, column, bad, path, "numbers")
            frame[column] = numbers
            continue
        truth = values.map(_truth)
        bad = truth.isna() & (~empty if wanted == "flag" else True)
        if bad.any():
            allowed = "true or false (or 0 and 1)" + (", or nothing," if wanted == "flag" else "")
            raise _bad_cell(frame, column, bad, path, allowed)
        frame[column] = truth.where(~empty) if empty.any() else truth.astype(bool)
    return frame


def _table_path(result: Result) -> Path:
    """The file ``result``'s table was read from (the first format there, as
    :func:`epsl.results.records.load` reads it)."""
    folder = result.folder or Path(".")
    name = stored_kind(folder, result.kind).table
    found = [folder / f"{name}.{fmt}" for fmt in TABLE_FORMATS
             if (folder / f"{name}.{fmt}").is_file()]
    return found[0] if found else folder / f"{name}.csv"


def _folders(root: Path) -> list[Path]:
    """``root`` and its sub-folders down to depth 2, shallowest first (hidden ones skipped)."""
    found, level = [], [root]
    for _ in range(_MAX_DEPTH + 1):
        found += level
        level = [child for folder in level for child in sorted(folder.iterdir())
                 if child.is_dir() and not child.name.startswith(".")]
    return found


def _results(root: Path) -> dict[str, list[Result]]:
    folders = _folders(root)
    results = {name: [load(folder, name) for folder in folders
                      if holds(folder, name)] for name in RUN_KINDS}
    if not any(results.values()):
        stray = [folder / f"{KINDS[name].table}.{fmt}" for folder in folders
                 for name in RUN_KINDS for fmt in TABLE_FORMATS
                 if (folder / f"{KINDS[name].table}.{fmt}").is_file()]
        if stray:
            raise EpslError(f"{stray[0]}: no epsl record ({KINDS[stray[0].stem].record}) beside "
                            "it: written by an older epsl or another tool; recompute it")
        expected = ", ".join(f"{KINDS[name].table}.csv" for name in RUN_KINDS)
        raise EpslError(f"{root}: no recognised tables (expected any of {expected})")
    return results


def load_run(path: Path | str, *, label: str | None = None) -> Run:
    """Read every result under ``path`` through :mod:`epsl.results.records`; raise ``EpslError`` when
    there is none, or when a record's schema is unknown or its table unreadable."""
    root = Path(path)
    if not root.is_dir():
        raise EpslError(f"{root}: no such folder")
    results = _results(root)
    tables: dict[str, pd.DataFrame | None] = {}
    for name, found in results.items():
        frames = [check_table(r.table, name, _table_path(r)) for r in found
                  if r.table is not None]
        if not frames:
            tables[name] = None
        elif name in _CONCATENATED:
            tables[name] = pd.concat(frames, ignore_index=True)
        else:
            tables[name] = frames[0]

    def first(name: str) -> Result | None:
        return results[name][0] if results[name] else None

    # the model's metadata and checkpoint, from the first result that knows them
    origin = next((r.provenance for name in ("diagnostics", "audit", "attack", "activations",
                                             "landscape", "eps_star")
                   for r in results[name] if r.provenance is not None), None)
    meta = dict(origin.model) if origin is not None else {}
    diagnostics, attack, audited = first("diagnostics"), first("attack"), first("audit")
    eps_star, certified = first("eps_star"), first("certify")
    summary = dict(diagnostics.summary) if diagnostics is not None else {}
    if origin is not None:
        summary.setdefault("checkpoint", origin.checkpoint)
    run = Run(name=root.resolve().name, path=root, meta=meta, summary=summary,
              attack_summary=dict(attack.summary) if attack is not None else {},
              audit_summary=dict(audited.summary) if audited is not None else {},
              eps_star_summary=dict(eps_star.summary) if eps_star is not None else {},
              eps_star=tables["eps_star"],
              certify_summary=dict(certified.summary) if certified is not None else {},
              certify=tables["certify"],
              diagnostics=tables["diagnostics"], activations=tables["activations"],
              landscape=tables["landscape"], attack=tables["attack"], audit=tables["audit"],
              norm=_run_norm(results, root))
    return replace(run, label=label or defense_label(meta, fallback=run.name))


def load_runs(paths: Sequence[Path | str]) -> list[Run]:
    """Load several run folders and make their labels unique (see :func:`unique_labels`);
    runs of different norms are refused in one line (:func:`common_norm`)."""
    runs = [load_run(p) for p in paths]
    labels = unique_labels(runs)
    runs = [replace(r, label=lab) for r, lab in zip(runs, labels, strict=True)]
    common_norm(runs)
    return runs


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


__all__ = ["BOOLEAN_COLUMNS", "NORMED_KINDS", "RUN_KINDS", "Run", "TEXT_COLUMNS", "check_table",
           "column_type", "common_norm", "defense_kind", "defense_label", "defense_params",
           "grad_gap_column", "load_run", "load_runs", "logit_columns", "unique_labels"]
