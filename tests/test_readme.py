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


def test_the_python_quickstart_runs(digits_checkpoint: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The README's Python block, verbatim, on a checkpoint where the main job leaves one; it
    opens the README (within its first 80 lines)."""
    import re
    import shutil

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert text[:text.index("```python")].count("\n") < 80
    models = tmp_path / "runs" / "digits" / "models"
    models.mkdir(parents=True)
    shutil.copyfile(digits_checkpoint, models / "natural.safetensors")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102
    predicted, attacked = re.fullmatch(
        r"Eq\. 4 predicts (\d+\.\d)% robust at ε = 0\.1; attacks leave (\d+\.\d)%\n",
        capsys.readouterr().out).groups()
    # ε* is a real flip: no image the attacks break can be robust; Eq. 4 is no attack
    eps_l, eps_star = scope["eps_l"], scope["eps_star"]
    assert eps_l.shape == eps_star.shape == (64,)
    assert float(attacked) == round(100 * float((eps_star > 0.1).double().mean()), 1)
    assert 0 < float(predicted) < 100 and 0 < float(attacked) < 100


def test_the_table_check_fails_on_a_changed_cell(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """CI's check of the docs' tables against the main job's headline.md: a moved number
    fails it, a last-digit difference between CPUs (within 2 of 359 images) does not."""
    check = runpy.run_path(str(ROOT / ".ci" / "check_readme_tables.py"))
    table = ("| model | clean | Eq. 4 predicted |\n|---|--:|--:|\n"
             "| natural | 99.2% [97.6, 99.8] | 38.4% [33.4, 43.7] |\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "headline.md").write_text(table + "\nmore text\n")
    for name in check["DOCS"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("intro\n\n<!-- from: headline.md -->\n" + table)
    monkeypatch.setitem(check["main"].__globals__, "ROOT", tmp_path)
    check["main"](tmp_path / "out")  # identical
    (tmp_path / "README.md").write_text("<!-- from: headline.md -->\n"
                                        + table.replace("38.4% [33.4", "38.7% [33.6"))
    check["main"](tmp_path / "out")  # within the CPUs' tolerance
    (tmp_path / "README.md").write_text("<!-- from: headline.md -->\n"
                                        + table.replace("38.4%", "39.4%"))
    with pytest.raises(SystemExit, match="natural: '39.4% .*printed '38.4%"):
        check["main"](tmp_path / "out")
    (tmp_path / "README.md").write_text("<!-- from: headline.md -->\n"
                                        + table.replace("natural", "natural!"))
    with pytest.raises(SystemExit, match="natural!"):
        check["main"](tmp_path / "out")
