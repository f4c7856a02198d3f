"""Shared small, seeded fixtures."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.common import plain_train
from epsl.data import Split, load_split
from epsl.models import Classifier, checkpoint

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources alone (once per session).

    A copy, because setuptools reuses a build/ folder it finds, whose stale files would hide a
    package that the build itself leaves out."""
    pytest.importorskip("setuptools", reason="the build backend is needed to build a wheel")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for folder in ("epsl", "cli", "analysis"):
        shutil.copytree(ROOT / folder, src / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (built,) = out.glob("epsl-*.whl")
    return built


@pytest.fixture(scope="session")
def digits_test() -> Split:
    return load_split("digits", "test")


@pytest.fixture(scope="session")
def digits_train() -> Split:
    return load_split("digits", "train")


def quick_train(data: Split, *, epochs: int = 8, seed: int = 0) -> Classifier:
    """A plain Adam loop (independent of epsl.defenses.train) giving a ~95% digits model in
    seconds; the benchmarks train with the same loop (``benchmarks/common.py``)."""
    return plain_train("small-cnn", data, epochs=epochs, seed=seed)


@pytest.fixture(scope="session")
def digits_model(digits_train: Split) -> Classifier:
    """A naturally trained small-cnn on digits (eval mode)."""
    return quick_train(digits_train)


@pytest.fixture(scope="session")
def digits_checkpoint(digits_model: Classifier, tmp_path_factory: pytest.TempPathFactory,
                      digits_test: Split) -> Path:
    """``digits_model`` saved as an epsl checkpoint with metadata."""
    path = tmp_path_factory.mktemp("ckpt") / "natural.safetensors"
    with torch.no_grad():
        acc = (digits_model(digits_test.x).argmax(1) == digits_test.y).float().mean().item()
    checkpoint.save(path, digits_model, {
        "arch": "small-cnn", "arch_kwargs": checkpoint.model_kwargs_for("digits"),
        "dataset": "digits", "input_shape": [1, 8, 8], "num_classes": 10,
        "normalization": {"mean": [0.3], "std": [0.4]},
        "train_config": {"defense": {}}, "metrics": {"test_accuracy": acc},
    })
    return path
