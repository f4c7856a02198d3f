"""The ``epsl`` executable: signals are taken over before the heavy imports.

Loading torch, pandas and the command modules takes seconds; a Ctrl-C in that time would show
Python's import traceback. SIGTERM (what ``kill``, schedulers and container runtimes send)
would end the process at once, leaving temporary files behind. Here both become an
interruption that unwinds: unfinished files are removed on the way out, one line is printed,
and the exit status is 128 + the signal's number.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it unwinds like Ctrl-C."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main() -> None:
    """Run the ``epsl`` command group with SIGINT and SIGTERM handled from the first line."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        from epsl.cli.main import main as group
    except KeyboardInterrupt as exc:
        raise SystemExit(stopped(exc, "nothing was written", when=" while starting")) from None
    try:
        group(prog_name="epsl")
    except KeyboardInterrupt as exc:  # outside a command (click reports those itself)
        raise SystemExit(stopped(exc, "nothing half-written was kept")) from None


def stopped(exc: KeyboardInterrupt, what: str, when: str = "") -> int:
    """Say in one line that the run was interrupted or terminated (``when``), and what was
    kept; return the exit status (128 + the signal)."""
    terminated = isinstance(exc, Terminated)
    sys.stderr.write(f"Error: {'terminated' if terminated else 'interrupted'}{when}; {what}\n")
    return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


__all__ = ["Terminated", "main", "stopped"]
