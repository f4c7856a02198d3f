"""Readers of the datasets held as arrays, each registered in
:data:`~epsl.data.registry.DATASETS` on import:

- ``digits``: scikit-learn's bundled 8x8 digits, a fixed seeded 80/20 train/test split;
- ``fashion-mnist``: the IDX files of the Debian package ``dataset-fashion-mnist``
  (:data:`DEBIAN_FASHION_MNIST`) or of ``data_root``;
- ``mnist``, ``cifar10``, ``cifar100``: torchvision, from ``data_root``;
- a user's ``.npz`` (:func:`load_npz`), read when ``load_split`` is given ``data``.
"""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np

from epsl.distributed import world
from epsl.errors import EpslError
from epsl.results.files import on_disk

from .registry import DATASETS, INFOS, DatasetInfo, Loader, Split, to_split

__all__ = ["DEBIAN_FASHION_MNIST", "load_npz"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@DATASETS.register("digits")
def _digits(split: str, data_root: Path | None, download: bool) -> Split:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    n_train = int(round(0.8 * len(y)))
    idx = order[:n_train] if split == "train" else order[n_train:]
    return to_split(x[idx], y[idx], INFOS["digits"], split, "sklearn.datasets.load_digits")


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
            return to_split(x, _read_idx(labels), INFOS["fashion-mnist"], split, str(folder))
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
    return to_split(x, np.asarray(ds.targets), INFOS[name], split, str(data_root))


def _torchvision_loader(name: str) -> Loader:
    def load(split: str, root: Path | None, download: bool) -> Split:
        return _torchvision(name, split, root, download)

    return load


for _name in ("mnist", "cifar10", "cifar100"):
    DATASETS.register(_name)(_torchvision_loader(_name))


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
    return to_split(xf, y.astype(np.int64), info, split, str(path))
