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

The budgets (:class:`AuditConfig`) and the attacks in the order they run are
:mod:`epsl.attacks.audit_plan`'s; here :func:`audit` runs them, adds the unbounded-eps check
and Eq. 4, and :func:`masking_checks` reads the result for gradient masking.

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

from epsl.attacks.audit_plan import (
    AuditBudgets,
    AuditConfig,
    AuditThresholds,
    Step,
    attack_plan,
    check_dependencies,
    ensemble_in,
    fgsm_name,
    run_ensemble,
    settings_text,
)
from epsl.attacks.eps_star_result import EpsStarResult
from epsl.attacks.library import ATTACK_NORMS
from epsl.attacks.projected_gradient import pgd
from epsl.attacks.threat import AttackResult, default_step_size, input_gradient, score
from epsl.device import model_device
from epsl.diagnostics import diagnose
from epsl.errors import EpslError, check_progress
from epsl.modes import eval_mode
from epsl.norms import Norm, check_radius, max_radius, parse_norm
from epsl.results.records import Provenance, Result
from epsl.stats import accuracy_interval

__all__ = ["WARNING_DOCS", "AuditBudgets", "AuditConfig", "AuditResult", "AuditThresholds",
           "AuditWarning", "Step", "audit", "check_dependencies", "ensemble_in", "masking_checks",
           "run_ensemble"]

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


def _check_audit_inputs(x: torch.Tensor, y: torch.Tensor, eps: float, norm: Norm,
                        eps_star: EpsStarResult | None) -> None:
    check_radius(norm, eps, dim=x[0].numel() if len(x) else None)
    if len(y) == 0:
        raise EpslError("the audit needs at least one example")
    if eps_star is not None and getattr(eps_star, "norm", "linf") != norm.value:
        raise EpslError(f"the eps* given to the audit are {eps_star.norm} distances, not "
                        f"{norm.value}")
    if eps_star is not None and (len(eps_star) != len(y)
                                or not torch.equal(eps_star.label.cpu(), y.cpu())):
        raise EpslError(f"the eps* given to the audit were found on other examples "
                        f"({len(eps_star)} with other labels, not these {len(y)})")


def _unbounded(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               config: AuditConfig, norm: Norm = Norm.LINF
               ) -> tuple[AttackResult, dict[str, Any]]:
    """The Table 9 check: PGD at ``unbounded_eps`` of the whole box in ``norm`` (accuracy must
    reach 0), and its row."""
    radius = config.budgets.unbounded_eps * max_radius(norm, x[0].numel())
    settings: dict[str, Any] = {
        "eps": radius, "steps": config.budgets.unbounded_steps,
        "step_size": default_step_size(radius, config.budgets.unbounded_steps),
        "seed": config.seed, "batch_size": config.batch_size,
        **({} if norm is Norm.LINF else {"norm": norm.value})}
    start = time.perf_counter()
    result = pgd(model, x, y, **settings)
    row = {"attack": f"unbounded-eps{radius:g}", "kind": "sanity",
           "examples": len(y), "accuracy": result.accuracy, "robust_after": None,
           "new_breaks": None, "seconds": round(time.perf_counter() - start, 3),
           "settings": settings_text(settings)}
    return result, row


def audit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
          source: nn.Module | None = None, config: AuditConfig | None = None,
          progress: Callable[[int], None] | None = None,
          eps_star: EpsStarResult | None = None, norm: str | Norm = "linf") -> AuditResult:
    """Audit ``model``'s ℓp robustness at ``eps`` on (x, y) for signs of gradient masking.

    Runs, on the same examples: clean accuracy; FGSM; PGD-k with cross-entropy and with the CW
    loss; PGD with many more steps (Table 11) and with restarts (Table 10); APGD-CE and
    APGD-DLR; the minimum-norm ensemble; a transfer attack from ``source`` (e.g. a naturally
    trained model, Tables 4 and 8); the gradient-free Square attack (:func:`run_ensemble` on
    :func:`~epsl.attacks.audit_plan.attack_plan`); the unbounded-eps check (Table 9) and Eq. 4's
    prediction ``eps_L > eps``. Then checks (:func:`masking_checks`), in AutoAttack's style:
    more steps or restarts (or APGD) break many more examples; a black-box attack breaks
    examples every white-box attack missed; unbounded eps leaves accuracy above 0; input
    gradients vanish.

    Args:
        model: classifier on N x C x H x W pixels in [0, 1] returning logits.
        x: N x C x H x W inputs in [0, 1]; y: (N,) labels.
        eps: radius in ``norm`` (pixel units: (0, 1] for ℓ∞, up to √D for ℓ2, D for ℓ1).
        source: optional model for the transfer attack (same input shape).
        config: attack budgets and warning thresholds (default :class:`AuditConfig`).
        progress: advanced by one per attack of the plan.
        eps_star: ε* already found on exactly these examples with ``config.eps_star``
            (:func:`epsl.attacks.eps_star.find_eps_star`); None runs the ensemble on the
            examples still robust when its turn comes.
        norm: ``"linf"`` (the paper's), ``"l2"`` or ``"l1"``: every attack, ε* and Eq. 4 in
            it. In ℓ2, FGSM is FGM and APGD and Square run in L2; in ℓ1 APGD and Square do not
            run (torchattacks has no ℓ1 version), and the notes say so.
    """
    p = parse_norm(norm)
    config = config or AuditConfig()
    config = dataclasses.replace(config, eps_star=ensemble_in(config.eps_star, p))
    check_progress(progress)
    check_dependencies(config)
    _check_audit_inputs(x, y, eps, p, eps_star)
    device = model_device(model)
    x, y = x.to(device), y.to(device)
    n = len(y)
    with eval_mode(model):
        clean = score(model, x, y, batch_size=config.batch_size)
    plan = [a for a in attack_plan(model, x, y, eps, source, config, eps_star, p)
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
    zero_grad = (grad_l1 <= config.thresholds.zero_grad_atol).float().mean().item()
    notes = _notes(config, eps_star)
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
    warnings = masking_checks(accuracies, table, n, found.white_robust, zero_grad,
                              unbounded.accuracy, config)
    paper = [f"pgd{config.budgets.pgd_steps}-xent", f"pgd{config.budgets.pgd_steps}-cw", fgsm_name(p)]
    summary = {"clean_accuracy": clean.accuracy,
               "paper_attacks_accuracy": float(table[paper].all(axis=1).mean()),
               "unbounded_accuracy": unbounded.accuracy, "zero_gradient_fraction": zero_grad,
               "eq4_accuracy": eq4_accuracy}
    return AuditResult(eps=eps, table=table, accuracies=accuracies, warnings=tuple(warnings),
                       verdict=_verdict(warnings), config=config, notes=tuple(notes),
                       source=None if source is None else type(source).__name__,
                       summary=summary, norm=p.value)


def _notes(config: AuditConfig, eps_star: EpsStarResult | None) -> list[str]:
    notes = []
    if eps_star is not None and config.eps_star is not None and not config.skip_expensive:
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


def masking_checks(accuracies: pd.DataFrame, table: pd.DataFrame, n: int,
                   white_robust: torch.Tensor, zero_grad: float, unbounded_accuracy: float,
                   config: AuditConfig) -> list[AuditWarning]:
    """The checks for gradient masking, in AutoAttack's style; the warnings of those that fail.

    Args:
        accuracies: one row per attack in the order run (``attack``, ``new_breaks``,
            ``robust_after``), as :attr:`AuditResult.accuracies`.
        table: one row per example, with a column per attack (:attr:`AuditResult.table`).
        n: the number of examples.
        white_robust: (N,) bool, robust after every white-box attack.
        zero_grad: the fraction of examples whose input gradient is zero.
        unbounded_accuracy: the accuracy the unbounded-eps PGD leaves (Table 9).
        config: the tolerances (:class:`AuditConfig`).

    Warns when more steps, restarts, or APGD and the minimum-norm attacks break more examples
    than both tolerances allow; when the transfer or Square attack breaks examples every
    white-box attack missed; when the unbounded attack leaves accuracy; when gradients vanish.
    """
    found: list[AuditWarning] = []
    new = dict(zip(accuracies["attack"], accuracies["new_breaks"], strict=True))
    before = dict(zip(accuracies["attack"],
                      accuracies["robust_after"].shift(1, fill_value=1.0), strict=True))
    k = config.budgets.pgd_steps
    marginal = [
        ("steps", f"pgd{config.budgets.strong_steps}-xent",
         f"PGD with {config.budgets.strong_steps} steps breaks {{pct}} more examples than FGSM and "
         f"PGD-{k}: the paper-strength attack had not converged, or the loss surface is "
         f"convoluted. Report robustness under the long attack, not PGD-{k}."),
        ("restarts", f"pgd{k}-xent-restarts{config.budgets.strong_restarts}",
         f"{config.budgets.strong_restarts} random restarts of PGD-{k} break {{pct}} more examples: "
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
        if share > config.thresholds.drop_tolerance and relative > config.thresholds.relative_drop_tolerance:
            pct = f"{share:.1%} (a {relative:.0%} relative drop)"
            found.append(_warning(code, text.format(pct=pct)))
    robust_white = white_robust.cpu().numpy()
    for name in ("transfer", "square"):
        if name not in table:
            continue
        beaten = (table[name].fillna(True).to_numpy() == False) & robust_white  # noqa: E712
        share = float(beaten.sum()) / n
        if share > config.thresholds.blackbox_tolerance:
            what = ("the transfer attack" if name == "transfer"
                    else "the gradient-free Square attack")
            found.append(_warning(
                "black-box-beats-white-box",
                f"{what} breaks {int(beaten.sum())} of the {int(robust_white.sum())} examples "
                f"that survived every white-box attack ({share:.1%} of all {n}): white-box "
                f"gradients are misleading (gradient masking). Trust the worst case over all "
                f"attacks and investigate the model's gradients."))
    if unbounded_accuracy > config.thresholds.unbounded_tolerance:
        found.append(_warning(
            "unbounded",
            f"PGD with eps={config.budgets.unbounded_eps:g} and "
            f"{config.budgets.unbounded_steps} steps leaves "
            f"{unbounded_accuracy:.1%} accuracy (it must reach 0%, Table 9): the attack cannot "
            f"follow the gradients, a sign of gradient masking. Check for non-differentiable "
            f"or saturating layers; try more steps."))
    if zero_grad > config.thresholds.vanishing_tolerance:
        found.append(_warning(
            "vanishing-gradients",
            f"{zero_grad:.1%} of the examples have an exactly zero input gradient of the "
            f"cross-entropy: gradient-based attacks cannot move them. Check that the model "
            f"returns logits (not probabilities) and has no rounding or saturating layers; "
            f"rely on Square and transfer attacks."))
    return found


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

