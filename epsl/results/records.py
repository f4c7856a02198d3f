"""The one owner of every result epsl writes to disk: fixed file names, a schema version, a
provenance, ``save`` and ``load``, and one question: *was this made from this checkpoint, these
examples and these settings?* (:func:`reusable`).

A result folder holds the result's table(s) and one JSON record (RobustBench keeps one JSON
record per result, so do we)::

    {"schema": "epsl.attack", "schema_version": 1,
     "provenance": {"checkpoint": ..., "checkpoint_sha256": ..., "model": {...},
                    "data": {"dataset", "split", "source", "n", "sha256"} (+ "transform"
                             for decoded images, "sample", "sample_seed", "indices" for a
                             seeded sample),
                    "settings": {...}, "source": null | {"checkpoint", "checkpoint_sha256"},
                    "device", "epsl_version", "torch_version", "command"},
     ...the result's own numbers (n, accuracies, verdict, ...)}

The record is written last, after every table, so a folder with a record is complete. Reuse is
decided by :meth:`Provenance.difference`: the checkpoint's content hash (not its path), what the
model computes on a probe (``behaviour``), the dataset, split, number and content hash of the
examples, the transfer source's hash, the settings that made the result and epsl's version;
never by ε alone. The device, torch's version and the command line are kept for the reader but
do not decide reuse. The record keeps the SHA-256 of its other files (``files``), checked by
every reader.

This module is torch-free (``epsl.analysis`` reads through it); the torch side builds a
provenance in one place, :func:`epsl.runs.context.provenance`.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from epsl.errors import EpslError
from epsl.results.files import (
    check_out_dir,
    folder_lock,
    on_disk,
    read_json,
    read_table,
    to_json,
    write_json,
    write_table,
)

TABLE_FORMATS = ("csv", "parquet")

#: The command line of the running ``epsl`` command (set by the CLI), stored in provenance.
COMMAND: contextvars.ContextVar[str | None] = contextvars.ContextVar("epsl_command",
                                                                     default=None)


@dataclass(frozen=True)
class Kind:
    """One result type: its JSON record, its table and any other file it owns, and the
    version of its schema (raise it when the layout changes; readers refuse other versions)."""

    name: str
    record: str
    table: str | None
    version: int = 1
    #: files a complete result always has beside its table and record (a reused result
    #: without them is recomputed)
    extra: tuple[str, ...] = ()
    #: files it writes only sometimes (checked for overwrites, not for reuse)
    optional: tuple[str, ...] = ()
    #: the extra file holding the result's exact tensors (:attr:`Result.tensors`)
    tensors: str | None = None
    #: the same kind as an earlier release laid it out (its name and files), still read
    formerly: Kind | None = None

    def files(self, table_format: str = "csv") -> list[str]:
        """The names this result writes in its folder (for overwrite checks)."""
        tables = [f"{self.table}.{table_format}"] if self.table else []
        return [*tables, *self.extra, *self.optional, self.record]

    def complete(self, folder: Path | str) -> bool:
        """Whether ``folder`` holds every file a complete result of this kind has."""
        return all((Path(folder) / name).is_file() for name in (self.record, *self.extra))


KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    # version 2: the table keeps the true, rival and top logits instead of all K
    Kind("diagnostics", "diagnostics.json", "diagnostics", version=2,
         extra=("diagnostics.safetensors",), tensors="diagnostics.safetensors"),
    Kind("attack", "attack.json", "attack"),
    Kind("audit", "audit.json", "audit"),
    Kind("activations", "activations.json", "activations"),
    Kind("landscape", "landscape.json", "landscape"),
    # epsl 0.2.0 called it "minimal" (minimal.json, minimal.csv, minimal.safetensors)
    Kind("eps_star", "eps_star.json", "eps_star", extra=("eps_star.safetensors",),
         tensors="eps_star.safetensors",
         formerly=Kind("minimal", "minimal.json", "minimal", extra=("minimal.safetensors",),
                       tensors="minimal.safetensors")),
    Kind("certify", "certify.json", "certify"),
    Kind("estimate", "estimate.json", "estimate"),
    Kind("comparison", "compare.json", None,
         extra=("comparison.csv", "comparison.md", "report.html"),
         optional=("paired.csv", "estimates.csv", "estimate_pairs.csv")),
)}


def kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise EpslError(f"unknown result kind {name!r}; known: {', '.join(KINDS)}") from None


def _plain(obj: Any) -> Any:
    """``obj`` as JSON would give it back (tuples as lists, paths as strings), so that two
    provenances compare equal exactly when their records on disk do."""
    return json.loads(to_json(obj))


@dataclass(frozen=True)
class Provenance:
    """Where a result came from: the model (path, content hash, metadata), the examples
    (dataset, split, source, count, content hash), the settings that made it, and, for the
    reader, the device, versions and command line."""

    checkpoint: str
    checkpoint_sha256: str
    data: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    #: what the model computes on a fixed probe (:func:`epsl.runs.context.behaviour`): a change of
    #: code, weights or preprocessing that changes the outputs changes it
    behaviour: list[list[float]] | None = None
    model: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] | None = None
    device: str = ""
    epsl_version: str = ""
    torch_version: str = ""
    command: str | None = None

    def key(self) -> dict[str, Any]:
        """What decides reuse: content hashes, the examples, the settings and the epsl release
        that made it; not paths."""
        data = {k: self.data.get(k) for k in ("dataset", "split", "n", "sha256")}
        source = None if self.source is None else self.source.get("checkpoint_sha256")
        key = {"checkpoint_sha256": self.checkpoint_sha256, "data": data,
               "source_sha256": source, "settings": self.settings,
               "epsl_version": self.epsl_version}  # another release may compute otherwise
        if self.model.get("source"):  # a zoo model: its architecture is the library's code
            key["model_source"] = {k: self.model.get(k) for k in ("arch", "library_versions")}
        return _plain(key)

    def same_origin(self, other: Provenance) -> bool:
        """Whether a result made under ``other`` is the result this provenance asks for."""
        return self.difference(other) is None

    def difference(self, other: Provenance) -> str | None:
        """The first thing in which ``other``'s origin differs from this one (``"settings.norm"``,
        ``"the model's outputs"``), or None when a result made under ``other`` is this one's.
        The model's behaviour is compared with a tolerance (relative 1e-4 of its scale) that
        floating-point differences between CPUs or GPUs stay within."""
        mine, theirs = self.key(), other.key()
        for name in [*mine, *(key for key in theirs if key not in mine)]:  # in key order
            if mine.get(name) != theirs.get(name):
                return _first_difference(name, mine.get(name), theirs.get(name))
        if not _behaves_alike(self.behaviour, other.behaviour):
            return "the model's outputs (its code, weights or preprocessing changed)"
        return None

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "record") -> Provenance:
        try:
            return cls(**{k: raw[k] for k in raw if k in cls.__dataclass_fields__})
        except TypeError as exc:
            raise EpslError(f"{where}: provenance is incomplete ({exc})") from None


def _first_difference(name: str, mine: Any, theirs: Any) -> str:
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for key in sorted(mine.keys() | theirs.keys()):
            if mine.get(key) != theirs.get(key):
                return _first_difference(f"{name}.{key}", mine.get(key), theirs.get(key))
    return name


def _behaves_alike(mine: Any, theirs: Any) -> bool:
    """Two behaviour signatures agree (both present, same shape, each value within 1e-4 of
    the signature's scale): last-bit differences pass, a changed model does not."""
    if mine is None and theirs is None:  # neither pins a model (provenances made by hand)
        return True
    if not mine or not theirs or len(mine) != len(theirs)\
            or any(len(a) != len(b) for a, b in zip(mine, theirs, strict=True)):
        return False
    values = [abs(float(v)) for row in mine for v in row]
    tolerance = 1e-4 * max([1.0, *values])
    return all(abs(float(a) - float(b)) <= tolerance
               for row_a, row_b in zip(mine, theirs, strict=True)
               for a, b in zip(row_a, row_b, strict=True))


class Tensors(Protocol):
    """What a result's exact tensors are (:class:`epsl.diagnostics.Diagnostics`,
    :class:`epsl.attacks.eps_star.EpsStarResult`): they write their kind's extra file themselves."""

    def save_tensors(self, folder: Path | str) -> Path: ...


@dataclass(frozen=True)
class Result:
    """One result loaded from (or about to be saved to) a folder: its kind, provenance, the
    record's own numbers (``summary``), its table and, for the kinds that keep them, its exact
    tensors (written to the kind's extra file; not read back by :func:`load`, which stays
    torch-free)."""

    kind: str
    summary: dict[str, Any]
    provenance: Provenance | None = None
    table: pd.DataFrame | None = None
    folder: Path | None = None
    tensors: Tensors | None = None

    @property
    def model(self) -> dict[str, Any]:
        """The checkpoint metadata the result was made from ({} when unknown)."""
        return dict(self.provenance.model) if self.provenance is not None else {}

    def record(self) -> dict[str, Any]:
        spec = kind(self.kind)
        return {"schema": f"epsl.{spec.name}", "schema_version": spec.version,
                "provenance": None if self.provenance is None else self.provenance.to_dict(),
                **_plain(self.summary)}

    def save(self, folder: Path | str, *, table_format: str = "csv",
             overwrite: bool = True) -> list[Path]:
        """Remove the old record, write the tensors and the table, then the record (atomically
        each; the record last, so that its presence means the folder is complete: an
        interrupted rewrite leaves no record, never an old record beside new files; a write that
        fails removes the result's files). The record keeps the SHA-256 of every file it
        describes (:func:`digests`). The folder is held while it is written
        (:func:`epsl.results.files.folder_lock`). Results are replaced only with ``overwrite``. Return the
        paths written."""
        spec = kind(self.kind)
        if table_format not in TABLE_FORMATS:
            raise EpslError(f"tables are written as {' or '.join(TABLE_FORMATS)}")
        try:  # fail before writing anything if it does not serialise
            record = self.record()
        except (TypeError, ValueError) as exc:
            raise EpslError(f"the {spec.name} record does not serialise ({exc})") from None
        folder = check_out_dir(folder, spec.files(table_format), overwrite)
        with folder_lock(folder):
            try:
                return self._write(folder, spec, table_format, record)
            except BaseException:  # never part of a result: no tensors without their table
                clear(folder, self.kind)
                raise

    def _write(self, folder: Path, spec: Kind, table_format: str,
               record: dict[str, Any]) -> list[Path]:
        invalidate(folder, self.kind)
        if self.tensors is None and spec.tensors is not None:
            with on_disk() as writer:  # no other run's tensors may sit beside this record
                if writer:
                    (folder / spec.tensors).unlink(missing_ok=True)
        written = [] if self.tensors is None else [self.tensors.save_tensors(folder)]
        if spec.table is not None and self.table is not None:
            with on_disk() as writer:  # one table per result: drop a stale other format
                for other in TABLE_FORMATS if writer else ():
                    if other != table_format:
                        (folder / f"{spec.table}.{other}").unlink(missing_ok=True)
            written.append(write_table(self.table, folder / f"{spec.table}.{table_format}"))
        record["files"] = digests(folder, spec)
        write_json(folder / spec.record, record)
        return [*written, folder / spec.record]


def digests(folder: Path | str, spec: Kind) -> dict[str, str]:
    """SHA-256 of every file of ``spec`` present in ``folder`` but its record: the record
    keeps them, so that a table or tensors file replaced after it was written (by hand, or by
    another run) is never read as this record's."""
    folder = Path(folder)
    names = [*(f"{spec.table}.{fmt}" for fmt in TABLE_FORMATS if spec.table), *spec.extra,
             *spec.optional]
    return {name: file_sha256(folder / name) for name in names if (folder / name).is_file()}


def clear(folder: Path | str, name: str) -> None:
    """Remove every file of a result of kind ``name`` in ``folder``, its record first: what an
    ``overwrite`` run does before it starts, so that a run cut short never leaves the previous
    result beside the new one."""
    spec = kind(name)
    with on_disk() as writer:
        if writer:
            for file in [spec.record, *(f"{spec.table}.{fmt}" for fmt in TABLE_FORMATS
                                        if spec.table), *spec.extra, *spec.optional]:
                path = Path(folder) / file
                if path.is_file() or path.is_symlink():
                    try:
                        path.unlink()
                    except OSError:  # removed meanwhile, or not ours to remove: no result
                        pass


def invalidate(folder: Path | str, name: str) -> None:
    """Remove the record of kind ``name`` in ``folder`` (if any) before its files are
    rewritten, so that a rewrite cut short leaves a folder nothing will reuse."""
    with on_disk() as writer:
        if writer:
            (Path(folder) / kind(name).record).unlink(missing_ok=True)


def record_path(folder: Path | str, name: str) -> Path:
    return Path(folder) / kind(name).record


def stored_kind(folder: Path | str, name: str) -> Kind:
    """The layout in which ``folder`` holds its result of kind ``name``: this release's, or,
    where only an earlier release's record is there (:attr:`Kind.formerly`), that one."""
    spec = kind(name)
    folder = Path(folder)
    if (spec.formerly is not None and not (folder / spec.record).is_file()
            and (folder / spec.formerly.record).is_file()):
        return spec.formerly
    return spec


def holds(folder: Path | str, name: str) -> bool:
    """Whether ``folder`` has a record of kind ``name``, in this release's layout or an
    earlier one."""
    return (Path(folder) / stored_kind(folder, name).record).is_file()


def load(folder: Path | str, name: str, *, table: bool = True) -> Result:
    """Read the result of kind ``name`` in ``folder`` (in an earlier release's layout too,
    :func:`stored_kind`). A record of another kind or schema version, or one whose table is
    missing, is a one-line :class:`EpslError`."""
    folder = Path(folder)
    spec = stored_kind(folder, name)
    path = folder / spec.record
    raw = read_json(path)
    if not isinstance(raw, dict) or "schema" not in raw:
        raise EpslError(f"{path}: not an epsl {spec.name} record (no schema; written by an "
                        "older epsl or another tool); recompute it")
    if raw.get("schema") != f"epsl.{spec.name}" or raw.get("schema_version") != spec.version:
        raise EpslError(f"{path}: unknown schema {raw.get('schema')!r} version "
                        f"{raw.get('schema_version')!r}; this epsl reads epsl.{spec.name} "
                        f"version {spec.version}")
    check_digests(folder, spec, raw.get("files"), path)
    summary = {k: v for k, v in raw.items()
               if k not in ("schema", "schema_version", "provenance", "files")}
    if spec.name != name:  # an earlier release's layout: its settings under today's name
        summary = renamed(summary, spec.name, name)
    prov = raw.get("provenance")
    provenance = Provenance.from_dict(prov, str(path)) if isinstance(prov, dict) else None
    frame = None
    if table and spec.table is not None:
        tables = [folder / f"{spec.table}.{fmt}" for fmt in TABLE_FORMATS
                  if (folder / f"{spec.table}.{fmt}").is_file()]
        if not tables:
            raise EpslError(f"{path}: its table {spec.table}.csv is missing")
        frame = read_table(tables[0])
    return Result(kind(name).name, summary, provenance, frame, folder)


def renamed(summary: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """``summary`` with its key ``old`` (and its config's) named ``new``, as this release
    names the settings of a kind that an earlier one called ``old``."""
    out = {new if k == old else k: v for k, v in summary.items()}
    if isinstance(out.get("config"), dict):
        out["config"] = {new if k == old else k: v for k, v in out["config"].items()}
    return out


def check_digests(folder: Path, spec: Kind, files: Any, path: Path) -> None:
    """Raise :class:`EpslError` unless every file that the record at ``path`` lists is in
    ``folder`` with the content it was written with (a record with no list is an older
    epsl's: it is read, and never reused)."""
    if files is None:
        return
    if not isinstance(files, dict):
        raise EpslError(f"{path}: its list of files is malformed; recompute the result")
    for name, digest in files.items():
        file = folder / str(name)
        if not file.is_file():
            raise EpslError(f"{path}: its {name} is missing; recompute the result")
        if file_sha256(file) != digest:
            raise EpslError(f"{path}: {name} is not the file this record was written with "
                            "(changed or replaced since); recompute the result")


def reusable(folder: Path | str, name: str, provenance: Provenance) -> Result | None:
    """The result of kind ``name`` in ``folder`` if it was made from the same checkpoint
    content, examples, source and settings as ``provenance`` and every file of its kind is
    there (:meth:`Kind.complete`); else ``None`` (no record, an unreadable one, an unknown
    schema, a missing file, or another origin)."""
    spec = kind(name)
    if not spec.complete(folder):
        return None
    try:
        files = read_json(record_path(folder, name)).get("files")
        pinned = [*(f"{spec.table}.{fmt}" for fmt in TABLE_FORMATS
                    if spec.table and (Path(folder) / f"{spec.table}.{fmt}").is_file()),
                  *spec.extra]
        if not isinstance(files, dict) or any(file not in files for file in pinned):
            return None  # an older epsl's record, whose files no digest pins
        found = load(folder, name)
        if found.provenance is None or not found.provenance.same_origin(provenance):
            return None
    except (EpslError, AttributeError, TypeError, ValueError):  # a record not as epsl writes it
        return None
    return found


def article(word: str) -> str:
    """'a' or 'an' before ``word`` (by its first letter)."""
    return "an" if word[:1].lower() in "aeio" else "a"


def check_replaceable(folder: Path | str, name: str, provenance: Provenance,
                      overwrite: bool) -> None:
    """Before a result of kind ``name`` made under ``provenance`` is written into ``folder``:
    a finished result of another origin already there is replaced only with ``overwrite``
    (else a one-line :class:`EpslError` that says in what it differs). A result without a
    record (a run cut short) is not one."""
    path = record_path(folder, name)
    if overwrite or not path.is_file():
        return
    try:
        found = load(folder, name, table=False).provenance
        why = ("it has no provenance" if found is None
               else f"it differs in {provenance.difference(found) or 'its files'}")
    except EpslError as exc:
        why = str(exc)
    raise EpslError(f"{folder} already holds {article(name)} {name} result of another origin "
                    f"({why}); pass "
                    "overwrite=True to replace it, or choose another out folder")


_HASHES: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file's bytes (remembered per path, size and modification time)."""
    path = Path(path)
    stat = path.stat()
    cache_key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if cache_key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[cache_key] = digest.hexdigest()
    return _HASHES[cache_key]


__all__ = ["COMMAND", "KINDS", "Kind", "Provenance", "Result", "Tensors", "article",
           "check_digests", "check_replaceable", "clear", "digests", "file_sha256", "holds", "kind",
           "load", "record_path", "reusable", "stored_kind"]
