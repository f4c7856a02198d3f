"""``epsl audit``: the robustness audit (:func:`epsl.attacks.audit.audit`) of a checkpoint's
examples as one result with its provenance (:func:`run_audit`), and "reuse or run and save"
for the comparison and the study (:func:`ensure_audit`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from epsl.attacks.audit import AuditConfig, audit, check_dependencies, ensemble_in
from epsl.attacks.eps_star import EpsStarResult
from epsl.norms import check_radius, parse_norm
from epsl.results.records import Provenance, Result, check_replaceable, reusable
from epsl.runs.context import DataConfig, Evaluation, load_source, provenance


@dataclass(frozen=True)
class AuditRunConfig:
    """``epsl audit``: :func:`audit` of a checkpoint's examples at ``eps`` with the budgets of
    ``audit``, optionally with a transfer attack from ``source``."""

    data: DataConfig
    eps: float
    audit: AuditConfig = field(default_factory=AuditConfig)
    source: str | None = None
    norm: str = "linf"

    def __post_init__(self) -> None:
        p = parse_norm(self.norm)
        object.__setattr__(self, "norm", p.value)
        check_radius(p, self.eps)
        object.__setattr__(self, "audit", dataclasses.replace(
            self.audit, eps_star=ensemble_in(self.audit.eps_star, p)))

    def reuse_settings(self) -> dict[str, Any]:
        """The radius, every budget and threshold, and the norm where it is not ℓ∞ (so ℓ∞
        audits made before other norms existed are still reused, and never for ℓ2)."""
        norm = {} if self.norm == "linf" else {"norm": self.norm}
        return {"eps": self.eps, **norm, **self.audit.reuse_settings()}


def run_audit(config: AuditRunConfig, *, evaluation: Evaluation | None = None,
              source_model: nn.Module | None = None, eps_star: EpsStarResult | None = None,
              progress: Callable[[int], None] | None = None) -> Result:
    """The audit result of ``config`` (:meth:`AuditResult.record`) with its provenance.
    ``evaluation``: ``config.data`` already prepared (its examples are the ones audited);
    ``source_model``: ``config.source`` already loaded; ``eps_star``: ε* already found on these
    examples with ``config.audit.eps_star``."""
    check_dependencies(config.audit)
    ev = evaluation or config.data.prepare()
    return _audit_result(config, ev, provenance(ev, config.reuse_settings(), source=config.source),
                         source_model, eps_star, progress)


def _audit_result(config: AuditRunConfig, ev: Evaluation, origin: Provenance,
                  source_model: nn.Module | None, eps_star: EpsStarResult | None,
                  progress: Callable[[int], None] | None) -> Result:
    if source_model is None:
        source_model = load_source(config.source, ev)
    found = audit(ev.model, ev.data.x.to(ev.device), ev.data.y.to(ev.device), eps=config.eps,
                  source=source_model, config=config.audit, progress=progress, eps_star=eps_star,
                  norm=config.norm)
    return found.record(origin)


def ensure_audit(config: AuditRunConfig, folder: Path, ev: Evaluation, *,
                 points: Callable[[], EpsStarResult | None],
                 source_model: nn.Module | None = None,
                 log: Callable[[str], None] | None = None, overwrite: bool = True) -> bool:
    """The audit of ``ev``'s examples in ``folder``, reused when made from the same
    checkpoint, examples, source and settings, else run (with the ε* that ``points`` gives,
    called only then) and saved; a result of another origin is replaced only with
    ``overwrite``. True when it ran."""
    origin = provenance(ev, config.reuse_settings(), source=config.source)
    if reusable(folder, "audit", origin):
        return False
    check_replaceable(folder, "audit", origin, overwrite)
    if log is not None:
        which = "" if config.norm == "linf" else f" ({config.norm})"
        log(f"{folder.parent.name}: audit at eps={config.eps:g}{which} on {len(ev.data)} "
            "examples")
    check_dependencies(config.audit)
    _audit_result(config, ev, origin, source_model, points(), None).save(folder, overwrite=True)
    return True


__all__ = ["AuditRunConfig", "ensure_audit", "run_audit"]
