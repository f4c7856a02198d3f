"""Equation 4 of Shafahi et al.: logit gaps, gradient gaps, cosines and eps_L per example.

For an example x with label y and logits z, a first-order (linear) model of z around x says
that the smallest l_inf perturbation turning class ybar ahead of y has size

    eps_L(ybar) = (z_y - z_ybar) / || grad_x z_y - grad_x z_ybar ||_1          (Eq. 4)

reached by delta = -eps_L * sign(grad_x z_y - grad_x z_ybar) (Eq. 3). eps_L = min over
ybar != y of eps_L(ybar), and the minimising class is the ``rival``. For a misclassified
example the argmax class has a negative gap, so eps_L < 0. The predicted accuracy at eps
(Table 1, "Equation 4") is the fraction of examples with eps < eps_L.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from epsl.device import model_device
from epsl.diagnostics.jacobians import DEFAULT_METHOD, Progress, jacobian_and_logits
from epsl.distributed import shard_map, world
from epsl.errors import EpslError
from epsl.io import atomic_path
from epsl.modes import eval_mode

TENSORS_FILE = "diagnostics.safetensors"


@dataclass(frozen=True)
class Diagnostics:
    """Per-example Equation 4 quantities (N rows, K classes), all on the CPU.

    Attributes:
        index: (N,) int64, the example's row in the data set it came from.
        label, pred: (N,) int64, true class y and argmax of the logits.
        correct: (N,) bool, ``pred == label``.
        logits: (N, K) float, z (Figure 2).
        logit_gap: (N,) z_y - z_rival (Figure 1, numerator of Eq. 4).
        grad_gap_l1: (N,) ||grad z_y - grad z_rival||_1 (denominator of Eq. 4).
        grad_cosine: (N,) cos(grad z_y, grad z_rival) (Figures 3, 4); 0 when a gradient is 0.
        eps_l: (N,) min over ybar != y of gap / grad gap (Eq. 4); negative when misclassified.
        rival: (N,) int64, the minimising ybar.
        grad_l1: (N, K) ||grad z_k||_1 for every class (Figure 7).
        logit_gap_all, grad_gap_all, grad_cosine_all: (N, K) the same per wrong class, NaN at
            the true class.
        eps_l_all: (N, K) gap / grad gap per wrong class, +inf at the true class. A zero
            gradient gap gives +inf for a positive gap, -inf for a negative one, 0 for a tie.
    """

    index: torch.Tensor
    label: torch.Tensor
    pred: torch.Tensor
    correct: torch.Tensor
    logits: torch.Tensor
    logit_gap: torch.Tensor
    grad_gap_l1: torch.Tensor
    grad_cosine: torch.Tensor
    eps_l: torch.Tensor
    rival: torch.Tensor
    grad_l1: torch.Tensor
    logit_gap_all: torch.Tensor
    grad_gap_all: torch.Tensor
    grad_cosine_all: torch.Tensor
    eps_l_all: torch.Tensor

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[1])

    @property
    def clean_accuracy(self) -> float:
        return float(self.correct.float().mean())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_frame(self) -> pd.DataFrame:
        """One row per example: ``index, label, pred, correct, logit_gap, grad_gap_l1,
        grad_cosine, eps_l, rival, grad_l1_label, grad_l1_rival, logit_0 .. logit_{K-1}``."""
        rows = torch.arange(len(self))
        frame = pd.DataFrame({
            "index": self.index.numpy(),
            "label": self.label.numpy(),
            "pred": self.pred.numpy(),
            "correct": self.correct.numpy(),
            "logit_gap": self.logit_gap.numpy(),
            "grad_gap_l1": self.grad_gap_l1.numpy(),
            "grad_cosine": self.grad_cosine.numpy(),
            "eps_l": self.eps_l.numpy(),
            "rival": self.rival.numpy(),
            "grad_l1_label": self.grad_l1[rows, self.label].numpy(),
            "grad_l1_rival": self.grad_l1[rows, self.rival].numpy(),
        })
        logits = pd.DataFrame(self.logits.numpy(),
                              columns=[f"logit_{k}" for k in range(self.num_classes)])
        return pd.concat([frame, logits], axis=1)

    def save_tensors(self, path_dir: Path | str) -> Path:
        """Write ``diagnostics.safetensors`` (every tensor, exact) into ``path_dir``,
        atomically; the table and record are :mod:`epsl.records`'s (see
        :meth:`epsl.records.Result.save` of :func:`epsl.diagnostics.runs.run_diagnose`)."""
        out = Path(path_dir)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors().items()}
        with atomic_path(out / TENSORS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "epsl.diagnostics/1"})
        return out / TENSORS_FILE

    @classmethod
    def load(cls, path_dir: Path | str) -> Diagnostics:
        """Read what :meth:`save` wrote (from the safetensors file, bit for bit)."""
        path = Path(path_dir) / TENSORS_FILE
        if not path.is_file():
            raise EpslError(f"{path}: no such diagnostics file")
        tensors = load_file(str(path))
        missing = [f.name for f in fields(cls) if f.name not in tensors]
        if missing:
            raise EpslError(f"{path}: missing tensors {', '.join(missing)}")
        return cls(**{f.name: tensors[f.name] for f in fields(cls)})


def _ratio(gap: torch.Tensor, grad_gap: torch.Tensor) -> torch.Tensor:
    """gap / grad_gap, with a zero gradient gap giving sign(gap) * inf (0 for a tie)."""
    safe = torch.where(grad_gap > 0, grad_gap, torch.ones_like(grad_gap))
    flat = torch.sign(gap) * math.inf
    flat = torch.where(gap == 0, torch.zeros_like(gap), flat)
    return torch.where(grad_gap > 0, gap / safe, flat)


def margins_from_jacobian(jac: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
                          index: torch.Tensor) -> Diagnostics:
    """Equation 4 quantities from a Jacobian (N x K x ...), logits (N x K) and labels (N,)."""
    n, num_classes = logits.shape
    grads = jac.reshape(n, num_classes, -1)
    rows = torch.arange(n, device=logits.device)
    true = torch.nn.functional.one_hot(y, num_classes).bool()
    grad_y = grads[rows, y]  # N x P
    logit_gap_all = logits[rows, y][:, None] - logits
    grad_gap_all = (grad_y[:, None, :] - grads).abs().sum(-1)
    grad_l1 = grads.abs().sum(-1)
    norms = grads.norm(dim=-1)
    dots = (grads * grad_y[:, None, :]).sum(-1)
    denom = norms * norms[rows, y][:, None]
    cosine_all = torch.where(denom > 0, dots / torch.where(denom > 0, denom, 1.0), 0.0)
    eps_l_all = _ratio(logit_gap_all, grad_gap_all).masked_fill(true, math.inf)
    # rival: the wrong class with the smallest eps_L; ties (e.g. all +inf) go to the wrong class
    # with the highest logit, so the true class is never chosen.
    order = logit_gap_all.masked_fill(true, math.inf)
    tie_break = torch.argsort(order, dim=1, stable=True)
    sorted_eps = eps_l_all.gather(1, tie_break)
    rival = tie_break[rows, torch.argmin(sorted_eps, dim=1)]
    nan = float("nan")
    pred = logits.argmax(1)
    return Diagnostics(
        index=index.cpu(), label=y.cpu(), pred=pred.cpu(), correct=(pred == y).cpu(),
        logits=logits.cpu(),
        logit_gap=logit_gap_all[rows, rival].cpu(), grad_gap_l1=grad_gap_all[rows, rival].cpu(),
        grad_cosine=cosine_all[rows, rival].cpu(), eps_l=eps_l_all[rows, rival].cpu(),
        rival=rival.cpu(), grad_l1=grad_l1.cpu(),
        logit_gap_all=logit_gap_all.masked_fill(true, nan).cpu(),
        grad_gap_all=grad_gap_all.masked_fill(true, nan).cpu(),
        grad_cosine_all=cosine_all.masked_fill(true, nan).cpu(),
        eps_l_all=eps_l_all.cpu(),
    )


def _concat(parts: Sequence[Diagnostics]) -> Diagnostics:
    return Diagnostics(**{f.name: torch.cat([getattr(p, f.name) for p in parts])
                          for f in fields(Diagnostics)})


def diagnose(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             chunk_size: int | None = None, device: torch.device | str | None = None,
             batch_size: int = 256, method: str = DEFAULT_METHOD,
             index: torch.Tensor | None = None, progress: Progress | None = None) -> Diagnostics:
    """Per-example logit gaps, gradient gaps, cosines and eps_L (Eq. 4) for ``model`` on (x, y).

    Args:
        model: a classifier on pixels in [0, 1]; computed in eval mode (see
            :func:`~epsl.diagnostics.jacobian`).
        x: N x C x H x W pixels in [0, 1]; y: (N,) int labels.
        chunk_size: examples per Jacobian chunk (``None``: from free memory).
        device: where to compute (default: the model's device). The model is not moved; pass
            a model already on ``device``.
        batch_size: examples whose full Jacobian (batch x K x pixels) is held at once before
            it is reduced to the per-example quantities.
        method: the Jacobian method (``"auto"``: the fastest measured on the device, or
            ``"backward"``, ``"vjp"``, ``"jacrev"``).
        index: (N,) example indices to report (default ``0..N-1``).
        progress: called with the number of examples finished after every chunk.

    Returns:
        :class:`Diagnostics` with tensors on the CPU.

    Example:
        >>> from epsl.data import load_split
        >>> from epsl.models import create_model
        >>> data = load_split("digits", "test").subset(16)
        >>> net = create_model("small-cnn", in_channels=1, num_classes=10, input_size=8,
        ...                    mean=[0.3], std=[0.4]).eval()
        >>> d = diagnose(net, data.x, data.y)
        >>> d.to_frame().shape[0], bool((d.eps_l[~d.correct] <= 0).all())
        (16, True)
    """
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise EpslError(f"x ({tuple(x.shape)}) and y ({tuple(y.shape)}) must be N x ... and N")
    if len(x) == 0:
        raise EpslError("no examples to diagnose")
    if batch_size < 1:
        raise EpslError(f"batch_size must be at least 1 (got {batch_size})")
    dev = torch.device(device) if device is not None else model_device(model)
    index = torch.arange(len(x)) if index is None else index.to(torch.int64)
    if len(index) != len(x):
        raise EpslError(f"index has {len(index)} entries for {len(x)} examples")
    names = [f.name for f in fields(Diagnostics)]
    sharded = world().distributed

    def one_batch(start: int) -> tuple[torch.Tensor, ...]:
        xb = x[start:start + batch_size].to(dev)
        yb = y[start:start + batch_size].to(dev, torch.int64)
        jac, logits = jacobian_and_logits(model, xb, chunk_size=chunk_size, method=method,
                                          progress=None if sharded else progress)
        if int(yb.max()) >= logits.shape[1] or int(yb.min()) < 0:
            raise EpslError(f"labels must lie in 0..{logits.shape[1] - 1}")
        part = margins_from_jacobian(jac, logits, yb, index[start:start + batch_size].to(dev))
        return tuple(getattr(part, name) for name in names)

    starts = list(range(0, len(x), batch_size))
    with eval_mode(model):
        # under torchrun each process computes every N-th batch and all receive all of them
        parts = shard_map(one_batch, starts, progress=progress if sharded else None,
                          sizes=[min(batch_size, len(x) - s) for s in starts])
    return _concat([Diagnostics(**dict(zip(names, part, strict=True))) for part in parts])


def predicted_accuracy(eps_l: torch.Tensor | Any, eps: float | Iterable[float]
                       ) -> float | dict[float, float]:
    """Fraction of examples with ``eps < eps_L`` (Table 1, column "Equation 4").

    ``eps`` is one l_inf radius in pixel units ([0, 1] scale) or several; several give
    ``{eps: accuracy}``.
    """
    values = torch.as_tensor(eps_l)
    if values.numel() == 0:
        raise EpslError("no eps_L values")

    def one(e: float) -> float:
        return int((values > float(e)).sum()) / values.numel()

    if isinstance(eps, numbers.Real) or (hasattr(eps, "ndim") and eps.ndim == 0):
        return one(float(eps))  # type: ignore[arg-type]
    return {float(e): one(e) for e in eps}  # type: ignore[union-attr]
