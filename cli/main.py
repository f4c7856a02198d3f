"""The ``epsl`` command: a group of thin subcommands, each calling one library function."""

from __future__ import annotations

import io
import os
import shlex
import sys
import traceback
import warnings
from typing import Any

import click

from epsl.errors import EpslError
from epsl.results.records import COMMAND
from epsl.version import __version__


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Library warnings (STYLE 10) as one line on stderr, without a source excerpt."""
    from epsl.cli.common import in_flags

    ctx = click.get_current_context(silent=True)
    click.echo(f"Warning: {in_flags(str(message), ctx.command if ctx else None)}", err=True)


class _Epsl(click.Group):
    """The group, remembering the command line it runs for every result's provenance."""

    def invoke(self, ctx: click.Context) -> Any:
        from epsl.cli.entry import stopped

        try:
            result = super().invoke(ctx)
            from epsl.distributed import finish  # after a command that succeeded, every rank

            finish()
        except KeyboardInterrupt as exc:  # outside a command: joining or leaving torchrun
            raise click.exceptions.Exit(stopped(exc, "nothing half-written was kept")) from None
        return result

    def main(self, args: Any = None, *rest: Any, **options: Any) -> Any:
        argv = [str(a) for a in args] if args is not None else sys.argv[1:]
        token = COMMAND.set(shlex.join(["epsl", *argv]))
        try:
            return super().main(args, *rest, **options)
        finally:
            COMMAND.reset(token)


@click.group(cls=_Epsl,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="epsl")
def main() -> None:
    """Robustness analysis for PyTorch classifiers around eps_L (Eq. 4 of Shafahi et al.):
    train defenses, compute eps_L diagnostics, attack, audit and render the paper's figures."""
    warnings.showwarning = _show_warning
    _join_torchrun()


def _join_torchrun() -> None:
    """Under torchrun, join the process group before anything runs; only rank 0 prints results
    (errors still show on every rank)."""
    from epsl.distributed import launched, setup

    if not launched():
        return
    try:
        world = setup()
    except EpslError as exc:
        raise click.ClickException(str(exc)) from None
    if not world.writer:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
        real = sys.stderr
        sys.stderr = _ErrorsOnly(real, world.rank)  # type: ignore[assignment]
        sys.excepthook = lambda kind, value, tb: traceback.print_exception(kind, value, tb,
                                                                           file=real)


class _ErrorsOnly(io.TextIOBase):
    """stderr of ranks other than 0: their progress and warnings repeat rank 0's, so only
    errors get through, marked with the rank (and tracebacks, which ``sys.excepthook`` prints
    to the real stderr)."""

    def __init__(self, stream: Any, rank: int) -> None:
        self.stream, self.rank = stream, rank

    def write(self, text: str) -> int:
        if text.startswith("Error:"):
            self.stream.write(f"[rank {self.rank}] {text}")
            self.stream.flush()
        return len(text)

    def isatty(self) -> bool:
        return False  # no progress bars


def _register() -> None:
    from epsl.cli import (
        analysis_cmds,
        attack_cmds,
        certify_cmds,
        diagnose_cmds,
        estimate_cmds,
        explain_cmds,
        reproduce_cmds,
        train_cmds,
    )

    for module in (train_cmds, diagnose_cmds, certify_cmds, attack_cmds, estimate_cmds,
                   analysis_cmds, reproduce_cmds, explain_cmds):
        for command in module.COMMANDS:
            main.add_command(command)


_register()

__all__ = ["main"]
