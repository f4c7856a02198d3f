"""``epsl explain``: the audit's warning pages, shipped with the package."""

from __future__ import annotations

import click

from epsl.cli.common import handle_errors
from epsl.explain import explain, titles


@click.command("explain", short_help="Show the page of an audit warning code.")
@click.argument("code", required=False)
@handle_errors
def explain_command(code: str | None) -> None:
    """Show the page of the audit warning CODE: what fired, why it matters, what to do.

    Without CODE, list the codes with their titles. `epsl audit` names the code of every
    warning it prints.

    Example: epsl explain vanishing-gradients
    """
    if code is not None:
        click.echo(explain(code), nl=False)
        return
    known = titles()
    width = max(map(len, known))
    for name, title in known.items():
        click.echo(f"{name:<{width}}  {title}")
    click.echo("\nepsl explain CODE shows the page of one of them.")


COMMANDS: list[click.Command] = [explain_command]

__all__ = ["COMMANDS", "explain_command"]
