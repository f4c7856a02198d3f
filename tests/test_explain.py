"""The audit's warning pages ship with the package and ``epsl explain`` shows them."""

from __future__ import annotations

import fnmatch
import shlex
import tomllib
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from epsl.attacks.audit import WARNING_DOCS
from epsl.cli.main import main
from epsl.errors import EpslError
from epsl.explain import PAGES, explain, titles, warning_codes

ROOT = Path(__file__).resolve().parents[1]
CODES = sorted(WARNING_DOCS)


def test_every_audit_code_has_a_page_and_no_page_is_orphaned() -> None:
    assert set(warning_codes()) == set(WARNING_DOCS)


@pytest.mark.parametrize("code", CODES)
def test_explain_returns_the_page(code: str) -> None:
    page = explain(code)
    assert page.startswith(f"# Warning `{code}`: ")
    assert "**What to do.**" in page and page.endswith("\n")
    assert titles()[code] and "\n" not in titles()[code]


@pytest.mark.parametrize("code", CODES)
def test_the_audit_points_at_a_command_that_runs(code: str) -> None:
    argv = shlex.split(WARNING_DOCS[code])
    assert argv == ["epsl", "explain", code]
    result = CliRunner().invoke(main, argv[1:])
    assert result.exit_code == 0, result.output
    assert result.output == explain(code)


def test_without_a_code_the_cli_lists_codes_with_titles() -> None:
    result = CliRunner().invoke(main, ["explain"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for code, title in titles().items():
        assert any(line.startswith(code + " ") and line.endswith(title) for line in lines), code


def test_an_unknown_code_is_one_error_line_and_exit_1() -> None:
    with pytest.raises(EpslError, match="known codes: .*vanishing-gradients"):
        explain("no-such-code")
    result = CliRunner().invoke(main, ["explain", "no-such-code"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "steps" in result.output and "Traceback" not in result.output


def test_pyproject_ships_every_page_as_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["epsl"]
    for code in CODES:
        assert any(fnmatch.fnmatch(f"{PAGES}/{code}.md", pattern) for pattern in patterns), code


def test_the_wheel_contains_every_page(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for code in CODES:
            member = f"epsl/{PAGES}/{code}.md"
            assert member in names, member
            assert archive.read(member).decode("utf-8") == explain(code)
        assert "epsl/explain.py" in names and "epsl/cli/explain_cmds.py" in names
