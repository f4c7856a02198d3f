"""Training defenses as composable terms of one objective (section 3-4 and Eq. 1, 5 of the paper).

- label smoothing alpha: targets ``y_warm = y_hot - alpha * (y_hot - 1/N_c)``;
- logit squeezing beta: ``beta * ||Z||_F``, the Frobenius norm of the mini-batch logits (Eq. 5);
- Gaussian noise sigma: ``x + sigma * N(0, I)`` in pixel units (sigma = 0.3 or 30/255);
- adversarial training (Eq. 1): ``kappa * L(x) + (1 - kappa) * L(x_adv)`` with FGSM or k-step
  PGD examples made with the model in eval mode;
- natural training: none of them. Any mix composes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from epsl.attacks import project, sign_steps, uniform_noise
from epsl.device import autocast
from epsl.errors import EpslError
from epsl.modes import eval_mode

ADV_METHODS = ("none", "fgsm", "pgd")


@dataclass(frozen=True)
class DefenseConfig:
    """The terms of the training objective. All zero / ``none`` is natural training."""

    label_smoothing: float = 0.0  # alpha in [0, 1]
    logit_squeeze: float = 0.0  # beta >= 0
    noise_sigma: float = 0.0  # sigma >= 0, pixel units
    adv: str = "none"  # none | fgsm | pgd
    adv_eps: float = 0.3
    adv_steps: int = 7
    adv_step_size: float | None = None  # default 2.5 * eps / steps (Madry et al.)
    adv_kappa: float = 0.5  # weight of the clean loss in Eq. 1; 0 = Madry et al.
    adv_random_start: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise EpslError(f"label_smoothing must be in [0, 1] (got {self.label_smoothing})")
        if self.logit_squeeze < 0:
            raise EpslError(f"logit_squeeze must be >= 0 (got {self.logit_squeeze})")
        if self.noise_sigma < 0:
            raise EpslError(f"noise_sigma must be >= 0 (got {self.noise_sigma})")
        if self.adv not in ADV_METHODS:
            raise EpslError(f"adv must be one of {', '.join(ADV_METHODS)} (got {self.adv!r})")
        if self.adv != "none":
            if not 0.0 < self.adv_eps <= 1.0:
                raise EpslError(f"adv_eps must be in (0, 1] (got {self.adv_eps})")
            if self.adv_steps < 1:
                raise EpslError(f"adv_steps must be >= 1 (got {self.adv_steps})")
            if not 0.0 <= self.adv_kappa <= 1.0:
                raise EpslError(f"adv_kappa must be in [0, 1] (got {self.adv_kappa})")

    @property
    def step_size(self) -> float:
        if self.adv == "fgsm":
            return self.adv_eps
        return self.adv_step_size if self.adv_step_size is not None else (
            2.5 * self.adv_eps / self.adv_steps)

    @property
    def name(self) -> str:
        """A short label: ``natural``, ``ls0.75+noise0.3``, ``lsq2+noise0.5+pgd7``."""
        parts = []
        if self.label_smoothing:
            parts.append(f"ls{self.label_smoothing:g}")
        if self.logit_squeeze:
            parts.append(f"lsq{self.logit_squeeze:g}")
        if self.noise_sigma:
            parts.append(f"noise{self.noise_sigma:.3g}")
        if self.adv == "fgsm":
            parts.append("fgsm")
        elif self.adv == "pgd":
            parts.append(f"pgd{self.adv_steps}")
        return "+".join(parts) or "natural"


def smooth_labels(y: torch.Tensor, num_classes: int, alpha: float) -> torch.Tensor:
    """One-warm targets (N x N_c): ``y_hot - alpha * (y_hot - 1/N_c)``."""
    hot = F.one_hot(y, num_classes).to(torch.float32)
    return hot - alpha * (hot - 1.0 / num_classes)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k t_k log softmax(z)_k``."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def squeeze_penalty(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 5's regulariser: ``beta * ||Z||_F`` over the mini-batch logits (N x N_c)."""
    return beta * torch.linalg.matrix_norm(logits, ord="fro")


def gaussian_noise(x: torch.Tensor, sigma: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian data augmentation ``x + sigma * N(0, I)`` (pixel units, not clipped: the point is
    to train off the image manifold, section 4.2)."""
    if sigma == 0:
        return x
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return x + sigma * noise


def adversarial_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         defense: DefenseConfig, generator: torch.Generator | None = None, *,
                         rows: slice = slice(None)) -> torch.Tensor:
    """FGSM or PGD examples (N x C x H x W in [0, 1]) for Eq. 1 on the cross-entropy, made by
    the attack core (:func:`epsl.attacks.sign_steps`) with the model in eval mode and its
    parameters frozen (train mode restored). The random start draws from ``generator`` so that
    a resumed run repeats an uninterrupted one.

    ``rows`` picks the examples attacked (returned: ``len(x[rows])`` of them); the random start
    is drawn for all of x first, so an example's start does not depend on which rows a process
    attacks (training under torchrun, :mod:`epsl.distributed`)."""
    eps = defense.adv_eps
    x = x.detach().clamp(0.0, 1.0)  # noisy inputs may leave the box; attacks live in it
    start = x
    if defense.adv_random_start and defense.adv == "pgd":
        start = project(x + uniform_noise(x, eps, generator=generator), x, eps)
    x, y, start = x[rows], y[rows], start[rows]
    with eval_mode(model, warn=False):  # switching out of train mode is the point here
        # The last iterate of the batch-mean cross-entropy's ascent, as these models were
        # always trained: another reduction or keeping an earlier iterate would change them.
        x_adv = sign_steps(model, x, y, start=start, eps=eps, step_size=defense.step_size,
                           steps=1 if defense.adv == "fgsm" else defense.adv_steps,
                           reduction="mean", keep_broken=False)
    return x_adv.detach()


@dataclass(frozen=True)
class StepOutput:
    loss: torch.Tensor  # scalar objective
    logits: torch.Tensor  # logits on the (noisy) clean batch, for accuracy tracking


LossTerm = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
"""The loss of one evaluation of the model: ``(logits, targets, beta) -> scalar``."""


def batch_loss(logits: torch.Tensor, targets: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 5 on one mini-batch of ``N`` logits (N x N_c) and targets (N x N_c), divided by N:
    ``(1/N) [sum_i L_i + beta ||Z||_F]``.

    Eq. 5 sums the cross-entropy over the mini-batch; with a mean cross-entropy any beta above
    ~sqrt(N) makes Z = 0 the optimum, which contradicts the paper's Table 2. Dividing both
    terms by N keeps the learning rate meaning what it does in natural training."""
    loss = soft_cross_entropy(logits, targets)
    if beta:
        loss = loss + squeeze_penalty(logits, beta) / len(logits)
    return loss


def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, defense: DefenseConfig,
              num_classes: int, generator: torch.Generator | None = None, *,
              precision: str = "fp32", rows: slice = slice(None),
              loss_term: LossTerm = batch_loss,
              attack_model: nn.Module | None = None) -> StepOutput:
    """The composed mini-batch objective of every defense (model in train mode).

    ``x`` is in [0, 1]; noise is applied first, adversarial examples are made from the noisy
    batch (Eq. 1 mixes the clean and adversarial losses by ``kappa``), and label smoothing and
    logit squeezing apply to every loss evaluation, each :func:`batch_loss` (Eq. 5).
    ``precision`` (``fp32``, ``bf16``, ``fp16``) is that of the training forward passes only:
    adversarial examples are always made in fp32 (gradient precision decides attack
    strength), and the loss is taken in fp32.

    ``rows`` picks the examples evaluated (logits of ``len(x[rows])`` rows); noise and random
    starts are drawn for all of ``x`` first, so an example's draws never depend on which rows
    are evaluated. ``loss_term`` replaces :func:`batch_loss` for every evaluation, given the
    logits, the smoothed targets of ``rows`` and beta: the training loop under torchrun
    weights it for DistributedDataParallel (:class:`epsl.defenses.train.BatchShard`).
    ``attack_model`` (default ``model``) makes the adversarial examples.
    """
    targets = smooth_labels(y, num_classes, defense.label_smoothing)[rows]
    beta = defense.logit_squeeze

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        with autocast(inputs.device, precision):
            return model(inputs).float()

    x_in = gaussian_noise(x, defense.noise_sigma, generator)
    if defense.adv == "none":
        logits = forward(x_in[rows])
        return StepOutput(loss_term(logits, targets, beta), logits.detach())
    x_adv = adversarial_examples(attack_model if attack_model is not None else model, x_in, y,
                                 defense, generator, rows=rows)
    x_in = x_in[rows]
    kappa = defense.adv_kappa
    if kappa == 0.0:
        logits_adv = forward(x_adv)
        return StepOutput(loss_term(logits_adv, targets, beta), logits_adv.detach())
    # one forward pass over clean and adversarial halves keeps BatchNorm statistics joint
    logits_all = forward(torch.cat([x_in, x_adv]))
    logits, logits_adv = logits_all.split(len(x_in))
    loss = (kappa * loss_term(logits, targets, beta)
            + (1.0 - kappa) * loss_term(logits_adv, targets, beta))
    return StepOutput(loss, logits.detach())


# The documented digits recipes (docs/training.md): each trains on the CPU in under a minute to
# at least 95% clean test accuracy with small-cnn, 15 epochs, batch 64, Adam, seed 0.
RECIPES: dict[str, DefenseConfig] = {
    "natural": DefenseConfig(),
    "noise only (sigma=0.3)": DefenseConfig(noise_sigma=0.3),
    "label smoothing 0.75 + noise 0.3": DefenseConfig(label_smoothing=0.75, noise_sigma=0.3),
    "logit squeeze 2 + noise 0.3": DefenseConfig(logit_squeeze=2.0, noise_sigma=0.3),
    "PGD-7 adversarial (eps=0.1)": DefenseConfig(adv="pgd", adv_eps=0.1, adv_steps=7),
}

__all__ = ["ADV_METHODS", "DefenseConfig", "LossTerm", "RECIPES", "StepOutput",
           "adversarial_examples", "batch_loss", "gaussian_noise", "objective", "smooth_labels",
           "soft_cross_entropy", "squeeze_penalty"]
