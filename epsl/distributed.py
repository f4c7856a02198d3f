"""Running under ``torchrun``: N processes that give the answer of one.

epsl runs on PyTorch's own engine (``torch.distributed``, DistributedDataParallel, torchrun's
elastic agent), not on anything of its own. Every rank runs the same command on the same data
(SPMD); three things differ from a single process:

- **Training** (:func:`epsl.defenses.train.train`) wraps the model in DistributedDataParallel and gives
  each rank a slice of every global batch (see :func:`batch_rows`).
- **Evaluation** shards the existing chunk loops: chunk ``k`` of a loop (the same chunks a single
  process makes) is computed by rank ``k mod N`` and every rank receives every chunk's result
  (:func:`shard_map`). Randomness is keyed by seed and example (or by chunk, for the libraries
  that reseed per call), so sharding changes nothing, and padding never reaches a result.
- **Files**: only rank 0 touches the disk, and every write is a meeting point of all ranks
  (:func:`epsl.results.files.atomic_path`), so a rank never reads a file that another is still writing.

Without the torchrun environment every function here is the identity of a single process.
"""

from __future__ import annotations

import atexit
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from epsl.errors import EpslError

T = TypeVar("T")

#: Variables torchrun sets for every worker; their presence means "launched by torchrun".
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place in the group: ``rank`` of ``size`` (0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def writer(self) -> bool:
        """Only rank 0 writes files and prints."""
        return self.rank == 0


def launched() -> bool:
    """True in a process started by torchrun (its environment variables are set)."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def backend() -> str:
    """gloo for CPU tensors, plus nccl for CUDA tensors where NCCL is available."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def setup(timeout_minutes: float = 30.0) -> World:
    """Join the torchrun group (once; later calls return the same :class:`World`).

    Outside torchrun this does nothing and returns rank 0 of 1. On CUDA each process uses the
    GPU of its ``LOCAL_RANK``. The CLI calls it first thing; a Python script run under
    torchrun should call it before any other epsl function.
    """
    if dist.is_available() and dist.is_initialized():
        return world()
    if not launched():
        return World()
    if not dist.is_available():
        raise EpslError("torchrun started this process but this PyTorch build has no "
                        "torch.distributed")
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    timeout = timedelta(minutes=timeout_minutes)
    try:
        store, rank, size = next(dist.rendezvous("env://", timeout=timeout))
        # The first attempt of a launch leaves its id in torchrun's store, which outlives the
        # attempts: every rank of every restart reads the same id, and a new launch (a new
        # store) gets a new one. Set whatever the rank: the first to come wins.
        global _LAUNCH
        _LAUNCH = store.compare_set("epsl/launch", "", uuid.uuid4().hex).decode()
        # after an elastic restart the store still holds the dead group's addresses: each
        # attempt meets under its own prefix
        store = dist.PrefixStore(f"epsl/attempt_{restart_count()}", store)
        dist.init_process_group(backend=backend(), store=store, rank=rank, world_size=size,
                                timeout=timeout)
        # A group left for the interpreter's teardown can abort the process: gloo's worker
        # threads still hold tensors ("terminate called without an active exception", seen
        # in CI at exit after a successful run). Destroy it while Python is fully alive.
        atexit.register(_leave)
    except (RuntimeError, ValueError) as exc:
        raise EpslError(f"cannot join the torchrun group ({str(exc).splitlines()[0]})"
                        ) from None
    return world()


def finish() -> None:
    """End a successful run: meet the other ranks, then leave the group (the CLI calls it after
    a command returns; a Python script under torchrun may call it last). A run that fails skips
    the meeting: its process exits at once and torchrun stops the others, rather than waiting
    for them in a barrier they might never reach."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    _leave()


def _leave() -> None:
    """Destroy the group while Python is fully alive (atexit; a no-op once done)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> World:
    """The group this process belongs to (rank 0 of 1 when none was set up)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(),
                 int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def restart_count() -> int:
    """How many times torchrun's elastic agent has restarted this group (0 on the first try)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


_LAUNCH: str | None = None


def launch_id() -> str | None:
    """A random id of this torchrun launch, the same on every rank and every elastic restart
    of it, new for every launch (even with the same ``--rdzv-id``); None outside torchrun."""
    return _LAUNCH


def barrier() -> None:
    if world().distributed:
        dist.barrier()


def all_sum(values: Sequence[float]) -> list[float]:
    """Sum a few numbers over the ranks (float64, on the CPU): epoch statistics."""
    tensor = torch.tensor(list(values), dtype=torch.float64)
    if world().distributed:
        dist.all_reduce(tensor)
    return [float(v) for v in tensor]


def global_sum(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over the ranks (no gradient; a copy): a scalar of the training
    objective such as logit squeezing's ``||Z||_F^2``."""
    total = value.detach().clone()
    if world().distributed:
        dist.all_reduce(total)
    return total


def agree(index: torch.Tensor) -> torch.Tensor:
    """Rank 0's 1-D int64 tensor on every rank (on ``index``'s device): a decision such as the
    examples still to attack, taken once, so that ranks whose floating-point results differ
    in the last bit (different GPUs) still share the same work."""
    if not world().distributed:
        return index
    size = torch.tensor([index.numel()], dtype=torch.int64)
    dist.broadcast(size, src=0)
    values = index.detach().to("cpu", torch.int64).contiguous() if world().rank == 0\
        else torch.empty(int(size), dtype=torch.int64)
    dist.broadcast(values, src=0)
    return values.to(index.device)


def batch_rows(n: int, size: int, rank: int) -> slice:
    """The rows of a global batch of ``n`` that rank ``rank`` of ``size`` trains on: contiguous
    near-equal slices (``torch.tensor_split``'s), so the ranks together hold the batch once."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


# --------------------------------------------------------------------------- sharded loops

_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
           torch.int32, torch.uint8, torch.bool, torch.int8]
_MAX_OUTPUTS, _MAX_DIMS = 16, 8


def _as_tuple(value: Any) -> tuple[torch.Tensor, ...]:
    return value if isinstance(value, tuple) else (value,)


def shard_map(fn: Callable[[T], Any], chunks: Sequence[T], *,
              progress: Callable[[int], None] | None = None,
              sizes: Sequence[int] | None = None) -> list[Any]:
    """``[fn(chunk) for chunk in chunks]``, the chunks shared among the ranks.

    ``fn`` returns a tensor or a tuple of tensors whose first dimension counts rows (the same
    arity, dtypes and trailing shapes for every chunk). Chunk ``k`` is computed by rank
    ``k mod N``; then every rank receives every chunk's tensors (on the CPU, through gloo), in
    the order of ``chunks``, with padding removed. With one process this is the plain loop, and
    the results keep their device.

    ``progress`` (rank 0) is called after each local chunk with the rows of all the chunks
    computed in that round (``sizes``: rows per chunk), so a bar reaches the total.
    """
    w = world()
    if not w.distributed:
        plain = []
        for k, chunk in enumerate(chunks):
            plain.append(fn(chunk))
            if progress is not None and sizes is not None:
                progress(int(sizes[k]))
        return plain
    mine = list(range(w.rank, len(chunks), w.size))
    local: list[tuple[torch.Tensor, ...]] = []
    is_tuple = False
    failure: Exception | None = None
    try:
        for k in mine:
            out = fn(chunks[k])
            is_tuple = isinstance(out, tuple)
            local.append(tuple(t.detach().cpu() for t in _as_tuple(out)))
            if progress is not None and sizes is not None:
                progress(int(sum(sizes[k - w.rank + r] for r in range(w.size)
                                 if k - w.rank + r < len(chunks))))
    except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank alike
        failure = exc
    # every rank learns whether any failed and how many chunks each saw, so that all raise
    # together (a caller catching the error stays in step) and never gather mismatched work
    status = torch.tensor([float(failure is not None), float(len(chunks))], dtype=torch.float64)
    everyone = [torch.empty_like(status) for _ in range(w.size)]
    dist.all_gather(everyone, status)
    if failure is not None:
        raise failure
    if any(bool(s[0]) for s in everyone):
        failed = [r for r, s in enumerate(everyone) if s[0]]
        raise EpslError(f"process {failed[0]} failed on its share of the work (its error is "
                        "above)")
    if len({int(s[1]) for s in everyone}) > 1:
        raise EpslError("the processes disagree on the work to share "
                        f"({', '.join(str(int(s[1])) for s in everyone)} chunks)")
    if not chunks:
        return []
    is_tuple, schema = _schema(local[0] if local else None, is_tuple)
    counts = _gather_counts([int(out[0].shape[0]) for out in local],
                            -(-len(chunks) // w.size), w.size)
    gathered = []
    for j, (dtype, trailing) in enumerate(schema):
        mine_rows = (torch.cat([out[j] for out in local]) if local
                     else torch.empty((0, *trailing), dtype=dtype))
        gathered.append(_gather_rows(mine_rows, [sum(c) for c in counts], w.size))
    results: list[Any] = [None] * len(chunks)
    offsets = [0] * w.size
    for k in range(len(chunks)):
        owner, slot = k % w.size, k // w.size
        n = counts[owner][slot]
        parts = tuple(g[owner][offsets[owner]:offsets[owner] + n] for g in gathered)
        offsets[owner] += n
        results[k] = parts if is_tuple else parts[0]
    return results


def _schema(first: tuple[torch.Tensor, ...] | None, is_tuple: bool
            ) -> tuple[bool, list[tuple[torch.dtype, tuple[int, ...]]]]:
    """Rank 0 (which holds chunk 0) tells every rank the outputs' arity, dtypes and trailing
    shapes, so that a rank without chunks can still take part in the gathers."""
    header = torch.zeros(2 + _MAX_OUTPUTS * (2 + _MAX_DIMS), dtype=torch.int64)
    if first is not None and world().rank == 0:
        supported = len(first) <= _MAX_OUTPUTS and all(
            0 < t.ndim <= _MAX_DIMS + 1 and t.dtype in _DTYPES for t in first)
        header[0], header[1] = (len(first), int(is_tuple)) if supported else (-1, 0)
        for j, t in enumerate(first if supported else ()):
            at = 2 + j * (2 + _MAX_DIMS)
            header[at], header[at + 1] = _DTYPES.index(t.dtype), t.ndim - 1
            header[at + 2:at + 1 + t.ndim] = torch.tensor(t.shape[1:])
    dist.broadcast(header, src=0)
    if int(header[0]) < 0:  # raised on every rank, not on rank 0 alone
        raise EpslError(f"shard_map: at most {_MAX_OUTPUTS} outputs per chunk, each with rows, "
                        f"at most {_MAX_DIMS} more dimensions and a dtype among "
                        f"{', '.join(str(d) for d in _DTYPES)}")
    schema = []
    for j in range(int(header[0])):
        at = 2 + j * (2 + _MAX_DIMS)
        ndim = int(header[at + 1])
        schema.append((_DTYPES[int(header[at])],
                       tuple(int(d) for d in header[at + 2:at + 2 + ndim])))
    return bool(header[1]), schema


def _gather_counts(local: list[int], slots: int, size: int) -> list[list[int]]:
    """Every rank's rows per chunk it computed (``slots`` per rank at most)."""
    mine = torch.full((slots,), -1, dtype=torch.int64)
    mine[:len(local)] = torch.tensor(local, dtype=torch.int64)
    everyone = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(everyone, mine)
    return [[int(c) for c in counts if c >= 0] for counts in everyone]


def _gather_rows(rows: torch.Tensor, totals: list[int], size: int) -> list[torch.Tensor]:
    """All ranks' ``rows`` (rank r holds ``totals[r]`` of them), padded to the longest for the
    collective and cut back after it."""
    wire = rows.to(torch.uint8) if rows.dtype == torch.bool else rows
    longest = max(totals)
    padded = torch.zeros((longest, *wire.shape[1:]), dtype=wire.dtype)
    padded[:len(wire)] = wire
    everyone = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(everyone, padded.contiguous())
    return [t[:n].to(rows.dtype) for t, n in zip(everyone, totals, strict=True)]


__all__ = ["TORCHRUN_ENV", "World", "agree", "all_sum", "backend", "barrier", "batch_rows",
           "finish", "global_sum", "launch_id", "launched", "restart_count", "setup", "shard_map",
           "world"]
