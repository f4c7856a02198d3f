"""Options and types shared by the subcommands; errors become one line and exit code 1."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import math
import re
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import click
from tqdm import tqdm

from epsl.attacks.eps_star import EpsStarConfig
from epsl.cli.entry import stopped
from epsl.data import DATASETS, SPLITS
from epsl.device import DEVICES
from epsl.errors import SEED_MAX, EpslError, path_error
from epsl.models import MODELS
from epsl.norms import NORMS
from epsl.results.files import check_out_dir, folder_lock
from epsl.results.records import TABLE_FORMATS, Result, kind
from epsl.runs.context import DataConfig

F = TypeVar("F", bound=Callable[..., Any])


def parse_fraction(text: str) -> float:
    """'0.3', '8/255' or '30/255' -> float."""
    try:
        return float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{text!r} is not a number or a fraction like 8/255") from None


class FractionType(click.ParamType):
    """A float that also accepts fractions such as ``8/255``, optionally bounded."""

    name = "number"

    def __init__(self, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            number = value
        else:
            try:
                number = parse_fraction(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number", param, ctx)
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            self.fail(f"{value} must be {'>' if self.low_open else '>='} {self.low}", param, ctx)
        if self.high is not None and (number > self.high or (self.high_open and number == self.high)):
            self.fail(f"{value} must be {'<' if self.high_open else '<='} {self.high}", param, ctx)
        return number


#: An l_inf radius in pixel units on the [0, 1] scale, in (0, 1] (1 is the whole box, the
#: paper's unbounded check); '8/255' accepted.
EPS = FractionType(0.0, 1.0, low_open=True)
#: A radius in the command's ``--norm``: positive here, checked per norm by the library (ℓ∞ at
#: most 1, ℓ2 at most √D, ℓ1 at most D: :func:`epsl.norms.check_radius`).
RADIUS = FractionType(0.0, None, low_open=True)
#: Every seed (``--seed``, ``--sample-seed``): a whole number in [0, 2**63), checked before any
#: work (:func:`epsl.errors.check_seed` checks the same in the library's configs).
SEED = click.IntRange(0, SEED_MAX)

#: ``--norm``: the ℓp threat model of every ε, ε_L and ε* of a command.
norm_option = click.option(
    "--norm", type=click.Choice(NORMS), default="linf", show_default=True,
    help="Threat model: the lp norm of every eps, eps_L and eps* (linf is the paper's).")


def default(cls: type, name: str) -> Any:
    """The default of the config dataclass ``cls``'s field ``name``: options take their defaults
    from the configs they fill, so the CLI and the library cannot disagree."""
    spec = next(f for f in dataclasses.fields(cls) if f.name == name)
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")


#: ``--eps`` of the commands that report accuracies at radii in the ``--norm`` (the norm's
#: radii without it: :data:`epsl.runs.diagnose.DEFAULT_EPS`).
radii_option = click.option(
    "--eps", "eps", type=RADIUS, multiple=True,
    help="Radii in the --norm at which to report accuracies, pixel units: in (0, 1] for linf, "
         "up to sqrt(D) for l2, D for l1; '8/255' accepted; repeatable. Default: 2/255 4/255 "
         "8/255 0.1 0.2 0.3 (linf), 0.1 0.25 0.5 1 2 (l2), 0.5 1 2 5 12 (l1).")

format_option = click.option("--format", "table_format", type=click.Choice(TABLE_FORMATS),
                             default="csv", show_default=True, help="Table file format.")


def seed_option(config: type, help: str) -> Callable[[F], F]:
    """``--seed`` (:data:`SEED`), its default that of the field ``seed`` of ``config``."""
    return click.option("--seed", type=SEED, default=default(config, "seed"), show_default=True,
                        help=help)


def batch_size_option(config: type, help: str) -> Callable[[F], F]:
    """``--batch-size`` (a whole number from 1), its default that of the field ``batch_size``
    of ``config``."""
    return click.option("--batch-size", type=click.IntRange(min=1),
                        default=default(config, "batch_size"), show_default=True, help=help)


#: library parameters whose option is named otherwise (``--model`` fills ``model=``,
#: landscape's ``--images`` the data's ``limit=``)
PARAMETER_ALIASES = {"model": "model_factory", "compile": "compile_model",
                     "random_start": "no_random_start", "limit": "images"}
# a parameter starts the message or follows a space, "(" or ","; never inside a path
# (runs/eps=0.1 stays as it is)
_PARAMETER = re.compile(r"(?<![^\s(,])([a-z][a-z_]*)=(True\b)?")


def in_flags(message: str, command: click.Command | None) -> str:
    """A library message as the command's user reads it: the library names its parameters
    (``pass overwrite=True``, ``data=PATH: ...``); each one that is an option of ``command``
    becomes the option's flag (``pass --overwrite``, ``--data PATH: ...``)."""
    if command is None:
        return message
    flags = {p.name: max(p.opts, key=len) for p in command.params
             if isinstance(p, click.Option) and p.name}
    flags |= {alias: flags[name] for alias, name in PARAMETER_ALIASES.items() if name in flags}

    def flag(match: re.Match[str]) -> str:
        name, true = match.group(1), match.group(2)
        if name not in flags:
            return match.group(0)
        return flags[name] if true else f"{flags[name]} "

    return re.sub(r" +(?=[,;)]|$)", "", _PARAMETER.sub(flag, message))


def handle_errors(func: F) -> F:
    """Turn library errors into ``Error: <one line>`` and exit code 1, never a traceback; the
    parameters the message names are said as this command's flags (:func:`in_flags`). The
    command's ``--out`` is held for the whole run (:func:`epsl.results.files.folder_lock`): a second run
    into it is refused. Ctrl-C and SIGTERM end it with one line and exit status 130 or 143;
    unfinished files are removed on the way out."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context(silent=True)
        command = ctx.command if ctx is not None else None
        try:
            out = kwargs.get("out")
            with folder_lock(out) if out else contextlib.nullcontext():
                return func(*args, **kwargs)
        except EpslError as exc:
            raise click.ClickException(in_flags(str(exc), command)) from None
        except OSError as exc:  # a path the system refuses: too long, not allowed, disk full
            if exc.errno == errno.EPIPE:
                raise  # a closed pipe: click ends quietly
            raise click.ClickException(in_flags(str(path_error(exc)), command)) from None
        except KeyboardInterrupt as exc:
            raise click.exceptions.Exit(stopped(exc, "results finished before it were kept, "
                                                     "nothing half-written was")) from None

    return wrapper  # type: ignore[return-value]


def _compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


data_options = _compose(
    click.option("--dataset", type=click.Choice(DATASETS.names()), default=None,
                 help="Registered dataset (default: the checkpoint's own, else digits)."),
    click.option("--data", "data", type=click.Path(dir_okay=False), default=None,
                 help="Your own .npz with x (NxCxHxW in [0,1] or uint8) and y; overrides --dataset."),
    click.option("--data-root", type=click.Path(file_okay=False), default=None,
                 help="Folder holding MNIST/CIFAR/Fashion-MNIST files, or ImageNet's val/<wnid>/*.JPEG."),
    click.option("--download", is_flag=True, help="Download torchvision datasets into --data-root."),
)

eval_data_options = _compose(
    data_options,
    click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True,
                 help="Which split to evaluate."),
    click.option("--limit", type=click.IntRange(min=1), default=None,
                 help="Evaluate only the first N examples of the split."),
    click.option("--sample", type=click.IntRange(min=1), default=None,
                 help="Evaluate a fixed random N examples of the split, in index order "
                      "(drawn with --sample-seed; not with --limit)."),
    click.option("--sample-seed", type=SEED, default=default(DataConfig, "sample_seed"),
                 show_default=True, help="Seed of the --sample draw."),
)

checkpoint_options = _compose(
    click.option("--arch", type=click.Choice(MODELS.names()), default=None,
                 help="Architecture of a foreign .pt/.pth state_dict."),
    click.option("--model", "model_factory", default=None, metavar="MODULE:FACTORY",
                 help="Build your own model from package.module:factory, then load the weights."),
    click.option("--model-dir", type=click.Path(file_okay=False), default=None,
                 help="Weights folder of a zoo CHECKPOINT: robustbench:DATASET/THREAT/NAME reads "
                      "DIR/DATASET/THREAT/NAME.pt (default ./models), timm:NAME "
                      "DIR/NAME.safetensors (default: the Hugging Face cache), torchvision:NAME "
                      "the weights' file (default: torch hub's cache)."),
)

#: The head of every command that evaluates one checkpoint: the CHECKPOINT argument, the data
#: it is evaluated on and how it is loaded.
checkpoint_eval_options = _compose(
    click.argument("checkpoint", type=click.Path(dir_okay=False)),
    eval_data_options,
    checkpoint_options,
)

device_option = click.option("--device", type=click.Choice(DEVICES), default="auto",
                             show_default=True, help="Where to compute.")
overwrite_option = click.option("--overwrite", is_flag=True,
                                help="Replace results already in --out.")
out_option = click.option("--out", type=click.Path(file_okay=False), required=True,
                          help="Folder to write the table and its JSON record into.")

#: The tail of every command that writes one result: where to compute, where to write it,
#: whether to replace what is there; library errors become one line.
result_options = _compose(device_option, out_option, overwrite_option, handle_errors)


def data_config(checkpoint: str | None, options: dict[str, Any]) -> DataConfig:
    """The :class:`~epsl.runs.context.DataConfig` of the data and checkpoint options
    (:data:`eval_data_options`, :data:`checkpoint_options`, ``--device``)."""
    return DataConfig(checkpoint=checkpoint, dataset=options.get("dataset"),
                      data=options.get("data"), data_root=options.get("data_root"),
                      download=bool(options.get("download")),
                      split=options.get("split", "test"), limit=options.get("limit"),
                      sample=options.get("sample"),
                      sample_seed=options.get("sample_seed", default(DataConfig, "sample_seed")),
                      arch=options.get("arch"), model=options.get("model_factory"),
                      model_dir=options.get("model_dir"), device=options.get("device", "auto"))


#: The minimum-norm ensemble's budgets, for every command that finds ε*.
eps_star_budget_options = _compose(
    click.option("--fmn-steps", type=click.IntRange(min=1),
                 default=default(EpsStarConfig, "fmn_steps"), show_default=True,
                 help="Steps of Foolbox's FMN attack in the --norm (eps*)."),
    click.option("--fab-steps", type=click.IntRange(min=1),
                 default=default(EpsStarConfig, "fab_steps"), show_default=True,
                 help="Steps of torchattacks' FAB in the --norm (eps*)."),
    click.option("--ddn-steps", type=click.IntRange(min=1),
                 default=default(EpsStarConfig, "ddn_steps"), show_default=True,
                 help="Steps of Foolbox's DDN attack (l2 only; eps*)."),
    click.option("--fab-targets", type=click.IntRange(min=1), default=None,
                 help="Run FAB targeted at the K wrong classes with the highest logits "
                      "instead of untargeted: its cost grows with the classes, so use it at "
                      "100+ classes (docs/eps-star.md measures K=9 against untargeted)."),
)


def eps_star_config(*, fmn_steps: int, fab_steps: int, seed: int, batch_size: int | None,
                   attacks: tuple[str, ...] = (), fab_restarts: int | None = None,
                   ddn_steps: int | None = None, norm: str = "linf",
                   fab_targets: int | None = None) -> EpsStarConfig:
    """The one place the CLI builds the minimum-norm ensemble (calibrate, compare, audit): in
    the command's ``--norm`` (its default attacks unless ``attacks``), the budgets given,
    seeded and batched like the command's attacks."""
    return EpsStarConfig(attacks=attacks or None, norm=norm,
                         fmn_steps=fmn_steps, fab_steps=fab_steps,
                         ddn_steps=ddn_steps or default(EpsStarConfig, "ddn_steps"),
                         fab_restarts=fab_restarts or default(EpsStarConfig, "fab_restarts"),
                         fab_targets=fab_targets, seed=seed, batch_size=batch_size)


def precheck(out: str, products: list[str], overwrite: bool) -> None:
    """Fail before any computation when results are in the way or ``out`` cannot be written
    (without creating ``out``)."""
    check_out_dir(out, products, overwrite, create=False)


def run_and_save(out: str, name: str, run: Callable[[], Result], *, overwrite: bool,
                 table_format: str = "csv") -> tuple[dict[str, Any], list[Path]]:
    """Refuse before any work where results are in the way in ``out`` (:func:`precheck` for a
    result of kind ``name``), then ``run()`` and save the result there: its summary and the
    files written."""
    precheck(out, kind(name).files(table_format), overwrite)
    record = run()
    return record.summary, record.save(out, table_format=table_format, overwrite=overwrite)


def progress_bar(total: int | None = None, unit: str = "ex") -> tqdm:
    """A progress bar on stderr, shown only on a terminal, counting ``unit`` up to ``total``
    (open-ended for ``None``)."""
    return tqdm(total=total, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty(),
                leave=False)


def say_written(paths: list[Path]) -> None:
    """Say which files a command wrote, one line each."""
    for path in paths:
        click.echo(f"wrote {path}")


def former_name(command: click.Command, old: str) -> click.Command:
    """``command`` under the name ``old`` it had in an earlier release: hidden from ``--help``,
    it says what it became on stderr and then runs as ``command``."""
    callback = command.callback
    assert callback is not None

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        click.echo(f"note: 'epsl {old}' is now 'epsl {command.name}'", err=True)
        return callback(*args, **kwargs)

    alias = click.Command(old, params=command.params, callback=run, help=command.help,
                          short_help=command.short_help, hidden=True,
                          context_settings=command.context_settings)
    return alias


__all__ = ["EPS", "FractionType", "PARAMETER_ALIASES", "RADIUS", "SEED", "batch_size_option",
           "checkpoint_eval_options", "checkpoint_options", "data_config", "data_options",
           "default", "device_option", "eps_star_budget_options", "eps_star_config",
           "eval_data_options", "format_option", "former_name", "handle_errors", "in_flags",
           "norm_option", "out_option", "overwrite_option", "parse_fraction", "precheck",
           "progress_bar", "radii_option", "result_options", "run_and_save", "say_written",
           "seed_option"]
