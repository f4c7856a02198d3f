"""``epsl attack`` and ``epsl audit``: load a checkpoint and its data, run the attacks or the
audit (one library call), write the per-example table and a JSON summary into ``--out`` only
once everything is computed."""

from __future__ import annotations

from typing import Any

import click

from epsl.attacks import ATTACKS, LOSSES
from epsl.attacks.audit import AuditBudgets, AuditConfig
from epsl.cli.common import (
    RADIUS,
    SEED,
    FractionType,
    checkpoint_eval_options,
    data_config,
    default,
    eps_star_budget_options,
    eps_star_config,
    norm_option,
    progress_bar,
    result_options,
    run_and_save,
    say_written,
)
from epsl.norms import NORMS
from epsl.runs.attack import AttackRunConfig, run_attack
from epsl.runs.audit import AuditRunConfig, run_audit
from epsl.stats import with_interval

STEP = click.IntRange(min=1)

seed_option = click.option("--seed", type=SEED, default=0, show_default=True,
                           help="Seeds random starts and torchattacks' attacks.")
batch_option = click.option("--batch-size", type=STEP, default=None,
                            help="Examples per forward/backward pass (default: all at once).")
source_option = click.option("--source", type=click.Path(dir_okay=False), default=None,
                             help="Checkpoint to make the adversarial examples on (a transfer "
                                  "attack scored on CHECKPOINT), e.g. a naturally trained model.")


@click.command("attack", short_help="Attack a checkpoint with FGSM, PGD, APGD or Square.")
@checkpoint_eval_options
@click.option("--attack", "attack_name", type=click.Choice(ATTACKS.names()), default="pgd",
              show_default=True, help="Which attack (APGD and Square need torchattacks).")
@click.option("--loss", type=click.Choice(LOSSES.names()), default=None,
              help="Attack loss: xent, cw (Madry et al.'s CW margin loss) or dlr (APGD). "
                   "Default: the attack's own (xent; Square: cw).")
@click.option("--norm", type=click.Choice(NORMS), default="linf", show_default=True,
              help="Threat model: the l_p norm eps and the step size are measured in "
                   "(apgd and square: linf or l2).")
@click.option("--eps", type=RADIUS, multiple=True, required=True,
              help="Radius in the --norm's pixel units: linf in (0, 1], l2 up to sqrt(D), l1 up "
                   "to D for D pixels ('8/255' accepted); repeatable.")
@click.option("--steps", type=STEP, multiple=True,
              help="Iterations (Square: queries); repeatable. Default: pgd 40, apgd 100, "
                   "square 1000. FGSM takes none.")
@click.option("--step-size", type=RADIUS, default=None,
              help="PGD step size in the --norm (default: 2.5 * eps / steps for every eps and "
                   "steps).")
@click.option("--restarts", type=STEP, multiple=True,
              help="PGD: random starts per example after the run from x; APGD, Square: "
                   "restarts (default 1); repeatable.")
@click.option("--no-random-start", is_flag=True,
              help="Run PGD from x only (by default a run from x is followed by random starts "
                   "in the ball, and each example keeps its strongest result). FGSM starts at "
                   "x by default.")
@click.option("--cw-confidence", type=FractionType(0.0), default=50.0, show_default=True,
              help="kappa >= 0 of the CW loss.")
@source_option
@seed_option
@batch_option
@result_options
def attack(checkpoint: str, attack_name: str, loss: str | None, norm: str,
           eps: tuple[float, ...],
           steps: tuple[int, ...], step_size: float | None, restarts: tuple[int, ...],
           no_random_start: bool, cw_confidence: float, source: str | None, seed: int,
           batch_size: int | None, out: str, overwrite: bool, **options: Any) -> None:
    """Attack CHECKPOINT at every (eps, steps, restarts) given: FGSM, PGD, APGD or Square in the
    l_inf, l2 or l1 norm (--norm).

    Writes OUT/attack.csv (one row per example per setting: index, label, attack, loss_name,
    norm, eps, steps, restarts, step_size, random_start, source, correct, loss, margin, pred)
    and OUT/attack.json (robust accuracy per setting, this config, provenance).

    Example: epsl attack model.safetensors --dataset digits --eps 0.1 --steps 10 --steps 40
    --out runs/pgd; in l2: --norm l2 --eps 0.5
    """
    config = AttackRunConfig(data=data_config(checkpoint, options), eps=tuple(eps),
                             attack=attack_name, steps=tuple(steps), restarts=tuple(restarts),
                             loss=loss, step_size=step_size,
                             random_start=False if no_random_start else None,
                             cw_confidence=cw_confidence, seed=seed, batch_size=batch_size,
                             source=source, norm=norm)
    summary, paths = run_and_save(out, "attack", lambda: run_attack(config), overwrite=overwrite)
    click.echo(f"{attack_name} ({summary['loss']}, {summary['norm']})"
               f"{' transferred from ' + source if source else ''} on {summary['n']} examples")
    click.echo(f"{'eps':>8} {'steps':>6} {'restarts':>8} {'step size':>10} "
               f"{'accuracy [95% CI]':>20}")
    for row in summary["settings"]:
        click.echo(f"{row['eps']:>8.4f} {row['steps']:>6} {row['restarts']:>8} "
                   f"{row['step_size']:>10.4g} {with_interval(row['accuracy'], row['n']):>20}")
    say_written(paths)


@click.command("audit", short_help="Audit a checkpoint for signs of gradient masking.")
@checkpoint_eval_options
@norm_option
@click.option("--eps", type=RADIUS, required=True,
              help="Radius in the --norm, pixel units: (0, 1] for linf, up to sqrt(D) for l2, "
                   "D for l1 ('8/255' accepted).")
@source_option
@click.option("--quick", is_flag=True,
              help="Fewer steps, restarts and queries (AuditBudgets.quick()) for a first look.")
@click.option("--skip-expensive", is_flag=True,
              help="Skip APGD, the minimum-norm ensemble and Square.")
@click.option("--min-norm/--no-min-norm", "eps_star_norm", default=True, show_default=True,
              help="Run the minimum-norm ensemble of the --norm (linf: FMN + FAB; l2: FMN + DDN "
                   "+ FAB): an example with eps* <= EPS is broken.")
@eps_star_budget_options
@click.option("--pgd-steps", type=STEP, default=None,
              help=f"Steps of PGD-k (default {default(AuditBudgets, 'pgd_steps')}).")
@click.option("--strong-steps", type=STEP, default=None,
              help=f"Steps of the long PGD (default {default(AuditBudgets, 'strong_steps')}).")
@click.option("--strong-restarts", type=STEP, default=None,
              help=f"Random restarts of PGD-k (default {default(AuditBudgets, 'strong_restarts')}).")
@click.option("--square-queries", type=STEP, default=None,
              help=f"Queries of the Square attack (default {default(AuditBudgets, 'square_queries')}).")
@click.option("--unbounded-steps", type=STEP, default=None,
              help="Steps of the unbounded-eps check (default "
                   f"{default(AuditBudgets, 'unbounded_steps')}).")
@seed_option
@batch_option
@result_options
def audit_command(checkpoint: str, norm: str, eps: float, source: str | None, quick: bool,
                  skip_expensive: bool, eps_star_norm: bool, fmn_steps: int, fab_steps: int,
                  ddn_steps: int, fab_targets: int | None,
                  pgd_steps: int | None, strong_steps: int | None,
                  strong_restarts: int | None, square_queries: int | None,
                  unbounded_steps: int | None, seed: int,
                  batch_size: int | None, out: str, overwrite: bool, **options: Any) -> None:
    """Audit CHECKPOINT's robustness at EPS for signs of gradient masking.

    Runs FGSM, PGD-k (xent and CW), PGD with more steps and with restarts, APGD-CE/DLR,
    the minimum-norm ensemble (FMN + FAB), Square, a transfer attack from --source, the
    unbounded-eps check and Eq. 4's prediction on the same examples; prints per-attack
    accuracies, the warnings with their doc pages and a verdict; writes OUT/audit.csv (per
    example: one column per attack, robust, broken_by) and OUT/audit.json. Use --limit: the
    full audit costs minutes per thousand examples.

    Example: epsl audit model.safetensors --dataset digits --eps 0.1 --source natural.safetensors
    --limit 200 --out runs/audit
    """
    given = {"pgd_steps": pgd_steps, "strong_steps": strong_steps,
             "strong_restarts": strong_restarts, "square_queries": square_queries,
             "unbounded_steps": unbounded_steps}
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    eps_star = (eps_star_config(fmn_steps=fmn_steps, fab_steps=fab_steps, ddn_steps=ddn_steps,
                              fab_targets=fab_targets,
                              seed=seed, batch_size=batch_size, norm=norm)
               if eps_star_norm else None)
    overrides |= {"skip_expensive": skip_expensive, "eps_star": eps_star, "seed": seed,
                  "batch_size": batch_size}
    audit = AuditConfig.build(quick=quick, **overrides)
    config = AuditRunConfig(data=data_config(checkpoint, options), eps=eps, audit=audit,
                            source=source, norm=norm)
    with progress_bar(unit="attack") as bar:
        summary, paths = run_and_save(out, "audit", lambda: run_audit(config, progress=bar.update),
                                      overwrite=overwrite)
    _print_audit(checkpoint, summary)
    say_written(paths)


def _print_audit(checkpoint: str, summary: dict[str, Any]) -> None:
    n = int(summary["examples"])
    norm = summary.get("norm", "linf")
    click.echo(f"audit of {checkpoint} at eps={summary['eps']:g} ({norm}) on {n} examples")
    click.echo(f"{'attack':<26} {'ran on':>6} {'accuracy [95% CI]':>20} "
               f"{'robust after [95% CI]':>22} {'new breaks':>10}")
    for row in summary["attacks"]:
        accuracy = ("-" if row["accuracy"] is None
                    else with_interval(row["accuracy"], row["examples"]))
        after = "-" if row["robust_after"] is None else with_interval(row["robust_after"], n)
        new = "-" if row["new_breaks"] is None else f"{row['new_breaks']:.2%}"
        click.echo(f"{row['attack']:<26} {row['examples']:>6} {accuracy:>20} {after:>22} "
                   f"{new:>10}")
    click.echo("robust accuracy (worst case over all attacks): "
               f"{with_interval(summary['robust_accuracy'], n)}")
    if summary.get("eq4_accuracy") is not None:
        click.echo(f"Eq. 4 prediction (eps_L > eps): {with_interval(summary['eq4_accuracy'], n)}")
    for note in summary["notes"]:
        click.echo(f"note: {note}")
    for warning in summary["warnings"]:
        click.echo(f"WARNING [{warning['code']}] {warning['message']} "
                   f"(details: {warning['doc']})")
    click.echo(f"verdict: {summary['verdict']}")


COMMANDS: list[click.Command] = [attack, audit_command]

__all__ = ["COMMANDS", "STEP", "attack", "audit_command", "batch_option", "seed_option",
           "source_option"]
