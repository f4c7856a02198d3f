"""``epsl estimate``: the robust accuracy of a checkpoint's images at ε_L's cost, with a valid
95% interval: ε_L and a cheap attack on every image, the full audit on a seeded random sample,
prediction-powered inference between them (:mod:`epsl.runs.estimate`)."""

from __future__ import annotations

from typing import Any

import click

from epsl.analysis.estimates import DEFAULT_PREDICTOR, PREDICTORS
from epsl.attacks.audit import AuditConfig
from epsl.certify.radius import CertifyOptions
from epsl.cli.common import (
    RADIUS,
    SEED,
    checkpoint_eval_options,
    data_config,
    eps_star_budget_options,
    eps_star_config,
    norm_option,
    precheck,
    result_options,
    say_written,
)
from epsl.results.records import clear, kind
from epsl.runs.estimate import CheapAttack, EstimateConfig, run_estimate, summary_lines


@click.command("estimate", short_help="Robust accuracy at eps_L's cost, with a valid interval.")
@checkpoint_eval_options
@norm_option
@click.option("--eps", type=RADIUS, multiple=True, required=True,
              help="Radius in the --norm ('8/255' accepted); repeatable.")
@click.option("--labelled", type=click.IntRange(min=2), required=True,
              help="How many of the selected images the full audit runs on (a seeded uniform "
                   "random sample; at least 2, fewer than the images).")
@click.option("--labelled-seed", type=SEED, default=0, show_default=True,
              help="Seed of the labelled sample's draw (recorded in the provenance).")
@click.option("--predictor", type=click.Choice(PREDICTORS), default=DEFAULT_PREDICTOR,
              show_default=True,
              help="What predicts the audit on every image: eq4 (eps_L > eps), pgd (the cheap "
                   "attack's survival) or combined (a cross-fitted logistic of both).")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.05, show_default=True,
              help="The floor's miss rate: eps* >= eps_floor with probability >= 1 - alpha.")
@click.option("--pgd-steps", type=click.IntRange(min=1), default=CheapAttack.steps,
              show_default=True, help="Steps of the cheap attack (PGD, CW loss) on every image.")
@click.option("--quick-audit", is_flag=True,
              help="Audit the labelled images with fewer steps, restarts and queries.")
@click.option("--certify", "certify_method", type=click.Choice(["crown", "ibp"]), default=None,
              help="Also certify the labelled images (l_inf; eps_cert by this bound, bisected "
                   "on [0, eps*]) and set eps_cert beside the floor.")
@eps_star_budget_options
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seeds the attacks' random starts.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Examples per forward/backward pass (default: all at once).")
@result_options
def estimate_command(checkpoint: str, norm: str, eps: tuple[float, ...], labelled: int,
                     labelled_seed: int, predictor: str, alpha: float, pgd_steps: int,
                     quick_audit: bool, certify_method: str | None, fmn_steps: int,
                     fab_steps: int, ddn_steps: int, fab_targets: int | None, seed: int,
                     batch_size: int | None, out: str, overwrite: bool, **options: Any) -> None:
    """The robust accuracy of CHECKPOINT's images at EPS, from the full audit on --labelled
    of them and a cheap predictor on all: a 95% interval valid whatever the predictor's bias
    (prediction-powered inference; a normal interval, so valid as --labelled grows), and a
    per-image floor eps* >= q x eps_L (split-conformal, from eps* on the same images).

    Writes OUT/estimate.csv (one row per image and eps: eps_l, eq4_robust, pgd_robust,
    pgd_margin, prediction, labelled, robust where audited, eps_star, eps_floor, and with
    --certify eps_cert), OUT/estimate.json, and the results it reuses: OUT/diagnostics/ and,
    per labelled draw, OUT/labelled/nN-seedS/eps_star/, .../audit-EPS/ and .../certify/. An eps
    where the audited images are all alike gets their exact interval instead, and says so.

    Example: epsl estimate model.safetensors --eps 0.1 --labelled 60 --out estimate
    """
    ensemble = eps_star_config(fmn_steps=fmn_steps, fab_steps=fab_steps, ddn_steps=ddn_steps,
                               fab_targets=fab_targets, seed=seed, batch_size=batch_size,
                               norm=norm)
    audit = AuditConfig.build(quick=quick_audit, eps_star=ensemble, seed=seed,
                              batch_size=batch_size)
    config = EstimateConfig(data=data_config(checkpoint, options), eps=eps, labelled=labelled,
                            labelled_seed=labelled_seed, predictor=predictor, alpha=alpha,
                            norm=norm, attack=CheapAttack(steps=pgd_steps, seed=seed),
                            audit=audit, certify=None if certify_method is None
                            else CertifyOptions(method=certify_method))
    precheck(out, kind("estimate").files(), overwrite)
    if overwrite:  # a run cut short never leaves the previous estimate beside new audits
        clear(out, "estimate")
    record = run_estimate(config, folder=out, log=click.echo, overwrite=overwrite)
    paths = record.save(out, overwrite=overwrite)
    for line in summary_lines(record.summary):
        click.echo(line)
    say_written(paths)


COMMANDS: list[click.Command] = [estimate_command]
