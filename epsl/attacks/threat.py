"""The threat model every attack shares: the l_p ball (``norm="linf"``, ``"l2"`` or ``"l1"``,
:mod:`epsl.norms`) intersected with the [0, 1] box, the losses an attack ascends, the input
gradient, the checks of an attack's inputs and the per-example :class:`AttackResult`.

Pixels are in [0, 1] (N x C x H x W) everywhere; models normalise inside ``forward``. Every
adversarial example passes through :func:`project`, the one projection onto the threat model
``{x' : ||x' - x||_p <= eps} ∩ [0, 1]^D``, and is evaluated by :func:`score`.

The geometry of each norm is three small pieces, as in foolbox: the random start
(:func:`ball_noise`), the step direction (:func:`steepest_direction`: sign(g) in l_inf,
g / ||g||_2 in l2, a sparse top-|g| step in l1) and :func:`project`.

References: the CW margin loss as Madry et al. use it (https://arxiv.org/abs/1706.06083, their
``loss = -relu(z_y - max_{ybar != y} z_ybar + 50)``); the DLR loss (Croce & Hein 2020,
https://arxiv.org/abs/2003.01690); the l1 sparse step of SLIDE (Tramèr & Boneh 2019,
https://arxiv.org/abs/1904.13000) and l1-APGD (Croce & Hein 2021,
https://arxiv.org/abs/2103.01208); the l1-ball projection of Duchi et al. 2008 (Fig. 1,
https://doi.org/10.1145/1390156.1390191).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from epsl.device import model_device
from epsl.errors import EpslError
from epsl.modes import eval_mode
from epsl.norms import Norm, check_radius, parse_norm
from epsl.registry import Registry

__all__ = [
    "L1_STEP_QUANTILE", "LOSSES", "REDUCTIONS", "AttackResult", "InputGradient", "LossFn",
    "ball_noise", "batch_slices", "check_attack_inputs", "cw_loss", "default_step_size",
    "dlr_loss", "input_gradient", "logit_margin", "loss_function", "project", "score",
    "steepest_direction", "uniform_noise", "xent_loss",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: Registry[LossFn] = Registry("attack loss")


# --------------------------------------------------------------------------- geometry and losses


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor,
            norm: str | Norm = "linf") -> torch.Tensor:
    """Project ``x_adv`` onto the l_p ``eps``-ball around ``x``, then clip to [0, 1].

    Shapes: ``x_adv`` and ``x`` are N x C x H x W with ``x`` in [0, 1]; returns the same shape.
    ``eps`` may be a tensor that broadcasts against x (one radius per example, N x 1 x 1 x 1).

    - ``linf``: clip each pixel to ``[x_i - eps, x_i + eps]``. Because ``x`` lies in both the
      ball and the box, clipping to one then the other lands in their intersection; this is
      the Euclidean projection onto it.
    - ``l2``: scale ``delta = x_adv - x`` by ``min(1, eps / ||delta||_2)`` per example.
    - ``l1``: the exact Euclidean projection of ``delta`` onto the l1 ball (Duchi et al. 2008,
      Fig. 1: sort ``|delta|``, find the threshold theta, soft-threshold by it).

    In l2 and l1 the point is then clipped to [0, 1]. Since ``x`` is in the box, clipping
    ``x + delta`` never increases any ``|delta_i|``, so the point stays in the ball (it is a
    feasible point of the intersection, not always its nearest point). These two are computed
    in float64 and rounded toward ``x``, so rounding to the input's dtype never grows a
    ``|delta_i|`` either: ``||x' - x||_p <= eps`` holds to float64 precision.
    """
    p = parse_norm(norm)
    if p is Norm.LINF:
        return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)
    centre = x.double()
    delta = (x_adv.double() - centre).flatten(1)
    radius = _radii(eps, len(x), delta.device)
    if p is Norm.L2:
        size = torch.linalg.vector_norm(delta, ord=2, dim=1, keepdim=True)
        delta = delta * (radius / size.clamp_min(torch.finfo(delta.dtype).tiny)).clamp(max=1.0)
    else:
        delta = _project_l1_ball(delta, radius)
    target = (centre + delta.view_as(centre)).clamp_(0.0, 1.0)
    rounded = target.to(x.dtype)
    grew = (rounded.double() - centre).abs() > (target - centre).abs()
    return torch.where(grew, torch.nextafter(rounded, x), rounded)


def _radii(eps: float | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """``eps`` as an N x 1 float64 column (a float, or one radius per example)."""
    radius = torch.as_tensor(eps, dtype=torch.float64, device=device)
    return radius.reshape(-1, 1) if radius.numel() > 1 else radius.reshape(1, 1).expand(n, 1)


def _project_l1_ball(delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``delta`` (N x D) onto ``{||z||_1 <= radius}``
    (radius N x 1): Duchi et al. 2008, Fig. 1. Rows already inside are returned unchanged."""
    size = delta.abs()
    ordered = size.sort(dim=1, descending=True).values
    cumulative = ordered.cumsum(dim=1)
    k = torch.arange(1, delta.shape[1] + 1, device=delta.device, dtype=delta.dtype)
    # rho = the largest k with ordered_k > (cumsum_k - radius) / k (always >= 1 for radius > 0)
    support = (ordered * k > cumulative - radius).sum(dim=1, keepdim=True).clamp(min=1)
    theta = (cumulative.gather(1, support - 1) - radius) / support.to(delta.dtype)
    projected = delta.sign() * (size - theta).clamp(min=0.0)
    inside = size.sum(dim=1, keepdim=True) <= radius
    return torch.where(inside, delta, projected)


def logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{ybar != y} z_ybar`` per example (N): positive iff classified right.

    This is the numerator of Eq. 4 at its minimising ``ybar``.
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - others.amax(1)


@LOSSES.register("xent")
def xent_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example (N)."""
    return F.cross_entropy(logits, y, reduction="none")


def cw_loss(logits: torch.Tensor, y: torch.Tensor, confidence: float = 50.0) -> torch.Tensor:
    """Madry et al.'s CW loss per example (N): ``-relu(z_y - max_{ybar != y} z_ybar + kappa)``.

    Ascending it pushes the best wrong logit above the true one; it stops growing once the
    wrong logit leads by ``kappa`` (= ``confidence``, 50 in their code).
    """
    return -F.relu(logit_margin(logits, y) + confidence)


LOSSES.register("cw")(cw_loss)


@LOSSES.register("dlr")
def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits-ratio loss of Croce & Hein (2020) per example (N); needs >= 3 classes.

    ``-(z_y - max_{ybar != y} z_ybar) / (z_pi1 - z_pi3)`` with logits sorted decreasingly.
    """
    ordered = logits.sort(1, descending=True).values
    return -logit_margin(logits, y) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def loss_function(name: str, confidence: float) -> LossFn:
    """The loss ``name`` of :data:`LOSSES` as ``fn(logits, y) -> (N,)``; ``"cw"`` with kappa =
    ``confidence`` (a one-line :class:`EpslError` unless it is finite and >= 0)."""
    if name == "cw":
        if not math.isfinite(confidence) or confidence < 0:
            raise EpslError(f"cw_confidence (kappa) must be a finite number >= 0 "
                            f"(got {confidence})")
        return lambda logits, y: cw_loss(logits, y, confidence)
    return LOSSES[name]


def default_step_size(eps: float, steps: int) -> float:
    """The default PGD step size ``2.5 * eps / steps`` (Madry et al.'s rule of thumb: enough to
    cross the ball from one side to the other and back)."""
    return 2.5 * eps / steps


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class AttackResult:
    """Per-example outcome of an attack on N examples.

    Attributes:
        x_adv: N x C x H x W adversarial examples in [0, 1] within the eps-ball.
        correct: (N,) bool, still classified right at ``x_adv``.
        loss: (N,) the attack's loss (``loss_name``) at ``x_adv``.
        margin: (N,) ``z_y - max_{ybar != y} z_ybar`` at ``x_adv`` (negative = broken).
        pred: (N,) predicted class at ``x_adv``.
        label: (N,) true class.
        loss_name: which loss ``loss`` holds (``xent``, ``cw`` or ``dlr``).
    """

    x_adv: torch.Tensor
    correct: torch.Tensor
    loss: torch.Tensor
    margin: torch.Tensor
    pred: torch.Tensor
    label: torch.Tensor
    loss_name: str = "xent"

    def __len__(self) -> int:
        return int(self.correct.shape[0])

    @property
    def accuracy(self) -> float:
        """Robust accuracy: the fraction of examples still classified right."""
        return float(self.correct.float().mean().item()) if len(self) else float("nan")

    def to_frame(self) -> pd.DataFrame:
        """One row per example: ``index, label, correct, loss, margin, pred``."""
        return pd.DataFrame({
            "index": range(len(self)),
            "label": self.label.cpu().numpy(),
            "correct": self.correct.cpu().numpy().astype(bool),
            "loss": self.loss.detach().cpu().numpy(),
            "margin": self.margin.detach().cpu().numpy(),
            "pred": self.pred.cpu().numpy(),
        })


# --------------------------------------------------------------------------- helpers


def check_attack_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                  norm: str | Norm = "linf") -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs on the model's device, after one-line checks: ``eps`` a radius of ``norm``
    within the whole box (:func:`~epsl.norms.check_radius`, D = C * H * W), x N x C x H x W in
    [0, 1], one label per example."""
    dim = math.prod(x.shape[1:]) if x.ndim == 4 else None
    check_radius(norm, eps, dim)
    if x.ndim != 4:
        raise EpslError(f"x must be N x C x H x W (got shape {tuple(x.shape)})")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise EpslError(f"y must hold one label per example (x: {tuple(x.shape)}, "
                        f"y: {tuple(y.shape)})")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise EpslError("x must hold pixels in [0, 1]; models normalise inside forward")
    device = model_device(model)
    return x.detach().to(device).float(), y.to(device).long()


def batch_slices(n: int, batch_size: int | None) -> list[slice]:
    """The chunks of ``n`` examples, ``batch_size`` each (None: one chunk), as slices; none
    when ``n`` is 0."""
    size = batch_size or max(n, 1)  # None: all at once; no examples: no chunk, whatever the size
    if size < 1:
        raise EpslError(f"batch_size must be at least 1 (got {batch_size})")
    return [slice(i, min(i + size, n)) for i in range(0, max(n, 1), size)] if n else []


def score(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, *, loss: str = "xent",
          cw_confidence: float = 50.0, batch_size: int | None = None) -> AttackResult:
    """Evaluate ``model`` at given adversarial examples (N x C x H x W) -> :class:`AttackResult`.

    Used for every attack and for transfer attacks (examples made on one model, scored on
    another).
    """
    loss_fn = loss_function(loss, cw_confidence)
    parts: list[tuple[torch.Tensor, ...]] = []
    with torch.no_grad():
        for part in batch_slices(len(y), batch_size):
            logits = model(x_adv[part]).float()
            pred = logits.argmax(1)
            parts.append((pred == y[part], loss_fn(logits, y[part]),
                          logit_margin(logits, y[part]), pred))
    if parts:
        correct, losses, margins, preds = (torch.cat(t) for t in zip(*parts, strict=True))
    else:
        empty = torch.empty(0, device=y.device)
        correct, losses, margins, preds = empty.bool(), empty, empty, empty.long()
    return AttackResult(x_adv.detach(), correct, losses, margins, preds, y.detach(), loss)


class InputGradient(NamedTuple):
    """What :func:`input_gradient` returns.

    Attributes:
        grad: N x C x H x W, the gradient of the batch's loss with respect to the pixels; row i
            is ``grad_x L(x_i, y_i)`` (times 1/N for ``reduction="mean"``).
        logits: N x K, the logits at x (detached).
    """

    grad: torch.Tensor
    logits: torch.Tensor


REDUCTIONS = ("sum", "mean")


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss: str = "xent",
                   cw_confidence: float = 50.0, reduction: str = "sum") -> InputGradient:
    """The input gradient of a loss in :data:`LOSSES` (``"xent"``, ``"cw"``, ``"dlr"``) at x.

    Args:
        model: classifier on pixels in [0, 1], run in :func:`~epsl.modes.eval_mode`, which
            makes the examples independent: the gradient of the loss summed over the batch
            holds every example's own gradient.
        x: N x C x H x W pixels on the model's device; y: (N,) labels.
        cw_confidence: kappa of the ``"cw"`` loss.
        reduction: ``"sum"`` or ``"mean"`` over the batch. Adversarial training differentiates
            the mean cross-entropy: the 1/N scaling keeps the sign in exact arithmetic but not
            always in floating point, and its trained models must not change.
    """
    if reduction not in REDUCTIONS:
        raise EpslError(f"reduction must be one of {', '.join(REDUCTIONS)} (got {reduction!r})")
    loss_fn = loss_function(loss, cw_confidence)
    with eval_mode(model):
        x = x.detach().requires_grad_(True)
        logits = model(x)
        losses = loss_fn(logits, y)
        total = losses.sum() if reduction == "sum" else losses.mean()
        (grad,) = torch.autograd.grad(total, x)
    return InputGradient(grad, logits.detach())

# --------------------------------------------------------------------------- random starts and steps


def uniform_noise(x: torch.Tensor, eps: float, *, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """Uniform noise in [-eps, eps], shaped like ``x`` (N x C x H x W) and on its device.

    Drawn on the CPU from ``generator`` (torch's global CPU generator when None), so the draws
    do not depend on the device. A random start of the eps-ball is
    ``project(x + noise, x, eps)``.
    """
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype)
    return (noise.to(x.device) * 2 - 1) * eps


def ball_noise(x: torch.Tensor, eps: float | torch.Tensor, norm: str | Norm = "linf", *,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """A random point of the l_p ``eps``-ball around 0 (a PGD random start), one per example,
    shaped like ``x`` (N x C x H x W) and on its device; drawn on the CPU from ``generator``
    (torch's global CPU generator when None), so the draws do not depend on the device.

    - ``linf``: :func:`uniform_noise`, uniform in [-eps, eps] per pixel (Madry et al. 2017;
      torchattacks 3.5.1 ``PGD``; Foolbox 3.3.4 ``LinfPGD``).
    - ``l2``: a Gaussian direction normalised in l2, times the radius ``eps * U`` with U
      uniform on [0, 1]: torchattacks 3.5.1 ``PGDL2`` (``delta = r / ||z||_2 * eps * z``).
    - ``l1``: a Laplace direction normalised in l1, times the radius ``eps * U``, the same
      rule in l1.

    A generalised-Gaussian vector ``exp(-|z_i|^p)`` normalised in l_p is distributed by the
    cone measure of the l_p sphere (Barthe et al. 2005), so the direction has no preferred
    axis. The radius is uniform, not the volume-uniform ``eps * U^(1/D)`` of Foolbox 3.3.4's
    ``L2PGD``: in D dimensions a volume-uniform point lies almost on the sphere (D = 64:
    half of them beyond 0.989 eps), and PGD started there ends weaker than PGDL2 on the
    digits (``docs/attacks.md``). A random start is ``project(x + noise, x, eps, norm)``.
    """
    p = parse_norm(norm)
    if p is Norm.LINF:
        if isinstance(eps, torch.Tensor):
            return uniform_noise(x, 1.0, generator=generator) * eps
        return uniform_noise(x, eps, generator=generator)
    n, dim = x.shape[0], math.prod(x.shape[1:])
    if p is Norm.L2:
        direction = torch.randn((n, dim), generator=generator, dtype=torch.float64)
    else:  # Laplace: a uniform sign times an exponential size
        uniform = torch.rand((n, dim), generator=generator, dtype=torch.float64) * 2 - 1
        direction = uniform.sign() * -torch.log1p(-uniform.abs())
    size = direction.abs().sum(1, keepdim=True) if p is Norm.L1 else\
        torch.linalg.vector_norm(direction, ord=2, dim=1, keepdim=True)
    fraction = torch.rand((n, 1), generator=generator, dtype=torch.float64)
    radius = _radii(eps, n, torch.device("cpu")).cpu() * fraction
    noise = direction / size.clamp_min(torch.finfo(torch.float64).tiny) * radius
    return noise.view(x.shape).to(device=x.device, dtype=x.dtype)


#: The l1 step moves only coordinates whose |g| reaches this quantile of the |g| that may move
#: (SLIDE's 99th percentile, Tramèr & Boneh 2019): at least one coordinate per example.
L1_STEP_QUANTILE = 0.99


def steepest_direction(grad: torch.Tensor, norm: str | Norm = "linf", *,
                       x_adv: torch.Tensor | None = None) -> torch.Tensor:
    """The step direction of size 1 in ``norm`` for the gradient ``grad`` (N x C x H x W).

    - ``linf``: ``sign(g)``, the steepest ascent direction of the l_inf ball.
    - ``l2``: ``g / ||g||_2`` per example (the normalised-gradient step; 0 where g is 0).
    - ``l1``: a sparse step as in SLIDE (Tramèr & Boneh 2019) and l1-APGD (Croce & Hein
      2021): ``sign(g_i)`` on the coordinates whose ``|g_i|`` is at least the
      :data:`L1_STEP_QUANTILE` quantile, divided by their number so that its l1 size is 1.
      With ``x_adv`` (the iterate, in [0, 1]) a coordinate at the box's boundary whose
      gradient points out of the box is never chosen: it could not move. The steepest l1
      direction itself (one coordinate) makes PGD crawl; a few coordinates at once do not.
    """
    p = parse_norm(norm)
    if p is Norm.LINF:
        return grad.sign()
    flat = grad.flatten(1)
    if p is Norm.L2:
        size = torch.linalg.vector_norm(flat, ord=2, dim=1, keepdim=True)
        return (flat / size.clamp_min(torch.finfo(flat.dtype).tiny)).view_as(grad)
    movable = flat.abs()
    if x_adv is not None:
        pixels = x_adv.flatten(1)
        stuck = ((pixels <= 0) & (flat < 0)) | ((pixels >= 1) & (flat > 0))
        movable = movable.masked_fill(stuck, 0.0)
    count = max(1, math.ceil((1.0 - L1_STEP_QUANTILE) * flat.shape[1]))
    threshold = movable.topk(count, dim=1).values[:, -1:]
    chosen = (movable >= threshold) & (movable > 0)
    direction = flat.sign() * chosen
    return (direction / chosen.sum(1, keepdim=True).clamp(min=1)).view_as(grad)
