"""Equation 4 of Shafahi et al., in every ℓp norm: logit gaps, gradient gaps, cosines and ε_L.

For an example x with label y and logits z, a first-order (linear) model of z around x says
that the smallest ℓp perturbation turning class ybar ahead of y has size

    eps_L(ybar) = (z_y - z_ybar) / || grad_x z_y - grad_x z_ybar ||_q,   1/p + 1/q = 1

with q the dual norm (:func:`epsl.norms.dual`): ‖·‖_1 for the paper's ℓ∞ (Eq. 4, reached by
delta = -eps_L * sign(grad_x z_y - grad_x z_ybar), Eq. 3), ‖·‖_2 for ℓ2 and ‖·‖_∞ for ℓ1
(docs/method.md derives it). eps_L = min over ybar != y of eps_L(ybar), and the minimising
class is the ``rival``. For a misclassified example the argmax class has a negative gap, so
eps_L < 0. The predicted accuracy at eps (Table 1, "Equation 4") is the fraction of examples
with eps < eps_L. Every norm comes from the same Jacobian: asking for several costs no extra
backward pass (:func:`diagnose_norms`).
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
from epsl.norms import Norm, dual, lp, parse_norm

TENSORS_FILE = "diagnostics.safetensors"


@dataclass(frozen=True)
class Diagnostics:
    """Per-example Equation 4 quantities (N rows, K classes) in one ℓp norm, on the CPU.

    Attributes:
        index: (N,) int64, the example's row in the data set it came from.
        label, pred: (N,) int64, true class y and argmax of the logits.
        correct: (N,) bool, ``pred == label``.
        logits: (N, K) float, z (Figure 2).
        logit_gap: (N,) z_y - z_rival (Figure 1, numerator of Eq. 4).
        grad_gap: (N,) ||grad z_y - grad z_rival||_q, the dual norm of ``norm`` (the
            denominator of Eq. 4: ‖·‖_1 for ℓ∞); its table column is ``grad_gap_<q>``.
        grad_cosine: (N,) cos(grad z_y, grad z_rival) (Figures 3, 4); 0 when a gradient is 0.
        eps_l: (N,) min over ybar != y of gap / grad gap (Eq. 4); negative when misclassified.
        rival: (N,) int64, the minimising ybar.
        grad_l1: (N, K) ||grad z_k||_1 for every class (Figure 7).
        logit_gap_all, grad_gap_all, grad_cosine_all: (N, K) the same per wrong class, NaN at
            the true class.
        eps_l_all: (N, K) gap / grad gap per wrong class, +inf at the true class. A zero
            gradient gap gives +inf for a positive gap, -inf for a negative one, 0 for a tie.
        norm: the threat model p (``"linf"``, ``"l2"``, ``"l1"``) of every eps above.
    """

    index: torch.Tensor
    label: torch.Tensor
    pred: torch.Tensor
    correct: torch.Tensor
    logits: torch.Tensor
    logit_gap: torch.Tensor
    grad_gap: torch.Tensor
    grad_cosine: torch.Tensor
    eps_l: torch.Tensor
    rival: torch.Tensor
    grad_l1: torch.Tensor
    logit_gap_all: torch.Tensor
    grad_gap_all: torch.Tensor
    grad_cosine_all: torch.Tensor
    eps_l_all: torch.Tensor
    norm: str = "linf"

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[1])

    @property
    def clean_accuracy(self) -> float:
        return float(self.correct.float().mean())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in TENSOR_FIELDS}

    @property
    def grad_gap_column(self) -> str:
        """The table column of :attr:`grad_gap`: ``grad_gap_l1`` for ℓ∞ (the paper's),
        ``grad_gap_l2`` for ℓ2, ``grad_gap_linf`` for ℓ1."""
        return grad_gap_column(self.norm)

    def to_frame(self) -> pd.DataFrame:
        """One row per example: ``index, label, pred, correct, logit_gap, grad_gap_<q>,
        grad_cosine, eps_l, rival, grad_l1_label, grad_l1_rival, logit_0 .. logit_{K-1}``
        (q: the dual norm; ``grad_l1_*`` are ℓ1 norms in every norm, Figure 7's)."""
        rows = torch.arange(len(self))
        frame = pd.DataFrame({
            "index": self.index.numpy(),
            "label": self.label.numpy(),
            "pred": self.pred.numpy(),
            "correct": self.correct.numpy(),
            "logit_gap": self.logit_gap.numpy(),
            self.grad_gap_column: self.grad_gap.numpy(),
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
            save_file(tensors, str(tmp), metadata={"format": "epsl.diagnostics/2",
                                                   "norm": self.norm})
        return out / TENSORS_FILE

    @classmethod
    def load(cls, path_dir: Path | str) -> Diagnostics:
        """Read what :meth:`save` wrote (from the safetensors file, bit for bit)."""
        path = Path(path_dir) / TENSORS_FILE
        if not path.is_file():
            raise EpslError(f"{path}: no such diagnostics file")
        from safetensors import safe_open

        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        missing = [name for name in TENSOR_FIELDS if name not in tensors]
        if missing or metadata.get("format") != "epsl.diagnostics/2":
            raise EpslError(f"{path}: missing tensors {', '.join(missing) or '(old format)'}; "
                            "recompute the diagnostics")
        return cls(**{name: tensors[name] for name in TENSOR_FIELDS},
                   norm=parse_norm(metadata.get("norm", "linf")).value)


#: the tensors of :class:`Diagnostics` (every field but ``norm``)
TENSOR_FIELDS = tuple(f.name for f in fields(Diagnostics) if f.name != "norm")


def grad_gap_column(norm: str | Norm) -> str:
    """The diagnostics table's gradient-gap column in ``norm``: named by its dual norm."""
    return f"grad_gap_{dual(norm).value}"


def _ratio(gap: torch.Tensor, grad_gap: torch.Tensor) -> torch.Tensor:
    """gap / grad_gap, with a zero gradient gap giving sign(gap) * inf (0 for a tie)."""
    safe = torch.where(grad_gap > 0, grad_gap, torch.ones_like(grad_gap))
    flat = torch.sign(gap) * math.inf
    flat = torch.where(gap == 0, torch.zeros_like(gap), flat)
    return torch.where(grad_gap > 0, gap / safe, flat)


def margins_from_jacobian(jac: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
                          index: torch.Tensor, norm: str | Norm = "linf") -> Diagnostics:
    """Equation 4 quantities in ``norm`` from a Jacobian (N x K x ...), logits (N x K) and
    labels (N,): the gradient gaps are measured in the dual norm."""
    p = parse_norm(norm)
    n, num_classes = logits.shape
    grads = jac.reshape(n, num_classes, -1)
    rows = torch.arange(n, device=logits.device)
    true = torch.nn.functional.one_hot(y, num_classes).bool()
    grad_y = grads[rows, y]  # N x P
    logit_gap_all = logits[rows, y][:, None] - logits
    grad_gap_all = lp(grad_y[:, None, :] - grads, dual(p))
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
        logit_gap=logit_gap_all[rows, rival].cpu(), grad_gap=grad_gap_all[rows, rival].cpu(),
        grad_cosine=cosine_all[rows, rival].cpu(), eps_l=eps_l_all[rows, rival].cpu(),
        rival=rival.cpu(), grad_l1=grad_l1.cpu(),
        logit_gap_all=logit_gap_all.masked_fill(true, nan).cpu(),
        grad_gap_all=grad_gap_all.masked_fill(true, nan).cpu(),
        grad_cosine_all=cosine_all.masked_fill(true, nan).cpu(),
        eps_l_all=eps_l_all.cpu(), norm=p.value,
    )


def _concat(parts: Sequence[Diagnostics]) -> Diagnostics:
    return Diagnostics(**{name: torch.cat([getattr(p, name) for p in parts])
                          for name in TENSOR_FIELDS}, norm=parts[0].norm)


def diagnose(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             chunk_size: int | None = None, device: torch.device | str | None = None,
             batch_size: int = 256, method: str = DEFAULT_METHOD,
             index: torch.Tensor | None = None, progress: Progress | None = None,
             norm: str | Norm = "linf") -> Diagnostics:
    """Per-example logit gaps, gradient gaps, cosines and eps_L (Eq. 4) for ``model`` on (x, y)
    in the ℓp threat model ``norm``.

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
        norm: ``"linf"`` (the paper's Eq. 4), ``"l2"`` or ``"l1"``: eps_L is in this norm and
            the gradient gap in its dual (:mod:`epsl.norms`).

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
    return diagnose_norms(model, x, y, norms=(norm,), chunk_size=chunk_size, device=device,
                          batch_size=batch_size, method=method, index=index,
                          progress=progress)[parse_norm(norm).value]


def diagnose_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                   norms: Sequence[str | Norm] = ("linf", "l2", "l1"),
                   chunk_size: int | None = None, device: torch.device | str | None = None,
                   batch_size: int = 256, method: str = DEFAULT_METHOD,
                   index: torch.Tensor | None = None, progress: Progress | None = None
                   ) -> dict[str, Diagnostics]:
    """:func:`diagnose` in several norms from one Jacobian per batch (no extra backward
    pass): ``{norm: Diagnostics}`` keyed by each norm's name, in the order given."""
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise EpslError(f"x ({tuple(x.shape)}) and y ({tuple(y.shape)}) must be N x ... and N")
    if len(x) == 0:
        raise EpslError("no examples to diagnose")
    if batch_size < 1:
        raise EpslError(f"batch_size must be at least 1 (got {batch_size})")
    wanted = list(dict.fromkeys(parse_norm(n).value for n in norms))
    if not wanted:
        raise EpslError("norms: give at least one of linf, l2, l1")
    dev = torch.device(device) if device is not None else model_device(model)
    index = torch.arange(len(x)) if index is None else index.to(torch.int64)
    if len(index) != len(x):
        raise EpslError(f"index has {len(index)} entries for {len(x)} examples")
    sharded = world().distributed

    def one_batch(start: int) -> tuple[torch.Tensor, ...]:
        xb = x[start:start + batch_size].to(dev)
        yb = y[start:start + batch_size].to(dev, torch.int64)
        jac, logits = jacobian_and_logits(model, xb, chunk_size=chunk_size, method=method,
                                          progress=None if sharded else progress)
        if int(yb.max()) >= logits.shape[1] or int(yb.min()) < 0:
            raise EpslError(f"labels must lie in 0..{logits.shape[1] - 1}")
        rows = index[start:start + batch_size].to(dev)
        parts = [margins_from_jacobian(jac, logits, yb, rows, norm) for norm in wanted]
        return tuple(getattr(part, name) for part in parts for name in TENSOR_FIELDS)

    starts = list(range(0, len(x), batch_size))
    with eval_mode(model):
        # under torchrun each process computes every N-th batch and all receive all of them
        batches = shard_map(one_batch, starts, progress=progress if sharded else None,
                            sizes=[min(batch_size, len(x) - s) for s in starts])
    width = len(TENSOR_FIELDS)
    return {norm: _concat([Diagnostics(**dict(zip(TENSOR_FIELDS,
                                                  batch[k * width:(k + 1) * width],
                                                  strict=True)), norm=norm)
                           for batch in batches])
            for k, norm in enumerate(wanted)}


def predicted_accuracy(eps_l: torch.Tensor | Any, eps: float | Iterable[float]
                       ) -> float | dict[float, float]:
    """Fraction of examples with ``eps < eps_L`` (Table 1, column "Equation 4").

    ``eps`` is one radius in the norm of ``eps_l`` (pixel units, [0, 1] scale) or several;
    several give ``{eps: accuracy}``.
    """
    values = torch.as_tensor(eps_l)
    if values.numel() == 0:
        raise EpslError("no eps_L values")

    def one(e: float) -> float:
        return int((values > float(e)).sum()) / values.numel()

    if isinstance(eps, numbers.Real) or (hasattr(eps, "ndim") and eps.ndim == 0):
        return one(float(eps))  # type: ignore[arg-type]
    return {float(e): one(e) for e in eps}  # type: ignore[union-attr]
