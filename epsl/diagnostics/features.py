"""Penultimate and logit-layer activation sums over a data set (Figures 10 and 11).

The paper sums the activations of every penultimate neuron over the test set and counts the
neurons that are never active: adversarial training, and Gaussian noise with label smoothing
or logit squeezing, "deactivate" hundreds of the 1024 features of the MNIST model.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from epsl.device import model_device
from epsl.errors import EpslError
from epsl.modes import eval_mode


@dataclass(frozen=True)
class ActivationStats:
    """Per-unit sums over n examples.

    Attributes:
        n: number of examples.
        penultimate_sum, penultimate_abs_sum: (D,) sum over examples of a_j and |a_j|, where
            a = ``model.features(x)`` (Figure 10).
        penultimate_active_count: (D,) examples on which a_j != 0 (a_j > 0 for ReLU features).
        logit_sum, logit_abs_sum: (K,) the same for the logits z = ``model.head(a)`` (Fig. 11).
        logit_active_count: (K,) examples on which z_k != 0.
    """

    n: int
    penultimate_sum: torch.Tensor
    penultimate_abs_sum: torch.Tensor
    penultimate_active_count: torch.Tensor
    logit_sum: torch.Tensor
    logit_abs_sum: torch.Tensor
    logit_active_count: torch.Tensor

    @property
    def n_inactive(self) -> int:
        """Penultimate neurons that are zero on every example (``active_count == 0``)."""
        return int((self.penultimate_active_count == 0).sum())

    def to_frame(self) -> pd.DataFrame:
        """Columns ``layer ('penultimate' | 'logit'), unit, activation_sum, activation_abs_sum,
        active_count``; one row per unit."""
        frames = []
        for layer, total, absolute, count in (
            ("penultimate", self.penultimate_sum, self.penultimate_abs_sum,
             self.penultimate_active_count),
            ("logit", self.logit_sum, self.logit_abs_sum, self.logit_active_count),
        ):
            frames.append(pd.DataFrame({
                "layer": layer, "unit": range(len(total)),
                "activation_sum": total.double().numpy(),
                "activation_abs_sum": absolute.double().numpy(),
                "active_count": count.numpy(),
            }))
        return pd.concat(frames, ignore_index=True)


def activations(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256,
                device: torch.device | str | None = None) -> ActivationStats:
    """Sum penultimate activations ``model.features(x)`` (N x D) and logits
    ``model.head(features)`` (N x K) per unit over the examples x (N x C x H x W in [0, 1]).

    The model must expose ``features`` and ``head`` (every :class:`epsl.models.Classifier`
    does). Sums are accumulated in float64, so they do not depend on ``batch_size``.
    """
    features = getattr(model, "features", None)
    head = getattr(model, "head", None)
    if not callable(features) or not callable(head):
        raise EpslError("activations need a model with features(x) and head(features) methods "
                        "(an epsl.models.Classifier)")
    if len(x) == 0:
        raise EpslError("no examples")
    if batch_size < 1:
        raise EpslError(f"batch_size must be at least 1 (got {batch_size})")
    dev = torch.device(device) if device is not None else model_device(model)
    sums: dict[str, list[torch.Tensor]] = {}
    with eval_mode(model), torch.no_grad():
        for xb in x.split(batch_size):
            penultimate = features(xb.to(dev))
            logits = head(penultimate)
            for name, values in (("penultimate", penultimate.flatten(1)),
                                 ("logit", logits)):
                parts = (values.double().sum(0), values.double().abs().sum(0),
                         (values != 0).sum(0))
                if name not in sums:
                    sums[name] = [p.cpu() for p in parts]
                else:
                    sums[name] = [a + p.cpu() for a, p in zip(sums[name], parts, strict=True)]
    return ActivationStats(len(x), *sums["penultimate"], *sums["logit"])


__all__ = ["ActivationStats", "activations"]
