"""Device selection: ``auto`` picks CUDA when it is available, else the CPU; a model's device."""

from __future__ import annotations

import contextlib
import itertools
import os
from typing import Any

import torch
from torch import nn

from epsl.errors import EpslError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EpslError("device=cuda was asked for but no CUDA device is available")
    if name.startswith("cuda") and "TORCHELASTIC_RUN_ID" in os.environ\
            and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > torch.cuda.device_count():
        raise EpslError(f"torchrun started more processes on this machine than it has GPUs "
                        f"({torch.cuda.device_count()}): use --nproc-per-node "
                        f"{torch.cuda.device_count()}, or device=cpu")
    if name not in DEVICES and not name.startswith("cuda:"):
        raise EpslError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    return torch.device(name)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (else buffer); the CPU when it has neither."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


#: Training precisions: fp32, or autocast to bf16 / fp16 (fp16 with a gradient scaler).
PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> Any:
    """A fresh context that runs the forward pass in ``precision`` on ``device`` (autocast to
    bf16 or fp16; nothing for fp32). Losses should be taken in fp32 (``logits.float()``)."""
    if precision not in PRECISIONS:
        raise EpslError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST[precision])


__all__ = ["DEVICES", "PRECISIONS", "autocast", "model_device", "resolve_device"]
