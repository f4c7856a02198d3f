"""One training loop for every defense (see :mod:`epsl.defenses`).

Optimisers and schedules follow Madry et al.: SGD with momentum, weight decay and a step
schedule for CIFAR-like data (augmentation on), Adam for MNIST-like data. Length is given in
epochs or in steps (the paper's k). A checkpoint is written at every epoch end together with a
``.state.safetensors`` file (optimiser state) so ``resume=True`` continues a killed run, losing
at most one epoch. Every epoch draws its randomness from ``(seed, epoch)``, so a resumed run
equals an uninterrupted one on the same machine.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from epsl import checkpoint, distributed
from epsl.data import Split, augment_batch, load_split
from epsl.defenses import BatchShard, DefenseConfig, objective
from epsl.device import PRECISIONS, resolve_device
from epsl.errors import EpslError
from epsl.io import atomic_path, check_writable, on_disk
from epsl.models import MODELS, create_model

OPTIMIZERS = ("auto", "adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; written into the checkpoint's metadata."""

    dataset: str = "digits"
    data: str | None = None  # a user's .npz instead of a registered dataset
    data_root: str | None = None
    arch: str = "small-cnn"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = 15
    steps: int | None = None  # the paper's k; overrides epochs when given
    batch_size: int = 64
    train_limit: int | None = None  # train on the first N examples only (CPU budgets)
    optimizer: str = "auto"  # adam for MNIST-like data, sgd for augmented (CIFAR) data
    lr: float | None = None  # adam 1e-3, sgd 0.1
    momentum: float = 0.9
    weight_decay: float | None = None  # sgd 5e-4 (2e-4 for Madry's wrn), adam 0
    lr_milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of training (sgd)
    lr_gamma: float = 0.1
    seed: int = 0
    device: str = "auto"
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    precision: str = "fp32"  # of the training forward passes: fp32, bf16, fp16 (+ grad scaler)
    channels_last: bool | None = None  # None: on CUDA only (convolutions prefer NHWC there)
    compile: bool = False  # torch.compile the model for training
    sync_bn: bool = False  # under torchrun: SyncBatchNorm, batch statistics over all processes

    def __post_init__(self) -> None:
        if self.arch not in MODELS:
            raise EpslError(f"unknown architecture {self.arch!r}; choose from "
                            f"{', '.join(MODELS.names())}")
        if self.steps is None and (self.epochs is None or self.epochs < 1):
            raise EpslError("give --epochs >= 1 or --steps >= 1")
        if self.steps is not None and self.steps < 1:
            raise EpslError(f"--steps must be >= 1 (got {self.steps})")
        if self.train_limit is not None and self.train_limit < 1:
            raise EpslError(f"--train-limit must be >= 1 (got {self.train_limit})")
        if self.batch_size < 1:
            raise EpslError(f"--batch-size must be >= 1 (got {self.batch_size})")
        if self.optimizer not in OPTIMIZERS:
            raise EpslError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.lr is not None and self.lr <= 0:
            raise EpslError(f"--lr must be > 0 (got {self.lr})")
        if self.precision not in PRECISIONS:
            raise EpslError(f"--precision must be one of {', '.join(PRECISIONS)} "
                            f"(got {self.precision!r})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["defense"] = DefenseConfig(**d.get("defense", {}))
        d["lr_milestones"] = tuple(d.get("lr_milestones", (0.5, 0.75)))
        return cls(**d)


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    epochs: int
    step: int
    loss: float
    train_accuracy: float  # on the (noisy) training batches, as seen by the objective
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    path: Path
    metadata: dict[str, Any]
    history: list[EpochReport]


def state_path(out: Path) -> Path:
    """Where the resumable optimiser state lives: ``runs/ls.safetensors`` ->
    ``runs/ls.state.safetensors``."""
    return out.with_name(out.name.removesuffix(".safetensors") + ".state.safetensors")


def _optimizer(config: TrainConfig, model: nn.Module, augment: bool
               ) -> tuple[torch.optim.Optimizer, str]:
    kind = config.optimizer if config.optimizer != "auto" else ("sgd" if augment else "adam")
    if kind == "sgd":
        lr = config.lr if config.lr is not None else 0.1
        wd = config.weight_decay if config.weight_decay is not None else 5e-4
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum,
                               weight_decay=wd), kind
    lr = config.lr if config.lr is not None else 1e-3
    wd = config.weight_decay if config.weight_decay is not None else 0.0
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd), kind


def _lr_at(base: float, step: int, total: int, kind: str, config: TrainConfig) -> float:
    if kind != "sgd":
        return base
    passed = sum(step >= m * total for m in config.lr_milestones)
    return base * config.lr_gamma**passed


def previous_state_path(out: Path) -> Path:
    """The optimiser state of the epoch before (``runs/ls.state.prev.safetensors``): kept until
    the next checkpoint has landed, so a run killed between writing the state and the
    checkpoint still resumes."""
    return out.with_name(out.name.removesuffix(".safetensors") + ".state.prev.safetensors")


def _save_state(path: Path, optimizer: torch.optim.Optimizer, info: dict[str, Any]) -> None:
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


def _load_state(path: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
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


@torch.no_grad()
def accuracy(model: nn.Module, data: Split, device: torch.device, batch_size: int = 512,
             limit: int | None = 10_000) -> float:
    """Clean accuracy in eval mode (on at most ``limit`` examples, to keep epochs cheap)."""
    was_training = model.training
    model.eval()
    part = data.subset(limit)
    correct = 0
    for xb, yb in zip(part.x.split(batch_size), part.y.split(batch_size), strict=True):
        correct += int((model(xb.to(device)).argmax(1) == yb.to(device)).sum())
    model.train(was_training)
    return correct / max(1, len(part))


def train(config: TrainConfig, out: Path | str, *, resume: bool = False,
          overwrite: bool = False, download: bool = False,
          progress: bool = False, on_epoch: Callable[[EpochReport], None] | None = None
          ) -> TrainResult:
    """Train ``config`` and write the checkpoint to ``out`` (at every epoch end).

    With ``resume=True`` an unfinished run at ``out`` continues from its last epoch; a finished
    one is returned as it is. A non-finite loss stops training with :class:`EpslError`, keeping
    the last good checkpoint.
    """
    out = Path(out)
    world = distributed.setup()  # under torchrun: join the group (gloo on CPU, nccl on CUDA)
    if out.suffix != ".safetensors":
        raise EpslError(f"--out {out}: checkpoints are written as .safetensors")
    check_writable(out.parent)
    device = resolve_device(config.device)
    train_split = load_split(config.dataset, "train", data=config.data,
                             data_root=config.data_root, download=download
                             ).subset(config.train_limit)
    test_split = load_split(config.dataset, "test", data=config.data, data_root=config.data_root,
                            download=download)
    info = train_split.info
    if len(train_split) == 0:
        raise EpslError("the training set is empty")
    num_classes = max(info.num_classes, int(train_split.y.max()) + 1)
    # labels beyond the data's declared classes (a user's .npz) widen the head; the config's
    # own arch_kwargs override both
    arch_kwargs = checkpoint.model_kwargs_for(info, **{"num_classes": num_classes,
                                                       **config.arch_kwargs})
    torch.manual_seed(config.seed)
    try:
        model: nn.Module = create_model(config.arch, **arch_kwargs).to(device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise EpslError(f"cannot build {config.arch!r} for {info.name} inputs "
                        f"{info.shape}: {exc}") from None
    optimizer, kind = _optimizer(config, model, info.augment)
    base_lr = optimizer.param_groups[0]["lr"]

    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    total_steps = config.steps if config.steps is not None else steps_per_epoch * (config.epochs or 0)
    epochs = math.ceil(total_steps / steps_per_epoch)

    _check_world(world, len(train_split), config, device)
    start_epoch, step, history = 0, 0, []
    meta_base = {
        "arch": config.arch, "arch_kwargs": arch_kwargs, "dataset": info.name,
        "data_source": train_split.source, "input_shape": list(info.shape),
        "num_classes": num_classes,
        "normalization": {"mean": list(info.mean), "std": list(info.std)},
        "train_config": config.to_dict(), "defense": config.defense.name,
        "optimizer": kind,
    }
    if world.distributed:
        meta_base["processes"] = world.size
    if distributed.launch_id() is not None:
        meta_base["launch"] = distributed.launch_id()  # what an elastic restart resumes
    resume = resume or _restarted(out)
    if resume and out.exists():
        prev = checkpoint.read_metadata(out)
        if not _same_config(prev.get("train_config"), config):
            raise EpslError(f"--resume: {out} was trained with a different config; "
                            "use the same options or a new --out")
        model, _ = checkpoint.load(out, device=device)
        if prev.get("complete"):
            with on_disk() as writer:  # killed after the last checkpoint, before this
                if writer:
                    previous_state_path(out).unlink(missing_ok=True)
            return TrainResult(out, prev, [])
        sp = state_path(out)
        # the state of the checkpoint's epoch: the newest, or the one before when the run was
        # killed after writing the state and before the checkpoint landed
        matching = [p for p in (sp, previous_state_path(out))
                    if _state_info(p).get("epochs_done") == prev.get("epochs_done")]
        if not matching:
            raise EpslError(f"--resume: no optimiser state of epoch {prev.get('epochs_done')} "
                            f"beside {out} ({sp.name} missing or of another epoch); start again "
                            "with --overwrite")
        optimizer, kind = _optimizer(config, model, info.augment)
        _load_state(matching[0], optimizer)
        start_epoch, step = int(prev["epochs_done"]), int(prev["steps_done"])
    elif out.exists() and not overwrite:
        raise EpslError(f"{out} exists; pass --resume to continue it or --overwrite to replace")
    if world.distributed:  # every process must start from the same place
        first = distributed.all_sum([start_epoch * (world.rank == 0), step * (world.rank == 0)])
        differ = distributed.all_sum([float([int(v) for v in first] != [start_epoch, step])])
        if differ[0]:
            raise EpslError(f"the processes see different checkpoints at {out} (a shared file "
                            "system out of date?); start again with --resume")

    fast = _fast_path(model, config, device, world)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    x_train = train_split.x.to(device)
    y_train = train_split.y.to(device)
    if fast.channels_last:
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    last_loss = float("nan")
    for epoch in range(start_epoch, epochs):
        t_epoch = time.perf_counter()
        gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        torch.manual_seed(config.seed * 100_003 + epoch)
        model.train()
        # every process draws the same permutation, noise and starts for the whole global
        # batch and computes its own rows of it (epsl.distributed)
        order = torch.randperm(len(train_split), generator=gen).to(device)
        batches = order.split(config.batch_size)
        n_batches = min(len(batches), total_steps - step)
        seen, correct, loss_sum, rows = 0, 0, 0.0, 0  # seen, correct: this process's rows
        bar = _progress(n_batches, f"epoch {epoch + 1}/{epochs}", progress and world.writer)
        for idx in batches[:n_batches]:
            xb, yb = x_train[idx], y_train[idx]
            if info.augment:
                xb = augment_batch(xb, gen)
            shard = None
            if world.distributed:
                shard = BatchShard(distributed.batch_rows(len(idx), world.size, world.rank),
                                   len(idx), world.size)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(base_lr, step, total_steps, kind, config)
            try:
                result = objective(fast.module, xb, yb, config.defense, num_classes, gen,
                                   precision=config.precision, shard=shard,
                                   attack_model=model if world.distributed else None)
            except Exception as exc:  # torch.compile compiles at the first call
                if not config.compile:
                    raise
                raise EpslError(f"--compile: torch.compile failed "
                                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                                ) from None
            # the loss of the whole batch (the same on every process)
            batch_loss = float(distributed.global_sum(result.loss.detach()).item()) / world.size
            if not math.isfinite(batch_loss):
                raise _diverged(out, epoch, f"step {step + 1}: the loss is {batch_loss}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(result.loss).backward()  # fp16: scaled, steps skipped on inf grads
            scaler.step(optimizer)
            scaler.update()
            step += 1
            seen += len(result.logits)
            correct += int((result.logits.argmax(1) == yb[shard.rows if shard else slice(None)]
                            ).sum())
            loss_sum += batch_loss * len(yb)
            rows += len(yb)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / rows:.4f}", acc=f"{correct / seen:.3f}")
        if bar is not None:
            bar.close()
        seen, correct = (int(v) for v in distributed.all_sum([seen, correct]))
        last_loss = loss_sum / max(1, rows)
        report = EpochReport(epoch + 1, epochs, step, last_loss, correct / max(1, seen),
                             time.perf_counter() - t_epoch)
        history.append(report)
        done = epoch + 1 == epochs
        metadata = {**meta_base, "epochs_done": epoch + 1, "steps_done": step,
                    "complete": done, "metrics": {"train_loss": last_loss}}
        if done:
            metadata["metrics"] = {
                "train_loss": last_loss,
                "train_accuracy": accuracy(model, train_split, device),
                "test_accuracy": accuracy(model, test_split, device, limit=None),
                "train_seconds": time.perf_counter() - t0,
            }
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            # a finite loss can still end in an exploding step: never save such weights
            raise _diverged(out, epoch, "the weights are no longer finite")
        with on_disk() as writer:  # keep the state of the checkpoint on disk until the next
            if writer:  # checkpoint has landed
                _keep_previous_state(out)
        _save_state(state_path(out), optimizer, {"epochs_done": epoch + 1, "steps_done": step,
                                                 "launch": distributed.launch_id()})
        checkpoint.save(out, model, metadata)
        with on_disk() as writer:
            if writer and done:  # nothing left to resume
                previous_state_path(out).unlink(missing_ok=True)
        if on_epoch is not None:
            on_epoch(report)
    final = checkpoint.read_metadata(out)
    return TrainResult(out, final, history)


@dataclass(frozen=True)
class _FastPath:
    module: nn.Module  # what the training forward passes call (compiled or the model)
    channels_last: bool


def _fast_path(model: nn.Module, config: TrainConfig, device: torch.device,
               world: distributed.World | None = None) -> _FastPath:
    """channels_last memory format (default: on CUDA), DistributedDataParallel under torchrun
    (after SyncBatchNorm with ``sync_bn``) and optional torch.compile; the weights stay those
    of ``model``, which is what checkpoints save and what adversarial examples are made on."""
    channels_last = (device.type == "cuda") if config.channels_last is None \
        else config.channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)
    module: nn.Module = model
    if config.sync_bn:  # in place: the checkpoint keeps BatchNorm's names and tensors
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if world is not None and world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        module = DistributedDataParallel(
            model, device_ids=[device.index if device.index is not None
                               else torch.cuda.current_device()]
            if device.type == "cuda" else None)
    if config.compile:
        try:
            module = torch.compile(module)  # type: ignore[assignment]
        except RuntimeError as exc:
            raise EpslError(f"--compile: torch.compile failed ({str(exc).splitlines()[0]})"
                            ) from None
    return _FastPath(module, channels_last)


def _check_world(world: distributed.World, n_train: int, config: TrainConfig,
                 device: torch.device) -> None:
    """Refuse, before any work, what N processes cannot train as one."""
    if config.sync_bn and device.type != "cuda":
        raise EpslError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only "
                        "(on the CPU each process normalises with its own batch statistics)")
    if not world.distributed:
        return
    last = n_train % config.batch_size
    if config.batch_size < world.size or 0 < last < world.size:
        raise EpslError(f"{world.size} processes need at least {world.size} examples in every "
                        f"batch (batch size {config.batch_size}, last batch "
                        f"{last or config.batch_size}); change --batch-size or --train-limit")


def _same_config(saved: Any, config: TrainConfig) -> bool:
    """Whether a checkpoint's train_config is ``config`` (fields added since it was written
    take their defaults)."""
    if not isinstance(saved, dict):
        return False
    try:
        return TrainConfig.from_dict(saved).to_dict() == \
            TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))).to_dict()
    except (TypeError, EpslError):
        return False


def _keep_previous_state(out: Path) -> None:
    """Copy the optimiser state of the checkpoint now on disk to ``previous_state_path``
    (a hard link renamed into place: the state file itself never goes missing). A state of
    another epoch than the checkpoint's (left by a run killed between its two writes) is not
    kept: the previous state already holds the checkpoint's."""
    current, previous = state_path(out), previous_state_path(out)
    if not (current.exists() and out.exists()):
        return
    try:
        if _state_info(current).get("epochs_done") != \
                checkpoint.read_metadata(out).get("epochs_done"):
            return
        link = previous.with_name(f".{previous.name}.{os.getpid()}.tmp")
        link.unlink(missing_ok=True)
        os.link(current, link)
        os.replace(link, previous)
    except (OSError, EpslError) as exc:
        raise EpslError(f"cannot keep the previous optimiser state beside {out}: {exc}"
                        ) from None


def _restarted(out: Path) -> bool:
    """True in a group that torchrun's elastic agent restarted after a failure, when ``out`` is
    this launch's own checkpoint: the group then resumes from its last epoch. A checkpoint of
    another launch (even one with the same ``--rdzv-id``) is never resumed this way."""
    if distributed.restart_count() == 0 or distributed.launch_id() is None or not out.exists():
        return False
    try:
        return checkpoint.read_metadata(out).get("launch") == distributed.launch_id()
    except EpslError:
        return False


def _state_info(path: Path) -> dict[str, Any]:
    """The JSON of an optimiser state file (empty when it is missing or unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("epsl_state", "{}"))  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - missing, truncated or foreign: no state (SafetensorError)
        return {}


def _diverged(out: Path, epoch: int, what: str) -> EpslError:
    kept = (f"the last good checkpoint (epoch {epoch}) is kept at {out}" if out.exists()
            else "no checkpoint was written")
    return EpslError(f"training diverged at epoch {epoch + 1}, {what}; {kept}. "
                     "Try a smaller --logit-squeeze or --lr")


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
