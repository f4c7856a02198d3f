"""Device selection: ``auto`` picks CUDA when it is available, else the CPU."""

from __future__ import annotations

import torch

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
