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
"""

from __future__ import annotations

import gzip
import math
import os
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from epsl.distributed import world
from epsl.errors import EpslError, check_seed
from epsl.registry import Registry
from epsl.results.files import on_disk

SPLITS = ("train", "test")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


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
    #: how image files became ``x`` (:class:`Preprocessing`); None for data held as arrays
    transform: str | None = None
    #: a seeded sample (:func:`sample_indices`): its size, its seed and each row's index in
    #: the whole split; None where the rows are the split's first ones
    sample: int | None = None
    sample_seed: int | None = None
    indices: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, limit: int | None) -> Split:
        """The first ``limit`` examples (all of them for ``None``)."""
        if limit is None or limit >= len(self):
            return self
        return replace(self, x=self.x[:limit], y=self.y[:limit],
                       indices=None if self.indices is None else self.indices[:limit])


@dataclass(frozen=True)
class ImageFiles:
    """A split held as image files, decoded only once selected (:func:`load_split`):
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


def _to_split(x: np.ndarray, y: np.ndarray, info: DatasetInfo, split: str, source: str) -> Split:
    xt = torch.from_numpy(np.array(x, copy=True))
    if xt.dtype == torch.uint8:
        xt = xt.float() / 255.0
    else:
        xt = xt.float()
    return Split(xt.contiguous(), torch.as_tensor(np.array(y, copy=True), dtype=torch.long), info, split,
                 source)


@DATASETS.register("digits")
def _digits(split: str, data_root: Path | None, download: bool) -> Split:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    n_train = int(round(0.8 * len(y)))
    idx = order[:n_train] if split == "train" else order[n_train:]
    return _to_split(x[idx], y[idx], INFOS["digits"], split, "sklearn.datasets.load_digits")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:  # type: ignore[operator]
            data = f.read()
    except (OSError, EOFError) as exc:
        raise EpslError(f"{path}: cannot read ({exc})") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":  # magic: two zeros, 0x08 = unsigned bytes
        raise EpslError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise EpslError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise EpslError(f"{path}: truncated IDX file ({arr.size} values, expected {dims})")
    return arr.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


@DATASETS.register("fashion-mnist")
def _fashion_mnist(split: str, data_root: Path | None, download: bool) -> Split:
    prefix = "train" if split == "train" else "t10k"
    candidates = []
    if data_root is not None:
        candidates += [data_root / "fashion-mnist", data_root / "FashionMNIST" / "raw", data_root]
    candidates.append(DEBIAN_FASHION_MNIST)
    for folder in candidates:
        images = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        labels = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            x = _read_idx(images)[:, None]
            return _to_split(x, _read_idx(labels), INFOS["fashion-mnist"], split, str(folder))
    if data_root is not None and download:
        return _torchvision("fashion-mnist", split, data_root, True)
    looked = ", ".join(str(c) for c in candidates)
    raise EpslError(
        f"fashion-mnist not found (looked in {looked}); install it with "
        "'apt-get install dataset-fashion-mnist' or pass data_root=DIR [download=True]"
    )


def _torchvision(name: str, split: str, data_root: Path | None, download: bool) -> Split:
    import torchvision

    classes = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST,
               "cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}
    if data_root is None:
        raise EpslError(f"{name} needs data_root=DIR (add download=True to fetch it there)")
    try:
        sharded = world().distributed
        if download and sharded:  # under torchrun rank 0 fetches, the others wait and then read
            with on_disk() as writer:
                if writer:
                    classes[name](str(data_root), train=split == "train", download=True)
        ds = classes[name](str(data_root), train=split == "train",
                           download=download and not sharded)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise EpslError(
            f"{name} not found under {data_root}; pass download=True to fetch it ({exc})"
        ) from None
    data = np.asarray(ds.data)
    x = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)
    return _to_split(x, np.asarray(ds.targets), INFOS[name], split, str(data_root))


def _torchvision_loader(name: str) -> Loader:
    def load(split: str, root: Path | None, download: bool) -> Split:
        return _torchvision(name, split, root, download)

    return load


for _name in ("mnist", "cifar10", "cifar100"):
    DATASETS.register(_name)(_torchvision_loader(_name))


# --------------------------------------------------------------------------- image folders

#: timm's ``DEFAULT_CROP_PCT``: 224 / 0.875 = 256, the classic Resize(256) + CenterCrop(224)
DEFAULT_CROP_PCT = 0.875
WNID = re.compile(r"n\d{8}")
IMAGENET_CLASSES = 1000
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes a C x H x W tensor in [0, 1], with torchvision's transforms:
    resize (``mode="center"``: the shorter side to ``resize``, keeping the aspect ratio;
    ``"squash"``: both sides to ``resize``; ``resize=None``: no resize), ``CenterCrop(size)``,
    ``ToTensor()``. No normalisation: that is inside the model."""

    size: int = 224
    resize: int | None = 256
    interpolation: str = "bilinear"
    mode: str = "center"

    def __str__(self) -> str:
        crop = f"CenterCrop({self.size}) + ToTensor()"
        if self.resize is None:
            return crop
        side = self.resize if self.mode == "center" else (self.resize, self.resize)
        return f"Resize({side}, {self.interpolation}) + {crop}"

    def transform(self) -> Callable[[Any], torch.Tensor]:
        from torchvision import transforms

        if self.mode not in ("center", "squash"):
            raise EpslError(f"preprocessing crop mode {self.mode!r} is not supported (only "
                            "'center' and 'squash', as timm names them)")
        if self.interpolation not in _INTERPOLATIONS:
            raise EpslError(f"preprocessing interpolation {self.interpolation!r} is not one of "
                            f"{', '.join(_INTERPOLATIONS)}")
        steps: list[Any] = []
        if self.resize is not None:
            side = self.resize if self.mode == "center" else (self.resize, self.resize)
            steps.append(transforms.Resize(
                side, interpolation=transforms.InterpolationMode(self.interpolation)))
        steps += [transforms.CenterCrop(self.size), transforms.ToTensor()]
        return transforms.Compose(steps)  # type: ignore[no-any-return]


def _interpolation(value: Any) -> str:
    # torchvision records "InterpolationMode.BILINEAR", timm "bicubic"
    return str(value or "bilinear").rsplit(".", 1)[-1].lower()


def preprocessing_for(meta: Mapping[str, Any] | None) -> Preprocessing:
    """The preprocessing a model's metadata asks for, first match wins:

    - timm's ``pretrained_cfg`` (``input_size``, ``crop_pct``, ``interpolation``, ``crop_mode``):
      as ``timm.data.transforms_imagenet_eval`` computes it, ``resize = floor(size / crop_pct)``;
    - torchvision's ``preprocessing`` (``resize_size``, ``crop_size``, ``interpolation``);
    - RobustBench's ``preprocessing`` name (``Res256Crop224``, ``BicubicRes256Crop224``,
      ``Crop288``, ``Res224``: squash to 224 x 224);
    - the model's ``input_shape`` (C, S, S): ``CenterCrop(S)`` after ``Resize(floor(S / 0.875))``;
    - otherwise ``Resize(256) + CenterCrop(224)``, bilinear.
    """
    meta = meta or {}
    cfg = meta.get("pretrained_cfg")
    if isinstance(cfg, Mapping) and cfg.get("input_size"):
        size = int(cfg["input_size"][-1])
        crop_pct = float(cfg.get("crop_pct") or DEFAULT_CROP_PCT)
        return Preprocessing(size=size, resize=math.floor(size / crop_pct),
                             interpolation=_interpolation(cfg.get("interpolation")),
                             mode=str(cfg.get("crop_mode") or "center"))
    given = meta.get("preprocessing")
    if isinstance(given, Mapping) and given.get("crop_size"):
        sizes = list(given.get("resize_size") or [])
        return Preprocessing(size=int(given["crop_size"]), resize=int(sizes[0]) if sizes else None,
                             interpolation=_interpolation(given.get("interpolation")))
    if isinstance(given, str):
        named = re.fullmatch(r"(Bicubic)?(?:Res(\d+))?(?:Crop(\d+))?", given)
        if named and (named.group(2) or named.group(3)):
            resize = int(named.group(2)) if named.group(2) else None
            crop = int(named.group(3)) if named.group(3) else None
            return Preprocessing(size=crop or int(resize or 224), resize=resize,
                                 interpolation="bicubic" if named.group(1) else "bilinear",
                                 mode="center" if crop else "squash")
    shape = meta.get("input_shape")
    if isinstance(shape, Sequence) and len(shape) == 3 and shape[1] == shape[2]:
        size = int(shape[-1])
        return Preprocessing(size=size, resize=math.floor(size / DEFAULT_CROP_PCT))
    return Preprocessing()


def _image_folder(data_root: Path, split: str) -> Path:
    """``ROOT/val`` (``ROOT/train``), or ROOT itself where it holds the wnid folders."""
    if not data_root.is_dir():
        raise EpslError(f"data_root={data_root}: no such folder")
    folder = data_root / ("val" if split == "test" else "train")
    if folder.is_dir():
        return folder
    if split == "test" and any(p.is_dir() and WNID.fullmatch(p.name) for p in data_root.iterdir()):
        return data_root
    raise EpslError(f"{data_root}: not an ImageNet folder (expected {folder}/<wnid>/*.JPEG, one "
                    "folder per WordNet id such as n01440764, as torchvision's ImageFolder reads)")


@DATASETS.register("imagenet")
def _imagenet(split: str, data_root: Path | None, download: bool) -> ImageFiles:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if download:
        raise EpslError("imagenet cannot be downloaded (image-net.org asks for a sign-up); drop "
                        "download=True and pass data_root=DIR holding val/<wnid>/*.JPEG")
    if data_root is None:
        raise EpslError("imagenet needs data_root=DIR holding val/<wnid>/*.JPEG (the ILSVRC2012 "
                        "validation images in one folder per WordNet id)")
    folder = _image_folder(data_root, split)
    try:
        classes, class_to_idx = find_classes(str(folder))
    except FileNotFoundError:  # torchvision: "Couldn't find any class folder in ..."
        classes, class_to_idx = [], {}
    strange = [name for name in classes if not WNID.fullmatch(name)]
    if strange:
        raise EpslError(f"{folder / strange[0]}: not a WordNet id (n and 8 digits, such as "
                        f"n01440764); {folder} may hold only the {IMAGENET_CLASSES} class folders")
    if len(classes) != IMAGENET_CLASSES:
        raise EpslError(f"{folder}: {len(classes)} class folders, ImageNet has "
                        f"{IMAGENET_CLASSES} (a class index is its wnid's place in sorted order, "
                        "so every wnid folder must be there; it may be empty)")
    samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise EpslError(f"{folder}: the {IMAGENET_CLASSES} class folders hold no images "
                        f"({', '.join(IMG_EXTENSIONS)})")
    return ImageFiles(tuple(samples), INFOS["imagenet"], split, str(folder))


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


def load_npz(path: Path, split: str) -> Split:
    """A user's own data: ``x`` (N x C x H x W, float in [0, 1] or uint8) and ``y``."""
    path = Path(path)
    if not path.is_file():
        raise EpslError(f"data={path}: no such file")
    if not zipfile.is_zipfile(path):
        raise EpslError(f"data={path}: not a valid .npz file (expected a zip archive of "
                        "arrays, as numpy.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            keys = set(arrays.files)
            xk, yk = (f"x_{split}", f"y_{split}") if f"x_{split}" in keys else ("x", "y")
            if xk not in keys or yk not in keys:
                raise EpslError(f"data={path}: needs arrays 'x' and 'y' (found {sorted(keys)})")
            x, y = arrays[xk], arrays[yk]
    except (OSError, ValueError) as exc:
        raise EpslError(f"data={path}: not a readable .npz file ({exc})") from None
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
        raise EpslError(f"data={path}: x must be N x C x H x W and y length N "
                        f"(got {x.shape} and {y.shape})")
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise EpslError(f"data={path}: x holds {int((~np.isfinite(x)).sum())} NaN or "
                            "infinite pixels; pixels must be finite numbers in [0, 1]")
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise EpslError(f"data={path}: float pixels must lie in [0, 1] "
                            f"(found {x.min():.3g}..{x.max():.3g})")
    if not np.issubdtype(y.dtype, np.integer):
        raise EpslError(f"data={path}: y must hold integer labels (got {y.dtype})")
    xf = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x
    channels = xf.shape[1]
    info = DatasetInfo(
        name=f"npz:{path.name}",
        shape=(int(xf.shape[1]), int(xf.shape[2]), int(xf.shape[3])),
        num_classes=int(y.max()) + 1 if len(y) else 0,
        mean=tuple(float(v) for v in xf.mean(axis=(0, 2, 3))) if len(xf) else (0.5,) * channels,
        std=tuple(max(float(v), 1e-3) for v in xf.std(axis=(0, 2, 3))) if len(xf) else (0.5,) * channels,
    )
    return _to_split(xf, y.astype(np.int64), info, split, str(path))


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


def dataset_info(dataset: str) -> DatasetInfo:
    if dataset not in INFOS:
        raise EpslError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS.names())}")
    return INFOS[dataset]


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
