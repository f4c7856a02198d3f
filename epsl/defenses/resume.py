"""The training resume protocol: which files a run leaves beside its checkpoint, and how a run
continues from them (:func:`epsl.defenses.train.train` with ``resume=True``, or an elastic restart).

At every epoch end a run writes, in this order:

1. ``OUT.state.prev.safetensors``: a hard link to the optimiser state of the checkpoint now on
   disk, renamed into place (:func:`keep_previous_state`), so that a run killed between the two
   writes below still finds the state of the checkpoint it resumes;
2. ``OUT.state.safetensors``: the optimiser state of the new epoch, with the epochs and steps
   done and the torchrun launch id in its JSON metadata (``epsl_state``);
3. ``OUT``: the checkpoint (:func:`epsl.models.checkpoint.save`), whose metadata carries
   ``epochs_done``, ``steps_done``, ``complete`` and, under torchrun, ``launch``.

A complete run keeps no previous state. A run resumes when asked (``resume=True``) or when
torchrun's elastic agent restarted its group and ``OUT`` carries the launch id of this very
launch (:func:`restarted`). It continues from the checkpoint with the state of the checkpoint's
epoch (the newest, or the previous one), and under torchrun every process must start from the
same epoch and step (:func:`agree_on_start`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from epsl import distributed
from epsl.errors import EpslError
from epsl.models import checkpoint
from epsl.results.files import atomic_path, on_disk


class _Config(Protocol):
    """A training config that round-trips through a dict (:class:`epsl.defenses.train.TrainConfig`)."""

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any: ...


def state_path(out: Path) -> Path:
    """Where the resumable optimiser state lives: ``runs/ls.safetensors`` ->
    ``runs/ls.state.safetensors``."""
    return out.with_name(out.name.removesuffix(".safetensors") + ".state.safetensors")


def previous_state_path(out: Path) -> Path:
    """The optimiser state of the epoch before (``runs/ls.state.prev.safetensors``): kept until
    the next checkpoint has landed, so a run killed between writing the state and the
    checkpoint still resumes."""
    return out.with_name(out.name.removesuffix(".safetensors") + ".state.prev.safetensors")


def launch_metadata() -> dict[str, str]:
    """``{"launch": id}`` under torchrun (what an elastic restart resumes), else nothing."""
    launch = distributed.launch_id()
    return {} if launch is None else {"launch": launch}


def save_state(path: Path, optimizer: torch.optim.Optimizer, info: dict[str, Any]) -> None:
    """The optimiser's tensors as safetensors, its scalars, param groups and ``info`` as JSON."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    meta = {"param_groups": sd["param_groups"], "scalars": scalars, **info}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"epsl_state": json.dumps(meta)})


def load_state(path: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load a file of :func:`save_state` into ``optimizer``; returns its JSON metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})["epsl_state"])
    tensors = load_file(str(path))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta  # type: ignore[no-any-return]


def state_info(path: Path) -> dict[str, Any]:
    """The JSON of an optimiser state file (empty when it is missing or unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("epsl_state", "{}"))  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - missing, truncated or foreign: no state (SafetensorError)
        return {}


def same_config(saved: Any, config: _Config) -> bool:
    """Whether a checkpoint's train_config is ``config`` (fields added since it was written
    take their defaults)."""
    return config_difference(saved, config) is None


def config_difference(saved: Any, config: _Config) -> tuple[str, Any, Any] | None:
    """The first field in which a checkpoint's train_config ``saved`` differs from ``config``,
    as ``(field, saved value, config's value)`` with nested fields dotted (``defense.adv``);
    None when they are the same (fields added since it was written take their defaults).
    A train_config that is missing or cannot be read differs in ``train_config`` itself."""
    if not isinstance(saved, dict):
        return ("train_config", saved, None)
    kind = type(config)
    try:
        before = kind.from_dict(saved).to_dict()
        wanted = kind.from_dict(json.loads(json.dumps(config.to_dict()))).to_dict()
    except (TypeError, ValueError, EpslError):
        return ("train_config", saved, None)
    return _first_difference(before, wanted)


def _first_difference(before: dict[str, Any], wanted: dict[str, Any],
                      prefix: str = "") -> tuple[str, Any, Any] | None:
    for key in [*before, *(k for k in wanted if k not in before)]:
        old, new = before.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            inner = _first_difference(old, new, f"{prefix}{key}.")
            if inner is not None:
                return inner
        elif old != new:
            return (f"{prefix}{key}", old, new)
    return None


def restarted(out: Path) -> bool:
    """True in a group that torchrun's elastic agent restarted after a failure, when ``out`` is
    this launch's own checkpoint: the group then resumes from its last epoch. A checkpoint of
    another launch (even one with the same ``--rdzv-id``) is never resumed this way."""
    if distributed.restart_count() == 0 or distributed.launch_id() is None or not out.exists():
        return False
    try:
        return checkpoint.read_metadata(out).get("launch") == distributed.launch_id()
    except EpslError:
        return False


@dataclass(frozen=True)
class Start:
    """Where a run starts. A new run: epoch and step 0, no model or optimiser of its own. A
    resumed run: the checkpoint's model and an optimiser with the state of its epoch; a
    complete checkpoint (``finished``: its metadata) has nothing left to train."""

    epoch: int = 0
    step: int = 0
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    finished: dict[str, Any] | None = None


def start_point(out: Path, config: _Config, device: torch.device,
                make_optimizer: Callable[[nn.Module], torch.optim.Optimizer], *,
                resume: bool, overwrite: bool) -> Start:
    """Decide where the run at ``out`` starts: resumed (``resume`` or an elastic restart of
    this launch), replaced (``overwrite``) or new. Raises :class:`EpslError` for a checkpoint
    that is there without ``resume`` or ``overwrite``, one of another config, one without
    the optimiser state of its epoch, and (under torchrun) processes that see different
    checkpoints. ``make_optimizer`` builds the run's optimiser for the checkpoint's model."""
    begin = Start()
    if (resume or restarted(out)) and out.exists():
        begin = _resume_from(out, config, device, make_optimizer)
    elif out.exists() and not overwrite:
        raise EpslError(f"{out} exists; pass resume=True to continue it or overwrite=True to "
                        "replace")
    if begin.finished is None:
        agree_on_start(out, begin.epoch, begin.step)
    return begin


def _resume_from(out: Path, config: _Config, device: torch.device,
                 make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]) -> Start:
    prev = checkpoint.read_metadata(out)
    if not same_config(prev.get("train_config"), config):
        raise EpslError(f"resume=True: {out} was trained with a different config; use the "
                        "same config or a new out=PATH")
    model, _ = checkpoint.load(out, device=device)
    if prev.get("complete"):
        with on_disk() as writer:  # killed after the last checkpoint, before this
            if writer:
                previous_state_path(out).unlink(missing_ok=True)
        return Start(model=model, finished=prev)
    sp = state_path(out)
    # the state of the checkpoint's epoch: the newest, or the one before when the run was
    # killed after writing the state and before the checkpoint landed
    matching = [p for p in (sp, previous_state_path(out))
                if state_info(p).get("epochs_done") == prev.get("epochs_done")]
    if not matching:
        raise EpslError(f"resume=True: no optimiser state of epoch {prev.get('epochs_done')} "
                        f"beside {out} ({sp.name} missing or of another epoch); start again "
                        "with overwrite=True")
    optimizer = make_optimizer(model)
    load_state(matching[0], optimizer)
    return Start(int(prev["epochs_done"]), int(prev["steps_done"]), model, optimizer)


def agree_on_start(out: Path, epoch: int, step: int) -> None:
    """Under torchrun, raise on every process unless all start from rank 0's epoch and step."""
    world = distributed.world()
    if not world.distributed:
        return
    first = distributed.all_sum([epoch * (world.rank == 0), step * (world.rank == 0)])
    differ = distributed.all_sum([float([int(v) for v in first] != [epoch, step])])
    if differ[0]:
        raise EpslError(f"the processes see different checkpoints at {out} (a shared file "
                        "system out of date?); start again with resume=True")


def keep_previous_state(out: Path) -> None:
    """Copy the optimiser state of the checkpoint now on disk to ``previous_state_path``
    (a hard link renamed into place: the state file itself never goes missing). A state of
    another epoch than the checkpoint's (left by a run killed between its two writes) is not
    kept: the previous state already holds the checkpoint's."""
    current, previous = state_path(out), previous_state_path(out)
    if not (current.exists() and out.exists()):
        return
    try:
        if state_info(current).get("epochs_done") !=\
                checkpoint.read_metadata(out).get("epochs_done"):
            return
        link = previous.with_name(f".{previous.name}.{os.getpid()}.tmp")
        link.unlink(missing_ok=True)
        os.link(current, link)
        os.replace(link, previous)
    except (OSError, EpslError) as exc:
        raise EpslError(f"cannot keep the previous optimiser state beside {out}: {exc}"
                        ) from None


def save_epoch(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
               metadata: dict[str, Any]) -> None:
    """Write the files of an epoch end in the protocol's order: keep the state of the
    checkpoint on disk, write the new state, then the checkpoint (``metadata``: with
    ``epochs_done``, ``steps_done`` and ``complete``); a complete run keeps no previous
    state."""
    with on_disk() as writer:  # keep the state of the checkpoint on disk until the next
        if writer:  # checkpoint has landed
            keep_previous_state(out)
    save_state(state_path(out), optimizer, {"epochs_done": metadata["epochs_done"],
                                            "steps_done": metadata["steps_done"],
                                            "launch": distributed.launch_id()})
    checkpoint.save(out, model, metadata)
    with on_disk() as writer:
        if writer and metadata["complete"]:  # nothing left to resume
            previous_state_path(out).unlink(missing_ok=True)


__all__ = ["Start", "agree_on_start", "config_difference", "keep_previous_state",
           "launch_metadata", "load_state", "previous_state_path", "restarted", "same_config",
           "save_epoch", "save_state", "start_point", "state_info", "state_path"]
