"""``epsl diagnose``, ``epsl activations`` and ``epsl landscape``: thin wrappers that parse
options into a config, call one library run and write the table plus a JSON summary (holding
the config) into ``--out``, atomically and only once everything is computed."""

from __future__ import annotations

from typing import Any

import click

from epsl.analysis.cards import card_lines
from epsl.attacks.eps_star import MINIMAL_ATTACKS, MinimalConfig
from epsl.cli.common import (
    RADIUS,
    SEED,
    FractionType,
    checkpoint_options,
    data_config,
    data_options,
    default,
    eval_data_options,
    minimal_budget_options,
    minimal_config,
    norm_option,
    precheck,
    progress_bar,
    result_options,
    say_written,
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
from epsl.runs.eps_star import CalibrateConfig, run_calibrate
from epsl.stats import with_interval

SPAN = FractionType(0.0, None, low_open=True)
FORMATS = ("csv", "parquet")

format_option = click.option("--format", "table_format", type=click.Choice(FORMATS),
                             default="csv", show_default=True, help="Table file format.")


@click.command("diagnose", short_help="Per-example logit gaps, gradient gaps, cosines and eps_L.")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@eval_data_options
@checkpoint_options
@norm_option
@click.option("--eps", "eps", type=RADIUS, multiple=True,
              help="Radius in the --norm, pixel units: in (0, 1] for linf, up to sqrt(D) for "
                   "l2, D for l1; '8/255' accepted; repeatable. Default: 2/255 4/255 8/255 0.1 "
                   "0.2 0.3 (linf), 0.1 0.25 0.5 1 2 (l2), 0.5 1 2 5 12 (l1).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Examples per Jacobian chunk (default: from --memory).")
@click.option("--batch-size", type=click.IntRange(min=1),
              default=default(DiagnoseConfig, "batch_size"), show_default=True,
              help="Examples per unit of work (progress; sharding under torchrun).")
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
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@eval_data_options
@checkpoint_options
@click.option("--batch-size", type=click.IntRange(min=1),
              default=default(ActivationsConfig, "batch_size"), show_default=True,
              help="Examples per forward pass.")
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
    precheck(out, kind("activations").files(table_format), overwrite)
    record = run_activations(config)
    paths = record.save(out, table_format=table_format, overwrite=overwrite)
    summary = record.summary
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
@click.option("--seed", type=SEED, default=default(LandscapeConfig, "seed"), show_default=True,
              help="Seed of the Rademacher directions.")
@click.option("--batch-size", type=click.IntRange(min=1),
              default=default(LandscapeConfig, "batch_size"), show_default=True,
              help="Grid points per forward pass, at most (fewer where --memory needs).")
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
    precheck(out, kind("landscape").files(table_format), overwrite)
    record = run_landscape(config)
    paths = record.save(out, table_format=table_format, overwrite=overwrite)
    summary = record.summary
    click.echo(f"{summary['images']} images x {summary['grid_points']} grid points, "
               f"direction {direction}, range +-{span:.4f}")
    say_written(paths)


@click.command("calibrate", short_help="How far eps_L can be trusted, against eps* per example.")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@eval_data_options
@checkpoint_options
@norm_option
@click.option("--eps", "eps", type=RADIUS, multiple=True,
              help="Radii in the --norm at which to report the eps* accuracy; '8/255' "
                   "accepted; repeatable. Default: the norm's, as for epsl diagnose.")
@click.option("--attack", "attacks", type=click.Choice(list(MINIMAL_ATTACKS)), multiple=True,
              help="Minimum-norm attacks of the ensemble; repeatable. Default: the norm's "
                   "(linf: fmn fab; l2: fmn ddn fab; l1: fmn pgd-bisect).")
@minimal_budget_options
@click.option("--fab-restarts", type=click.IntRange(min=1),
              default=default(MinimalConfig, "fab_restarts"), show_default=True,
              help="Restarts of FAB.")
@click.option("--seed", type=SEED, default=default(MinimalConfig, "seed"), show_default=True,
              help="Seed of FAB's and PGD's random draws and of the bootstrap.")
@click.option("--batch-size", type=click.IntRange(min=1),
              default=default(MinimalConfig, "batch_size"), show_default=True,
              help="Examples per attack call.")
@format_option
@result_options
def calibrate(checkpoint: str, norm: str, eps: tuple[float, ...], attacks: tuple[str, ...],
              fmn_steps: int, fab_steps: int, ddn_steps: int,
              fab_targets: int | None, fab_restarts: int, seed: int,
              batch_size: int,
              table_format: str, out: str, overwrite: bool, **options: Any) -> None:
    """How far Eq. 4's eps_L can be trusted on CHECKPOINT, example by example.

    Finds eps*, the smallest perturbation in the --norm that really flips each example (the
    best verified point of the minimum-norm attacks), beside eps_L, and prints the report
    card of Eq. 4: Spearman's rho with a bootstrap 95% interval, the ratio eps_L / eps*, the
    share of examples where Eq. 4 is optimistic, and where its accuracy curve overstates the
    empirical one. Writes OUT/minimal.csv (one row per example), OUT/minimal.safetensors (the
    verified points) and OUT/minimal.json.

    Example: epsl calibrate model.safetensors --eps 0.1 --out calib
    """
    minimal = minimal_config(attacks=tuple(attacks), fmn_steps=fmn_steps, fab_steps=fab_steps,
                             ddn_steps=ddn_steps,
                             fab_targets=fab_targets, fab_restarts=fab_restarts, seed=seed,
                             batch_size=batch_size, norm=norm)
    config = CalibrateConfig(data=data_config(checkpoint, options), minimal=minimal,
                             eps=tuple(eps) or default_eps(norm), table_format=table_format)
    precheck(out, kind("minimal").files(table_format), overwrite)
    evaluation = config.data.prepare()
    n = len(evaluation.data)
    with progress_bar(n * len(minimal.attacks)) as bar:
        record = run_calibrate(config, evaluation=evaluation, progress=bar.update)
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


COMMANDS: list[click.Command] = [diagnose, activations, landscape, calibrate]
