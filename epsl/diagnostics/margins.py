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
from epsl.diagnostics.jacobians import (
    DEFAULT_METHOD,
    Progress,
    linearise,
    parse_memory,
    plan_chunks,
)
from epsl.distributed import shard_map, world
from epsl.errors import EpslError
from epsl.modes import eval_mode
from epsl.norms import Norm, dual, parse_norm
from epsl.results.files import atomic_path

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
        top_k: ``None`` when the rival was searched over every wrong class (exact); else the
            number of wrong classes searched, those with the highest logits. The per-class
            matrices are NaN at the classes not searched, and eps_L over fewer classes can
            only be larger (optimistic).
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
    top_k: int | None = None

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
        grad_cosine, eps_l, rival, grad_l1_label, grad_l1_rival, logit_label, logit_rival``,
        then the T = min(K, :data:`TOP_LOGITS`) highest logits, ``top_1 .. top_T`` (their
        classes) and ``logit_top_1 .. logit_top_T``: at 10 classes every logit (Figure 2), at
        1000 never 1000 columns. Every logit stays in the tensors file
        (:meth:`save_tensors`). q: the dual norm; ``grad_l1_*`` are ℓ1 norms in every norm,
        Figure 7's."""
        rows = torch.arange(len(self))
        columns: dict[str, Any] = {
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
            "logit_label": self.logits[rows, self.label].numpy(),
            "logit_rival": self.logits[rows, self.rival].numpy(),
        }
        top = self.logits.topk(min(self.num_classes, TOP_LOGITS), dim=1)
        for rank in range(top.indices.shape[1]):
            columns[f"top_{rank + 1}"] = top.indices[:, rank].numpy()
        for rank in range(top.indices.shape[1]):
            columns[f"logit_top_{rank + 1}"] = top.values[:, rank].numpy()
        return pd.DataFrame(columns)

    def save_tensors(self, path_dir: Path | str) -> Path:
        """Write ``diagnostics.safetensors`` (every tensor, exact) into ``path_dir``,
        atomically; the table and record are :mod:`epsl.results.records`'s (see
        :meth:`epsl.results.records.Result.save` of :func:`epsl.runs.diagnose.run_diagnose`)."""
        out = Path(path_dir)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors().items()}
        with atomic_path(out / TENSORS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={
                "format": "epsl.diagnostics/2", "norm": self.norm,
                "top_k": "all" if self.top_k is None else str(self.top_k)})
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
        top_k = metadata.get("top_k", "all")
        return cls(**{name: tensors[name] for name in TENSOR_FIELDS},
                   norm=parse_norm(metadata.get("norm", "linf")).value,
                   top_k=None if top_k == "all" else int(top_k))


#: the tensors of :class:`Diagnostics` (every field but ``norm`` and ``top_k``)
TENSOR_FIELDS = tuple(f.name for f in fields(Diagnostics) if f.name not in ("norm", "top_k"))
#: the highest logits a diagnostics table keeps per example (all of them at 10 classes)
TOP_LOGITS = 10


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
    labels (N,): the gradient gaps are measured in the dual norm. :func:`diagnose` computes
    the same without holding the Jacobian (:func:`reduce_blocks`)."""
    rows = torch.arange(len(logits), device=logits.device)[:, None]
    every = torch.arange(logits.shape[1], device=logits.device).expand(len(logits), -1)
    return reduce_blocks(logits, y, index, lambda classes: jac[rows, classes], every, y,
                         columns=logits.shape[1], norms=(norm,))[0]


def candidate_classes(logits: torch.Tensor, y: torch.Tensor, top_k: int | None
                      ) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """``(classes, at, top_k)``: per example the classes whose gradients Eq. 4 needs (N x M)
    and the column of the true class among them (N,). Every class (``top_k`` None, or at
    least K - 1): ``classes[i] = 0..K-1``. Else the true class and the ``top_k`` wrong classes
    with the highest logits, as DeepFool's ``candidates``. The third item is the ``top_k``
    in effect (None when every wrong class is searched)."""
    n, num_classes = logits.shape
    if top_k is not None and top_k < 1:
        raise EpslError(f"top_k must be at least 1 (got {top_k})")
    if top_k is None or top_k >= num_classes - 1:
        return torch.arange(num_classes, device=logits.device).expand(n, -1), y, None
    true = torch.nn.functional.one_hot(y, num_classes).bool()
    rivals = logits.masked_fill(true, -math.inf).topk(top_k, dim=1).indices
    return torch.cat([y[:, None], rivals], dim=1), torch.zeros_like(y), top_k


def reduce_blocks(logits: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                  block: Any, classes: torch.Tensor, at: torch.Tensor, *, columns: int,
                  norms: Sequence[str | Norm], top_k: int | None = None
                  ) -> list[Diagnostics]:
    """Equation 4 in each of ``norms`` for one chunk, reducing the Jacobian block by block.

    ``block(c)`` (c: n x m class indices) gives the gradients d z_{c[i, j]}(x_i) / d x_i
    (n x m x ...) (:func:`epsl.diagnostics.jacobians.linearise`); ``classes`` (n x M, from
    :func:`candidate_classes`) are asked for ``columns`` at a time, and each block is reduced
    at once to the per-class gaps, norms and dot products (n x K numbers), so no more than
    n x ``columns`` gradients are ever held. When the blocks do not cover every class at once,
    the true class's gradients come first, from one extra pass.
    """
    n, num_classes = logits.shape
    rows = torch.arange(n, device=logits.device)
    if columns >= classes.shape[1]:
        first = block(classes).flatten(2)
        grad_y = first[rows, at]
        pending = [(classes, first)]
    else:
        grad_y = block(y[:, None]).flatten(2)[:, 0]
        pending = []
    wanted = [parse_norm(norm) for norm in norms]
    unknown = torch.full((n, num_classes), math.nan, dtype=logits.dtype, device=logits.device)
    gaps = {p: unknown.clone() for p in wanted}
    grad_l1, grad_l2, dots = unknown.clone(), unknown.clone(), unknown.clone()
    searched = torch.zeros((n, num_classes), dtype=torch.bool, device=logits.device)

    def absorb(picked: torch.Tensor, grads: torch.Tensor) -> None:
        # reductions that never write an n x m x D temporary (the block is the only one)
        for p in wanted:
            gaps[p].scatter_(1, picked, _gap_norms(grad_y, grads, dual(p)).to(logits.dtype))
        searched.scatter_(1, picked, True)
        grad_l1.scatter_(1, picked, torch.linalg.vector_norm(grads, 1, dim=-1).to(logits.dtype))
        grad_l2.scatter_(1, picked, torch.linalg.vector_norm(grads, 2, dim=-1).to(logits.dtype))
        dots.scatter_(1, picked, torch.bmm(grads, grad_y[:, :, None])[:, :, 0].to(logits.dtype))

    if pending:
        absorb(*pending.pop())
    else:
        for start in range(0, classes.shape[1], columns):
            picked = classes[:, start:start + columns]
            absorb(picked, block(picked).flatten(2))
    norm_y = grad_y.norm(dim=-1).to(logits.dtype)
    return [_finish(logits, y, index, gaps[p], grad_l1, grad_l2, dots, norm_y, p, top_k,
                    searched)
            for p in wanted]


def _gap_norms(grad_y: torch.Tensor, grads: torch.Tensor, q: Norm) -> torch.Tensor:
    """``||grad_y[i] - grads[i, j]||_q`` (n x m) for grad_y n x D and grads n x m x D, without
    the n x m x D difference (``torch.cdist``, its direct p-norm, never the matrix-product
    shortcut for ℓ2, which loses digits to cancellation)."""
    p = {Norm.L1: 1.0, Norm.L2: 2.0, Norm.LINF: math.inf}[q]
    return torch.cdist(grad_y[:, None, :], grads, p=p,
                       compute_mode="donot_use_mm_for_euclid_dist")[:, 0, :]


def _finish(logits: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
            grad_gap_all: torch.Tensor, grad_l1: torch.Tensor, grad_l2: torch.Tensor,
            dots: torch.Tensor, norm_y: torch.Tensor, norm: Norm, top_k: int | None,
            searched: torch.Tensor) -> Diagnostics:
    """:class:`Diagnostics` from the per-class reductions (n x K, NaN where not searched)."""
    n, num_classes = logits.shape
    rows = torch.arange(n, device=logits.device)
    true = torch.nn.functional.one_hot(y, num_classes).bool()
    logit_gap_all = logits[rows, y][:, None] - logits
    denom = grad_l2 * norm_y[:, None]
    cosine_all = torch.where(denom > 0, dots / torch.where(denom > 0, denom, 1.0), 0.0)
    cosine_all = cosine_all.masked_fill(~searched, math.nan)
    eps_l_all = _ratio(logit_gap_all, torch.where(searched, grad_gap_all, 1.0))
    eps_l_all = eps_l_all.masked_fill(~searched, math.nan).masked_fill(true, math.inf)
    # rival: the searched wrong class with the smallest eps_L; ties (e.g. all +inf) go to the
    # wrong class with the highest logit, so the true class is never chosen.
    order = logit_gap_all.masked_fill(true, math.inf)
    tie_break = torch.argsort(order, dim=1, stable=True)
    sorted_eps = torch.nan_to_num(eps_l_all, nan=math.inf).gather(1, tie_break)
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
        eps_l_all=eps_l_all.cpu(), norm=norm.value, top_k=top_k,
    )


def _concat(parts: Sequence[Diagnostics]) -> Diagnostics:
    return Diagnostics(**{name: torch.cat([getattr(p, name) for p in parts])
                          for name in TENSOR_FIELDS}, norm=parts[0].norm, top_k=parts[0].top_k)


def diagnose(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             chunk_size: int | None = None, device: torch.device | str | None = None,
             batch_size: int = 256, method: str = DEFAULT_METHOD,
             index: torch.Tensor | None = None, progress: Progress | None = None,
             norm: str | Norm = "linf", memory: int | str | None = None,
             top_k: int | None = None) -> Diagnostics:
    """Per-example logit gaps, gradient gaps, cosines and eps_L (Eq. 4) for ``model`` on (x, y)
    in the ℓp threat model ``norm``.

    Args:
        model: a classifier on pixels in [0, 1]; computed in eval mode (see
            :func:`~epsl.diagnostics.jacobian`).
        x: N x C x H x W pixels in [0, 1]; y: (N,) int labels.
        chunk_size: examples per Jacobian chunk (``None``: from ``memory``).
        device: where to compute (default: the model's device). The model is not moved; pass
            a model already on ``device``.
        batch_size: examples per unit of work (of progress, and of sharding under torchrun).
            The Jacobian is never held whole: each chunk's is reduced class block by class
            block (:func:`reduce_blocks`), sized by ``memory``.
        method: the Jacobian method (``"auto"``: the fastest measured on the device, or
            ``"backward"``, ``"vjp"``, ``"jacrev"``).
        index: (N,) example indices to report (default ``0..N-1``).
        progress: called with the number of examples finished after every chunk.
        norm: ``"linf"`` (the paper's Eq. 4), ``"l2"`` or ``"l1"``: eps_L is in this norm and
            the gradient gap in its dual (:mod:`epsl.norms`).
        memory: bytes the Jacobian chunks may use (``"2GiB"``, ``"512MB"`` or an int;
            default :func:`~epsl.diagnostics.jacobians.memory_budget`: half the free CUDA
            memory, or on the CPU a quarter of the available memory, at most 1 GiB). A budget
            too small for one example is refused.
        top_k: search the rival among the ``top_k`` wrong classes with the highest logits
            only (DeepFool's ``candidates``) instead of all of them (``None``, the default and
            exact). A minimum over fewer classes can only raise eps_L: the result is
            optimistic wherever the exact rival lies outside the top k (docs/diagnostics.md
            measures how often).

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
                          progress=progress, memory=memory,
                          top_k=top_k)[parse_norm(norm).value]


def diagnose_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                   norms: Sequence[str | Norm] = ("linf", "l2", "l1"),
                   chunk_size: int | None = None, device: torch.device | str | None = None,
                   batch_size: int = 256, method: str = DEFAULT_METHOD,
                   index: torch.Tensor | None = None, progress: Progress | None = None,
                   memory: int | str | None = None, top_k: int | None = None
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
    if chunk_size is not None and chunk_size < 1:
        raise EpslError(f"chunk_size must be at least 1 (got {chunk_size})")
    if top_k is not None and top_k < 1:
        raise EpslError(f"top_k must be at least 1 (got {top_k})")
    budget = parse_memory(memory)
    with eval_mode(model):
        examples, columns = plan_chunks(model, x[:1].to(dev), top_k=top_k, method=method,
                                        budget=budget, chunk_size=chunk_size,
                                        n=min(len(x), batch_size))

    def one_chunk(xc: torch.Tensor, yc: torch.Tensor, rows: torch.Tensor) -> list[Diagnostics]:
        logits, block = linearise(model, xc, method=method)
        if int(yc.max()) >= logits.shape[1] or int(yc.min()) < 0:
            raise EpslError(f"labels must lie in 0..{logits.shape[1] - 1}")
        classes, at, searched = candidate_classes(logits, yc, top_k)
        return reduce_blocks(logits, yc, rows, block, classes, at, columns=columns,
                             norms=wanted, top_k=searched)

    def one_batch(start: int) -> tuple[torch.Tensor, ...]:
        stop = min(start + batch_size, len(x))
        parts = []
        for first in range(start, stop, examples):
            last = min(first + examples, stop)
            parts.append(one_chunk(x[first:last].to(dev), y[first:last].to(dev, torch.int64),
                                   index[first:last].to(dev)))
            if progress is not None and not sharded:
                progress(last - first)
        merged = [_concat([part[k] for part in parts]) for k in range(len(wanted))]
        return tuple(getattr(part, name) for part in merged for name in TENSOR_FIELDS)

    starts = list(range(0, len(x), batch_size))
    with eval_mode(model):
        # under torchrun each process computes every N-th batch and all receive all of them
        batches = shard_map(one_batch, starts, progress=progress if sharded else None,
                            sizes=[min(batch_size, len(x) - s) for s in starts])
    width = len(TENSOR_FIELDS)
    effective = None if top_k is None or top_k >= _num_classes(batches) - 1 else top_k
    return {norm: _concat([Diagnostics(**dict(zip(TENSOR_FIELDS,
                                                  batch[k * width:(k + 1) * width],
                                                  strict=True)), norm=norm, top_k=effective)
                           for batch in batches])
            for k, norm in enumerate(wanted)}


def _num_classes(batches: Sequence[tuple[torch.Tensor, ...]]) -> int:
    return int(batches[0][TENSOR_FIELDS.index("logits")].shape[1])


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


__all__ = ["Diagnostics", "TENSORS_FILE", "TENSOR_FIELDS", "TOP_LOGITS", "candidate_classes",
           "diagnose", "diagnose_norms", "grad_gap_column", "margins_from_jacobian",
           "predicted_accuracy", "reduce_blocks"]
