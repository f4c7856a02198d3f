"""epsl: robustness analysis for PyTorch classifiers around the eps_L diagnostic (Eq. 4 of
Shafahi et al., "Label Smoothing and Logit Squeezing: A Replacement for Adversarial Training?")."""

from __future__ import annotations

__version__ = "0.1.0"

from epsl.checkpoint import load  # noqa: E402

__all__ = ["__version__", "load"]
