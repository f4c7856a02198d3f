"""The robustness audit: every attack of the paper and stronger ones on one fixed subset, the
worst case per example, and AutoAttack-style warnings for gradient masking.

The paper's sanity checks (section 5.1, Appendix F-H: unbounded eps, more steps, more
restarts) are what Mosbach et al. (2018) showed to be not enough for logit-squeezed models, so
the audit adds APGD-CE/DLR (Croce & Hein 2020), the minimum-norm ensemble of
:mod:`epsl.attacks.eps_star` (an example with ε* ≤ ε is broken), the gradient-free Square attack and a
transfer attack, and reads them against each other:

- an example is robust only if it survives every attack (``robust``); ``broken_by`` names the
  first attack, in the order below, that broke it;
- the expensive attacks (more steps, restarts, APGD, Square) run only on examples that are
  still robust, as in AutoAttack, so their marginal effect (``new_breaks``) is what the
  warnings read;
- Eq. 4's prediction ``eps_L > eps`` (Table 1, "Equation 4") sits beside the attacks.

Example::

    >>> from epsl.attacks.audit import audit, AuditConfig
    >>> result = audit(model, x, y, eps=0.1, config=AuditConfig.quick())
    >>> result.verdict, [w.code for w in result.warnings]
    >>> result.save("runs/audit")   # audit.csv + audit.json (epsl.results.records)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from epsl.attacks import (
    ATTACK_NORMS,
    AttackResult,
    apgd,
    default_step_size,
    fgsm,
    input_gradient,
    pgd,
    require_torchattacks,
    score,
    square,
    transfer,
)
from epsl.attacks.eps_star import (
    MinimalConfig,
    MinimalResult,
    check_minimal_dependencies,
    minimal_perturbation,
)
from epsl.device import model_device
from epsl.diagnostics import diagnose
from epsl.distributed import agree
from epsl.errors import EpslError, check_progress, check_seed
from epsl.modes import eval_mode
from epsl.norms import Norm, check_radius, max_radius, parse_norm
from epsl.results.files import to_json
from epsl.results.records import Provenance, Result
from epsl.stats import accuracy_interval

__all__ = ["WARNING_DOCS", "AuditConfig", "AuditResult", "AuditWarning", "Step", "audit",
           "check_dependencies", "ensemble_in", "run_ensemble"]

# Where each warning's page is, as something a user can run wherever epsl is installed: the
# pages ship as package data (epsl/warning_pages/<code>.md, read by epsl.explain).
WARNING_DOCS = {
    "steps": "epsl explain steps",
    "restarts": "epsl explain restarts",
    "stronger-attacks": "epsl explain stronger-attacks",
    "black-box-beats-white-box": "epsl explain black-box-beats-white-box",
    "unbounded": "epsl explain unbounded",
    "vanishing-gradients": "epsl explain vanishing-gradients",
}


@dataclass(frozen=True)
class AuditConfig:
    """How hard the audit attacks. eps is given to :func:`audit`; step sizes default to
    ``2.5 * eps / steps``.

    Attributes:
        pgd_steps: steps of the paper-strength PGD (xent and CW), 40 as for Madry's MNIST.
        step_size: step of that PGD (None: ``2.5 * eps / pgd_steps``).
        cw_confidence: kappa of the CW loss (50 in Madry et al.'s code).
        strong_steps: steps of the long PGD (Table 11 goes up to 1000).
        strong_restarts: random restarts of PGD-k (Table 10 goes up to 9).
        apgd_steps, apgd_restarts: APGD-CE and APGD-DLR budget.
        square_queries, square_restarts, square_p_init: Square budget.
        unbounded_eps, unbounded_steps: the Table 9 check (accuracy must reach 0); the radius
            is a fraction of the whole box in the audit's norm (1: the whole box, which is
            radius 1 in ℓ∞, √D in ℓ2 and D in ℓ1: :func:`epsl.norms.max_radius`).
        minimal: the minimum-norm ensemble (Foolbox FMN + torchattacks FAB,
            :class:`epsl.attacks.eps_star.MinimalConfig`, with its own seed and batch size) run as one
            more white-box attack: an example whose ε* is at most eps is broken. None: skip.
        skip_expensive: skip APGD, the minimum-norm ensemble and Square (they need
            torchattacks and Foolbox and take longest).
        survivors_only: run the expensive attacks only on examples still robust.
        drop_tolerance, relative_drop_tolerance: warn when more steps / restarts / APGD break
            more than ``drop_tolerance`` of all examples beyond the earlier attacks *and* more
            than ``relative_drop_tolerance`` of the examples still robust before them (so Table
            10's 52.3% -> 49.9% passes and Table 11's 49.7% -> 40.9% warns).
        blackbox_tolerance: warn when Square or the transfer attack breaks more than this
            fraction of examples that survived every white-box attack.
        unbounded_tolerance: warn when the unbounded attack leaves more than this accuracy.
        vanishing_tolerance: warn when more than this fraction of examples has an input
            gradient of the cross-entropy that is exactly zero (l1 norm <= ``zero_grad_atol``).
        seed: seeds every random start and torchattacks' APGD and Square (the ensemble's FAB
            has its own ``minimal.seed``).
        batch_size: examples per forward/backward pass (None: all at once).
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
    minimal: MinimalConfig | None = field(default_factory=MinimalConfig)
    skip_expensive: bool = False
    survivors_only: bool = True
    drop_tolerance: float = 0.02
    relative_drop_tolerance: float = 0.1
    blackbox_tolerance: float = 0.01
    unbounded_tolerance: float = 0.0
    vanishing_tolerance: float = 0.0
    zero_grad_atol: float = 0.0
    seed: int = 0
    batch_size: int | None = None

    @classmethod
    def quick(cls, **overrides: Any) -> AuditConfig:
        """A cheaper audit (fewer steps, restarts and queries) for a first look and for tests."""
        settings: dict[str, Any] = {"pgd_steps": 20, "strong_steps": 100, "strong_restarts": 3,
                                    "apgd_steps": 50, "square_queries": 300,
                                    "unbounded_steps": 50}
        settings.update(overrides)
        return cls(**settings)

    def __post_init__(self) -> None:
        counts = {"pgd_steps": self.pgd_steps, "strong_steps": self.strong_steps,
                  "strong_restarts": self.strong_restarts, "apgd_steps": self.apgd_steps,
                  "apgd_restarts": self.apgd_restarts, "square_queries": self.square_queries,
                  "square_restarts": self.square_restarts,
                  "unbounded_steps": self.unbounded_steps}
        for name, value in counts.items():
            if value < 1:
                raise EpslError(f"{name} must be at least 1 (got {value})")
        if self.strong_steps <= self.pgd_steps:
            raise EpslError(f"strong_steps ({self.strong_steps}) must exceed pgd_steps "
                            f"({self.pgd_steps}): the strong PGD is the paper's PGD with more "
                            "steps and restarts")
        if self.minimal is not None and not isinstance(self.minimal, MinimalConfig):
            raise EpslError(f"minimal must be a MinimalConfig or None (got {self.minimal!r})")
        if not 0 < self.unbounded_eps <= 1:
            raise EpslError(f"unbounded_eps must be in (0, 1], a fraction of the whole box "
                            f"(got {self.unbounded_eps})")
        check_seed(self.seed)

    def reuse_settings(self) -> dict[str, Any]:
        """What decides whether an audit on disk can be reused: every budget and threshold
        and the ensemble's own (not the batch size, which changes no number)."""
        plain = {k: v for k, v in dataclasses.asdict(self).items()
                 if k not in ("batch_size", "minimal")}
        return {**plain, "minimal": None if self.minimal is None
                else self.minimal.reuse_settings()}


@dataclass(frozen=True)
class AuditWarning:
    """One sanity check that failed: a short ``code``, what happened and what to do, and in
    ``doc`` the command that shows its page (``epsl explain CODE``; :func:`epsl.explain.explain`)."""

    code: str
    message: str
    doc: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class AuditResult:
    """What :func:`audit` found on N examples.

    Attributes:
        eps: the radius audited (pixel units, in ``norm``).
        table: one row per example: ``index, label, clean_correct``, one bool column per attack
            (empty where the attack did not run because the example was already broken),
            ``robust`` (survives every attack), ``broken_by``, ``unbounded`` (correct under the
            unbounded attack), ``grad_l1`` (||grad_x xent||_1 at x), ``eps_l`` (Eq. 4) and
            ``eq4_robust`` (``eps_l > eps``).
        accuracies: one row per attack, in the order run: ``attack, kind, examples`` (how many
            it ran on), ``accuracy`` (alone; empty if it ran on survivors only),
            ``robust_after`` (worst case so far), ``new_breaks`` (fraction of all examples it
            broke first), ``seconds``, ``settings``.
        warnings: the checks that failed; ``verdict``: one line; ``notes``: what was skipped.
    """

    eps: float
    table: pd.DataFrame
    accuracies: pd.DataFrame
    warnings: tuple[AuditWarning, ...]
    verdict: str
    config: AuditConfig
    notes: tuple[str, ...] = ()
    source: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    norm: str = "linf"

    @property
    def robust_accuracy(self) -> float:
        """Worst case over every attack: the fraction of examples that survive all of them."""
        return float(self.table["robust"].mean())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record: summary numbers, per-attack accuracies, warnings, verdict, config."""
        accuracies = self.accuracies.astype(object).where(self.accuracies.notna(), None)
        return {
            "eps": self.eps,
            "norm": self.norm,
            "examples": len(self.table),
            **self.summary,
            "robust_accuracy": self.robust_accuracy,
            "robust_accuracy_interval": list(accuracy_interval(self.robust_accuracy,
                                                               len(self.table))),
            "verdict": self.verdict,
            "warnings": [w.to_dict() for w in self.warnings],
            "notes": list(self.notes),
            "attacks": accuracies.to_dict(orient="records"),
            "source": self.source,
            "config": dataclasses.asdict(self.config),
        }

    def record(self, provenance: Provenance | None = None) -> Result:
        """This audit as a result of :mod:`epsl.results.records` (table ``audit.csv``, record
        ``audit.json``)."""
        return Result("audit", self.to_dict(), provenance, self.table)

    def save(self, out: Path | str, *, provenance: Provenance | None = None,
             overwrite: bool = True) -> list[Path]:
        """Write ``audit.csv`` (per example) and ``audit.json`` (everything else and the
        provenance) into the folder ``out``, atomically; return the paths."""
        return self.record(provenance).save(out, overwrite=overwrite)


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
              config: MinimalConfig, found: MinimalResult | None,
              batch_size: int | None) -> AttackResult:
    """The minimum-norm ensemble as an attack at ``eps``: the verified point where ε* ≤ eps,
    else x (``found``: ε* already computed on exactly these examples)."""
    if found is None:
        found = minimal_perturbation(model, x, y, config=config)
    broken = (found.eps_star <= eps).to(x.device)[:, None, None, None]
    x_adv = torch.where(broken, found.x_adv.to(x.device), x)
    with eval_mode(model):
        return score(model, x_adv, y, batch_size=batch_size)


def _plan(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
          source: nn.Module | None, config: AuditConfig,
          minimal: MinimalResult | None = None, norm: Norm = Norm.LINF) -> list[Step]:
    """The audit's attacks in ``norm``, in the order they run (``broken_by`` names the first
    that breaks an example). FGSM is FGM outside ℓ∞ (its name says so); the attacks that do
    not run in ``norm`` (APGD and Square in ℓ1, :data:`epsl.attacks.ATTACK_NORMS`) are left
    out, and :func:`audit` notes it."""
    k = config.pgd_steps
    step = config.step_size or default_step_size(eps, k)
    in_norm = {} if norm is Norm.LINF else {"norm": norm.value}
    common = {"seed": config.seed, "batch_size": config.batch_size, **in_norm}
    pgd_k = {"eps": eps, "steps": k, "step_size": step, "restarts": 1, **common}
    strong = {**pgd_k, "steps": config.strong_steps,
              "step_size": default_step_size(eps, config.strong_steps)}
    restarts = {**pgd_k, "restarts": config.strong_restarts}
    apgd_set = {"eps": eps, "steps": config.apgd_steps, "restarts": config.apgd_restarts,
                **common}
    square_set = {"eps": eps, "steps": config.square_queries,
                  "restarts": config.square_restarts, "p_init": config.square_p_init,
                  **common}
    cw = {"loss": "cw", "cw_confidence": config.cw_confidence}

    def on(fn: Callable[..., AttackResult], **kw: Any) -> Callable[[torch.Tensor], AttackResult]:
        return lambda idx: fn(model, x[idx], y[idx], **kw)

    def white(name: str, settings: dict[str, Any], run: Callable[[torch.Tensor], AttackResult],
              **flags: bool) -> Step:
        return Step(name=name, kind="white-box", settings=settings, run=run, **flags)

    plan = [
        white(_fgsm_name(norm), {"eps": eps, **in_norm},
              on(fgsm, eps=eps, batch_size=config.batch_size, **in_norm)),
        white(f"pgd{k}-xent", pgd_k, on(pgd, **pgd_k)),
        white(f"pgd{k}-cw", {**pgd_k, **cw}, on(pgd, **pgd_k, **cw)),
        white(f"pgd{config.strong_steps}-xent", strong, on(pgd, **strong), survivors=True),
        white(f"pgd{k}-xent-restarts{config.strong_restarts}", restarts, on(pgd, **restarts),
              survivors=True),
        white("apgd-ce", apgd_set, on(apgd, **apgd_set), expensive=True, survivors=True),
        white("apgd-dlr", {**apgd_set, "loss": "dlr"}, on(apgd, **apgd_set, loss="dlr"),
              expensive=True, survivors=True),
    ]
    ensemble = config.minimal
    if ensemble is not None:
        def min_norm(idx: torch.Tensor) -> AttackResult:
            found = None if minimal is None else minimal.subset(idx.cpu())
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


def _fgsm_name(norm: Norm) -> str:
    """The one-step attack's row: FGSM in ℓ∞, FGM (the normalised-gradient step) otherwise."""
    return "fgsm" if norm is Norm.LINF else "fgm"


def ensemble_in(minimal: MinimalConfig | None, norm: str | Norm) -> MinimalConfig | None:
    """The minimum-norm ensemble ``minimal`` in ``norm``: itself when it runs there already; the
    default ensemble of ``norm`` (same seed and batch size) when ``minimal`` is the default ℓ∞
    one; any other ensemble of another norm is a one-line :class:`EpslError`, so an ℓ∞ ε* never
    stands in an ℓ2 audit."""
    p = parse_norm(norm)
    if minimal is None or minimal.norm == p.value:
        return minimal
    plain = dataclasses.replace(minimal, attacks=None, seed=0, batch_size=None, fab_targets=None)
    if plain == MinimalConfig(batch_size=None):  # the default, perhaps with FAB's targets
        return MinimalConfig(norm=p.value, seed=minimal.seed, batch_size=minimal.batch_size,
                             fab_targets=minimal.fab_targets)
    raise EpslError(f"minimal runs in {minimal.norm} but norm={p.value}: give "
                    f"MinimalConfig(norm={p.value!r}, ...)")


def check_dependencies(config: AuditConfig) -> None:
    """Fail in one line, before any work, when an attack the audit will run cannot be imported
    (APGD, FAB and Square come from torchattacks, FMN from Foolbox, unless
    ``skip_expensive``)."""
    if not config.skip_expensive:
        require_torchattacks()
        if config.minimal is not None:
            check_minimal_dependencies(config.minimal)


def _input_grad_l1(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   batch_size: int | None) -> torch.Tensor:
    """||grad_x xent(f(x), y)||_1 per example (N), at the clean inputs."""
    size = batch_size or len(y)
    with eval_mode(model):
        norms = [input_gradient(model, x[start:start + size], y[start:start + size]).grad
                 .abs().flatten(1).sum(1) for start in range(0, len(y), size)]
    return torch.cat(norms)


def _eq4(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
         norm: Norm = Norm.LINF) -> tuple[torch.Tensor | None, str]:
    try:
        return diagnose(model, x, y, norm=norm).eps_l.to(torch.float32), ""
    except (EpslError, RuntimeError) as exc:
        return None, f"Eq. 4 prediction skipped: {str(exc).splitlines()[0]}"


def _settings_text(settings: dict[str, Any]) -> str:
    return to_json({k: v for k, v in settings.items()
                    if k != "batch_size"}).strip().replace("\n", "")


@dataclass
class _Ensemble:
    """What the plan's attacks found: a column per attack (NA where it did not run), the
    per-attack rows of :attr:`AuditResult.accuracies`, who broke each example first, and the
    examples robust after all attacks and after the white-box ones."""

    columns: dict[str, Any]
    rows: list[dict[str, Any]]
    broken_by: list[str]
    robust: torch.Tensor
    white_robust: torch.Tensor


def run_ensemble(plan: list[Step], correct: torch.Tensor, *, survivors_only: bool = True,
                 progress: Callable[[int], None] | None = None) -> _Ensemble:
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
                     "settings": _settings_text(attack.settings)})
        if attack.kind == "white-box":
            white_robust = robust.clone()
        if progress is not None:
            progress(1)
    return _Ensemble(columns, rows, broken_by, robust, white_robust)


def _check_audit_inputs(x: torch.Tensor, y: torch.Tensor, eps: float, norm: Norm,
                        minimal: MinimalResult | None) -> None:
    check_radius(norm, eps, dim=x[0].numel() if len(x) else None)
    if len(y) == 0:
        raise EpslError("the audit needs at least one example")
    if minimal is not None and getattr(minimal, "norm", "linf") != norm.value:
        raise EpslError(f"the eps* given to the audit are {minimal.norm} distances, not "
                        f"{norm.value}")
    if minimal is not None and (len(minimal) != len(y)
                                or not torch.equal(minimal.label.cpu(), y.cpu())):
        raise EpslError(f"the eps* given to the audit were found on other examples "
                        f"({len(minimal)} with other labels, not these {len(y)})")


def _unbounded(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               config: AuditConfig, norm: Norm = Norm.LINF
               ) -> tuple[AttackResult, dict[str, Any]]:
    """The Table 9 check: PGD at ``unbounded_eps`` of the whole box in ``norm`` (accuracy must
    reach 0), and its row."""
    radius = config.unbounded_eps * max_radius(norm, x[0].numel())
    settings: dict[str, Any] = {
        "eps": radius, "steps": config.unbounded_steps,
        "step_size": default_step_size(radius, config.unbounded_steps),
        "seed": config.seed, "batch_size": config.batch_size,
        **({} if norm is Norm.LINF else {"norm": norm.value})}
    start = time.perf_counter()
    result = pgd(model, x, y, **settings)
    row = {"attack": f"unbounded-eps{radius:g}", "kind": "sanity",
           "examples": len(y), "accuracy": result.accuracy, "robust_after": None,
           "new_breaks": None, "seconds": round(time.perf_counter() - start, 3),
           "settings": _settings_text(settings)}
    return result, row


def audit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
          source: nn.Module | None = None, config: AuditConfig | None = None,
          progress: Callable[[int], None] | None = None,
          minimal: MinimalResult | None = None, norm: str | Norm = "linf") -> AuditResult:
    """Audit ``model``'s ℓp robustness at ``eps`` on (x, y) for signs of gradient masking.

    Runs, on the same examples: clean accuracy; FGSM; PGD-k with cross-entropy and with the CW
    loss; PGD with many more steps (Table 11) and with restarts (Table 10); APGD-CE and
    APGD-DLR; the minimum-norm ensemble; a transfer attack from ``source`` (e.g. a naturally
    trained model, Tables 4 and 8); the gradient-free Square attack (:func:`run_ensemble` on
    :func:`_plan`); the unbounded-eps check (Table 9) and Eq. 4's prediction ``eps_L > eps``.
    Then checks, in AutoAttack's style: more steps or restarts (or APGD) break many more
    examples; a black-box attack breaks examples every white-box attack missed; unbounded eps
    leaves accuracy above 0; input gradients vanish.

    Args:
        model: classifier on N x C x H x W pixels in [0, 1] returning logits.
        x: N x C x H x W inputs in [0, 1]; y: (N,) labels.
        eps: radius in ``norm`` (pixel units: (0, 1] for ℓ∞, up to √D for ℓ2, D for ℓ1).
        source: optional model for the transfer attack (same input shape).
        config: attack budgets and warning thresholds (default :class:`AuditConfig`).
        progress: advanced by one per attack of the plan.
        minimal: ε* already found on exactly these examples with ``config.minimal``
            (:func:`epsl.attacks.eps_star.minimal_perturbation`); None runs the ensemble on the
            examples still robust when its turn comes.
        norm: ``"linf"`` (the paper's), ``"l2"`` or ``"l1"``: every attack, ε* and Eq. 4 in
            it. In ℓ2, FGSM is FGM and APGD and Square run in L2; in ℓ1 APGD and Square do not
            run (torchattacks has no ℓ1 version), and the notes say so.
    """
    p = parse_norm(norm)
    config = config or AuditConfig()
    config = dataclasses.replace(config, minimal=ensemble_in(config.minimal, p))
    check_progress(progress)
    check_dependencies(config)
    _check_audit_inputs(x, y, eps, p, minimal)
    device = model_device(model)
    x, y = x.to(device), y.to(device)
    n = len(y)
    with eval_mode(model):
        clean = score(model, x, y, batch_size=config.batch_size)
    plan = [a for a in _plan(model, x, y, eps, source, config, minimal, p)
            if not (a.expensive and config.skip_expensive)]
    found = run_ensemble(plan, clean.correct, survivors_only=config.survivors_only,
                         progress=progress)
    table = pd.DataFrame({"index": range(n), "label": y.cpu().numpy(),
                          "clean_correct": clean.correct.cpu().numpy(), **found.columns,
                          "robust": found.robust.cpu().numpy(), "broken_by": found.broken_by})
    unbounded, unbounded_row = _unbounded(model, x, y, config, p)
    table["unbounded"] = unbounded.correct.cpu().numpy()
    grad_l1 = _input_grad_l1(model, x, y, config.batch_size)
    table["grad_l1"] = grad_l1.detach().cpu().numpy()
    zero_grad = (grad_l1 <= config.zero_grad_atol).float().mean().item()
    notes = _notes(config, minimal)
    if p.value not in ATTACK_NORMS["apgd"] and not config.skip_expensive:
        notes.append(f"APGD and Square skipped: torchattacks has no {p.value} version")
    eps_l, note = _eq4(model, x, y, p)
    eq4_accuracy = None
    if eps_l is None:
        notes.append(note)
    else:
        table["eps_l"] = eps_l.cpu().numpy()
        table["eq4_robust"] = (eps_l > eps).cpu().numpy()
        eq4_accuracy = float((eps_l > eps).float().mean())
    clean_row = {"attack": "clean", "kind": "clean", "examples": n, "accuracy": clean.accuracy,
                 "robust_after": clean.accuracy, "new_breaks": 1 - clean.accuracy,
                 "seconds": 0.0, "settings": "{}"}
    accuracies = pd.DataFrame([clean_row, *found.rows, unbounded_row])
    warnings = _checks(accuracies, table, n, found.white_robust, zero_grad, unbounded.accuracy,
                       config)
    paper = [f"pgd{config.pgd_steps}-xent", f"pgd{config.pgd_steps}-cw", _fgsm_name(p)]
    summary = {"clean_accuracy": clean.accuracy,
               "paper_attacks_accuracy": float(table[paper].all(axis=1).mean()),
               "unbounded_accuracy": unbounded.accuracy, "zero_gradient_fraction": zero_grad,
               "eq4_accuracy": eq4_accuracy}
    return AuditResult(eps=eps, table=table, accuracies=accuracies, warnings=tuple(warnings),
                       verdict=_verdict(warnings), config=config, notes=tuple(notes),
                       source=None if source is None else type(source).__name__,
                       summary=summary, norm=p.value)


def _notes(config: AuditConfig, minimal: MinimalResult | None) -> list[str]:
    notes = []
    if minimal is not None and config.minimal is not None and not config.skip_expensive:
        notes.append("min-norm: eps* was found before the audit; its seconds exclude that")
    if config.skip_expensive:
        notes.append("APGD, the minimum-norm ensemble and Square skipped (skip_expensive)")
    return notes


def _verdict(warnings: list[AuditWarning]) -> str:
    if not warnings:
        return "no sign of gradient masking"
    return "likely gradient masking: " + "; ".join(dict.fromkeys(_SHORT[w.code]
                                                                 for w in warnings))


_SHORT = {
    "steps": "more PGD steps break many more examples",
    "restarts": "random restarts break many more examples",
    "stronger-attacks": "APGD or the minimum-norm attacks break many more examples than PGD",
    "black-box-beats-white-box": "a black-box attack beats the white-box attacks",
    "unbounded": "unbounded eps does not reach 0% accuracy",
    "vanishing-gradients": "input gradients vanish",
}


def _warning(code: str, message: str) -> AuditWarning:
    return AuditWarning(code, message, WARNING_DOCS[code])


def _checks(accuracies: pd.DataFrame, table: pd.DataFrame, n: int, white_robust: torch.Tensor,
            zero_grad: float, unbounded_accuracy: float,
            config: AuditConfig) -> list[AuditWarning]:
    found: list[AuditWarning] = []
    new = dict(zip(accuracies["attack"], accuracies["new_breaks"], strict=True))
    before = dict(zip(accuracies["attack"],
                      accuracies["robust_after"].shift(1, fill_value=1.0), strict=True))
    k = config.pgd_steps
    marginal = [
        ("steps", f"pgd{config.strong_steps}-xent",
         f"PGD with {config.strong_steps} steps breaks {{pct}} more examples than FGSM and "
         f"PGD-{k}: the paper-strength attack had not converged, or the loss surface is "
         f"convoluted. Report robustness under the long attack, not PGD-{k}."),
        ("restarts", f"pgd{k}-xent-restarts{config.strong_restarts}",
         f"{config.strong_restarts} random restarts of PGD-{k} break {{pct}} more examples: "
         f"the loss has many local maxima. Report robustness with restarts."),
        ("stronger-attacks", None,
         "APGD (CE/DLR) and the minimum-norm attacks break {pct} more examples than every PGD "
         "variant: PGD was too weak for this model. Report the worst case over all attacks "
         "(the `robust` column)."),
    ]
    for code, name, text in marginal:
        names = ["apgd-ce", "apgd-dlr", "min-norm"] if name is None else [name]
        names = [a for a in names if a in new]
        if not names:
            continue
        share = sum(new[a] or 0.0 for a in names)
        robust_before = before[names[0]]
        relative = share / robust_before if robust_before > 0 else 0.0
        if share > config.drop_tolerance and relative > config.relative_drop_tolerance:
            pct = f"{share:.1%} (a {relative:.0%} relative drop)"
            found.append(_warning(code, text.format(pct=pct)))
    robust_white = white_robust.cpu().numpy()
    for name in ("transfer", "square"):
        if name not in table:
            continue
        beaten = (table[name].fillna(True).to_numpy() == False) & robust_white  # noqa: E712
        share = float(beaten.sum()) / n
        if share > config.blackbox_tolerance:
            what = ("the transfer attack" if name == "transfer"
                    else "the gradient-free Square attack")
            found.append(_warning(
                "black-box-beats-white-box",
                f"{what} breaks {int(beaten.sum())} of the {int(robust_white.sum())} examples "
                f"that survived every white-box attack ({share:.1%} of all {n}): white-box "
                f"gradients are misleading (gradient masking). Trust the worst case over all "
                f"attacks and investigate the model's gradients."))
    if unbounded_accuracy > config.unbounded_tolerance:
        found.append(_warning(
            "unbounded",
            f"PGD with eps={config.unbounded_eps:g} and {config.unbounded_steps} steps leaves "
            f"{unbounded_accuracy:.1%} accuracy (it must reach 0%, Table 9): the attack cannot "
            f"follow the gradients, a sign of gradient masking. Check for non-differentiable "
            f"or saturating layers; try more steps."))
    if zero_grad > config.vanishing_tolerance:
        found.append(_warning(
            "vanishing-gradients",
            f"{zero_grad:.1%} of the examples have an exactly zero input gradient of the "
            f"cross-entropy: gradient-based attacks cannot move them. Check that the model "
            f"returns logits (not probabilities) and has no rounding or saturating layers; "
            f"rely on Square and transfer attacks."))
    return found
