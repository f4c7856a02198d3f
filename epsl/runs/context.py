"""Load a checkpoint and the data it is evaluated on, with the checks every command needs."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from epsl.data import Split, check_selection, load_split, preprocessing_for
from epsl.device import resolve_device
from epsl.errors import EpslError
from epsl.models.checkpoint import check_dataset, check_finished, load, weights_file
from epsl.results.records import COMMAND, Provenance, file_sha256
from epsl.version import __version__


@dataclass(frozen=True)
class Evaluation:
    """A model in eval mode on its device, its metadata and the examples to evaluate."""

    model: nn.Module
    meta: dict[str, Any]
    data: Split
    device: torch.device
    checkpoint: str
    #: where a model source's weights live (``robustbench:...``, ``timm:...``); None otherwise
    model_dir: str | None = None
    #: what the model computes on a fixed probe (:func:`behaviour`), pinned by every result's
    #: provenance
    behaviour: list[list[float]] | None = None

    @property
    def weights(self) -> Path:
        """The file holding the weights, whose SHA-256 keys the reuse of every result (a model
        source records the file it read)."""
        read = self.meta.get("weights")
        return Path(read) if read else weights_file(self.checkpoint, self.model_dir)


@dataclass(frozen=True)
class DataConfig:
    """Which checkpoint and which examples (see :func:`prepare`): the part every run's config
    composes. ``checkpoint`` may be left unset where several checkpoints share the examples
    (:class:`epsl.runs.compare.CompareConfig`); :meth:`for_checkpoint` sets it."""

    checkpoint: str | None = None
    dataset: str | None = None
    data: str | None = None
    data_root: str | None = None
    download: bool = False
    split: str = "test"
    limit: int | None = None
    #: a fixed random subset of this many examples, drawn with ``sample_seed`` (not with limit)
    sample: int | None = None
    sample_seed: int = 0
    arch: str | None = None
    model: str | None = None
    device: str = "auto"
    #: the folder of a model source's weights (``robustbench:``, ``timm:``, ``torchvision:``)
    model_dir: str | None = None

    def __post_init__(self) -> None:
        check_selection(self.limit, self.sample, self.sample_seed)

    def for_checkpoint(self, checkpoint: Path | str) -> DataConfig:
        return replace(self, checkpoint=str(checkpoint))

    def prepare(self) -> Evaluation:
        """:func:`prepare` of this config."""
        return prepare(self)


def load_model(checkpoint: Path | str, *, arch: str | None = None, model: str | None = None,
               dataset: str | None = None, model_dir: Path | str | None = None,
               device: str | torch.device = "auto"
               ) -> tuple[nn.Module, dict[str, Any], torch.device]:
    dev = resolve_device(device)
    net, meta = load(checkpoint, arch=arch, model=model, dataset=dataset, model_dir=model_dir,
                     device=dev)
    check_finished(meta, checkpoint)  # every evaluation loads its models here
    return net, meta, dev


def prepare(config: DataConfig) -> Evaluation:
    """Load ``config.checkpoint`` and the first ``config.limit`` examples of ``config.split``
    (or a seeded ``config.sample`` of them: :func:`epsl.data.load_split`).

    The dataset defaults to the checkpoint's own. Image files are decoded as the model's
    metadata asks (:func:`epsl.data.preprocessing_for`), which is why the model loads first.
    The input shape and class count are checked against the checkpoint, and one forward pass
    on a probe proves the model accepts the data (:func:`check_fits`).
    """
    checkpoint, dataset, data = config.checkpoint, config.dataset, config.data
    if checkpoint is None:
        raise EpslError("DataConfig.checkpoint is not set: which checkpoint to evaluate?")
    net, meta, dev = load_model(checkpoint, arch=config.arch, model=config.model,
                                dataset=dataset, model_dir=config.model_dir,
                                device=config.device)
    name = dataset or meta.get("dataset") or "digits"
    trained_on = meta.get("dataset")
    if data is None and dataset and trained_on and dataset != trained_on:
        warnings.warn(f"{checkpoint} was trained on {trained_on}, not {dataset}: its numbers on "
                      f"{dataset} say little about its robustness; pass dataset={trained_on} "
                      "unless this is what you want", stacklevel=2)
    examples = load_split(name, config.split, data=data, data_root=config.data_root,
                          download=config.download, limit=config.limit, sample=config.sample,
                          sample_seed=config.sample_seed, preprocessing=preprocessing_for(meta))
    if len(examples) == 0:
        raise EpslError("the data set is empty")
    probe = check_fits(net, meta, examples, checkpoint, dev)
    return Evaluation(net, meta, examples, dev, str(checkpoint), config.model_dir, probe)


def load_source(source: Path | str | None, ev: Evaluation, *, arch: str | None = None,
                dataset: str | None = None) -> nn.Module | None:
    """The checkpoint a transfer attack makes its examples on (None: no source), loaded on
    ``ev``'s device and checked to take ``ev``'s examples (:func:`check_fits`)."""
    if source is None:
        return None
    net, meta, _ = load_model(source, arch=arch, dataset=dataset, model_dir=ev.model_dir,
                              device=ev.device)
    check_fits(net, meta, ev.data, source, ev.device)
    return net


def check_fits(net: nn.Module, meta: dict[str, Any], examples: Split,
               checkpoint: Path | str, device: torch.device) -> list[list[float]]:
    """Raise :class:`EpslError` unless ``net`` (loaded from ``checkpoint``) takes ``examples``:
    finite weights, the input shape and classes in its metadata, then one forward pass on the
    probe (:func:`behaviour`) that must give finite N x K logits. Return the probe's
    behaviour."""
    check_finite(net, checkpoint)
    check_dataset(meta, tuple(examples.x.shape[1:]), int(examples.y.max()) + 1, str(checkpoint))
    return behaviour(net, examples, device, checkpoint=checkpoint)


def check_finite(net: nn.Module, checkpoint: Path | str) -> None:
    """Refuse a model with a NaN or infinite weight or buffer: its logits, gradients and ε_L
    would be meaningless, and an audit would blame gradient masking."""
    for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise EpslError(f"{checkpoint}: {name} holds {bad} non-finite value"
                            f"{'s' if bad > 1 else ''} (NaN or inf); a diverged or corrupted "
                            "model cannot be evaluated: use a checkpoint from before it diverged")


#: The probe of :func:`behaviour`: this many examples spread over the evaluated ones, and this
#: many seeded uniform-noise images of their shape.
PROBE_EXAMPLES, PROBE_NOISE = 32, 4


def behaviour(net: nn.Module, examples: Split, device: torch.device, *,
              checkpoint: Path | str = "the model") -> list[list[float]]:
    """What the model computes, as a result's provenance pins it: on a fixed probe (up to
    :data:`PROBE_EXAMPLES` examples spread evenly over ``examples``, then
    :data:`PROBE_NOISE` seeded noise images), each row's largest and mean logit and two fixed
    random projections of its logits (6 significant digits). Any change of code, weights or
    preprocessing that changes the outputs changes it, so a result made by another model is
    never reused (:meth:`epsl.results.records.Provenance.same_origin` compares it with a tolerance
    that last-bit differences between CPUs or GPUs stay within).

    Raises :class:`EpslError` unless the model returns finite N x K logits."""
    n = len(examples)
    rows = torch.linspace(0, n - 1, min(n, PROBE_EXAMPLES)).round().long().unique()
    noise = torch.rand((PROBE_NOISE, *examples.x.shape[1:]),
                       generator=torch.Generator().manual_seed(0))
    probe = torch.cat([examples.x[rows].to("cpu", torch.float32), noise])
    try:
        with torch.no_grad():
            logits = net(probe.to(device))
    except RuntimeError as exc:
        raise EpslError(f"{checkpoint} does not accept inputs of shape "
                        f"{tuple(examples.x.shape[1:])} ({str(exc).splitlines()[0]})") from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2\
            or logits.shape[0] != len(probe):
        what = (f"a {type(logits).__name__}" if not isinstance(logits, torch.Tensor)
                else f"a tensor of shape {tuple(logits.shape)}")
        raise EpslError(f"{checkpoint}: the model returns {what}, not N x K logits; wrap it so "
                        "that forward returns the logits tensor alone")
    if logits.shape[1] <= int(examples.y.max()):
        raise EpslError(f"{checkpoint} gives {logits.shape[-1]} logits but the labels go up to "
                        f"{int(examples.y.max())}")
    if not bool(torch.isfinite(logits).all()):
        raise EpslError(f"{checkpoint}: the model gives non-finite logits (NaN or inf) on the "
                        "examples; check its weights and its forward")
    z = logits.detach().to("cpu", torch.float64)
    weights = torch.randn((2, z.shape[1]), generator=torch.Generator().manual_seed(1),
                          dtype=torch.float64) / z.shape[1] ** 0.5
    signature = torch.cat([z.max(1, keepdim=True).values, z.mean(1, keepdim=True), z @ weights.T],
                          dim=1)
    return [[float(f"{v:.6g}") for v in row] for row in signature.tolist()]


def data_sha256(examples: Split) -> str:
    """SHA-256 of the examples themselves (shapes, float32 pixels, int64 labels), so a result
    is never reused for other examples that happen to have the same count."""
    digest = hashlib.sha256()
    x = examples.x.detach().to("cpu", torch.float32).contiguous()
    y = examples.y.detach().to("cpu", torch.int64).contiguous()
    digest.update(repr((tuple(x.shape), tuple(y.shape))).encode())
    digest.update(x.numpy().tobytes())
    digest.update(y.numpy().tobytes())
    return digest.hexdigest()


def provenance(ev: Evaluation, settings: Mapping[str, Any], *, examples: Split | None = None,
               source: Path | str | None = None) -> Provenance:
    """The provenance of a result made from ``ev``'s checkpoint on ``examples`` (default: all
    of ``ev.data``) with ``settings``, and ``source`` for a transfer attack. Built here only."""
    data = examples if examples is not None else ev.data
    record: dict[str, Any] = {"dataset": data.info.name, "split": data.split,
                              "source": data.source, "n": len(data), "sha256": data_sha256(data)}
    if data.transform is not None:  # decoded from image files
        record["transform"] = data.transform
    if data.sample is not None:  # a seeded sample: which rows of the split these are
        record |= {"sample": data.sample, "sample_seed": data.sample_seed,
                   "indices": [] if data.indices is None else data.indices.tolist()}
    return Provenance(
        checkpoint=ev.checkpoint, checkpoint_sha256=file_sha256(ev.weights),
        behaviour=ev.behaviour if ev.behaviour is not None
        else behaviour(ev.model, ev.data, ev.device, checkpoint=ev.checkpoint),
        data=record,
        settings=dict(settings), model=ev.meta,
        source=None if source is None else {"checkpoint": str(source),
                                            "checkpoint_sha256": file_sha256(
                                                weights_file(source, ev.model_dir))},
        device=str(ev.device), epsl_version=__version__,
        torch_version=torch.__version__, command=COMMAND.get())


__all__ = ["PROBE_EXAMPLES", "PROBE_NOISE", "DataConfig", "Evaluation", "behaviour", "check_finite",
           "check_fits", "data_sha256", "load_model", "load_source", "prepare", "provenance"]
