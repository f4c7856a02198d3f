"""``epsl figures`` (and ``epsl compare``): the paper's figures and tables from saved results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from epsl.analysis.estimates import DEFAULT_PREDICTOR, PREDICTORS
from epsl.cli.common import (
    RADIUS,
    SEED,
    checkpoint_options,
    data_config,
    default,
    device_option,
    eps_star_budget_options,
    eps_star_config,
    eval_data_options,
    handle_errors,
    norm_option,
    overwrite_option,
)
from epsl.runs.compare import CompareConfig


@click.command("figures", short_help="Re-render the figures from saved tables alone.")
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...",
                type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the figures (PNG + SVG), figures.json, config.json, index.md, "
                   "comparison.csv/.md and report.html.")
@click.option("--eps", type=RADIUS, default=None,
              help="Attack ε to mark and tabulate, in [0,1] pixel units of the runs' norm "
                   "('0.3' or '8/255'; at most 1 in linf; default: the largest ε in the saved "
                   "attack tables).")
@overwrite_option
@handle_errors
def figures(run_dirs: tuple[Path, ...], out: Path, eps: float | None, overwrite: bool) -> None:
    """Re-render every figure the saved tables of RUN_DIR... allow, without any model.

    Each RUN_DIR holds what `epsl diagnose`, `activations`, `landscape`, `attack` and `audit`
    wrote (directly or in subfolders); each run is labelled from its checkpoint metadata.
    The runs' threat model (linf, l2, l1) is read from their records: all RUN_DIRs must share
    one, and the figures and tables name it.
    """
    from epsl.analysis import render_runs

    result = render_runs(list(run_dirs), out, eps=eps, overwrite=overwrite)
    for run in result.runs:
        click.echo(f"{run.label:<28} {run.path}  [{', '.join(run.tables())}]")
    eps_text = f" at eps={result.eps:g}" if result.eps is not None else ""
    if result.norm != "linf":  # the paper's threat model goes without saying
        eps_text += f" ({result.norm.value})"
    click.echo(f"wrote {len(result.figures)} figures{eps_text} to {result.out}; "
               f"report: {result.report}")


@click.command("compare", short_help="Compare checkpoints as the paper's Tables 1-4 do.")
@click.argument("checkpoints", nargs=-1, required=True, metavar="CKPT...")
@eval_data_options
@checkpoint_options
@norm_option
@click.option("--eps", type=RADIUS, required=True,
              help="Radius of every column in the --norm, pixel units: (0, 1] for linf, up to "
                   "sqrt(D) for l2 ('0.3', '8/255').")
@click.option("--source", type=click.Path(dir_okay=False), default=None, metavar="NATURAL",
              help="Checkpoint whose adversarial examples are transferred (black-box columns; "
                   "the paper uses a naturally trained model).")
@click.option("--pgd-steps", type=click.IntRange(min=1),
              default=default(CompareConfig, "pgd_steps"), show_default=True,
              help="Steps of the white-box and transfer PGD.")
@click.option("--restarts", type=click.IntRange(min=1),
              default=default(CompareConfig, "restarts"), show_default=True,
              help="Random restarts of PGD.")
@click.option("--step-size", type=RADIUS, default=None,
              help="PGD step size in the --norm (default 2.5 * eps / steps).")
@click.option("--eps-grid", type=RADIUS, multiple=True,
              help="Extra eps for the accuracy-vs-eps figure (FGSM and PGD, xent); repeat.")
@click.option("--audit", "run_audit", is_flag=True,
              help="Also run the robustness audit (quick settings) for the worst case.")
@click.option("--min-norm/--no-min-norm", "eps_star", default=True, show_default=True,
              help="Find eps* per example with the minimum-norm attacks of the --norm and show "
                   "the report card of Eq. 4; the audit counts it as one more attack.")
@eps_star_budget_options
@click.option("--labelled", type=click.IntRange(min=2), default=None,
              help="Also estimate each model's robust accuracy from the audit (quick settings, "
                   "transferred from --source) on this many images (the same seeded sample for "
                   "every model) and the --predictor on all (pgd: the comparison's own PGD-k "
                   "CW), with each pair's difference (epsl estimate).")
@click.option("--labelled-seed", type=SEED, default=0, show_default=True,
              help="Seed of the --labelled sample.")
@click.option("--predictor", type=click.Choice(PREDICTORS), default=DEFAULT_PREDICTOR,
              show_default=True, help="The cheap predictor of --labelled (epsl estimate).")
@click.option("--no-figures", is_flag=True, help="Skip the figures (table and report only).")
@click.option("--seed", type=SEED, default=default(CompareConfig, "seed"), show_default=True,
              help="Seeds random starts.")
@device_option
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for per-model tables, comparison.csv/.md, report.html, figures/.")
@overwrite_option
@handle_errors
def compare(checkpoints: tuple[str, ...], norm: str, eps: float, source: str | None,
            pgd_steps: int, restarts: int, step_size: float | None, eps_grid: tuple[float, ...],
            run_audit: bool, eps_star: bool, fmn_steps: int, fab_steps: int, ddn_steps: int,
            fab_targets: int | None, labelled: int | None, labelled_seed: int,
            predictor: str, no_figures: bool,
            seed: int, out: Path, overwrite: bool, **options: Any) -> None:
    """Compare CKPT... as Tables 1-4 do: Eq. 4 prediction, FGSM and PGD (xent, CW), transfer;
    with eps*, the smallest perturbation that flips each example, and Eq. 4's report card.

    Diagnostics, eps* and attack tables already in OUT/<model>/ made from the same checkpoint,
    examples and settings are reused.
    """
    from epsl.runs.compare import compare as run_compare

    batch_size = default(CompareConfig, "batch_size")
    config = CompareConfig(
        checkpoints=tuple(checkpoints), eps=eps, data=data_config(None, options),
        source=source, pgd_steps=pgd_steps, restarts=restarts, step_size=step_size,
        eps_grid=tuple(eps_grid), audit=run_audit,
        eps_star=eps_star_config(fmn_steps=fmn_steps, fab_steps=fab_steps, ddn_steps=ddn_steps,
                               fab_targets=fab_targets,
                               seed=seed, batch_size=batch_size, norm=norm) if eps_star else None,
        figures=not no_figures, seed=seed, batch_size=batch_size, norm=norm,
        labelled=labelled, labelled_seed=labelled_seed, predictor=predictor)
    result = run_compare(config, out, overwrite=overwrite,
                         log=lambda msg: click.echo(msg, err=True))
    from epsl.analysis.paired import paired_markdown
    from epsl.analysis.tables import to_markdown

    click.echo(to_markdown(result.table.drop(columns=["run", "dataset", "arch"])), nl=False)
    if not result.paired.empty:
        click.echo("\nPaired tests (exact McNemar):\n" + paired_markdown(result.paired), nl=False)
    if result.estimates is not None:
        click.echo(_estimates_text(*result.estimates, labelled=labelled))
    click.echo(f"report: {result.report}")


def _estimates_text(models: Any, pairs: Any, *, labelled: int | None) -> str:
    """``compare --labelled``'s estimates: each model's, and each pair's difference."""
    lines = [f"\nRobust accuracy from the audit on the same {labelled} images and the "
             "predictor on all (prediction-powered, 95% intervals; the audited images alone "
             "beside it):"]
    for row in models.itertuples():
        lines.append(f"- {row.model}: {row.estimate:.1%} [{max(row.low, 0):.1%}, "
                     f"{min(row.high, 1):.1%}]; alone [{max(row.classical_low, 0):.1%}, "
                     f"{min(row.classical_high, 1):.1%}]")
    if len(pairs):
        lines.append("Differences (model minus against), in points:")
        for row in pairs.itertuples():
            interval = ("no interval: the labelled images are all alike" if row.low != row.low
                        else f"[{100 * row.low:+.1f}, {100 * row.high:+.1f}]")
            lines.append(f"- {row.model} - {row.against}: {100 * row.estimate:+.1f} {interval}")
    return "\n".join(lines)


COMMANDS: list[click.Command] = [figures, compare]

__all__ = ["COMMANDS", "compare", "figures"]
