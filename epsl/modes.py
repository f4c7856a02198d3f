"""How epsl runs a model it does not train: :func:`eval_mode`, shared by the attacks, the
diagnostics, the audit and adversarial training."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def eval_mode(model: nn.Module, *, warn: bool = True) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode with its parameters frozen and gradients enabled; restore the
    mode and the parameters' ``requires_grad`` afterwards.

    Eval mode makes the examples of a batch independent (BatchNorm uses its running
    statistics, dropout is off), which per-example input gradients and Jacobians rely on. A
    model left in train mode gets a warning unless ``warn=False`` (adversarial training, which
    switches on purpose). Freezing the parameters matters for speed: autograd otherwise
    computes weight gradients inside every convolution backward even when only the input
    gradient is asked for (2-4x slower on the CPU); ``torch.func`` callers pass the parameters
    explicitly, so they are unaffected. Gradients are enabled so that input gradients also work
    inside a caller's ``torch.no_grad()``; a ``torch.no_grad()`` opened inside the block wins.
    """
    was_training = model.training
    if was_training:
        if warn:
            warnings.warn("the model is in train mode; epsl attacks and diagnoses it in eval "
                          "mode (BatchNorm running statistics, no dropout) and restores train "
                          "mode afterwards. Call model.eval() first to silence this warning.",
                          stacklevel=3)
        model.eval()
    trainable = [p for p in model.parameters() if p.requires_grad]
    for param in trainable:
        param.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield model
    finally:
        for param in trainable:
            param.requires_grad_(True)
        if was_training:
            model.train()


__all__ = ["eval_mode"]
