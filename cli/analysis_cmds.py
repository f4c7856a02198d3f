"""``epsl figures`` (and ``epsl compare``): the paper's figures and tables from saved results."""

from __future__ import annotations

from pathlib import Path

import click
from epsl.cli.common import EPS, handle_errors, overwrite_option


@click.command("figures")
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...",
                type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the figures (PNG + SVG), figures.json, config.json, index.md, "
                   "comparison.csv/.md and report.html.")
@click.option("--eps", type=EPS, default=None,
              help="Attack ε to mark and tabulate, in [0,1] pixel units ('0.3' or '8/255'; "
                   "default: the largest ε in the saved attack tables).")
@overwrite_option
@handle_errors
def figures(run_dirs: tuple[Path, ...], out: Path, eps: float | None, overwrite: bool) -> None:
    """Re-render every figure the saved tables of RUN_DIR... allow, without any model.

    Each RUN_DIR holds what `epsl diagnose`, `activations`, `landscape`, `attack` and `audit`
    wrote (directly or in subfolders); each run is labelled from its checkpoint metadata.
    """
    from epsl.analysis import render_runs

    result = render_runs(list(run_dirs), out, eps=eps, overwrite=overwrite)
    for run in result.runs:
        click.echo(f"{run.label:<28} {run.path}  [{', '.join(run.tables())}]")
    eps_text = f" at eps={result.eps:g}" if result.eps is not None else ""
    click.echo(f"wrote {len(result.figures)} figures{eps_text} to {result.out}; "
               f"report: {result.report}")


COMMANDS: list[click.Command] = [figures]
