"""Device selection: ``auto`` picks CUDA when it is available, else the CPU; a model's device."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from epsl.errors import EpslError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EpslError("--device cuda was asked for but no CUDA device is available")
    if name not in DEVICES and not name.startswith("cuda:"):
        raise EpslError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    return torch.device(name)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (else buffer); the CPU when it has neither."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device
