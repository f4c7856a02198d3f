"""``epsl --help`` lists every command with a one-line help that reads whole."""

from __future__ import annotations

import re

from click.testing import CliRunner

from epsl.cli.main import main


def test_every_command_has_a_whole_one_line_help() -> None:
    result = CliRunner().invoke(main, ["--help"], terminal_width=80)
    assert result.exit_code == 0
    listing = result.output.split("Commands:\n", 1)[1]
    lines = dict(re.findall(r"^  (\S+)\s+(.+)$", listing, flags=re.M))
    shown = {name: command for name, command in main.commands.items() if not command.hidden}
    assert set(lines) == set(shown)
    assert {n for n, c in main.commands.items() if c.hidden} == {"calibrate"}  # a former name
    for name, command in shown.items():
        text = lines[name]
        # click cuts a docstring at its first full stop ("How far Eq.") or at the width
        # ("..."): every command says its own sentence instead, and the listing shows all of it
        assert text == command.short_help, name
        assert text.endswith(".") and not text.endswith("..."), text
        assert len(text.split()) >= 5, text  # a sentence, not a fragment
        assert not re.search(r"\b(Eq|Fig|e\.g)\.$", text), text
