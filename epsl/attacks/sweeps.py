"""Attacks by name: the :data:`ATTACKS` registry (FGSM, PGD, APGD-CE/DLR, Square), the
settings each accepts, the transfer attack (an attack of :data:`ATTACKS` made on a source model,
scored on a target) and sweeps over radii, steps and restarts.

The paper's sanity sweeps are Tables 9-11 of Shafahi et al.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from epsl.attacks.library import apgd, apgd_dlr, check_norm, square
from epsl.attacks.projected_gradient import fgsm, pgd
from epsl.attacks.threat import AttackResult, check_attack_inputs, default_step_size, score
from epsl.errors import EpslError
from epsl.modes import eval_mode
from epsl.norms import check_radius
from epsl.registry import Registry

__all__ = ["ATTACKS", "DEFAULT_STEPS", "SWEEP_COLUMNS", "AttackFn", "accepted_settings",
           "check_settings", "sweep", "transfer"]

AttackFn = Callable[..., AttackResult]
ATTACKS: Registry[AttackFn] = Registry("attack")
ATTACKS.register("fgsm")(fgsm)
ATTACKS.register("pgd")(pgd)
ATTACKS.register("apgd")(apgd)
ATTACKS.register("apgd-dlr")(apgd_dlr)
ATTACKS.register("square")(square)


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

