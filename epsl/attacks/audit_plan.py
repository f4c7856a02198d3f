"""What the robustness audit (:func:`epsl.attacks.audit.audit`) runs: its budgets and warning
thresholds (:class:`AuditConfig`), its attacks in the order they run (:func:`plan`, one
:class:`Step` each) and the AutoAttack-style run over them (:func:`run_ensemble`): an example
is robust only while it survives every attack, and the expensive attacks run only on the
examples still robust.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from epsl.attacks.eps_star import EpsStarConfig, check_eps_star_dependencies, find_eps_star
from epsl.attacks.eps_star_result import EpsStarResult
from epsl.attacks.library import ATTACK_NORMS, apgd, require_torchattacks, square
from epsl.attacks.projected_gradient import fgsm, pgd
from epsl.attacks.sweeps import transfer
from epsl.attacks.threat import AttackResult, default_step_size, score
from epsl.distributed import agree
from epsl.errors import EpslError, check_seed
from epsl.modes import eval_mode
from epsl.norms import Norm, parse_norm
from epsl.results.files import to_json

__all__ = ["AuditBudgets", "AuditConfig", "AuditThresholds", "EnsembleOutcome", "Step",
           "attack_plan", "check_dependencies", "ensemble_in", "fgsm_name", "run_ensemble",
           "settings_text"]


@dataclass(frozen=True)
class AuditBudgets:
    """How hard each attack of the audit works. Step sizes default to ``2.5 * eps / steps``.

    Attributes:
        pgd_steps: steps of the paper-strength PGD (xent and CW), 40 as for Madry's MNIST.
        step_size: step of that PGD (None: ``2.5 * eps / pgd_steps``).
        cw_confidence: kappa of the CW loss (50 in Madry et al.'s code).
        strong_steps: steps of the long PGD (Table 11 goes up to 1000).
        strong_restarts: random restarts of PGD-k (Table 10 goes up to 9).
        apgd_steps: steps of APGD-CE and APGD-DLR.
        apgd_restarts: restarts of APGD-CE and APGD-DLR.
        square_queries: queries of Square.
        square_restarts: restarts of Square.
        square_p_init: Square's initial fraction of pixels changed.
        unbounded_eps: radius of the Table 9 check (accuracy must reach 0), a fraction of the
            whole box in the audit's norm (1: the whole box, which is radius 1 in ℓ∞, √D in ℓ2
            and D in ℓ1: :func:`epsl.norms.max_radius`).
        unbounded_steps: PGD steps of that check.
    """

    pgd_steps: int = 40
    step_size: float | None = None
    cw_confidence: float = 50.0
    strong_steps: int = 400
    strong_restarts: int = 10
    apgd_steps: int = 100
    apgd_restarts: int = 1
    square_queries: int = 1000
    square_restarts: int = 1
    square_p_init: float = 0.8
    unbounded_eps: float = 1.0
    unbounded_steps: int = 100

    @classmethod
    def quick(cls, **overrides: Any) -> AuditBudgets:
        """Fewer steps, restarts and queries, for a first look and for tests."""
        return cls(**{"pgd_steps": 20, "strong_steps": 100, "strong_restarts": 3,
                      "apgd_steps": 50, "square_queries": 300, "unbounded_steps": 50,
                      **overrides})

    def __post_init__(self) -> None:
        for name in ("pgd_steps", "strong_steps", "strong_restarts", "apgd_steps",
                     "apgd_restarts", "square_queries", "square_restarts", "unbounded_steps"):
            if getattr(self, name) < 1:
                raise EpslError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.strong_steps <= self.pgd_steps:
            raise EpslError(f"strong_steps ({self.strong_steps}) must exceed pgd_steps "
                            f"({self.pgd_steps}): the strong PGD is the paper's PGD with more "
                            "steps and restarts")
        if not 0 < self.unbounded_eps <= 1:
            raise EpslError(f"unbounded_eps must be in (0, 1], a fraction of the whole box "
                            f"(got {self.unbounded_eps})")


@dataclass(frozen=True)
class AuditThresholds:
    """When the audit warns that gradients may be masked (one doc page per warning).

    Attributes:
        drop_tolerance: warn when more steps / restarts / APGD break more than this share of
            all examples beyond the earlier attacks, *and* ...
        relative_drop_tolerance: ... more than this share of the examples still robust before
            them (so Table 10's 52.3% -> 49.9% passes and Table 11's 49.7% -> 40.9% warns).
        blackbox_tolerance: warn when Square or the transfer attack breaks more than this
            share of the examples that survived every white-box attack.
        unbounded_tolerance: warn when the unbounded attack leaves more than this accuracy.
        vanishing_tolerance: warn when more than this share of the examples has an input
            gradient of the cross-entropy that is exactly zero (ℓ1 norm <= ``zero_grad_atol``).
        zero_grad_atol: what counts as a zero gradient.
    """

    drop_tolerance: float = 0.02
    relative_drop_tolerance: float = 0.1
    blackbox_tolerance: float = 0.01
    unbounded_tolerance: float = 0.0
    vanishing_tolerance: float = 0.0
    zero_grad_atol: float = 0.0


#: the fields of :class:`AuditBudgets` and :class:`AuditThresholds`, for :meth:`AuditConfig.build`
_BUDGETS = frozenset(f.name for f in dataclasses.fields(AuditBudgets))
_THRESHOLDS = frozenset(f.name for f in dataclasses.fields(AuditThresholds))


@dataclass(frozen=True)
class AuditConfig:
    """The audit of :func:`~epsl.attacks.audit.audit` (eps is given to it).

    Attributes:
        budgets: how hard each attack works.
        thresholds: when the gradient-masking checks warn.
        eps_star: the minimum-norm ensemble (Foolbox FMN + torchattacks FAB,
            :class:`epsl.attacks.eps_star.EpsStarConfig`, with its own seed and batch size) run
            as one more white-box attack (``min-norm``): an example whose ε* is at most eps is
            broken. None: skip.
        skip_expensive: skip APGD, the minimum-norm ensemble and Square (they need
            torchattacks and Foolbox and take longest).
        survivors_only: run the expensive attacks only on examples still robust.
        seed: seeds every random start and torchattacks' APGD and Square (the ensemble's FAB
            has its own ``eps_star.seed``).
        batch_size: examples per forward/backward pass (None: all at once).
    """

    budgets: AuditBudgets = field(default_factory=AuditBudgets)
    thresholds: AuditThresholds = field(default_factory=AuditThresholds)
    eps_star: EpsStarConfig | None = field(default_factory=EpsStarConfig)
    skip_expensive: bool = False
    survivors_only: bool = True
    seed: int = 0
    batch_size: int | None = None

    @classmethod
    def build(cls, *, quick: bool = False, **settings: Any) -> AuditConfig:
        """An audit from flat settings: any field of :class:`AuditBudgets`,
        :class:`AuditThresholds` or this class, on the budgets of :meth:`AuditBudgets.quick`
        when ``quick``."""
        budgets = {k: settings.pop(k) for k in list(settings) if k in _BUDGETS}
        thresholds = {k: settings.pop(k) for k in list(settings) if k in _THRESHOLDS}
        base = AuditBudgets.quick if quick else AuditBudgets
        return cls(budgets=base(**budgets), thresholds=AuditThresholds(**thresholds),
                   **settings)

    @classmethod
    def quick(cls, **settings: Any) -> AuditConfig:
        """A cheaper audit (:meth:`AuditBudgets.quick`) for a first look and for tests;
        ``settings`` as for :meth:`build`."""
        return cls.build(quick=True, **settings)

    def __post_init__(self) -> None:
        if not isinstance(self.budgets, AuditBudgets):
            raise EpslError(f"budgets must be an AuditBudgets (got {self.budgets!r})")
        if not isinstance(self.thresholds, AuditThresholds):
            raise EpslError(f"thresholds must be an AuditThresholds (got {self.thresholds!r})")
        if self.eps_star is not None and not isinstance(self.eps_star, EpsStarConfig):
            raise EpslError(f"eps_star must be an EpsStarConfig or None (got {self.eps_star!r})")
        check_seed(self.seed)

    def reuse_settings(self) -> dict[str, Any]:
        """What decides whether an audit on disk can be reused: every budget and threshold
        and the ensemble's own (not the batch size, which changes no number)."""
        return {**dataclasses.asdict(self.budgets), "skip_expensive": self.skip_expensive,
                "survivors_only": self.survivors_only, **dataclasses.asdict(self.thresholds),
                "seed": self.seed, "eps_star": None if self.eps_star is None
                else self.eps_star.reuse_settings()}


@dataclass(frozen=True, kw_only=True)
class Step:
    """One attack of the audit's plan: its name and kind, the settings it records, and how it
    runs on the examples of given indices. ``expensive`` steps are dropped by
    ``skip_expensive``; ``survivors`` steps run only on the examples still robust (with
    ``survivors_only``), as in AutoAttack."""

    name: str
    kind: str  # "white-box" or "black-box"
    settings: dict[str, Any]
    run: Callable[[torch.Tensor], AttackResult]
    expensive: bool = False
    survivors: bool = False


def _min_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
              config: EpsStarConfig, found: EpsStarResult | None,
              batch_size: int | None) -> AttackResult:
    """The minimum-norm ensemble as an attack at ``eps``: the verified point where ε* ≤ eps,
    else x (``found``: ε* already computed on exactly these examples)."""
    if found is None:
        found = find_eps_star(model, x, y, config=config)
    broken = (found.eps_star <= eps).to(x.device)[:, None, None, None]
    x_adv = torch.where(broken, found.x_adv.to(x.device), x)
    with eval_mode(model):
        return score(model, x_adv, y, batch_size=batch_size)


def attack_plan(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                source: nn.Module | None, config: AuditConfig,
                eps_star: EpsStarResult | None = None, norm: Norm = Norm.LINF) -> list[Step]:
    """The audit's attacks in ``norm``, in the order they run (``broken_by`` names the first
    that breaks an example). FGSM is FGM outside ℓ∞ (its name says so); the attacks that do
    not run in ``norm`` (APGD and Square in ℓ1, :data:`epsl.attacks.ATTACK_NORMS`) are left
    out, and :func:`~epsl.attacks.audit.audit` notes it."""
    k = config.budgets.pgd_steps
    step = config.budgets.step_size or default_step_size(eps, k)
    in_norm = {} if norm is Norm.LINF else {"norm": norm.value}
    common = {"seed": config.seed, "batch_size": config.batch_size, **in_norm}
    pgd_k = {"eps": eps, "steps": k, "step_size": step, "restarts": 1, **common}
    strong = {**pgd_k, "steps": config.budgets.strong_steps,
              "step_size": default_step_size(eps, config.budgets.strong_steps)}
    restarts = {**pgd_k, "restarts": config.budgets.strong_restarts}
    apgd_set = {"eps": eps, "steps": config.budgets.apgd_steps, "restarts": config.budgets.apgd_restarts,
                **common}
    square_set = {"eps": eps, "steps": config.budgets.square_queries,
                  "restarts": config.budgets.square_restarts, "p_init": config.budgets.square_p_init,
                  **common}
    cw = {"loss": "cw", "cw_confidence": config.budgets.cw_confidence}

    def on(fn: Callable[..., AttackResult], **kw: Any) -> Callable[[torch.Tensor], AttackResult]:
        return lambda idx: fn(model, x[idx], y[idx], **kw)

    def white(name: str, settings: dict[str, Any], run: Callable[[torch.Tensor], AttackResult],
              **flags: bool) -> Step:
        return Step(name=name, kind="white-box", settings=settings, run=run, **flags)

    plan = [
        white(fgsm_name(norm), {"eps": eps, **in_norm},
              on(fgsm, eps=eps, batch_size=config.batch_size, **in_norm)),
        white(f"pgd{k}-xent", pgd_k, on(pgd, **pgd_k)),
        white(f"pgd{k}-cw", {**pgd_k, **cw}, on(pgd, **pgd_k, **cw)),
        white(f"pgd{config.budgets.strong_steps}-xent", strong, on(pgd, **strong), survivors=True),
        white(f"pgd{k}-xent-restarts{config.budgets.strong_restarts}", restarts, on(pgd, **restarts),
              survivors=True),
        white("apgd-ce", apgd_set, on(apgd, **apgd_set), expensive=True, survivors=True),
        white("apgd-dlr", {**apgd_set, "loss": "dlr"}, on(apgd, **apgd_set, loss="dlr"),
              expensive=True, survivors=True),
    ]
    ensemble = config.eps_star
    if ensemble is not None:
        def min_norm(idx: torch.Tensor) -> AttackResult:
            found = None if eps_star is None else eps_star.subset(idx.cpu())
            return _min_norm(model, x[idx], y[idx], eps, ensemble, found, config.batch_size)

        plan.append(white("min-norm", {"eps": eps, **ensemble.reuse_settings()}, min_norm,
                          expensive=True, survivors=True))
    if source is not None:
        plan.append(Step(name="transfer", kind="black-box", settings=pgd_k,
                         run=lambda idx: transfer(source, model, x[idx], y[idx], attack="pgd",
                                                  **pgd_k)))
    plan.append(Step(name="square", kind="black-box", settings=square_set,
                     run=on(square, **square_set), expensive=True, survivors=True))
    unsupported = {"apgd-ce": "apgd", "apgd-dlr": "apgd-dlr", "square": "square"}
    return [a for a in plan if norm.value in ATTACK_NORMS.get(unsupported.get(a.name, ""),
                                                               (norm.value,))]


def fgsm_name(norm: Norm) -> str:
    """The one-step attack's row: FGSM in ℓ∞, FGM (the normalised-gradient step) otherwise."""
    return "fgsm" if norm is Norm.LINF else "fgm"


def ensemble_in(eps_star: EpsStarConfig | None, norm: str | Norm) -> EpsStarConfig | None:
    """The minimum-norm ensemble ``eps_star`` in ``norm``: itself when it runs there already; the
    default ensemble of ``norm`` (same seed and batch size) when ``eps_star`` is the default ℓ∞
    one; any other ensemble of another norm is a one-line :class:`EpslError`, so an ℓ∞ ε* never
    stands in an ℓ2 audit."""
    p = parse_norm(norm)
    if eps_star is None or eps_star.norm == p.value:
        return eps_star
    plain = dataclasses.replace(eps_star, attacks=None, seed=0, batch_size=None, fab_targets=None)
    if plain == EpsStarConfig(batch_size=None):  # the default, perhaps with FAB's targets
        return EpsStarConfig(norm=p.value, seed=eps_star.seed, batch_size=eps_star.batch_size,
                             fab_targets=eps_star.fab_targets)
    raise EpslError(f"eps_star runs in {eps_star.norm} but norm={p.value}: give "
                    f"EpsStarConfig(norm={p.value!r}, ...)")


def check_dependencies(config: AuditConfig) -> None:
    """Fail in one line, before any work, when an attack the audit will run cannot be imported
    (APGD, FAB and Square come from torchattacks, FMN from Foolbox, unless
    ``skip_expensive``)."""
    if not config.skip_expensive:
        require_torchattacks()
        if config.eps_star is not None:
            check_eps_star_dependencies(config.eps_star)


def settings_text(settings: dict[str, Any]) -> str:
    """An attack's ``settings`` as one line of JSON for its row of the audit's accuracies,
    without the batch size (which changes no number)."""
    return to_json({k: v for k, v in settings.items()
                    if k != "batch_size"}).strip().replace("\n", "")


@dataclass
class EnsembleOutcome:
    """What the plan's attacks found: a column per attack (NA where it did not run), the
    per-attack rows of :attr:`~epsl.attacks.audit.AuditResult.accuracies`, who broke each
    example first, and the examples robust after all attacks and after the white-box ones."""

    columns: dict[str, Any]
    rows: list[dict[str, Any]]
    broken_by: list[str]
    robust: torch.Tensor
    white_robust: torch.Tensor


def run_ensemble(plan: list[Step], correct: torch.Tensor, *, survivors_only: bool = True,
                 progress: Callable[[int], None] | None = None) -> EnsembleOutcome:
    """Run ``plan`` in order, AutoAttack-style: an example is robust only while it survives
    every attack; a ``survivors`` step runs only on the examples still robust. ``correct``:
    (N,) bool, the clean predictions; ``progress`` is advanced by one per attack."""
    n = len(correct)
    robust = correct.clone()
    broken_by = ["" if ok else "clean" for ok in correct.tolist()]
    columns: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    white_robust = robust.clone()
    for attack in plan:
        alive = agree(robust.nonzero().squeeze(1))  # one decision for every process
        on_survivors = attack.survivors and survivors_only
        idx = alive if on_survivors else torch.arange(n, device=correct.device)
        column = pd.array([pd.NA] * n, dtype="boolean")
        start = time.perf_counter()
        if idx.numel():
            result = attack.run(idx)
            survived = result.correct.to(correct.device)
            column[idx.cpu().numpy()] = survived.cpu().numpy()
            newly = idx[robust[idx] & ~survived]
            for i in newly.tolist():
                broken_by[i] = attack.name
            robust[newly] = False
            accuracy = result.accuracy if idx.numel() == n else None
        else:
            newly, accuracy = idx, (None if on_survivors else 1.0)
        columns[attack.name] = column
        rows.append({"attack": attack.name, "kind": attack.kind, "examples": int(idx.numel()),
                     "accuracy": accuracy, "robust_after": robust.float().mean().item(),
                     "new_breaks": newly.numel() / n,
                     "seconds": round(time.perf_counter() - start, 3),
                     "settings": settings_text(attack.settings)})
        if attack.kind == "white-box":
            white_robust = robust.clone()
        if progress is not None:
            progress(1)
    return EnsembleOutcome(columns, rows, broken_by, robust, white_robust)
