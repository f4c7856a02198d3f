"""The dataset readers against files written here, and against Debian's Fashion-MNIST where
it is installed (``debian_data``: ``.ci/run`` installs it after the newcomer's path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from epsl.data import DEBIAN_FASHION_MNIST, load_split
from epsl.errors import EpslError
from tests.idx import idx_bytes, write_fashion_mnist
from tests.system import needs_debian_fashion_mnist


@pytest.mark.parametrize("layout", ["fashion-mnist", "FashionMNIST/raw", "."])
def test_fashion_mnist_reader_reads_idx_files_exactly(tmp_path: Path, layout: str) -> None:
    written = write_fashion_mnist(tmp_path / layout)
    for split in ("test", "train"):  # test: plain IDX; train: gzipped
        data = load_split("fashion-mnist", split, data_root=tmp_path)
        images, labels = written[split]
        assert data.x.shape == (len(labels), 1, 28, 28) and data.x.dtype == torch.float32
        np.testing.assert_array_equal(data.x[:, 0].numpy(), images.astype(np.float32) / 255)
        np.testing.assert_array_equal(data.y.numpy(), labels.astype(np.int64))
        assert data.info.name == "fashion-mnist" and data.split == split


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-5], "truncated IDX file"),
    (lambda b: b[:6], "truncated IDX header"),
    (lambda b: b"\x00\x00\x0d" + b[3:], "not an IDX file of unsigned bytes"),
    (lambda b: b"PK\x03\x04" + b[4:], "not an IDX file"),
], ids=["truncated-data", "truncated-header", "float-idx", "not-idx"])
def test_damaged_idx_files_are_one_line_errors(tmp_path: Path, damage, message: str) -> None:
    write_fashion_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(EpslError, match=message) as info:
        load_split("fashion-mnist", "test", data_root=tmp_path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_idx_bytes_round_trip_header() -> None:
    data = idx_bytes(np.zeros((3, 2, 5), dtype=np.uint8))
    assert data[:4] == b"\x00\x00\x08\x03"
    assert [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(3)] == [3, 2, 5]
    assert len(data) == 16 + 30


@needs_debian_fashion_mnist
def test_debian_fashion_mnist() -> None:
    test = load_split("fashion-mnist", "test")
    train = load_split("fashion-mnist", "train")
    assert test.x.shape == (10_000, 1, 28, 28) and train.x.shape == (60_000, 1, 28, 28)
    assert test.source == str(DEBIAN_FASHION_MNIST)
    for split in (test, train):  # ten balanced classes, pixels in [0, 1]
        assert torch.bincount(split.y).tolist() == [len(split) // 10] * 10
        assert 0.0 <= float(split.x.min()) and float(split.x.max()) <= 1.0
    # the normalisation constants epsl uses are this data's statistics
    assert float(train.x.mean()) == pytest.approx(train.info.mean[0], abs=1e-3)
    assert float(train.x.std()) == pytest.approx(train.info.std[0], abs=1e-3)
