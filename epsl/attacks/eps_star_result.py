"""What ε* found (:func:`epsl.attacks.eps_star.find_eps_star`): per example, the smallest
verified adversarial point, its ε* in the norm, the attack that found it and every attack's own
ε, with its exact tensors file ``eps_star.safetensors`` (:meth:`EpsStarResult.save_tensors`,
:meth:`EpsStarResult.load`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from epsl.errors import EpslError
from epsl.norms import Norm, parse_norm
from epsl.results.files import atomic_path
from epsl.results.records import stored_kind

__all__ = ["TENSORS_FILE", "EpsStarResult", "safe_open_metadata"]

TENSORS_FILE = "eps_star.safetensors"


@dataclass(frozen=True)
class EpsStarResult:
    """Per-example minimal perturbations of N examples.

    Attributes:
        x_adv: N x C x H x W, the smallest verified adversarial point (x where none was found,
            and for examples misclassified at x).
        eps_star: (N,) float64, ``||x_adv - x||_p`` in ``norm``; 0 if misclassified at x, +inf
            if no attack flips it inside [0, 1]^d.
        attack: the attack that found ``eps_star`` per example (``clean``, ``""`` for none).
        pred: (N,) the model's prediction at ``x_adv`` (verified: != label where ε* is finite).
        label: (N,) true class.
        per_attack: each attack's own verified ε per example (+inf where it failed), N each.
        seconds: wall time per attack.
        norm: the norm ε* is measured in (``linf``, ``l2``, ``l1``).
    """

    x_adv: torch.Tensor
    eps_star: torch.Tensor
    attack: tuple[str, ...]
    pred: torch.Tensor
    label: torch.Tensor
    per_attack: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    norm: str = "linf"

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", parse_norm(self.norm).value)

    def __len__(self) -> int:
        return int(self.eps_star.shape[0])

    def accuracy(self, eps: float) -> float:
        """Robust accuracy at ``eps`` by ε*: the share of examples with ε* > eps (an upper bound
        of the true robust accuracy)."""
        return float((self.eps_star > eps).double().mean()) if len(self) else float("nan")

    def to_frame(self) -> pd.DataFrame:
        """One row per example: ``index, label, eps_star, eps_star_attack, pred_adv`` and
        ``eps_<attack>`` for each attack of the ensemble."""
        frame = pd.DataFrame({
            "index": np.arange(len(self)),
            "label": self.label.cpu().numpy(),
            "eps_star": self.eps_star.cpu().numpy().astype(np.float64),
            "eps_star_attack": list(self.attack),
            "pred_adv": self.pred.cpu().numpy(),
        })
        for name, values in self.per_attack.items():
            frame[f"eps_{name.replace('-', '_')}"] = values.cpu().numpy().astype(np.float64)
        return frame

    def save_tensors(self, folder: Path | str) -> Path:
        """Write ``eps_star.safetensors`` (the verified points and ε* per example, exact) into
        ``folder`` atomically, so that a later audit can re-score the points; the table and
        record are :mod:`epsl.results.records`'s. The metadata names the norm (files written before
        other norms existed have none and are ℓ∞)."""
        tensors = {"x_adv": self.x_adv, "eps_star": self.eps_star, "pred": self.pred,
                   "label": self.label,
                   **{f"per_attack.{k}": v for k, v in self.per_attack.items()}}
        path = Path(folder) / TENSORS_FILE
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata={"format": "epsl.attacks.eps_star/1", "attack": json.dumps(self.attack),
                                "norm": self.norm})
        return path

    @classmethod
    def load(cls, folder: Path | str) -> EpsStarResult:
        """Read what :meth:`save_tensors` wrote (bit for bit); one-line error when it is
        missing or incomplete. Reads an earlier release's file name too."""
        path = Path(folder) / (stored_kind(folder, "eps_star").tensors or TENSORS_FILE)
        if not path.is_file():
            raise EpslError(f"{path}: no such file (recompute eps*)")
        try:
            tensors = load_file(str(path))
            with safe_open_metadata(path) as metadata:
                attack = tuple(json.loads(metadata["attack"]))
                norm = metadata.get("norm", Norm.LINF.value)
            per_attack = {k.removeprefix("per_attack."): v for k, v in tensors.items()
                          if k.startswith("per_attack.")}
            return cls(tensors["x_adv"], tensors["eps_star"], attack, tensors["pred"],
                       tensors["label"], per_attack, norm=norm)
        except (KeyError, ValueError, OSError, RuntimeError, EpslError) as exc:
            raise EpslError(f"{path}: unreadable eps* tensors ({str(exc).splitlines()[0]}); "
                            "recompute eps*") from None

    def subset(self, idx: torch.Tensor | slice) -> EpsStarResult:
        """The examples ``idx`` (a 1-D tensor of indices or a slice) of this result."""
        if isinstance(idx, torch.Tensor):
            if idx.ndim != 1:
                raise EpslError(f"subset takes a 1-D index or a slice (got shape "
                                f"{tuple(idx.shape)})")
            idx = idx.cpu()
        where = (lambda t: t[idx.to(t.device)]) if isinstance(idx, torch.Tensor)\
            else (lambda t: t[idx])
        names = np.asarray(self.attack, dtype=object)
        attack = tuple(names[idx.numpy() if isinstance(idx, torch.Tensor) else idx])\
            if len(names) else ()
        return EpsStarResult(where(self.x_adv), where(self.eps_star), attack,
                             where(self.pred), where(self.label),
                             {k: where(v) for k, v in self.per_attack.items()}, norm=self.norm)


@contextlib.contextmanager
def safe_open_metadata(path: Path) -> Iterator[dict[str, str]]:
    """The string metadata of a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        yield handle.metadata() or {}
