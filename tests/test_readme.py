"""The README's two commands are what CI runs: ``.ci/run`` reads them out of README.md with
``.ci/readme_commands.py``, so the two cannot drift apart."""

from __future__ import annotations

import runpy
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
helper = runpy.run_path(str(ROOT / ".ci" / "readme_commands.py"))


def test_readme_has_the_main_job_and_the_tests() -> None:
    found = helper["commands"]((ROOT / "README.md").read_text(encoding="utf-8"))
    main, tests = shlex.split(found["main"]), shlex.split(found["tests"])
    assert main[:4] == ["python3", "-m", "venv", ".venv"] and tests[:4] == main[:4]
    assert main[main.index("epsl"):] == ["epsl", "reproduce", "--out", found["out"]]
    assert tests[-4:] == ["python", "-m", "pytest", "-q"]
    # the main job installs epsl alone: everything it needs is a core dependency
    assert "-e" in main and main[main.index("-e") + 1] == "."


def test_ci_runs_the_readme_commands_before_installing_anything_else() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    main_at, tests_at = ci.index('bash -c "$main_job"'), ci.index('bash -c "$tests"')
    assert "readme_commands.py main" in ci and "readme_commands.py tests" in ci
    assert main_at < tests_at < ci.index("apt-get install")
    assert "pip install" not in ci  # nothing but the README's own commands installs Python code
    # then the wheel, in a venv of its own, after the tests have passed
    assert tests_at < ci.index('"$root/.ci/check_wheel.sh"') < ci.index("apt-get install")


@pytest.mark.parametrize("text", [
    "no commands at all",
    "```bash\npython3 -m venv .venv && epsl reproduce --out x\n```\n",
    "```bash\npython3 -m venv .venv && epsl reproduce\n```\n```bash\npython3 -m venv .venv && "
    "python -m pytest\n```\n",
], ids=["none", "one", "no-out"])
def test_the_helper_refuses_a_readme_it_cannot_read(text: str) -> None:
    with pytest.raises(SystemExit, match="README.md"):
        helper["commands"](text)
