"""Shared small, seeded fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from epsl import checkpoint
from epsl.data import Split, load_split
from epsl.models import Classifier, create_model

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def digits_test() -> Split:
    return load_split("digits", "test")


@pytest.fixture(scope="session")
def digits_train() -> Split:
    return load_split("digits", "train")


def quick_train(data: Split, *, epochs: int = 8, seed: int = 0) -> Classifier:
    """A plain Adam loop (independent of epsl.train) giving a ~95% digits model in seconds."""
    torch.manual_seed(seed)
    model = create_model("small-cnn", **checkpoint.model_kwargs_for("digits"))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(data), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
            opt.step()
    return model.eval()


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
