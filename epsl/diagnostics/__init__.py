"""The eps_L diagnostics of Shafahi et al. (Eq. 4, Table 1, Figures 1-5, 7-11).

- :func:`jacobian` — batched logit Jacobians in pixel space (N x K x C x H x W);
- :func:`diagnose` -> :class:`Diagnostics` — per-example logit gaps, gradient gaps, cosines,
  eps_L and the per-class matrices, in the ℓ∞, ℓ2 or ℓ1 norm (:func:`diagnose_norms`: several
  from one Jacobian); :func:`predicted_accuracy` — Table 1's "Equation 4";
- :func:`activations` -> :class:`ActivationStats` — penultimate and logit sums (Figs. 10, 11);
- :func:`loss_landscape` — cross-entropy on a 2-D grid around each image (Figs. 5, 9).
"""

from __future__ import annotations

from epsl.diagnostics.features import ActivationStats, activations
from epsl.diagnostics.jacobians import METHODS, auto_chunk_size, jacobian, jacobian_and_logits
from epsl.diagnostics.landscape import DIRECTIONS, loss_landscape
from epsl.diagnostics.margins import (
    Diagnostics,
    diagnose,
    diagnose_norms,
    grad_gap_column,
    predicted_accuracy,
)

__all__ = ["DIRECTIONS", "METHODS", "ActivationStats", "Diagnostics", "activations",
           "auto_chunk_size", "diagnose", "diagnose_norms", "grad_gap_column", "jacobian",
           "jacobian_and_logits", "loss_landscape", "predicted_accuracy"]
