"""``epsl train`` and ``epsl info``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from epsl.cli.common import (
    EPS,
    SEED,
    FractionType,
    checkpoint_options,
    data_options,
    default,
    device_option,
    handle_errors,
    overwrite_option,
)
from epsl.data import DATASETS
from epsl.defenses import ADV_METHODS, DefenseConfig
from epsl.defenses.train import OPTIMIZERS, EpochReport, TrainConfig, train
from epsl.device import PRECISIONS
from epsl.errors import EpslError
from epsl.models import MODELS
from epsl.models.checkpoint import load, read_metadata


def _arch_kwargs(pairs: tuple[str, ...]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EpslError(f"--arch-arg {pair!r}: expected KEY=VALUE, e.g. depth=16")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


@click.command("train", short_help="Train a classifier with any mix of defenses.")
@data_options
@click.option("--arch", type=click.Choice(MODELS.names()), default=default(TrainConfig, "arch"),
              show_default=True, help="Architecture from the model registry.")
@click.option("--arch-arg", "arch_args", multiple=True, metavar="KEY=VALUE",
              help="Architecture argument, e.g. --arch-arg depth=16 --arch-arg widen_factor=4.")
@click.option("--label-smoothing", "alpha", type=FractionType(0.0, 1.0),
              default=default(DefenseConfig, "label_smoothing"), show_default=True,
              help="Label smoothing alpha in [0, 1].")
@click.option("--logit-squeeze", "beta", type=FractionType(0.0),
              default=default(DefenseConfig, "logit_squeeze"), show_default=True,
              help="Logit squeezing beta >= 0 (Eq. 5).")
@click.option("--noise-sigma", "sigma", type=FractionType(0.0),
              default=default(DefenseConfig, "noise_sigma"), show_default=True,
              help="Gaussian noise sigma in pixel units (0.3 or 30/255).")
@click.option("--adv", type=click.Choice(ADV_METHODS), default=default(DefenseConfig, "adv"),
              show_default=True,
              help="Adversarial training (Eq. 1) with FGSM or PGD examples.")
@click.option("--adv-eps", type=EPS, default=default(DefenseConfig, "adv_eps"),
              show_default=True, help="Attack epsilon.")
@click.option("--adv-steps", type=click.IntRange(min=1),
              default=default(DefenseConfig, "adv_steps"), show_default=True,
              help="PGD steps.")
@click.option("--adv-step-size", type=FractionType(0.0, low_open=True), default=None,
              help="PGD step size (default 2.5 * eps / steps).")
@click.option("--adv-kappa", type=FractionType(0.0, 1.0),
              default=default(DefenseConfig, "adv_kappa"), show_default=True,
              help="Weight of the clean loss in Eq. 1 (0 = Madry et al.).")
@click.option("--no-adv-random-start", is_flag=True, help="PGD without a random start.")
@click.option("--epochs", type=click.IntRange(min=1), default=default(TrainConfig, "epochs"),
              show_default=True,
              help="Training length in epochs.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Training length in steps (the paper's k); overrides --epochs.")
@click.option("--batch-size", type=click.IntRange(min=1),
              default=default(TrainConfig, "batch_size"), show_default=True)
@click.option("--train-limit", type=click.IntRange(min=1), default=None,
              help="Train on the first N training examples only.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS),
              default=default(TrainConfig, "optimizer"), show_default=True,
              help="auto: SGD+momentum with a step schedule for CIFAR, Adam otherwise.")
@click.option("--lr", type=FractionType(0.0, low_open=True), default=None,
              help="Learning rate (Adam 1e-3, SGD 0.1).")
@click.option("--weight-decay", type=FractionType(0.0), default=None,
              help="Weight decay (SGD 5e-4, Adam 0).")
@click.option("--seed", type=SEED, default=default(TrainConfig, "seed"), show_default=True,
              help="Makes a run repeatable.")
@device_option
@click.option("--precision", type=click.Choice(PRECISIONS),
              default=default(TrainConfig, "precision"), show_default=True,
              help="Of the training forward passes (autocast; fp16 with a gradient scaler). "
                   "Adversarial examples are always made in fp32.")
@click.option("--channels-last/--no-channels-last", default=None,
              help="NHWC memory format for the convolutions (default: on CUDA only).")
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile the model for training (first steps are slower).")
@click.option("--sync-bn", is_flag=True,
              help="Under torchrun on GPUs: SyncBatchNorm, batch statistics over all processes "
                   "(default: each process normalises its own part of the batch).")
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="Checkpoint to write (.safetensors), updated at every epoch end.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run at --out.")
@overwrite_option
@handle_errors
def train_command(dataset: str | None, data: str | None, data_root: str | None, download: bool,
                  arch: str, arch_args: tuple[str, ...], alpha: float, beta: float,
                  sigma: float, adv: str, adv_eps: float, adv_steps: int,
                  adv_step_size: float | None, adv_kappa: float, no_adv_random_start: bool,
                  epochs: int, steps: int | None, batch_size: int, train_limit: int | None,
                  optimizer: str,
                  lr: float | None, weight_decay: float | None, seed: int, device: str,
                  precision: str, channels_last: bool | None, compile_model: bool,
                  sync_bn: bool, out: str, resume: bool, overwrite: bool) -> None:
    """Train a classifier with any mix of defenses and save a safe checkpoint.

    \b
    epsl train --dataset digits --arch small-cnn --label-smoothing 0.75 \\
        --noise-sigma 0.3 --epochs 30 --seed 0 --out runs/ls.safetensors
    """
    if resume and overwrite:
        raise EpslError("--resume and --overwrite contradict each other; pick one")
    defense = DefenseConfig(label_smoothing=alpha, logit_squeeze=beta, noise_sigma=sigma, adv=adv,
                            adv_eps=adv_eps, adv_steps=adv_steps, adv_step_size=adv_step_size,
                            adv_kappa=adv_kappa, adv_random_start=not no_adv_random_start)
    config = TrainConfig(dataset=dataset or "digits", data=data, data_root=data_root, arch=arch,
                         arch_kwargs=_arch_kwargs(arch_args), epochs=epochs, steps=steps,
                         batch_size=batch_size, train_limit=train_limit, optimizer=optimizer, lr=lr,
                         weight_decay=weight_decay, seed=seed, device=device, defense=defense,
                         precision=precision, channels_last=channels_last,
                         compile=compile_model, sync_bn=sync_bn)
    interactive = sys.stderr.isatty()

    def report(epoch: EpochReport) -> None:
        click.echo(f"epoch {epoch.epoch}/{epoch.epochs}  step {epoch.step}  loss {epoch.loss:.4f}"
                   f"  train acc {epoch.train_accuracy:.3f}  ({epoch.seconds:.1f}s)", err=True)

    with tqdm(unit="ex", file=sys.stderr, disable=not interactive, leave=False) as bar:
        result = train(config, Path(out), resume=resume, overwrite=overwrite,
                       download=download, progress=bar.update,
                       on_epoch=report if interactive else None)
    metrics = result.metadata.get("metrics", {})
    click.echo(f"{result.metadata.get('defense', defense.name)}: "
               f"train accuracy {metrics.get('train_accuracy', float('nan')):.4f}, "
               f"test accuracy {metrics.get('test_accuracy', float('nan')):.4f}, "
               f"{result.metadata.get('steps_done')} steps -> {out}")


@click.command("info", short_help="Print a checkpoint's metadata as JSON, loaded safely.")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@checkpoint_options
@click.option("--dataset", type=click.Choice(DATASETS.names()), default=None,
              help="Dataset a foreign state_dict was trained on (sets its input shape and "
                   "classes).")
@handle_errors
def info_command(checkpoint: str, arch: str | None, model_factory: str | None,
                 model_dir: str | None, dataset: str | None) -> None:
    """Print a checkpoint's metadata as JSON (loading it safely, never unpickling code)."""
    path = Path(checkpoint)
    if path.suffix == ".safetensors" and arch is None and model_factory is None:
        meta = read_metadata(path)
        if meta:
            load(path)  # prove the weights fit the architecture
    else:
        _, meta = load(checkpoint, arch=arch, model=model_factory, dataset=dataset,
                       model_dir=model_dir)
    if not meta:
        raise EpslError(f"{path}: no epsl metadata; pass --arch NAME or --model module:factory")
    click.echo(json.dumps(meta, indent=2))


COMMANDS = [train_command, info_command]

__all__ = ["COMMANDS", "info_command", "train_command"]
