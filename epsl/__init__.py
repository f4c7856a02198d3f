"""epsl: robustness analysis for PyTorch classifiers around the eps_L diagnostic (Eq. 4 of
Shafahi et al., "Label Smoothing and Logit Squeezing: A Replacement for Adversarial Training?")."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def __getattr__(name: str) -> Any:
    # ``epsl.load`` is imported lazily so that torch-free subpackages (``epsl.analysis``,
    # which renders saved tables only) can be imported without pulling in torch.
    if name == "load":
        from epsl.checkpoint import load

        return load
    raise AttributeError(f"module 'epsl' has no attribute {name!r}")
