"""``epsl attack``: one attack of :data:`epsl.attacks.ATTACKS` swept over radii, steps and
restarts on a checkpoint's examples (:func:`run_attack`), with the accuracy per setting and its
95% interval."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from epsl.attacks import ATTACKS, DEFAULT_STEPS, check_norm, check_settings, sweep
from epsl.errors import EpslError, check_seed
from epsl.norms import check_radius
from epsl.results.records import Result
from epsl.runs.context import DataConfig, Evaluation, load_source, provenance
from epsl.stats import accuracy_interval


@dataclass(frozen=True)
class AttackRunConfig:
    """``epsl attack``: one attack of :data:`ATTACKS` at every (eps, steps, restarts) of the
    product (:func:`sweep`), on a checkpoint's examples, optionally transferred from
    ``source``, in the threat model ``norm`` (``"linf"``, ``"l2"`` or ``"l1"``; eps in that
    norm's pixel units). ``steps`` and ``restarts`` default to :data:`DEFAULT_STEPS` and 1;
    ``loss``, ``step_size`` and ``random_start`` to the attack's own. A setting the attack does
    not take, or a norm it does not support, is refused here, before any work; radii beyond
    the whole box (sqrt(D) in l2, D in l1) are refused by the attack once D is known."""

    data: DataConfig
    eps: tuple[float, ...]
    attack: str = "pgd"
    steps: tuple[int, ...] = ()
    restarts: tuple[int, ...] = ()
    loss: str | None = None
    step_size: float | None = None
    random_start: bool | None = None
    cw_confidence: float = 50.0
    seed: int = 0
    batch_size: int | None = None
    source: str | None = None
    norm: str = "linf"

    def __post_init__(self) -> None:
        ATTACKS[self.attack]  # an unknown name fails here, with the known ones
        object.__setattr__(self, "norm", check_norm(self.attack, self.norm).value)
        if not self.eps:
            raise EpslError("eps: give at least one radius")
        check_radius(self.norm, self.eps)
        given = [name for name, value in (("steps", self.steps), ("restarts", self.restarts))
                 if value]
        check_settings(self.attack, [*given, *self.settings()])
        if min([*self.steps, *self.restarts], default=1) < 1:
            raise EpslError("steps and restarts must be at least 1")
        check_seed(self.seed)

    def settings(self) -> dict[str, Any]:
        """The keyword settings :func:`sweep` gets (only those given, the attack's defaults
        otherwise; ``norm`` always)."""
        settings: dict[str, Any] = {"norm": self.norm, "seed": self.seed,
                                    "batch_size": self.batch_size}
        if self.loss is not None:
            settings["loss"] = self.loss
        if self.loss == "cw":
            settings["cw_confidence"] = self.cw_confidence
        if self.random_start is not None:
            settings["random_start"] = self.random_start
        if self.step_size is not None:
            settings["step_size"] = self.step_size
        return settings

    def grid(self) -> dict[str, list[Any]]:
        """The radii, steps and restarts the sweep covers (defaults filled in)."""
        return {"eps": list(self.eps),
                "steps": list(self.steps or (DEFAULT_STEPS.get(self.attack, 1),)),
                "restarts": list(self.restarts or (1,))}

    def reuse_settings(self) -> dict[str, Any]:
        """Everything but the batch size, which changes no number (the norm included)."""
        return {"attack": self.attack, **self.grid(),
                **{k: v for k, v in self.settings().items() if k != "batch_size"}}


def accuracy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per setting of a :func:`sweep` table (``norm`` where the table has it, ``eps, steps,
    restarts, step_size``): the accuracy, n and its 95% Clopper-Pearson interval (``lo``,
    ``hi``)."""
    keys = [*(["norm"] if "norm" in frame else []), "eps", "steps", "restarts", "step_size"]
    table = (frame.groupby(keys, dropna=False, sort=False)["correct"]
             .agg(accuracy="mean", n="size").reset_index())
    bounds = [accuracy_interval(a, n) for a, n in zip(table["accuracy"], table["n"], strict=True)]
    return table.assign(lo=[b[0] for b in bounds], hi=[b[1] for b in bounds])


def run_attack(config: AttackRunConfig, *, evaluation: Evaluation | None = None) -> Result:
    """The attack result of ``config``: one row per example per setting (:func:`sweep`), the
    accuracy per setting with its interval (``summary["settings"]``), the threat model
    (``summary["norm"]``), the config, and the provenance (the source's content hash with it)."""
    ev = evaluation or config.data.prepare()
    source_model = load_source(config.source, ev)
    frame = sweep(ev.model, ev.data.x, ev.data.y, attack=config.attack, **config.grid(),
                  source=source_model, source_name=config.source or "", **config.settings())
    summary = {"n": len(ev.data), "attack": config.attack, "norm": config.norm,
               "loss": str(frame["loss_name"].iloc[0]),
               "transfer_from": config.source,
               "settings": accuracy_table(frame).to_dict(orient="records"),
               "config": {"attack": config.attack, **config.grid(), **config.settings()}}
    return Result("attack", summary, provenance(ev, config.reuse_settings(),
                                                source=config.source), frame)


__all__ = ["AttackRunConfig", "accuracy_table", "run_attack"]
