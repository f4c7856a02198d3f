"""l_p attacks (``norm="linf"``, ``"l2"`` or ``"l1"``, :mod:`epsl.norms`) with keyword-only
settings: FGSM/FGM, PGD (cross-entropy or CW loss, random start, restarts), transfer,
APGD-CE/DLR and Square (wrapped from torchattacks; l_inf and l2 only), and sweeps.

Pixels are in [0, 1] (N x C x H x W) everywhere; models normalise inside ``forward``. Every
adversarial example passes through :func:`project`, the one projection onto the threat model
``{x' : ||x' - x||_p <= eps} ∩ [0, 1]^D``. Every attack returns an :class:`AttackResult` of
per-example tensors; the robust accuracy is the mean of ``correct``.

The geometry of each norm is three small pieces, as in foolbox: the random start
(:func:`ball_noise`), the step direction (:func:`steepest_direction`: sign(g) in l_inf,
g / ||g||_2 in l2, a sparse top-|g| step in l1) and :func:`project`. The l_inf loop is
bit for bit the one adversarial training has always used.

Example::

    >>> from epsl.attacks import pgd
    >>> result = pgd(model, x, y, eps=0.3, step_size=0.01, steps=40)   # Madry et al.'s MNIST
    >>> result.accuracy, result.to_frame().head()
    >>> pgd(model, x, y, eps=1.5, step_size=0.1, steps=40, norm="l2").accuracy

References: FGSM (Goodfellow et al. 2014, https://arxiv.org/abs/1412.6572); PGD and the CW
margin loss as Madry et al. use it (https://arxiv.org/abs/1706.06083, their
``loss = -relu(z_y - max_{ybar != y} z_ybar + 50)``); APGD (Croce & Hein 2020,
https://arxiv.org/abs/2003.01690); Square (Andriushchenko et al. 2020,
https://arxiv.org/abs/1912.00049); the l1 sparse step of SLIDE (Tramèr & Boneh 2019,
https://arxiv.org/abs/1904.13000) and l1-APGD (Croce & Hein 2021,
https://arxiv.org/abs/2103.01208); the l1-ball projection of Duchi et al. 2008 (Fig. 1,
https://doi.org/10.1145/1390156.1390191). The paper's sanity sweeps are Tables 9-11 of
Shafahi et al.
"""

from __future__ import annotations

import inspect
import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from epsl.device import model_device
from epsl.distributed import agree, shard_map
from epsl.errors import EpslError
from epsl.modes import eval_mode
from epsl.norms import NORMS, Norm, check_radius, parse_norm
from epsl.registry import Registry

__all__ = [
    "ATTACKS", "ATTACK_NORMS", "DEFAULT_STEPS", "L1_STEP_QUANTILE", "LOSSES", "AttackResult",
    "InputGradient", "accepted_settings", "apgd", "ball_noise", "batch_slices",
    "check_attack_inputs", "check_norm", "check_settings", "default_step_size", "fgsm",
    "input_gradient", "logit_margin", "lp_steps", "pgd", "project", "score", "sign_steps",
    "square", "steepest_direction", "sweep", "transfer", "uniform_noise",
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


def _loss_fn(name: str, confidence: float) -> LossFn:
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
    loss_fn = _loss_fn(loss, cw_confidence)
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
    loss_fn = _loss_fn(loss, cw_confidence)
    with eval_mode(model):
        x = x.detach().requires_grad_(True)
        logits = model(x)
        losses = loss_fn(logits, y)
        total = losses.sum() if reduction == "sum" else losses.mean()
        (grad,) = torch.autograd.grad(total, x)
    return InputGradient(grad, logits.detach())


# --------------------------------------------------------------------------- FGSM and PGD


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
         loss: str = "xent", random_start: bool = False, cw_confidence: float = 50.0,
         seed: int | None = None, batch_size: int | None = None,
         attack_misclassified: bool = False, norm: str = "linf") -> AttackResult:
    """Fast gradient sign method: ``x' = proj(x + eps * sign(grad_x L(x, y)))``; in l2 the fast
    gradient method (FGM) ``x' = proj(x + eps * g / ||g||_2)``; in l1 one sparse step of l1
    size eps (:func:`steepest_direction`).

    Args:
        model: classifier taking N x C x H x W pixels in [0, 1] and returning logits.
        x: N x C x H x W clean inputs in [0, 1]; y: (N,) labels.
        eps: radius in ``norm`` in pixel units (l_inf: (0, 1]; l2: up to sqrt(D); l1: up to D).
        loss: ``"xent"`` (cross-entropy) or ``"cw"`` (Madry et al.'s CW margin loss).
        random_start: also step from a random point of the ball (R+FGSM-like) and keep, per
            example, the stronger of that step and the step from x (see :func:`pgd`).
        norm: ``"linf"``, ``"l2"`` or ``"l1"`` (:mod:`epsl.norms`).

    It is :func:`pgd` with one step of size ``eps`` (no random start unless asked), in every
    norm. Examples misclassified at x keep ``x_adv = x`` unless ``attack_misclassified`` (see
    :func:`pgd`).
    """
    # one PGD step of size eps: the same code path (and the same batches: only examples right
    # at x are attacked), so the two agree bit for bit in every norm
    return pgd(model, x, y, eps=eps, step_size=eps, steps=1, loss=loss,
               random_start=random_start, restarts=1, cw_confidence=cw_confidence, seed=seed,
               batch_size=batch_size, attack_misclassified=attack_misclassified, norm=norm)


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
    size = direction.abs().sum(1, keepdim=True) if p is Norm.L1 else \
        torch.linalg.vector_norm(direction, ord=2, dim=1, keepdim=True)
    fraction = torch.rand((n, 1), generator=generator, dtype=torch.float64)
    radius = _radii(eps, n, torch.device("cpu")).cpu() * fraction
    noise = direction / size.clamp_min(torch.finfo(torch.float64).tiny) * radius
    return noise.view(x.shape).to(device=x.device, dtype=x.dtype)


def _restart_noise(x: torch.Tensor, eps: float, seed: int | None, restart: int,
                   norm: str | Norm = "linf") -> torch.Tensor:
    """The noise of restart ``restart``: the same for a given (seed, restart) whatever the
    batch; seed None draws from torch's global generator (on x's device in l_inf, on the CPU
    otherwise)."""
    p = parse_norm(norm)
    if seed is None:
        if p is Norm.LINF:
            return torch.empty_like(x).uniform_(-eps, eps)
        return ball_noise(x, eps, p)
    key = (int(seed) * 1_000_003 + restart) % 2**64  # torch's seeds are 64-bit
    generator = torch.Generator(device="cpu").manual_seed(key)
    return ball_noise(x, eps, p, generator=generator)


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


def lp_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             start: torch.Tensor | None = None, eps: float | torch.Tensor,
             step_size: float | torch.Tensor, steps: int, norm: str | Norm = "linf",
             loss: str = "xent", cw_confidence: float = 50.0, reduction: str = "sum",
             keep_broken: bool = True) -> torch.Tensor:
    """The step loop of FGSM, PGD and adversarial training in any l_p norm:
    ``x_{t+1} = proj_p(x_t + step_size * d_p(grad_x L(x_t, y)))`` for ``steps`` steps from
    ``x_0 = start``, with ``d_p`` = :func:`steepest_direction` (sign(g) in l_inf) and
    ``proj_p`` = :func:`project`. In l_inf it is, bit for bit, the sign-step loop adversarial
    training has always used.

    Args:
        model: classifier on pixels in [0, 1] (run in :func:`~epsl.modes.eval_mode`).
        x: N x C x H x W clean inputs in [0, 1] on the model's device, the centre of the ball;
            y: (N,) labels. Not checked here: :func:`pgd` and :func:`fgsm` check their inputs.
        start: N x C x H x W first iterate in the ball (None: x); :func:`ball_noise` makes
            a random one.
        eps: radius; step_size: size of each step, both in ``norm`` (floats, or N x 1 x 1 x 1
            tensors: one per example); steps: number of steps (1 with ``step_size=eps`` from
            x is FGSM, or FGM in l2).
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        loss, cw_confidence, reduction: the loss ascended, as in :func:`input_gradient`.
        keep_broken: return an earlier iterate that was misclassified when the last one is not
            (steps of fixed size can step back across the boundary); the start never
            counts, so one step equals FGSM. False returns the last iterate, which is what
            adversarial training has always trained on.

    Returns:
        N x C x H x W adversarial examples in the eps-ball around x, in [0, 1].
    """
    p = parse_norm(norm)
    x_adv = x if start is None else start
    best = None
    broken = torch.zeros_like(y, dtype=torch.bool)
    with eval_mode(model):
        for step in range(steps):
            grad, logits = input_gradient(model, x_adv, y, loss=loss,
                                          cw_confidence=cw_confidence, reduction=reduction)
            if keep_broken and step > 0:  # logits are at the iterate after `step` steps
                newly = (logits.argmax(1) != y) & ~broken
                if newly.any():
                    best = x_adv.clone() if best is None else torch.where(
                        newly[:, None, None, None], x_adv, best)
                    broken |= newly
            direction = steepest_direction(grad, p, x_adv=x_adv)
            x_adv = project(x_adv + step_size * direction, x, eps, p)
        if best is None:
            return x_adv
        with torch.no_grad():
            last_correct = model(x_adv).argmax(1) == y
    use_best = (broken & last_correct)[:, None, None, None]
    return torch.where(use_best, best, x_adv)


def sign_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
               start: torch.Tensor | None = None, eps: float | torch.Tensor,
               step_size: float | torch.Tensor, steps: int,
               loss: str = "xent", cw_confidence: float = 50.0, reduction: str = "sum",
               keep_broken: bool = True, norm: str | Norm = "linf") -> torch.Tensor:
    """The l_inf sign-step loop of FGSM, PGD and adversarial training:
    ``x_{t+1} = proj(x_t + step_size * sign(grad_x L(x_t, y)))`` for ``steps`` steps from
    ``x_0 = start``; :func:`lp_steps` with ``norm="linf"`` (another ``norm`` gives that
    norm's steps). Arguments and result as in :func:`lp_steps`."""
    return lp_steps(model, x, y, start=start, eps=eps, step_size=step_size, steps=steps,
                    norm=norm, loss=loss, cw_confidence=cw_confidence, reduction=reduction,
                    keep_broken=keep_broken)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float,
        steps: int, loss: str = "xent", random_start: bool = True, restarts: int = 1,
        cw_confidence: float = 50.0, seed: int | None = None,
        batch_size: int | None = None, attack_misclassified: bool = False,
        norm: str = "linf") -> AttackResult:
    """Projected gradient descent (Madry et al. 2017) in l_inf (sign steps), l2 (normalised
    gradient steps) or l1 (sparse steps).

    ``x_{t+1} = proj_p(x_t + step_size * d_p(grad_x L(x_t, y)))`` for ``steps`` steps from
    ``x_0 = x`` or a random point of the eps-ball (:func:`ball_noise`), with ``d_p``
    = :func:`steepest_direction` and ``proj_p`` = :func:`project`.

    A random start never makes the attack weaker. One run from a random point can end farther
    from the decision boundary than the run from x, so with ``random_start`` the first run
    still starts at x and ``restarts`` runs from random points follow; each example keeps the
    strongest of its runs. Per example, an example robust to PGD with a random start is robust
    to PGD from x with the same settings (the first run is the same computation), and more
    restarts never raise robust accuracy. The price is one extra run on the examples the run
    from x leaves correct.

    Args:
        model: classifier on N x C x H x W pixels in [0, 1] returning logits (attacked in eval
            mode).
        x: N x C x H x W clean inputs in [0, 1]; y: (N,) labels.
        eps: radius in ``norm``, pixel units (l_inf: (0, 1]; l2: up to sqrt(D); l1: up to D,
            for D = C * H * W). step_size: size of each step in ``norm``. steps: >= 1.
        loss: ``"xent"`` or ``"cw"`` (``-relu(z_y - max_{ybar!=y} z_ybar + cw_confidence)``).
        random_start: after the run from x, run from ``restarts`` random points of the ball.
        restarts: random starts per example (with ``random_start``; without it, runs from x,
            which repeat one another). An example is robust only if it survives every run;
            the result keeps a breaking adversarial example, else the one with the highest
            loss. Runs after the first only attack examples not yet broken. Examples
            misclassified at x are not attacked (``x_adv = x``), as in AutoAttack.
        seed: seeds the random starts so that restart ``r`` draws the same noise whatever the
            batching and the number of restarts (so more restarts never help the model); None
            uses torch's global generator.
        batch_size: examples per forward/backward pass (None: all at once).
        attack_misclassified: attack every example in the first run, also those ``model``
            already gets wrong at x (what a transfer attack needs: the source's mistakes must
            still be pushed away from y before they are scored on the target).
        norm: ``"linf"``, ``"l2"`` or ``"l1"`` (:mod:`epsl.norms`).

    Returns:
        :class:`AttackResult` with the chosen adversarial examples.
    """
    p = parse_norm(norm)
    x, y = check_attack_inputs(model, x, y, eps, p)
    if steps < 1:
        raise EpslError(f"steps must be at least 1 (got {steps})")
    if restarts < 1:
        raise EpslError(f"restarts must be at least 1 (got {restarts})")
    if step_size <= 0:
        raise EpslError(f"step_size must be positive (got {step_size})")
    if restarts > 1 and not random_start:
        warnings.warn("restarts without random_start repeat the same deterministic attack; "
                      "pass random_start=True", stacklevel=2)
    _loss_fn(loss, cw_confidence)  # a bad loss fails before any work
    with eval_mode(model):
        # Examples misclassified at x are broken there (x lies in the ball) and never attacked,
        # so accuracy under attack can never exceed clean accuracy, example by example.
        best = score(model, x, y, loss=loss, cw_confidence=cw_confidence, batch_size=batch_size)
        # None starts at x: the first run always does, so a random start only adds breaks
        starts: list[int | None] = [None] * restarts
        if random_start:
            starts = [None, *range(restarts)]
        for run_index, restart in enumerate(starts):
            todo = agree(best.correct.nonzero().squeeze(1))  # one decision for every process
            if attack_misclassified and run_index == 0:
                todo = torch.arange(len(y), device=y.device)
            if todo.numel() == 0:
                break
            noise = None if restart is None else _restart_noise(x, eps, seed, restart, p)

            def attack(part: slice, todo: torch.Tensor = todo,
                       noise: torch.Tensor | None = noise) -> torch.Tensor:
                idx = todo[part]
                xs, ys = x[idx], y[idx]
                start = xs if noise is None else project(xs + noise[idx], xs, eps, p)
                return lp_steps(model, xs, ys, start=start, eps=eps, step_size=step_size,
                                steps=steps, norm=p, loss=loss, cw_confidence=cw_confidence)

            # under torchrun each process attacks every N-th chunk (epsl.distributed)
            pieces = shard_map(attack, batch_slices(todo.numel(), batch_size))
            run = score(model, torch.cat(pieces).to(x.device), y[todo], loss=loss,
                        cw_confidence=cw_confidence, batch_size=batch_size)
            best = _merge(best, run, todo, replace=run_index == 0)
    return best


def _merge(best: AttackResult, run: AttackResult, idx: torch.Tensor, *,
           replace: bool = False) -> AttackResult:
    """Keep, per example in ``idx``, the stronger of ``best`` and ``run``: a break, else the
    higher loss (``replace``: take ``run`` for every example in ``idx``)."""
    old_correct = best.correct[idx]
    better = (old_correct & ~run.correct) | (
        (old_correct == run.correct) & (run.loss > best.loss[idx]))
    if replace:
        better = torch.ones_like(better)
    take = idx[better]
    src = better.nonzero().squeeze(1)
    fields = {}
    for name in ("x_adv", "correct", "loss", "margin", "pred"):
        value = getattr(best, name).clone()
        value[take] = getattr(run, name)[src]
        fields[name] = value
    return AttackResult(**fields, label=best.label, loss_name=best.loss_name)


# --------------------------------------------------------------------------- transfer


def transfer(source: nn.Module, target: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             attack: str = "pgd", **settings: Any) -> AttackResult:
    """Black-box transfer attack: adversarial examples made on ``source`` by ``attack``
    (any name in :data:`ATTACKS`), scored on ``target`` (Tables 4 and 8 of the paper use a
    naturally trained source). Settings are those of the attack.

    Every example is attacked on the source, including those the source misclassifies at x
    (where the attack supports it: FGSM and PGD); examples the *target* gets wrong at x stay
    at x, as for white-box attacks."""
    make = ATTACKS[attack]
    if "attack_misclassified" in inspect.signature(make).parameters:
        settings = {**settings, "attack_misclassified": True}
    made = make(source, x, y, **settings)
    x_t, y_t = check_attack_inputs(target, x, y, settings.get("eps", 1.0),
                             settings.get("norm", "linf"))
    try:  # a shape check on one example, so that no other RuntimeError is mislabelled
        with eval_mode(target), torch.no_grad():
            target(x_t[:1])
    except RuntimeError as exc:
        raise EpslError(f"the target model does not accept the source's inputs of shape "
                        f"{tuple(x.shape[1:])} ({str(exc).splitlines()[0]})") from None
    x_adv = made.x_adv.to(x_t.device)
    loss, confidence = made.loss_name, settings.get("cw_confidence", 50.0)
    batch_size = settings.get("batch_size")
    with eval_mode(target):
        clean = score(target, x_t, y_t, loss=loss, cw_confidence=confidence,
                      batch_size=batch_size)
        # examples the target already gets wrong stay at x, as for white-box attacks
        x_adv = torch.where(clean.correct[:, None, None, None], x_adv, x_t)
        return score(target, x_adv, y_t, loss=loss, cw_confidence=confidence,
                     batch_size=batch_size)


# --------------------------------------------------------------------------- torchattacks


def require_torchattacks(needed_by: str = "APGD and Square need") -> Any:
    """The torchattacks module, or a one-line :class:`EpslError` naming the install command.

    torchattacks is a dependency of epsl; callers that will need APGD, Square or FAB (the
    audit, ``compare``, ``calibrate``, ``reproduce``) call this before any work so that a
    broken install fails at once rather than after minutes of training and attacks.
    ``needed_by`` starts the message."""
    try:
        import torchattacks
    except ImportError:
        raise EpslError(f"{needed_by} torchattacks, which is missing from this "
                        "environment: pip install torchattacks (or reinstall epsl)") from None
    return torchattacks


def _run_torchattack(make: Callable[[Any], Any], model: nn.Module, x: torch.Tensor,
                     y: torch.Tensor, *, eps: float, loss_name: str,
                     batch_size: int | None, norm: Norm = Norm.LINF) -> AttackResult:
    """Run a torchattacks attack chunk by chunk, keep the caller's RNG state (torchattacks
    reseeds torch globally), project and score."""
    attack = make(require_torchattacks())
    devices = [x.device] if x.device.type == "cuda" else []
    with eval_mode(model), torch.random.fork_rng(devices=devices):
        # torchattacks reseeds at every call, so a chunk's result does not depend on which
        # process runs it (epsl.distributed)
        pieces = [p.to(x.device) for p in shard_map(
            lambda part: attack(x[part], y[part]).detach(), batch_slices(len(y), batch_size))]
        x_adv = project(torch.cat(pieces), x, eps, norm) if pieces else x.clone()
        return score(model, x_adv, y, loss=loss_name, batch_size=batch_size)


_APGD_LOSSES = {"xent": "ce", "ce": "ce", "dlr": "dlr"}
#: torchattacks' spelling of the norms its APGD and Square support
_TORCHATTACKS_NORMS = {Norm.LINF: "Linf", Norm.L2: "L2"}

#: The norms each attack of :data:`ATTACKS` supports (torchattacks' APGD and Square: l_inf
#: and l2).
ATTACK_NORMS: dict[str, tuple[str, ...]] = {
    "fgsm": NORMS, "pgd": NORMS, "apgd": ("linf", "l2"), "apgd-dlr": ("linf", "l2"),
    "square": ("linf", "l2")}


def check_norm(attack: str, norm: str | Norm) -> Norm:
    """``norm`` as a :class:`~epsl.norms.Norm`, or a one-line :class:`EpslError` naming the
    norms ``attack`` supports (:data:`ATTACK_NORMS`)."""
    p = parse_norm(norm)
    supported = ATTACK_NORMS.get(attack, NORMS)
    if p.value not in supported:
        raise EpslError(f"{attack} supports norm {' or '.join(supported)} (got {p.value!r})")
    return p


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int = 100,
         restarts: int = 1, loss: str = "xent", seed: int | None = 0, rho: float = 0.75,
         batch_size: int | None = None, norm: str = "linf") -> AttackResult:
    """Auto-PGD (Croce & Hein 2020, https://arxiv.org/abs/2003.01690), l_inf or l2, from
    torchattacks.

    Step-size-free PGD with momentum that keeps the best point; ``loss`` is ``"xent"``
    (APGD-CE) or ``"dlr"`` (APGD-DLR, invariant to shifting and rescaling the logits, so it
    sees through logit squeezing). ``norm``: ``"linf"`` or ``"l2"`` (torchattacks' ``Linf``,
    ``L2``); l1 is refused. x: N x C x H x W in [0, 1]; y: (N,).
    """
    p = check_norm("apgd", norm)
    x, y = check_attack_inputs(model, x, y, eps, p)
    if loss not in _APGD_LOSSES:
        raise EpslError(f"APGD supports loss 'xent' or 'dlr' (got {loss!r})")
    if steps < 1 or restarts < 1:
        raise EpslError(f"steps and restarts must be at least 1 (got {steps}, {restarts})")
    if loss == "dlr" and _num_classes(model, x) < 3:
        raise EpslError("the DLR loss needs at least 3 classes")

    def make(ta: Any) -> Any:
        return ta.APGD(model, norm=_TORCHATTACKS_NORMS[p], eps=eps, steps=steps,
                       n_restarts=restarts, seed=0 if seed is None else seed,
                       loss=_APGD_LOSSES[loss], rho=rho)

    return _run_torchattack(make, model, x, y, eps=eps, loss_name="dlr" if loss == "dlr"
                            else "xent", batch_size=batch_size, norm=p)


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def apgd_dlr(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
             steps: int = 100, restarts: int = 1, seed: int | None = 0, rho: float = 0.75,
             batch_size: int | None = None, norm: str = "linf") -> AttackResult:
    """APGD with the DLR loss (see :func:`apgd`)."""
    check_norm("apgd-dlr", norm)
    return apgd(model, x, y, eps=eps, steps=steps, restarts=restarts, loss="dlr", seed=seed,
                rho=rho, batch_size=batch_size, norm=norm)


_SQUARE_LOSSES = {"cw": "margin", "margin": "margin", "xent": "ce", "ce": "ce"}


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
           steps: int = 1000, restarts: int = 1, loss: str = "cw", p_init: float = 0.8,
           seed: int | None = 0, batch_size: int | None = None, norm: str = "linf"
           ) -> AttackResult:
    """Square attack (Andriushchenko et al. 2020, https://arxiv.org/abs/1912.00049), l_inf or
    l2, from torchattacks: a gradient-free random search with ``steps`` queries per restart,
    immune to gradient masking. ``loss``: ``"cw"`` (the margin loss) or ``"xent"``.
    ``norm``: ``"linf"`` or ``"l2"``; l1 is refused. x: N x C x H x W in [0, 1]; y: (N,).
    """
    p = check_norm("square", norm)
    x, y = check_attack_inputs(model, x, y, eps, p)
    if loss not in _SQUARE_LOSSES:
        raise EpslError(f"Square supports loss 'cw' (margin) or 'xent' (got {loss!r})")
    if steps < 1 or restarts < 1:
        raise EpslError(f"steps (queries) and restarts must be at least 1 (got {steps}, "
                        f"{restarts})")

    def make(ta: Any) -> Any:
        return ta.Square(model, norm=_TORCHATTACKS_NORMS[p], eps=eps, n_queries=steps,
                         n_restarts=restarts, p_init=p_init, loss=_SQUARE_LOSSES[loss],
                         seed=0 if seed is None else seed)

    return _run_torchattack(make, model, x, y, eps=eps,
                            loss_name="cw" if _SQUARE_LOSSES[loss] == "margin" else "xent",
                            batch_size=batch_size, norm=p)


# --------------------------------------------------------------------------- registry and sweeps

AttackFn = Callable[..., AttackResult]
ATTACKS: Registry[AttackFn] = Registry("attack")
ATTACKS.register("fgsm")(fgsm)
ATTACKS.register("pgd")(pgd)
ATTACKS.register("apgd")(apgd)
ATTACKS.register("apgd-dlr")(apgd_dlr)
ATTACKS.register("square")(square)


def _default(attack: str, setting: str) -> Any:
    param = inspect.signature(ATTACKS[attack]).parameters.get(setting)
    return None if param is None else param.default


def accepted_settings(attack: str) -> set[str]:
    """The keyword settings an attack in :data:`ATTACKS` accepts."""
    params = inspect.signature(ATTACKS[attack]).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_settings(attack: str, names: Iterable[str]) -> set[str]:
    """The settings ``attack`` accepts; a one-line :class:`EpslError` naming the first of
    ``names`` it does not."""
    accepted = accepted_settings(attack)
    unknown = sorted(set(names) - accepted)
    if unknown:
        raise EpslError(f"{attack} takes no {', '.join(f'{name}=' for name in unknown)}")
    return accepted


SWEEP_COLUMNS = ["index", "label", "attack", "loss_name", "norm", "eps", "steps", "restarts",
                 "step_size", "random_start", "source", "correct", "loss", "margin", "pred"]


def sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str,
          eps: Sequence[float], steps: Sequence[int] = (40,), restarts: Sequence[int] = (1,),
          source: nn.Module | None = None, source_name: str = "", **settings: Any
          ) -> pd.DataFrame:
    """Run ``attack`` for every (eps, steps, restarts) in the cartesian product.

    Returns a long DataFrame, one row per example per setting, with columns
    :data:`SWEEP_COLUMNS`. The paper's sanity checks are sweeps: unbounded eps (Table 9,
    accuracy must fall to 0), steps (Table 11) and restarts (Table 10). PGD's ``step_size``
    defaults to ``2.5 * eps / steps`` (in every norm). Settings an attack has no use for
    (steps and restarts for FGSM) are recorded as 1. With ``source``, examples are made on
    ``source`` and scored on ``model`` (a transfer attack). ``norm`` (a setting, default
    ``"linf"``) is the threat model of every row and its ``norm`` column.
    """
    accepted = check_settings(attack, settings)
    norm = check_norm(attack, settings.get("norm", "linf")).value
    eps = list(eps)  # every radius is checked before the first attack runs
    check_radius(norm, eps, math.prod(x.shape[1:]) if x.ndim == 4 else None)
    steps_list = list(steps) if "steps" in accepted else [1]
    restarts_list = list(restarts) if "restarts" in accepted else [1]
    frames = []
    for e, k, r in itertools.product(eps, steps_list, restarts_list):
        call = dict(settings)
        call["eps"] = e
        if "steps" in accepted:
            call["steps"] = k
        if "restarts" in accepted:
            call["restarts"] = r
        if "step_size" in accepted and call.get("step_size") is None:
            call["step_size"] = default_step_size(e, k)
        if source is None:
            result = ATTACKS[attack](model, x, y, **call)
        else:
            result = transfer(source, model, x, y, attack=attack, **call)
        frame = result.to_frame()
        random_start = call.get("random_start", _default(attack, "random_start"))
        frame = frame.assign(attack=attack, loss_name=result.loss_name, norm=norm, eps=e, steps=k,
                             restarts=r, step_size=call.get("step_size", float("nan")),
                             random_start=random_start, source=source_name if source else "")
        frames.append(frame[SWEEP_COLUMNS])
    return pd.concat(frames, ignore_index=True)


#: The default iterations per attack where a run gives none (Square: queries).
DEFAULT_STEPS = {"pgd": 40, "apgd": 100, "apgd-dlr": 100, "square": 1000}


