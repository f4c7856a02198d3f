"""``epsl certify``: the certified floor ε_cert (CROWN) beside ε_L and ε* per example, and the
three-way report card of Eq. 4; options → config → one library run → save → print."""

from __future__ import annotations

from typing import Any

import click

from epsl.analysis.cards import proof_lines
from epsl.attacks.eps_star import EpsStarConfig
from epsl.certify.radius import CertifyOptions
from epsl.cli.common import (
    EPS,
    batch_size_option,
    checkpoint_eval_options,
    data_config,
    default,
    eps_star_budget_options,
    eps_star_config,
    format_option,
    precheck,
    progress_bar,
    result_options,
    say_written,
    seed_option,
)
from epsl.results.records import kind
from epsl.runs.certify import CertifyConfig, run_certify
from epsl.runs.diagnose import DEFAULT_EPS
from epsl.stats import with_interval


@click.command("certify", short_help="A certified floor under eps* (CROWN), and the proofs "
                                     "of Eq. 4.")
@checkpoint_eval_options
@click.option("--eps", "eps", type=EPS, multiple=True,
              help="l_inf radii of the certified accuracy; '8/255' accepted; repeatable. "
                   "Default: 2/255 4/255 8/255 0.1 0.2 0.3.")
@click.option("--method", type=click.Choice(["crown", "ibp"]),
              default=default(CertifyOptions, "method"), show_default=True,
              help="crown: backward linear bounds; ibp: intervals only (fast, loose).")
@click.option("--steps", type=click.IntRange(1, 40), default=default(CertifyOptions, "steps"),
              show_default=True, help="Halvings of each example's bisection on [0, eps*].")
@click.option("--eps-max", type=EPS, default=None,
              help="Cap the bisection's upper end (default: eps*, or 1 where unbroken).")
@click.option("--exact", is_flag=True,
              help="Also the true eps_star perturbation as a mixed-integer program (scipy's "
                   "HiGHS; ReLU networks of affine layers only).")
@click.option("--exact-time", type=click.FloatRange(min=0, min_open=True),
              default=default(CertifyOptions, "exact_time"), show_default=True,
              help="Seconds of solver time per example for --exact.")
@eps_star_budget_options
@seed_option(EpsStarConfig, "Seed of FAB's random draws (eps*).")
@batch_size_option(CertifyOptions, "Examples bounded together.")
@format_option
@result_options
def certify(checkpoint: str, eps: tuple[float, ...], method: str, steps: int,
            eps_max: float | None, exact: bool, exact_time: float, fmn_steps: int,
            fab_steps: int, ddn_steps: int,
            fab_targets: int | None, seed: int, batch_size: int, table_format: str,
            out: str, overwrite: bool, **options: Any) -> None:
    """A certified lower bound eps_cert on each example's smallest l_inf perturbation (in the
    [0, 1] box), beside eps_L and eps*, so that Eq. 4 is judged with proofs.

    eps_cert is the largest radius at which CROWN bounds (float64) prove that no point of the
    ball changes the prediction, by bisection on [0, eps*]. Eq. 4 is provably conservative
    where eps_L <= eps_cert and provably optimistic where eps_L > eps*. --exact adds the true
    minimum for small ReLU networks. Writes OUT/certify.csv (one row per example) and
    OUT/certify.json. l_inf only.

    Example: epsl certify model.safetensors --limit 50 --out cert
    """
    eps_star = eps_star_config(attacks=(), fmn_steps=fmn_steps, fab_steps=fab_steps,
                             ddn_steps=ddn_steps,
                             fab_targets=fab_targets, fab_restarts=1, seed=seed, batch_size=None,
                             norm="linf")
    config = CertifyConfig(
        data=data_config(checkpoint, options), eps_star=eps_star,
        options=CertifyOptions(method=method, steps=steps, batch_size=batch_size, exact=exact,
                               exact_time=exact_time),
        eps=tuple(eps) or DEFAULT_EPS, eps_max=eps_max, table_format=table_format)
    precheck(out, kind("certify").files(table_format), overwrite)
    evaluation = config.data.prepare()
    n = len(evaluation.data)
    with progress_bar(n) as bar:
        record = run_certify(config, evaluation=evaluation, progress=bar.update)
    paths = record.save(out, table_format=table_format, overwrite=overwrite)
    summary = record.summary
    click.echo(f"n={n}  {'eps':>8}  {'certified accuracy [95% CI]':>30}")
    for e in config.eps:
        click.echo(f"{'':>5}{e:>8.4f}  "
                   f"{with_interval(summary['certified_accuracy'][repr(e)], n):>30}")
    for line in proof_lines(summary["card"]):
        click.echo(line)
    cost = summary["seconds_per_example"]
    click.echo(f"time per example: bounds {cost['bounds']:.3f} s, eps* {cost['eps_star']:.3f} s"
               + (f", exact {cost['exact']:.3f} s" if "exact" in cost else ""))
    say_written(paths)


COMMANDS: list[click.Command] = [certify]

__all__ = ["COMMANDS", "certify"]
