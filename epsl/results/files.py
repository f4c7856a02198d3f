"""Atomic result I/O: every file is written to a temporary sibling and renamed into place, so a
killed run never leaves a half-written or clobbered result."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from epsl.errors import EpslError, os_reason

_UMASK = os.umask(0)
os.umask(_UMASK)


def _os_error(action: str, path: Path | str, exc: OSError) -> EpslError:
    return EpslError(f"cannot {action} {path}: {os_reason(exc, path)}")


def check_writable(folder: Path | str) -> None:
    """Raise :class:`EpslError` unless files can be created in ``folder`` (or, when it does not
    exist yet, in its nearest existing parent). Probes by creating and removing a temporary
    folder, so nothing is left behind and ``folder`` itself is not created."""
    folder = Path(folder)
    probe_in = folder
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise EpslError(f"cannot write into {folder}: {probe_in} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".epsl-probe.", dir=probe_in))
    except OSError as exc:
        raise _os_error("write into", folder, exc) from None


def _group() -> Any:
    """torch.distributed when a process group is up (under torchrun), else None. Looked up in
    ``sys.modules`` so that this module, which the torch-free analysis uses, never imports
    torch."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized()\
            and dist.get_world_size() > 1:
        return dist
    return None


@contextmanager
def on_disk() -> Iterator[bool]:
    """A disk change that only rank 0 makes under torchrun: yields whether this process makes
    it. All ranks meet before it (every rank has finished reading and checking) and after it
    (every rank sees the change, and a failure on rank 0 is raised on every rank). Without a
    process group it yields True and meets no one."""
    dist = _group()
    if dist is None:
        yield True
        return
    dist.barrier()
    try:
        yield dist.get_rank() == 0
    except BaseException:
        _anyone_failed(dist, failed=True)
        raise
    if _anyone_failed(dist, failed=False):  # rank 0's write failed: all stop together
        raise EpslError("process 0 could not write its file (its error is above)")


def _anyone_failed(dist: Any, *, failed: bool) -> bool:
    """The meeting after a disk change: whether any rank failed (a sum over the ranks)."""
    import torch  # only reached under torchrun, where torch is loaded already

    flag = torch.tensor([float(failed)])
    dist.all_reduce(flag)
    return bool(flag.item())


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Under torchrun only rank 0's file lands: the other ranks get ``os.devnull``, so nothing of
    theirs reaches a disk, and all meet before and after (see :func:`on_disk`)."""
    with on_disk() as writer:
        if writer:
            with _atomic_path(Path(path)) as tmp:
                yield tmp
        else:
            yield Path(os.devnull)


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        check_writable(path.parent)  # names a parent that is a file rather than 'File exists'
        raise _os_error("write", path, exc) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _os_error("write", path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: the temporary files of :func:`atomic_path` (mkstemp's ``.NAME.XXXXXXXX.tmp``)
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
#: folders held by this process (:func:`folder_lock` is re-entrant within a process)
_HELD: dict[str, int] = {}


def _lock_file(folder: Path) -> Path:
    """Where the lock of ``folder`` lives: outside it, so that taking the lock writes nothing
    into a user's folder (and a refused command leaves it as it was)."""
    where = Path(tempfile.gettempdir()) / f"epsl-locks-{os.getuid()}"
    where.mkdir(mode=0o700, exist_ok=True)
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:32]
    return where / f"{digest}.lock"


@contextmanager
def folder_lock(folder: Path | str) -> Iterator[None]:
    """Hold ``folder`` for this process while results are written into it: a second epsl
    process asking for it gets a one-line :class:`EpslError` at once (never two runs mixing
    their files in one folder). Once held, stale temporary files of an earlier run that was
    killed are removed (:func:`sweep_temporaries`). Re-entrant within a process; under
    torchrun only rank 0, the one that writes, holds it. Where no lock can be made (a
    read-only temporary folder), the folder is not locked."""
    import fcntl

    folder = Path(os.path.realpath(folder))  # one lock whatever link or relative path names it
    key = str(folder)
    dist = _group()
    if key in _HELD or (dist is not None and dist.get_rank() != 0):
        _HELD[key] = _HELD.get(key, 0) + 1
        try:
            yield
        finally:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
        return
    try:
        handle = _lock_file(folder).open("a+")
    except OSError:
        handle = None
    try:
        if handle is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise EpslError(f"another epsl run (process {holder}) is writing into {folder}; "
                                "wait for it to finish or choose another folder") from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        _HELD[key] = 1
        if folder.is_dir():
            sweep_temporaries(folder)
        else:  # a file (a checkpoint): its own temporaries beside it
            sweep_temporaries(folder.parent, depth=0, name=folder.name)
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def sweep_temporaries(folder: Path | str, depth: int = 3, name: str | None = None) -> list[Path]:
    """Remove the temporary files that a killed run left in ``folder`` and its subfolders down
    to ``depth`` levels (only :func:`atomic_path`'s own ``.NAME.XXXXXXXX.tmp``, of the file
    ``name`` alone when given); call it only while holding the folder (:func:`folder_lock`).
    Return what was removed."""
    removed: list[Path] = []
    folder = Path(folder)
    if depth < 0 or not folder.is_dir():
        return removed
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if entry.is_file(follow_symlinks=False) and _TEMPORARY.match(entry.name)\
                and (name is None or entry.name.startswith(f".{name}.")):
            written = folder / entry.name[1:].rsplit(".", 2)[0]  # the file it was to become
            if not held_elsewhere(written):
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
        elif entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")\
                and not held_elsewhere(Path(entry.path)):
            removed += sweep_temporaries(entry.path, depth - 1, name)
    return removed


def held_elsewhere(path: Path | str) -> bool:
    """Whether another process holds ``path`` (:func:`folder_lock`): a run writing into a
    subfolder, or a checkpoint, whose temporaries are not stale."""
    import fcntl

    key = os.path.realpath(path)
    if key in _HELD:
        return False
    try:
        lock = _lock_file(Path(key))
        if not lock.exists():
            return False
        with lock.open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        return False
    return False


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=_default, allow_nan=True) + "\n"


def write_json(path: Path | str, obj: Any) -> None:
    write_text(path, to_json(obj))


def read_json(path: Path | str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EpslError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise EpslError(f"{path}: not valid JSON ({exc})") from None


def write_table(df: pd.DataFrame, path: Path | str) -> Path:
    """Write a per-example table as CSV or Parquet (by suffix), atomically."""
    path = Path(path)
    writers: dict[str, Callable[[Path], None]] = {
        ".csv": lambda p: df.to_csv(p, index=False),
        ".parquet": lambda p: df.to_parquet(p, index=False),
    }
    if path.suffix not in writers:
        raise EpslError(f"{path}: tables are written as .csv or .parquet")
    with atomic_path(path) as tmp:
        writers[path.suffix](tmp)
    return path


def read_table(path: Path | str) -> pd.DataFrame:
    """Read a table written by :func:`write_table`. An empty, truncated or otherwise unreadable
    file is an :class:`EpslError` naming it, never a quietly padded table."""
    path = Path(path)
    if not path.is_file():
        raise EpslError(f"{path}: no such table")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        _check_csv_rows(path)
        return pd.read_csv(path)
    except EpslError:
        raise
    except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many kinds of parse errors
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise EpslError(f"{path}: not a readable table ({detail})") from None


def _check_csv_rows(path: Path) -> None:
    """Every row must have as many fields as the header: pandas pads a row cut short (a file
    truncated mid-write) with NaN instead of failing."""
    with path.open(newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if not header:
            raise EpslError(f"{path}: not a readable table (the file is empty)")
        for row in rows:
            if row and len(row) != len(header):
                raise EpslError(f"{path}: not a readable table (line {rows.line_num} has "
                                f"{len(row)} fields, the header {len(header)}; is it truncated?)")


def check_out_dir(out: Path | str, products: list[str], overwrite: bool,
                  create: bool = True) -> Path:
    """Refuse to overwrite results already in ``out`` unless ``overwrite`` is set, and fail
    early when ``out`` cannot be written. ``create=False`` only checks (for a check before a
    long computation that must leave nothing behind when it fails)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EpslError(f"{out} exists and is not a folder")
    existing = [p for p in products if (out / p).exists()]
    if existing and not overwrite:
        raise EpslError(f"{out} already holds {', '.join(existing)}; pass overwrite=True to replace")
    if not create:
        check_writable(out)
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error("create folder", out, exc) from None
    return out


#: the longest name :func:`safe_name` lets become a file or folder name (file systems allow 255
#: bytes, and a suffix such as ``.safetensors`` is added to it)
NAME_BYTES = 200


def safe_name(name: str, what: str) -> str:
    """``name`` (a model's, from a preset or a user) as the name of one file or folder inside
    an output folder: every such name goes through here. Raises a one-line
    :class:`EpslError` naming it unless it stays in its folder: no ``/`` or ``\\``, no ``..``,
    no absolute path or drive, not empty, no NUL, not starting with ``.`` (hidden, or ``..``),
    at most :data:`NAME_BYTES` bytes. ``what`` says what the name is (``model name``)."""
    if not isinstance(name, str):
        raise EpslError(f"{what} must be a string (got {name!r})")
    posix = name.replace("\\", "/")
    reasons = [
        (not name, "is empty"),
        ("\0" in name, "holds a NUL character"),
        (posix.startswith("/") or (name[:1].isascii() and name[:1].isalpha()
                                     and name[1:2] == ":"), "is an absolute path"),
        (".." in posix.split("/"), "leads out of its folder (..)"),
        ("/" in posix, "holds a path separator (/ or \\)"),
        (name.startswith("."), "starts with '.' (a hidden file)"),
        (len(name.encode("utf-8", "surrogateescape")) > NAME_BYTES,
         f"is longer than {NAME_BYTES} bytes"),
    ]
    reason = next((why for bad, why in reasons if bad), None)
    if reason is not None:
        raise EpslError(f"{what} {name!r} {reason}: it becomes a file name inside the output "
                        "folder; use letters, digits and - + _ . (not first)")
    return name


__all__ = ["NAME_BYTES", "atomic_path", "check_out_dir", "check_writable", "folder_lock",
           "held_elsewhere", "on_disk", "read_json", "read_table", "safe_name",
           "sweep_temporaries", "to_json", "write_json", "write_table", "write_text"]
