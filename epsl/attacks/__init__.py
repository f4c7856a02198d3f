"""l_p attacks (``norm="linf"``, ``"l2"`` or ``"l1"``) with keyword-only settings, on pixels in
[0, 1]; each returns an :class:`AttackResult` of per-example tensors. One module per concern:

- :mod:`~epsl.attacks.threat`: the threat model (projection per norm, random starts, step
  directions), losses, input gradients, scoring and :class:`AttackResult`;
- :mod:`~epsl.attacks.projected_gradient`: FGSM/FGM and PGD;
- :mod:`~epsl.attacks.library`: APGD-CE/DLR and Square from torchattacks (l_inf and l2);
- :mod:`~epsl.attacks.sweeps`: the :data:`ATTACKS` registry, transfer attacks and sweeps;
- :mod:`~epsl.attacks.eps_star` (ε*, the minimum-norm ensemble) and
  :mod:`~epsl.attacks.audit` (the robustness audit), imported on their own.

Example::

    >>> from epsl.attacks import pgd
    >>> pgd(model, x, y, eps=0.3, step_size=0.01, steps=40).accuracy
"""

from __future__ import annotations

from epsl.attacks.library import ATTACK_NORMS, apgd, check_norm, square
from epsl.attacks.projected_gradient import fgsm, lp_steps, pgd, sign_steps
from epsl.attacks.sweeps import (
    ATTACKS,
    DEFAULT_STEPS,
    SWEEP_COLUMNS,
    accepted_settings,
    check_settings,
    sweep,
    transfer,
)
from epsl.attacks.threat import (
    L1_STEP_QUANTILE,
    LOSSES,
    AttackResult,
    InputGradient,
    ball_noise,
    batch_slices,
    check_attack_inputs,
    cw_loss,
    default_step_size,
    dlr_loss,
    input_gradient,
    logit_margin,
    project,
    score,
    steepest_direction,
    uniform_noise,
)

__all__ = [
    "ATTACKS", "ATTACK_NORMS", "DEFAULT_STEPS", "L1_STEP_QUANTILE", "LOSSES", "SWEEP_COLUMNS",
    "AttackResult", "InputGradient", "accepted_settings", "apgd", "ball_noise", "batch_slices",
    "check_attack_inputs", "check_norm", "check_settings", "cw_loss", "default_step_size",
    "dlr_loss", "fgsm", "input_gradient", "logit_margin", "lp_steps", "pgd", "project", "score",
    "sign_steps", "square", "steepest_direction", "sweep", "transfer", "uniform_noise",
]
