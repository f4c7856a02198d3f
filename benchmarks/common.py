"""What the benchmark scripts share (``from common import ...``, as ``python benchmarks/X.py``
puts this folder on the path); the test suite's ``digits_model`` is trained with it too, so the
benchmarks measure the models the tests compare."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from epsl.data import Split
from epsl.models import Classifier, create_model
from epsl.models.checkpoint import model_kwargs_for

__all__ = ["fit", "plain_train"]


def fit(model: torch.nn.Module, data: Split, *, seed: int = 0, epochs: int = 8, lr: float = 2e-3,
        label_smoothing: float = 0.0) -> torch.nn.Module:
    """``model`` trained on ``data`` by a plain seeded Adam loop, independent of
    :mod:`epsl.defenses.train`: cross-entropy (with ``label_smoothing``), batches of 64 in an
    order drawn with ``seed``, ``epochs`` passes; returned in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(data), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(data.x[idx]), data.y[idx],
                            label_smoothing=label_smoothing).backward()
            opt.step()
    return model.eval()


def plain_train(arch: str, data: Split, *, dataset: str = "digits", seed: int = 0,
                epochs: int = 8, lr: float = 2e-3) -> Classifier:
    """``arch`` (built for ``dataset``'s inputs, seeded) trained on ``data`` by :func:`fit`."""
    torch.manual_seed(seed)
    model = create_model(arch, **model_kwargs_for(dataset))
    return fit(model, data, seed=seed, epochs=epochs, lr=lr)  # type: ignore[return-value]
