"""The attacks epsl wraps from torchattacks, l_inf and l2 only: APGD-CE and APGD-DLR (Croce &
Hein 2020, https://arxiv.org/abs/2003.01690) and Square (Andriushchenko et al. 2020,
https://arxiv.org/abs/1912.00049), each run chunk by chunk, projected onto the threat model
(:func:`~epsl.attacks.threat.project`) and scored like epsl's own attacks; the norms each
attack supports (:data:`ATTACK_NORMS`, :func:`check_norm`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from epsl.attacks.threat import AttackResult, batch_slices, check_attack_inputs, project, score
from epsl.distributed import shard_map
from epsl.errors import EpslError
from epsl.modes import eval_mode
from epsl.norms import NORMS, Norm, parse_norm

__all__ = ["ATTACK_NORMS", "apgd", "apgd_dlr", "check_norm", "require_torchattacks", "square"]


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

#: The norms each attack of :data:`~epsl.attacks.sweeps.ATTACKS` supports (torchattacks' APGD
#: and Square: l_inf and l2).
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
