"""One training loop for every defense (see :mod:`epsl.defenses`).

Optimisers and schedules follow Madry et al.: SGD with momentum, weight decay and a step
schedule for CIFAR-like data (augmentation on), Adam for MNIST-like data. Length is given in
epochs or in steps (the paper's k). A checkpoint is written at every epoch end together with a
``.state.safetensors`` file (optimiser state) so ``resume=True`` continues a killed run, losing
at most one epoch (the files and how a run continues from them: :mod:`epsl.defenses.resume`). Every
epoch draws its randomness from ``(seed, epoch)``, so a resumed run equals an uninterrupted one
on the same machine. Under torchrun each process computes its rows of every global batch,
weighted so that DistributedDataParallel's average gradient is the single-process one
(:class:`BatchShard`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from epsl import distributed
from epsl.data import Split, augment_batch, load_split
from epsl.defenses import DefenseConfig, StepOutput, batch_loss, objective, soft_cross_entropy
from epsl.defenses.resume import launch_metadata, previous_state_path, save_epoch, start_point, state_path
from epsl.device import PRECISIONS, resolve_device
from epsl.errors import EpslError, check_progress, check_seed
from epsl.models import MODELS, checkpoint, create_model
from epsl.results.files import check_writable

__all__ = ["OPTIMIZERS", "BatchShard", "EpochReport", "Progress", "TrainConfig", "TrainResult",
           "accuracy", "check_world", "previous_state_path", "state_path", "train"]

OPTIMIZERS = ("auto", "adam", "sgd")

Progress = Callable[[int], None]
"""Called on rank 0 after every optimiser step with the number of examples it trained on."""


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
        if self.epochs is not None and self.epochs < 1:
            raise EpslError(f"epochs must be at least 1 (got {self.epochs})")
        if self.steps is None and self.epochs is None:
            raise EpslError("give epochs >= 1 or steps >= 1")
        if self.steps is not None and self.steps < 1:
            raise EpslError(f"steps must be >= 1 (got {self.steps})")
        if self.train_limit is not None and self.train_limit < 1:
            raise EpslError(f"train_limit must be >= 1 (got {self.train_limit})")
        if self.batch_size < 1:
            raise EpslError(f"batch_size must be >= 1 (got {self.batch_size})")
        check_seed(self.seed)
        if self.optimizer not in OPTIMIZERS:
            raise EpslError(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.lr is not None and self.lr <= 0:
            raise EpslError(f"lr must be > 0 (got {self.lr})")
        if self.precision not in PRECISIONS:
            raise EpslError(f"precision must be one of {', '.join(PRECISIONS)} "
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


@dataclass(frozen=True)
class BatchShard:
    """This process's part of a global batch under torchrun (:mod:`epsl.distributed`).

    ``rows`` of the ``total`` examples of the batch are computed here, by one of ``world``
    processes whose gradients DistributedDataParallel averages."""

    rows: slice
    total: int
    world: int

    @classmethod
    def of(cls, total: int, world: distributed.World) -> BatchShard:
        """This process's rows of a global batch of ``total`` (:func:`distributed.batch_rows`)."""
        return cls(distributed.batch_rows(total, world.size, world.rank), total, world.size)

    def loss_term(self, logits: torch.Tensor, targets: torch.Tensor, beta: float
                  ) -> torch.Tensor:
        """This process's share of :func:`epsl.defenses.batch_loss` (an
        :data:`epsl.defenses.LossTerm` for :func:`epsl.defenses.objective`), weighted so that
        DistributedDataParallel's average of the gradients is the gradient of the
        single-process loss of the whole batch, and the processes' mean loss is its value.

        ``world/N`` times the local sum of cross-entropies, and for ``beta ||Z||_F``, a norm
        over the whole batch that does not split, a term whose gradient is
        ``world * beta/N * Z_local / ||Z||_F``, which needs only ``||Z||_F^2`` summed over the
        processes (one number, not the logits)."""
        scale = self.world / self.total
        loss = soft_cross_entropy(logits, targets) * (len(logits) * scale)
        if beta:
            squares = logits.square().sum()
            norm = distributed.global_sum(squares.detach()).sqrt().clamp_min(1e-12)
            loss = loss + beta * scale * (squares + squares.detach()) / (2 * norm)
        return loss


@dataclass(frozen=True)
class _Data:
    train: Split
    test: Split
    num_classes: int
    arch_kwargs: dict[str, Any]  # of the model, widened to num_classes


def _load_data(config: TrainConfig, download: bool) -> _Data:
    train_split = load_split(config.dataset, "train", data=config.data,
                             data_root=config.data_root, download=download
                             ).subset(config.train_limit)
    test_split = load_split(config.dataset, "test", data=config.data, data_root=config.data_root,
                            download=download)
    if len(train_split) == 0:
        raise EpslError("the training set is empty")
    num_classes = max(train_split.info.num_classes, int(train_split.y.max()) + 1)
    # labels beyond the data's declared classes (a user's .npz) widen the head; the config's
    # own arch_kwargs override both
    arch_kwargs = checkpoint.model_kwargs_for(train_split.info, **{"num_classes": num_classes,
                                                                   **config.arch_kwargs})
    return _Data(train_split, test_split, num_classes, arch_kwargs)


def _build_model(config: TrainConfig, data: _Data, device: torch.device) -> nn.Module:
    """The initial weights, drawn from ``seed``."""
    info = data.train.info
    torch.manual_seed(config.seed)
    try:
        return create_model(config.arch, **data.arch_kwargs).to(device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise EpslError(f"cannot build {config.arch!r} for {info.name} inputs "
                        f"{info.shape}: {exc}") from None


def _length(config: TrainConfig, n_train: int) -> tuple[int, int]:
    """Total steps and epochs (the last one possibly cut short by ``steps``)."""
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    total_steps = config.steps if config.steps is not None else steps_per_epoch * (config.epochs or 0)
    return total_steps, math.ceil(total_steps / steps_per_epoch)


def _base_metadata(config: TrainConfig, data: _Data, kind: str, world: distributed.World
                   ) -> dict[str, Any]:
    """What every checkpoint of the run records beside its progress and metrics."""
    info = data.train.info
    meta: dict[str, Any] = {
        "arch": config.arch, "arch_kwargs": data.arch_kwargs, "dataset": info.name,
        "data_source": data.train.source, "input_shape": list(info.shape),
        "num_classes": data.num_classes,
        "normalization": {"mean": list(info.mean), "std": list(info.std)},
        "train_config": config.to_dict(), "defense": config.defense.name,
        "optimizer": kind,
    }
    if world.distributed:
        meta["processes"] = world.size
    return {**meta, **launch_metadata()}


def train(config: TrainConfig, out: Path | str, *, resume: bool = False,
          overwrite: bool = False, download: bool = False,
          progress: Progress | None = None,
          on_epoch: Callable[[EpochReport], None] | None = None) -> TrainResult:
    """Train ``config`` and write the checkpoint to ``out`` (at every epoch end).

    With ``resume=True`` an unfinished run at ``out`` continues from its last epoch; a finished
    one is returned as it is (:mod:`epsl.defenses.resume`). A non-finite loss stops training with
    :class:`EpslError`, keeping the last good checkpoint. ``progress`` is called on rank 0
    after every optimiser step with the number of examples it trained on (as everywhere in
    epsl: ``tqdm.update`` fits); ``on_epoch`` gets every epoch's report.
    """
    check_progress(progress)
    out = Path(out)
    world = distributed.setup()  # under torchrun: join the group (gloo on CPU, nccl on CUDA)
    if out.suffix != ".safetensors":
        raise EpslError(f"out={out}: checkpoints are written as .safetensors")
    check_writable(out.parent)
    device = resolve_device(config.device)
    data = _load_data(config, download)
    model = _build_model(config, data, device)
    optimizer, kind = _optimizer(config, model, data.train.info.augment)
    base_lr = optimizer.param_groups[0]["lr"]
    total_steps, epochs = _length(config, len(data.train))
    check_world(world, len(data.train), config, device)
    meta_base = _base_metadata(config, data, kind, world)
    begin = start_point(out, config, device,
                        lambda m: _optimizer(config, m, data.train.info.augment)[0],
                        resume=resume, overwrite=overwrite)
    if begin.finished is not None:
        return TrainResult(out, begin.finished, [])
    if begin.model is not None and begin.optimizer is not None:
        model, optimizer = begin.model, begin.optimizer
    run = _prepare(config, out, world, data, model, optimizer, device,
                   kind=kind, base_lr=base_lr, total_steps=total_steps, epochs=epochs,
                   meta_base=meta_base)
    history: list[EpochReport] = []
    step = begin.step
    for epoch in range(begin.epoch, epochs):
        t_epoch = time.perf_counter()
        step, loss, train_accuracy = _train_epoch(run, epoch, step, progress)
        report = EpochReport(epoch + 1, epochs, step, loss, train_accuracy,
                             time.perf_counter() - t_epoch)
        history.append(report)
        _end_epoch(run, epoch, step, loss)
        if on_epoch is not None:
            on_epoch(report)
    return TrainResult(out, checkpoint.read_metadata(out), history)


@dataclass(frozen=True)
class _Run:
    """What the epochs of one training run share."""

    config: TrainConfig
    out: Path
    world: distributed.World
    data: _Data
    device: torch.device
    model: nn.Module  # what checkpoints save and adversarial examples are made on
    module: nn.Module  # what the training forward passes call (DDP, compiled, or the model)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    x: torch.Tensor  # the training inputs and labels, on the device
    y: torch.Tensor
    kind: str  # of the optimiser
    base_lr: float
    total_steps: int
    epochs: int
    meta_base: dict[str, Any]
    started: float  # time.perf_counter() before the first epoch


def _prepare(config: TrainConfig, out: Path, world: distributed.World, data: _Data,
             model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, *,
             kind: str, base_lr: float, total_steps: int, epochs: int,
             meta_base: dict[str, Any]) -> _Run:
    """The fast path, the gradient scaler and the training data on the device."""
    fast = _fast_path(model, config, device, world)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    x_train = data.train.x.to(device)
    y_train = data.train.y.to(device)
    if fast.channels_last:
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    return _Run(config, out, world, data, device, model, fast.module, optimizer, scaler,
                x_train, y_train, kind, base_lr, total_steps, epochs, meta_base,
                time.perf_counter())


def _train_epoch(run: _Run, epoch: int, step: int, progress: Progress | None
                 ) -> tuple[int, float, float]:
    """One epoch from ``step``: the step after it, the mean loss and the training accuracy."""
    config, world = run.config, run.world
    epoch_seed = (config.seed * 100_003 + epoch) % 2**64  # torch's seeds are 64-bit
    gen = torch.Generator().manual_seed(epoch_seed)
    torch.manual_seed(epoch_seed)
    run.model.train()
    # every process draws the same permutation, noise and starts for the whole global
    # batch and computes its own rows of it (epsl.distributed)
    order = torch.randperm(len(run.data.train), generator=gen).to(run.device)
    batches = order.split(config.batch_size)
    n_batches = min(len(batches), run.total_steps - step)
    seen, correct, loss_sum, rows = 0, 0, 0.0, 0  # seen, correct: this process's rows
    for idx in batches[:n_batches]:
        xb, yb = run.x[idx], run.y[idx]
        if run.data.train.info.augment:
            xb = augment_batch(xb, gen)
        shard = BatchShard.of(len(idx), world) if world.distributed else None
        result, batch_loss_value = _optimiser_step(run, xb, yb, gen, shard, epoch, step)
        step += 1
        seen += len(result.logits)
        correct += int((result.logits.argmax(1) == yb[shard.rows if shard else slice(None)]
                        ).sum())
        loss_sum += batch_loss_value * len(yb)
        rows += len(yb)
        if progress is not None and world.writer:
            progress(len(idx))
    seen, correct = (int(v) for v in distributed.all_sum([seen, correct]))
    return step, loss_sum / max(1, rows), correct / max(1, seen)


def _optimiser_step(run: _Run, xb: torch.Tensor, yb: torch.Tensor, gen: torch.Generator,
                    shard: BatchShard | None, epoch: int, step: int) -> tuple[StepOutput, float]:
    """Step ``step`` on the global batch ``xb, yb`` (this process's ``shard`` of it under
    torchrun); returns the objective and the loss of the whole batch."""
    config = run.config
    for group in run.optimizer.param_groups:
        group["lr"] = _lr_at(run.base_lr, step, run.total_steps, run.kind, config)
    try:
        result = objective(run.module, xb, yb, config.defense, run.data.num_classes, gen,
                           precision=config.precision,
                           rows=shard.rows if shard is not None else slice(None),
                           loss_term=shard.loss_term if shard is not None else batch_loss,
                           attack_model=run.model if run.world.distributed else None)
    except Exception as exc:  # torch.compile compiles at the first call
        if not config.compile:
            raise
        raise EpslError(f"compile=True: torch.compile failed "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                        ) from None
    # the loss of the whole batch (the same on every process)
    batch_loss_value = float(distributed.global_sum(result.loss.detach()).item()) / run.world.size
    if not math.isfinite(batch_loss_value):
        raise _diverged(run.out, epoch, f"step {step + 1}: the loss is {batch_loss_value}")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(result.loss).backward()  # fp16: scaled, steps skipped on inf grads
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return result, batch_loss_value


def _end_epoch(run: _Run, epoch: int, step: int, loss: float) -> None:
    """Write the epoch's checkpoint and optimiser state (the last one with its metrics); never
    weights that are no longer finite."""
    done = epoch + 1 == run.epochs
    metadata = {**run.meta_base, "epochs_done": epoch + 1, "steps_done": step,
                "complete": done, "metrics": {"train_loss": loss}}
    if done:
        metadata["metrics"] = {
            "train_loss": loss,
            "train_accuracy": accuracy(run.model, run.data.train, run.device),
            "test_accuracy": accuracy(run.model, run.data.test, run.device, limit=None),
            "train_seconds": time.perf_counter() - run.started,
        }
    if not all(bool(torch.isfinite(p).all()) for p in run.model.parameters()):
        # a finite loss can still end in an exploding step: never save such weights
        raise _diverged(run.out, epoch, "the weights are no longer finite")
    save_epoch(run.out, run.model, run.optimizer, metadata)


@dataclass(frozen=True)
class _FastPath:
    module: nn.Module  # what the training forward passes call (compiled or the model)
    channels_last: bool


def _fast_path(model: nn.Module, config: TrainConfig, device: torch.device,
               world: distributed.World | None = None) -> _FastPath:
    """channels_last memory format (default: on CUDA), DistributedDataParallel under torchrun
    (after SyncBatchNorm with ``sync_bn``) and optional torch.compile; the weights stay those
    of ``model``, which is what checkpoints save and what adversarial examples are made on."""
    channels_last = (device.type == "cuda") if config.channels_last is None\
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
            raise EpslError(f"compile=True: torch.compile failed ({str(exc).splitlines()[0]})"
                            ) from None
    return _FastPath(module, channels_last)


def check_world(world: distributed.World, n_train: int, config: TrainConfig,
                device: torch.device) -> None:
    """Refuse, before any work, what N processes cannot train as one."""
    if config.sync_bn and device.type != "cuda":
        raise EpslError("sync_bn=True needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only "
                        "(on the CPU each process normalises with its own batch statistics)")
    if not world.distributed:
        return
    last = n_train % config.batch_size
    if config.batch_size < world.size or 0 < last < world.size:
        raise EpslError(f"{world.size} processes need at least {world.size} examples in every "
                        f"batch (batch size {config.batch_size}, last batch "
                        f"{last or config.batch_size}); change batch_size or train_limit")


def _diverged(out: Path, epoch: int, what: str) -> EpslError:
    kept = (f"the last good checkpoint (epoch {epoch}) is kept at {out}" if out.exists()
            else "no checkpoint was written")
    return EpslError(f"training diverged at epoch {epoch + 1}, {what}; {kept}. "
                     "Try a smaller logit_squeeze or lr")
