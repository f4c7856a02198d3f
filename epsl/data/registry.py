"""What a dataset is to epsl, and the ``DATASETS`` registry of loaders.

A loader (``DATASETS[name](split, data_root, download)``) returns a :class:`Split` (tensors:
images float in [0, 1], N x C x H x W, integer labels (N,)) or, for a folder of image files,
an :class:`ImageFiles` that :func:`epsl.data.select` decodes once the examples are picked.
:data:`INFOS` holds each registered dataset's shape, classes and normalisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from epsl.errors import EpslError
from epsl.registry import Registry

__all__ = ["DATASETS", "INFOS", "SPLITS", "DatasetInfo", "ImageFiles", "Loader", "Split",
           "dataset_info", "to_split"]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its data: shape, classes, normalisation, augmentation."""

    name: str
    shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False  # random crop (4-pixel padding) + horizontal flip, as for CIFAR


@dataclass(frozen=True)
class Split:
    """One split of a dataset: ``x`` float in [0, 1], N x C x H x W; ``y`` int64, N."""

    x: torch.Tensor
    y: torch.Tensor
    info: DatasetInfo
    split: str
    source: str  # provenance, e.g. the path read
    #: how image files became ``x`` (:class:`~epsl.data.images.Preprocessing`); None for data held as arrays
    transform: str | None = None
    #: a seeded sample (:func:`epsl.data.sample_indices`): its size, its seed and each row's index in
    #: the whole split; None where the rows are the split's first ones
    sample: int | None = None
    sample_seed: int | None = None
    indices: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, rows: torch.Tensor, *, seed: int) -> Split:
        """The examples at positions ``rows`` (sorted, distinct) of this split, as a seeded
        sample (drawn with ``seed``) whose ``indices`` are their indices in the whole split."""
        whole = self.indices if self.indices is not None else torch.arange(len(self))
        return replace(self, x=self.x[rows], y=self.y[rows], sample=int(rows.numel()),
                       sample_seed=seed, indices=whole[rows])

    def subset(self, limit: int | None) -> Split:
        """The first ``limit`` examples (all of them for ``None``)."""
        if limit is None or limit >= len(self):
            return self
        return replace(self, x=self.x[:limit], y=self.y[:limit],
                       indices=None if self.indices is None else self.indices[:limit])


@dataclass(frozen=True)
class ImageFiles:
    """A split held as image files, decoded only once selected (:func:`epsl.data.load_split`):
    ``samples`` are (path, class index) in ``ImageFolder`` order."""

    samples: tuple[tuple[str, int], ...]
    info: DatasetInfo
    split: str
    source: str

    def __len__(self) -> int:
        return len(self.samples)


Loader = Callable[[str, "Path | None", bool], "Split | ImageFiles"]
DATASETS: Registry[Loader] = Registry("dataset")

INFOS = {
    "digits": DatasetInfo("digits", (1, 8, 8), 10, (0.3,), (0.4,)),
    "fashion-mnist": DatasetInfo("fashion-mnist", (1, 28, 28), 10, (0.2860,), (0.3530,)),
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,)),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465),
                           (0.2470, 0.2435, 0.2616), augment=True),
    "cifar100": DatasetInfo("cifar100", (3, 32, 32), 100, (0.5071, 0.4865, 0.4409),
                            (0.2673, 0.2564, 0.2762), augment=True),
    "imagenet": DatasetInfo("imagenet", (3, 224, 224), 1000, (0.485, 0.456, 0.406),
                            (0.229, 0.224, 0.225)),
}


def to_split(x: np.ndarray, y: np.ndarray, info: DatasetInfo, split: str, source: str) -> Split:
    """A :class:`Split` of arrays: ``x`` uint8 (scaled to [0, 1]) or float, ``y`` labels."""
    xt = torch.from_numpy(np.array(x, copy=True))
    if xt.dtype == torch.uint8:
        xt = xt.float() / 255.0
    else:
        xt = xt.float()
    return Split(xt.contiguous(), torch.as_tensor(np.array(y, copy=True), dtype=torch.long), info, split,
                 source)


def dataset_info(dataset: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a registered dataset."""
    if dataset not in INFOS:
        raise EpslError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS.names())}")
    return INFOS[dataset]
