"""``epsl reproduce``: the paper's whole study from a preset, or an evaluation of checkpoints
made elsewhere (``--preset zoo-cifar10-linf --model-dir DIR``)."""

from __future__ import annotations

import sys
import time

import click
from tqdm import tqdm

from epsl.cli.common import RADIUS, SEED, device_option, handle_errors
from epsl.errors import EpslError
from epsl.norms import NORMS
from epsl.study.config import PRESETS, load_preset, override
from epsl.study.run import reproduce


@click.command("reproduce", short_help="Run the whole study: train, diagnose, attack, audit, report.")
@click.option("--preset", default="digits", show_default=True, metavar="NAME|FILE.toml",
              help=f"Bundled preset ({', '.join(PRESETS)}) or a TOML file.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Study folder; stages whose outputs exist there are skipped.")
@click.option("--force", is_flag=True, help="Recompute every stage.")
@click.option("--norm", type=click.Choice(NORMS), default=None,
              help="Override the preset's threat model (give --eps in it too); the eps grid "
                   "becomes the norm's default.")
@click.option("--eps", type=RADIUS, default=None,
              help="Override the preset's attack epsilon, in its norm ('0.1' or '8/255').")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Override the training length in epochs.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Override the training length in steps (the paper's k).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N test examples.")
@click.option("--sample", type=click.IntRange(min=1), default=None,
              help="Evaluate a seeded random sample of N test examples instead (it replaces "
                   "the preset's limit; recorded in every result's provenance).")
@click.option("--sample-seed", type=SEED, default=None,
              help="The seed of --sample (default 0).")
@click.option("--models", default=None, metavar="A,B,...",
              help="Train and evaluate only these models of the preset's grid.")
@click.option("--no-audit", is_flag=True, help="Skip the robustness audit.")
@click.option("--labelled", type=click.IntRange(min=2), default=None,
              help="Audit (and find eps* on) a seeded random sample of this many of the "
                   "examples instead of the first [audit] limit, and estimate every model's "
                   "robust accuracy on all of them at eps_L's cost, with 95% intervals.")
@click.option("--labelled-seed", type=SEED, default=None,
              help="Seed of the labelled sample's draw (default: the preset's, 0).")
@click.option("--no-min-norm", is_flag=True,
              help="Skip eps* (the minimum-norm attacks) and the report card of Eq. 4.")
@click.option("--seed", type=SEED, default=None,
              help="Override the preset's seed (an evaluate preset's: the attacks').")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Folder holding MNIST/CIFAR for the paper and zoo presets.")
@click.option("--data", "data_file", type=click.Path(dir_okay=False), default=None,
              metavar="FILE.npz",
              help="Your own .npz of test examples (x in [0,1], y) instead of the dataset's.")
@click.option("--model-dir", type=click.Path(file_okay=False), default=None,
              help="Weights folder of the preset's model sources: robustbench:DATASET/THREAT/"
                   "NAME reads DIR/DATASET/THREAT/NAME.pt (default ./models).")
@device_option
@handle_errors
def reproduce_command(preset: str, out: str, force: bool, norm: str | None, eps: float | None,
                      epochs: int | None, steps: int | None, limit: int | None,
                      sample: int | None, sample_seed: int | None, models: str | None,
                      no_audit: bool, labelled: int | None, labelled_seed: int | None,
                      no_min_norm: bool, seed: int | None,
                      data_root: str | None, data_file: str | None, model_dir: str | None,
                      device: str) -> None:
    """Train the paper's grid of defenses, diagnose (Eq. 4), find eps* (the smallest
    perturbation that flips each example) for Eq. 4's report card, attack, audit, and render
    the figures and the comparison report into OUT. An evaluate preset (zoo-cifar10-linf)
    trains nothing: it evaluates the checkpoints it names, found under --model-dir, and sets
    the leaderboard's reported accuracies beside epsl's worst case.

    \b
    epsl reproduce --out runs/digits                    # the default preset, ~10 min on CPU
    epsl reproduce --preset fashion-mnist --out runs/fmnist
    epsl reproduce --preset cifar10-paper --data-root ~/data --device cuda --out runs/c10
    epsl reproduce --preset zoo-cifar10-linf --model-dir models --data-root ~/data \\
        --limit 1000 --device cuda --out runs/zoo
    epsl reproduce --preset zoo-cifar10-linf --model-dir models --data-root ~/data \\
        --limit 10000 --labelled 1000 --device cuda --out runs/zoo-10k
    """
    study = load_preset(preset)
    if labelled_seed is not None and labelled is None and study.audit.labelled is None:
        raise EpslError("--labelled-seed draws the sample of --labelled N: give --labelled too")
    study = override(study, **{
        "norm": norm, "eps": eps, "limit": limit, "sample": sample,
        "sample_seed": sample_seed, "data_root": data_root,
        "data_file": data_file, "model_dir": model_dir, "train.epochs": epochs,
        "train.steps": steps,
        # an evaluate preset trains nothing: its one seed is the attacks'
        ("train.seed" if study.kind == "train" else "attacks.seed"): seed,
        "models": models.split(",") if models else None,
        "audit.enabled": False if no_audit else None,
        "audit.labelled": labelled, "audit.labelled_seed": labelled_seed,
        "eps_star.enabled": False if no_min_norm else None,
        "device": device if device != "auto" else None,
    })
    interactive = sys.stderr.isatty()
    start = time.perf_counter()

    def log(message: str) -> None:
        click.echo(f"[{time.perf_counter() - start:6.0f}s] {message}", err=True)

    with tqdm(unit="ex", desc="training", file=sys.stderr, disable=not interactive,
              leave=False) as bar:
        result = reproduce(study, out, force=force, log=log, progress=bar.update)
    click.echo(f"{study.name}: {len(result.ran)} stages run, {len(result.skipped)} reused, "
               f"{result.seconds:.0f}s\n")
    if result.headline:
        click.echo(result.headline)
        click.echo(f"full table: {result.out / 'comparison.csv'} (and .md)")
    if result.report is not None:
        click.echo(f"report: {result.report}")


COMMANDS = [reproduce_command]

__all__ = ["COMMANDS", "reproduce_command"]
