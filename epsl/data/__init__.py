"""Dataset registry: every split is a pair of tensors, images float in [0, 1] (N x C x H x W)
and integer labels (N,). Row order is the example index in every per-example output.

- ``digits``: scikit-learn's bundled 8x8 digits (the embedded default; nothing to fetch),
  pixels 0..16 scaled to [0, 1], a fixed seeded 80/20 train/test split.
- ``fashion-mnist``: read from the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``) or from ``--data-root``.
- ``mnist``, ``cifar10``, ``cifar100``: torchvision, from ``--data-root`` (``download`` only
  when asked).
- ``imagenet``: the ILSVRC2012 validation images from ``--data-root``, as
  ``ROOT/val/<wnid>/*.JPEG`` (or ``ROOT/<wnid>/*.JPEG``; ``train`` reads ``ROOT/train``), in
  torchvision's ``ImageFolder`` order: the 1000 sorted WordNet ids are the class indices 0..999
  (RobustBench's and timm's order). Only the selected images are decoded (:func:`load_split`'s
  ``limit``/``sample``), by :class:`Preprocessing`: ``Resize(256) + CenterCrop(224) +
  ToTensor()`` unless the model's metadata names its own (:func:`preprocessing_for`).
- bring your own: an ``.npz`` with ``x`` (N x C x H x W, float in [0, 1] or uint8) and ``y``;
  optional ``x_train``/``y_train``/``x_test``/``y_test`` give per-split arrays.

The modules: :mod:`~epsl.data.registry` (:class:`Split`, :class:`DatasetInfo`, the
``DATASETS`` registry), :mod:`~epsl.data.readers` (the arrays: digits, the IDX files,
torchvision's, ``.npz``), :mod:`~epsl.data.images` (ImageNet folders, :class:`Preprocessing`);
here, what every dataset shares: :func:`load_split`, the selection of examples (``limit``,
a seeded ``sample``), the decoding of the selected image files and the training augmentation.
Importing ``epsl.data`` registers every dataset.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from epsl.errors import EpslError, check_seed

from .images import DEFAULT_CROP_PCT, IMAGENET_CLASSES, WNID, Preprocessing, preprocessing_for
from .readers import DEBIAN_FASHION_MNIST, load_npz
from .registry import (
    DATASETS,
    INFOS,
    SPLITS,
    DatasetInfo,
    ImageFiles,
    Loader,
    Split,
    dataset_info,
)

__all__ = [
    "DATASETS", "DEBIAN_FASHION_MNIST", "DEFAULT_CROP_PCT", "IMAGENET_CLASSES", "INFOS", "SPLITS",
    "WNID", "DatasetInfo", "ImageFiles", "Loader", "Preprocessing", "Split", "augment_batch",
    "check_selection", "dataset_info", "decode_images", "load_npz", "load_split",
    "preprocessing_for", "sample_indices", "select",
]


class _Images(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """The selected files through the transform; a file that does not decode comes back as
    its one-line message, raised by the main process (a worker's exception would carry its
    traceback)."""

    def __init__(self, paths: list[str], transform: Callable[[Any], torch.Tensor]) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor | str:
        from torchvision.datasets.folder import default_loader

        try:
            return self.transform(default_loader(self.paths[i]))
        except (OSError, SyntaxError, ValueError) as exc:  # PIL: UnidentifiedImageError, truncated
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            return f"{self.paths[i]}: cannot decode the image ({reason})"


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def _memory_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes; None where there is none (not Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _workers(n: int, batch_size: int) -> int:
    if n <= batch_size:  # starting workers costs more than a batch decoded here
        return 0
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
               (os.cpu_count() or 1))


def decode_images(files: ImageFiles, indices: Sequence[int] | np.ndarray, preprocessing: Preprocessing, *,
                  workers: int | None = None, batch_size: int = 64) -> Split:
    """The images ``files.samples[indices]`` decoded by ``preprocessing`` with a torch
    ``DataLoader`` (``workers`` processes, default: one per CPU up to 8), into one float tensor
    len(indices) x 3 x size x size in [0, 1].

    Refused when that tensor would take more than half the memory available: the selection
    (``limit``/``sample``) decides how much is decoded, never the folder's size.
    """
    transform = preprocessing.transform()
    shape = (3, preprocessing.size, preprocessing.size)
    need = len(indices) * math.prod(shape) * 4
    available = _memory_available()
    if available is not None and need > available / 2:
        raise EpslError(f"{files.source}: {len(indices)} images of {shape[1]}x{shape[2]} take "
                        f"{need / 2**30:.1f} GiB as float32, more than half the memory available "
                        f"({available / 2**30:.1f} GiB); pass limit=N or sample=N for fewer")
    paths = [files.samples[i][0] for i in indices]
    loader = torch.utils.data.DataLoader(
        _Images(paths, transform), batch_size=batch_size, shuffle=False,
        num_workers=_workers(len(paths), batch_size) if workers is None else workers,
        collate_fn=_as_list)
    x = torch.empty((len(paths), *shape), dtype=torch.float32)
    done = 0
    for batch in loader:
        for image in batch:
            if isinstance(image, str):
                raise EpslError(image)
            x[done] = image
            done += 1
    y = torch.tensor([files.samples[i][1] for i in indices], dtype=torch.long)
    info = files.info if files.info.shape == shape else replace(files.info, shape=shape)
    return Split(x, y, info, files.split, files.source, transform=str(preprocessing))


def sample_indices(n: int, sample: int, seed: int = 0) -> np.ndarray:
    """``sample`` distinct indices of 0..n-1, sorted: ``numpy.random.default_rng(seed).choice(n,
    sample, replace=False)``, the same on every machine for the same ``n``."""
    if sample > n:
        raise EpslError(f"sample={sample} is more than the {n} examples of the split; pass "
                        f"at most {n}")
    return np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))


def check_selection(limit: int | None, sample: int | None, sample_seed: int = 0) -> None:
    """``limit`` (the first N) and ``sample`` (a seeded N from the whole split) are each at
    least 1 and never both: which of the two a pair would mean is not obvious."""
    check_seed(sample_seed, "sample_seed")
    if limit is not None and limit < 1:
        raise EpslError(f"limit must be at least 1 (got {limit})")
    if sample is not None and sample < 1:
        raise EpslError(f"sample must be at least 1 (got {sample})")
    if limit is not None and sample is not None:
        raise EpslError("limit takes the first N examples, sample a seeded N from the whole "
                        "split: pass limit=N or sample=N, not both")


def select(found: Split | ImageFiles, *, limit: int | None = None, sample: int | None = None,
           sample_seed: int = 0, preprocessing: Preprocessing | None = None,
           workers: int | None = None) -> Split:
    """The examples of ``found`` that ``limit`` or ``sample`` pick (all without either); image
    files are decoded here, only the picked ones. Either one larger than the split is refused
    in one line, never quietly cut to the split."""
    check_selection(limit, sample, sample_seed)
    n = len(found)
    if limit is not None and limit > n:
        raise EpslError(f"limit={limit} is more than the {n} examples of the split; pass "
                        f"at most {n}")
    picked = (sample_indices(n, sample, sample_seed) if sample is not None
              else np.arange(min(limit, n)) if limit is not None else None)
    if isinstance(found, ImageFiles):
        decoded = decode_images(found, np.arange(n) if picked is None else picked,
                                preprocessing or Preprocessing(), workers=workers)
        if sample is None:
            return decoded
        return replace(decoded, sample=sample, sample_seed=sample_seed,
                       indices=torch.from_numpy(picked))
    if sample is None:
        return found.subset(limit)
    rows = torch.from_numpy(picked)
    return replace(found, x=found.x[rows].contiguous(), y=found.y[rows], sample=sample,
                   sample_seed=sample_seed, indices=rows)


def load_split(dataset: str | None = "digits", split: str = "test", *,
               data: Path | str | None = None, data_root: Path | str | None = None,
               download: bool = False, limit: int | None = None, sample: int | None = None,
               sample_seed: int = 0, preprocessing: Preprocessing | None = None) -> Split:
    """Load one split of a registered dataset, or of a user's ``.npz`` when ``data`` is given.

    ``limit`` keeps the first N examples; ``sample`` a fixed random N of the whole split
    (:func:`sample_indices` with ``sample_seed``, in index order), never both. An image folder
    (``imagenet``) decodes only those, by ``preprocessing`` (default: ``Resize(256) +
    CenterCrop(224) + ToTensor()``; :func:`preprocessing_for` reads a model's own).
    """
    check_selection(limit, sample, sample_seed)
    if split not in SPLITS:
        raise EpslError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if data is not None:
        found: Split | ImageFiles = load_npz(Path(data), split)
    elif dataset is None or dataset not in DATASETS:
        raise EpslError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS.names())}")
    else:
        root = Path(data_root) if data_root is not None else None
        found = DATASETS[dataset](split, root, download)
    return select(found, limit=limit, sample=sample, sample_seed=sample_seed,
                  preprocessing=preprocessing)


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard CIFAR augmentation on a batch: a random crop with 4-pixel zero padding and a
    random horizontal flip, drawn per example."""
    n, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    oy = torch.randint(0, 9, (n,), generator=generator).to(dev)
    ox = torch.randint(0, 9, (n,), generator=generator).to(dev)
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
    rows = (oy[:, None] + torch.arange(h, device=dev)).view(n, 1, h, 1).expand(n, c, h, w + 8)
    cropped = padded.gather(2, rows)  # n x c x h x (w + 8)
    cols = torch.arange(w, device=dev).expand(n, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + ox[:, None]
    return cropped.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))
