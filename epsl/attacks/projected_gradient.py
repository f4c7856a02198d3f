"""FGSM and PGD in any l_p norm (``norm="linf"``, ``"l2"`` or ``"l1"``): projected gradient
steps ``x_{t+1} = proj_p(x_t + step_size * d_p(grad_x L(x_t, y)))`` with the threat model of
:mod:`epsl.attacks.threat` (its :func:`~epsl.attacks.threat.project`,
:func:`~epsl.attacks.threat.steepest_direction` and :func:`~epsl.attacks.threat.ball_noise`).

:func:`lp_steps` is the step loop; :func:`pgd` runs it from x and from random starts, per
example, on the examples not yet broken, and keeps the strongest run; :func:`fgsm` is one PGD
step of size eps. Adversarial training (:mod:`epsl.defenses`) runs the l_inf loop,
:func:`sign_steps`.

Example::

    >>> from epsl.attacks import pgd
    >>> result = pgd(model, x, y, eps=0.3, step_size=0.01, steps=40)   # Madry et al.'s MNIST
    >>> result.accuracy, result.to_frame().head()
    >>> pgd(model, x, y, eps=1.5, step_size=0.1, steps=40, norm="l2").accuracy

References: FGSM (Goodfellow et al. 2014, https://arxiv.org/abs/1412.6572); PGD and the CW
margin loss as Madry et al. use it (https://arxiv.org/abs/1706.06083).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from epsl.attacks.threat import (
    AttackResult,
    ball_noise,
    batch_slices,
    check_attack_inputs,
    input_gradient,
    loss_function,
    project,
    score,
    steepest_direction,
)
from epsl.distributed import agree, shard_map
from epsl.errors import EpslError
from epsl.modes import eval_mode
from epsl.norms import Norm, parse_norm

__all__ = ["fgsm", "lp_steps", "pgd", "sign_steps"]


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


def lp_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             start: torch.Tensor | None = None, eps: float | torch.Tensor,
             step_size: float | torch.Tensor, steps: int, norm: str | Norm = "linf",
             loss: str = "xent", cw_confidence: float = 50.0, reduction: str = "sum",
             keep_broken: bool = True) -> torch.Tensor:
    """The step loop of FGSM, PGD and adversarial training in any l_p norm:
    ``x_{t+1} = proj_p(x_t + step_size * d_p(grad_x L(x_t, y)))`` for ``steps`` steps from
    ``x_0 = start``, with ``d_p`` = :func:`steepest_direction` (sign(g) in l_inf) and
    ``proj_p`` = :func:`project`. In l_inf it is the sign-step loop adversarial training runs
    (:func:`sign_steps`).

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
            adversarial training trains on.

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
    _check_budget(steps, restarts, step_size)
    if restarts > 1 and not random_start:
        warnings.warn("restarts without random_start repeat the same deterministic attack; "
                      "pass random_start=True", stacklevel=2)
    loss_function(loss, cw_confidence)  # a bad loss fails before any work
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
            run = _run(model, x, y, todo, noise, eps=eps, step_size=step_size, steps=steps,
                       norm=p, loss=loss, cw_confidence=cw_confidence, batch_size=batch_size)
            best = _merge(best, run, todo, replace=run_index == 0)
    return best


def _check_budget(steps: int, restarts: int, step_size: float) -> None:
    """One-line errors for PGD's counts and step size."""
    if steps < 1:
        raise EpslError(f"steps must be at least 1 (got {steps})")
    if restarts < 1:
        raise EpslError(f"restarts must be at least 1 (got {restarts})")
    if step_size <= 0:
        raise EpslError(f"step_size must be positive (got {step_size})")


def _run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, todo: torch.Tensor,
         noise: torch.Tensor | None, *, eps: float, step_size: float, steps: int, norm: Norm,
         loss: str, cw_confidence: float, batch_size: int | None) -> AttackResult:
    """One run of PGD on the examples ``todo`` (indices into x), from x (``noise`` None) or
    from ``project(x + noise)``, chunk by chunk, scored where :func:`lp_steps` ends."""

    def attack(part: slice) -> torch.Tensor:
        idx = todo[part]
        xs, ys = x[idx], y[idx]
        start = xs if noise is None else project(xs + noise[idx], xs, eps, norm)
        return lp_steps(model, xs, ys, start=start, eps=eps, step_size=step_size,
                        steps=steps, norm=norm, loss=loss, cw_confidence=cw_confidence)

    # under torchrun each process attacks every N-th chunk (epsl.distributed)
    pieces = shard_map(attack, batch_slices(todo.numel(), batch_size))
    return score(model, torch.cat(pieces).to(x.device), y[todo], loss=loss,
                 cw_confidence=cw_confidence, batch_size=batch_size)


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

