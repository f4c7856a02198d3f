"""Tiny files in the IDX format of (Fashion-)MNIST, so the reader is tested without Debian's
``dataset-fashion-mnist`` (LeCun et al.'s format: magic 0x0000 0x08 ndim, big-endian sizes,
then the unsigned bytes)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_fashion_mnist(folder: Path, n_test: int = 6, n_train: int = 10, *, seed: int = 0,
                        compress_train: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write 28x28 IDX image and label files for both splits under ``folder`` (the training
    files gzipped, as torchvision leaves them); return the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, prefix, n in (("test", "t10k", n_test), ("train", "train", n_train)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        gz = compress_train and split == "train"
        for stem, array in ((f"{prefix}-images-idx3-ubyte", images),
                            (f"{prefix}-labels-idx1-ubyte", labels)):
            data = idx_bytes(array)
            path = folder / (stem + (".gz" if gz else ""))
            path.write_bytes(gzip.compress(data) if gz else data)
        written[split] = (images, labels)
    return written
