"""``epsl diagnose``, ``epsl activations`` and ``epsl landscape``: thin wrappers that parse
options into a config, call one library run and write the table plus a JSON summary (holding
the config) into ``--out``, atomically and only once everything is computed."""

from __future__ import annotations

from typing import Any

import click

from epsl.analysis.cards import card_lines
from epsl.attacks.eps_star import MIN_NORM_ATTACKS, EpsStarConfig
from epsl.cli.common import (
    FractionType,
    batch_size_option,
    checkpoint_eval_options,
    checkpoint_options,
    data_config,
    data_options,
    default,
    eps_star_budget_options,
    eps_star_config,
    format_option,
    former_name,
    norm_option,
    precheck,
    progress_bar,
    radii_option,
    result_options,
    run_and_save,
    say_written,
    seed_option,
)
from epsl.data import SPLITS
from epsl.diagnostics import DIRECTIONS, METHODS
from epsl.errors import EpslError
from epsl.results.records import kind
from epsl.runs.diagnose import (
    ActivationsConfig,
    DiagnoseConfig,
    LandscapeConfig,
    default_eps,
    run_activations,
    run_diagnose,
    run_landscape,
)
from epsl.runs.eps_star import EpsStarRunConfig, run_eps_star
from epsl.stats import with_interval

SPAN = FractionType(0.0, None, low_open=True)


@click.command("diagnose", short_help="Per-example logit gaps, gradient gaps, cosines and eps_L.")
@checkpoint_eval_options
@norm_option
@radii_option
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Examples per Jacobian chunk (default: from --memory).")
@batch_size_option(DiagnoseConfig, "Examples per unit of work (progress; sharding under "
                                   "torchrun).")
@click.option("--memory", default=None, metavar="SIZE",
              help="Memory the Jacobian blocks may use, e.g. 2GiB or 512MB (default: half "
                   "the free GPU memory; on the CPU a quarter of the available, at most 1 "
                   "GiB). The N x K x D Jacobian is never held whole; a smaller budget is "
                   "slower, not less exact.")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Search the rival among the K wrong classes with the highest logits only "
                   "(default: every class, exact). Fewer classes can only raise eps_L: "
                   "optimistic where the exact rival lies outside them.")
@click.option("--method", type=click.Choice(METHODS), default=default(DiagnoseConfig, "method"),
              show_default=True,
              help="How the logit Jacobian is computed (all give the same numbers); auto: "
                   "the fastest measured on the device.")
@format_option
@result_options
def diagnose(checkpoint: str, norm: str, eps: tuple[float, ...], chunk_size: int | None,
             batch_size: int, memory: str | None, top_k: int | None, method: str,
             table_format: str, out: str, overwrite: bool, **options: Any) -> None:
    """Per-example logit gap, gradient gap, cosine and eps_L (Eq. 4) of CHECKPOINT, in the
    --norm threat model (the gradient gap in its dual norm).

    Writes OUT/diagnostics.csv (one row per example), OUT/diagnostics.safetensors (every
    tensor, including the per-class matrices) and OUT/diagnostics.json (clean accuracy, the
    predicted accuracy at each eps = fraction with eps < eps_L, provenance, this config).

    Example: epsl diagnose model.safetensors --dataset digits --eps 0.1 --eps 8/255 --out diag
    """
    config = DiagnoseConfig(data=data_config(checkpoint, options), eps=tuple(eps),
                            chunk_size=chunk_size, batch_size=batch_size, method=method,
                            table_format=table_format, norm=norm, memory=memory, top_k=top_k)
    precheck(out, kind("diagnostics").files(table_format), overwrite)
    evaluation = config.data.prepare()
    with progress_bar(len(evaluation.data)) as bar:
        record = run_diagnose(config, progress=bar.update, evaluation=evaluation)
    paths = record.save(out, table_format=table_format, overwrite=overwrite)
    summary = record.summary
    n = int(summary["n"])
    click.echo(f"n={n}  clean accuracy {with_interval(summary['clean_accuracy'], n)}")
    if summary["rivals"] != "all":
        click.echo(f"rivals: {summary['rivals']} wrong classes by logit only; eps_L can only "
                   "be larger than the exact one (optimistic)")
    click.echo(f"{'eps (' + config.norm + ')':>10}  {'predicted accuracy (Eq. 4) [95% CI]':>36}")
    for e in config.eps:
        click.echo(f"{e:>10.4f}  {with_interval(summary['predicted_accuracy'][repr(e)], n):>36}")
    say_written(paths)


@click.command("activations", short_help="Penultimate and logit activations summed per unit.")
@checkpoint_eval_options
@batch_size_option(ActivationsConfig, "Examples per forward pass.")
@format_option
@result_options
def activations(checkpoint: str, batch_size: int, table_format: str, out: str, overwrite: bool,
                **options: Any) -> None:
    """Penultimate and logit activations of CHECKPOINT summed per unit (Figures 10, 11).

    Writes OUT/activations.csv (layer, unit, activation_sum, activation_abs_sum, active_count)
    and OUT/activations.json (n, number of never-active penultimate neurons, provenance,
    this config).
    """
    config = ActivationsConfig(data=data_config(checkpoint, options), batch_size=batch_size,
                               table_format=table_format)
    summary, paths = run_and_save(out, "activations", lambda: run_activations(config),
                                  overwrite=overwrite, table_format=table_format)
    click.echo(f"n={summary['n']}  penultimate neurons {summary['n_features']}, "
               f"never active {summary['n_inactive']}")
    say_written(paths)


def _span(value: float) -> float:
    if value > 1:
        raise EpslError(f"--range {value:g} is in pixel units on the [0, 1] scale; the paper's "
                        f"+-10 on 0..255 images is --range 10/255")
    return value


@click.command("landscape", short_help="Cross-entropy around test images on a 2-D grid.")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@data_options
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True,
              help="Which split the images come from.")
@checkpoint_options
@click.option("--images", type=click.IntRange(min=1), default=8, show_default=True,
              help="Plot the first N images of the split.")
@click.option("--direction", type=click.Choice(DIRECTIONS),
              default=default(LandscapeConfig, "direction"), show_default=True,
              help="Second axis: another Rademacher direction (Fig. 5) or sign(grad xent) "
                   "(Fig. 9).")
@click.option("--range", "span", type=SPAN, default=default(LandscapeConfig, "span"),
              show_default="10/255",
              help="The grid covers -R..R on both axes, in pixel units on the [0, 1] scale "
                   "(the paper's +-10 is 10/255). Points are not clipped to [0, 1].")
@click.option("--steps", type=click.IntRange(min=2), default=default(LandscapeConfig, "steps"),
              show_default=True, help="Grid points per axis.")
@seed_option(LandscapeConfig, "Seed of the Rademacher directions.")
@batch_size_option(LandscapeConfig, "Grid points per forward pass, at most (fewer where "
                                    "--memory needs).")
@click.option("--memory", default=None, metavar="SIZE",
              help="Memory the forward passes and the table may use, e.g. 2GiB or 512MB "
                   "(default: as for diagnose, on the CPU a quarter of the available, at most "
                   "1 GiB). A grid whose table does not fit is refused before any work.")
@format_option
@result_options
def landscape(checkpoint: str, images: int, direction: str, span: float, steps: int, seed: int,
              batch_size: int, memory: str | None, table_format: str, out: str, overwrite: bool,
              **options: Any) -> None:
    """Cross-entropy of CHECKPOINT on a grid x + e1*r1 + e2*d2 around its first images.

    Writes OUT/landscape.csv (image, index, label, direction, eps1, eps2, loss; one row per
    image and grid point) and OUT/landscape.json (provenance, this config).

    Example: epsl landscape model.safetensors --images 8 --direction adversarial
    --range 10/255 --steps 41 --out land
    """
    config = LandscapeConfig(data=data_config(checkpoint, {**options, "limit": images}),
                             direction=direction, span=_span(span), steps=steps, seed=seed,
                             batch_size=batch_size, table_format=table_format, memory=memory)
    summary, paths = run_and_save(out, "landscape", lambda: run_landscape(config),
                                  overwrite=overwrite, table_format=table_format)
    click.echo(f"{summary['images']} images x {summary['grid_points']} grid points, "
               f"direction {direction}, range +-{span:.4f}")
    say_written(paths)


@click.command("eps-star", short_help="eps* per example beside eps_L: how far Eq. 4 can be trusted.")
@checkpoint_eval_options
@norm_option
@radii_option
@click.option("--attack", "attacks", type=click.Choice(list(MIN_NORM_ATTACKS)), multiple=True,
              help="Minimum-norm attacks of the ensemble; repeatable. Default: the norm's "
                   "(linf: fmn fab; l2: fmn ddn fab; l1: fmn pgd-bisect).")
@eps_star_budget_options
@click.option("--fab-restarts", type=click.IntRange(min=1),
              default=default(EpsStarConfig, "fab_restarts"), show_default=True,
              help="Restarts of FAB.")
@seed_option(EpsStarConfig, "Seed of FAB's and PGD's random draws and of the bootstrap.")
@batch_size_option(EpsStarConfig, "Examples per attack call.")
@format_option
@result_options
def eps_star_command(checkpoint: str, norm: str, eps: tuple[float, ...],
                     attacks: tuple[str, ...], fmn_steps: int, fab_steps: int,
                     ddn_steps: int, fab_targets: int | None, fab_restarts: int, seed: int,
                     batch_size: int, table_format: str, out: str, overwrite: bool,
                     **options: Any) -> None:
    """How far Eq. 4's eps_L can be trusted on CHECKPOINT, example by example.

    Finds eps*, the smallest perturbation in the --norm that really flips each example (the
    best verified point of the minimum-norm attacks), beside eps_L, and prints the report
    card of Eq. 4: Spearman's rho with a bootstrap 95% interval, the ratio eps_L / eps*, the
    share of examples where Eq. 4 is optimistic, and where its accuracy curve overstates the
    empirical one. Writes OUT/eps_star.csv (one row per example), OUT/eps_star.safetensors (the
    verified points) and OUT/eps_star.json.

    Example: epsl eps-star model.safetensors --eps 0.1 --out eps-star
    """
    eps_star = eps_star_config(attacks=tuple(attacks), fmn_steps=fmn_steps, fab_steps=fab_steps,
                               ddn_steps=ddn_steps, fab_targets=fab_targets,
                               fab_restarts=fab_restarts, seed=seed, batch_size=batch_size,
                               norm=norm)
    config = EpsStarRunConfig(data=data_config(checkpoint, options), eps_star=eps_star,
                              eps=tuple(eps) or default_eps(norm), table_format=table_format)
    precheck(out, kind("eps_star").files(table_format), overwrite)
    evaluation = config.data.prepare()
    n = len(evaluation.data)
    with progress_bar(n * len(eps_star.attacks)) as bar:
        record = run_eps_star(config, evaluation=evaluation, progress=bar.update)
    paths = record.save(out, table_format=table_format, overwrite=overwrite)
    summary = record.summary
    click.echo(f"n={n}  eps* found by: "
               + ", ".join(f"{k} {v}" for k, v in summary["found_by"].items()))
    click.echo(f"{'eps (' + norm + ')':>10}  {'accuracy by eps* [95% CI]':>30}")
    for e in config.eps:
        click.echo(f"{e:>10.4f}  {with_interval(summary['eps_star_accuracy'][repr(e)], n):>30}")
    for line in card_lines(summary["report_card"]):
        click.echo(line)
    say_written(paths)


COMMANDS: list[click.Command] = [diagnose, activations, landscape, eps_star_command,
                                 former_name(eps_star_command, "calibrate")]

__all__ = ["COMMANDS", "SPAN", "activations", "diagnose", "eps_star_command", "landscape"]
