"""Never stale, never lost, never wrong: a result is served only for the model, examples and
settings that made it; a folder is written by one run at a time; a run cut short leaves no
previous result beside its own; a model that cannot be evaluated is refused at the door.

Each case is driven through the CLI, where a user meets it."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner, Result

from epsl.cli.main import main
from epsl.models import checkpoint
from epsl.results.files import folder_lock, sweep_temporaries
from epsl.results.records import Provenance
from tests.files import snapshot

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--eps", "0.1", "--limit", "24", "--pgd-steps", "2", "--no-min-norm", "--no-figures"]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result: Result, *needles: str) -> None:
    """A refusal: exit status 1, one ``Error:`` line naming ``needles``, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture()
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A user's own model factory in a module of their own, which the test rewrites."""
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"usermods_{os.getpid()}_{tmp_path.name}".replace("-", "_")

    def write(body: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
        sys.modules.pop(name, None)
        importlib.invalidate_caches()
        return f"{name}:f"

    yield write
    sys.modules.pop(name, None)


SMALL_CNN = """
    from epsl.models import checkpoint
    from epsl.models import create_model

    def f():
        return create_model("small-cnn", **checkpoint.model_kwargs_for("digits"))
"""

FLIPPED = SMALL_CNN + """
    class Flipped(type(f())):
        def forward(self, x):
            return super().forward(1 - x)

    def f():
        return Flipped(**checkpoint.model_kwargs_for("digits"))
"""


def test_a_model_whose_code_changed_is_recomputed(factory_module, digits_checkpoint: Path,
                                                  tmp_path: Path) -> None:
    spec = factory_module(SMALL_CNN)
    out = tmp_path / "cmp"
    assert run("compare", digits_checkpoint, "--model", spec, *FAST, "--out", out).exit_code == 0
    before = pd.read_csv(out / "comparison.csv")
    spec = factory_module(FLIPPED)  # same weights, same factory name, other code
    result = run("compare", digits_checkpoint, "--model", spec, *FAST, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    after = pd.read_csv(out / "comparison.csv")
    fresh = tmp_path / "fresh"
    assert run("compare", digits_checkpoint, "--model", spec, *FAST, "--out", fresh).exit_code == 0
    # the rerun shows what a fresh folder shows, not the old model's numbers
    pd.testing.assert_frame_equal(after, pd.read_csv(fresh / "comparison.csv"))
    assert float(before["clean_accuracy"].iloc[0]) > 0.8
    assert float(after["clean_accuracy"].iloc[0]) < 0.5
    assert json.loads((out / "compare.json").read_text())["reused"] == {"natural": []}


def test_the_same_model_is_reused(digits_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    assert run("compare", digits_checkpoint, *FAST, "--out", out).exit_code == 0
    files = snapshot(out / "natural")
    assert run("compare", digits_checkpoint, *FAST, "--out", out, "--overwrite").exit_code == 0
    reused = json.loads((out / "compare.json").read_text())["reused"]["natural"]
    assert sorted(reused) == ["attacks", "diagnostics"]
    assert snapshot(out / "natural") == files


def test_behaviour_tolerates_last_bits_but_not_a_change() -> None:
    base = Provenance("m", "a" * 64, {"n": 1}, behaviour=[[4.56036, -0.724162, 5.05736, 0.68]])
    jitter = Provenance("m", "a" * 64, {"n": 1}, behaviour=[[4.56037, -0.724161, 5.05736, 0.68]])
    moved = Provenance("m", "a" * 64, {"n": 1}, behaviour=[[4.56136, -0.724162, 5.05736, 0.68]])
    old = Provenance("m", "a" * 64, {"n": 1})
    assert base.same_origin(jitter)
    assert base.difference(moved) == base.difference(old) != None  # noqa: E711
    assert "outputs" in str(base.difference(moved))


@contextlib.contextmanager
def held_by_another_process(folder: Path) -> Iterator[int]:
    """``folder`` held by a second process (as another ``epsl`` run holds its ``--out``) until
    the block ends; yields its pid."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom epsl.results.files import folder_lock\n"
         "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)",
         str(folder)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_folder_held_by_another_run_is_refused(digits_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "diag"
    with held_by_another_process(out) as pid:
        result = run("diagnose", digits_checkpoint, "--eps", "0.1", "--limit", "8", "--out", out)
        one_line_error(result, "another epsl run", f"process {pid}", "is writing into")
        assert not out.exists()
    # released with its process: the folder is free again
    assert run("diagnose", digits_checkpoint, "--eps", "0.1", "--limit", "8",
               "--out", out).exit_code == 0
    with folder_lock(out), folder_lock(out):  # re-entrant within one process
        pass


def test_a_table_from_another_run_is_never_read_as_this_records(digits_checkpoint: Path,
                                                                 tmp_path: Path) -> None:
    """Two runs that mixed their files in one folder: the record pins its table's digest."""
    out = tmp_path / "cmp"
    mine, other = out / "natural", tmp_path / "other"
    assert run("diagnose", digits_checkpoint, "--eps", "0.1", "--limit", "24",
               "--out", mine).exit_code == 0
    assert run("diagnose", digits_checkpoint, "--eps", "0.3", "--limit", "24",
               "--norm", "l2", "--out", other).exit_code == 0
    shutil.copy2(other / "diagnostics.csv", mine / "diagnostics.csv")
    one_line_error(run("figures", mine, "--out", tmp_path / "figs"),
                   "diagnostics.csv is not the file this record was written with")
    files = snapshot(mine)
    one_line_error(run("compare", digits_checkpoint, *FAST, "--out", out),
                   "already holds a diagnostics result", "--overwrite")
    assert snapshot(mine) == files
    assert run("compare", digits_checkpoint, *FAST, "--out", out, "--overwrite").exit_code == 0
    fresh = tmp_path / "fresh"
    assert run("compare", digits_checkpoint, *FAST, "--out", fresh).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "comparison.csv"),
                                  pd.read_csv(fresh / "comparison.csv"))


def test_a_users_own_results_are_not_replaced_without_overwrite(digits_checkpoint: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    assert run("diagnose", digits_checkpoint, "--eps", "0.1", "--limit", "10",
               "--out", out / "natural").exit_code == 0
    assert run("attack", digits_checkpoint, "--attack", "fgsm", "--eps", "0.1", "--limit", "10",
               "--out", out / "natural" / "attacks").exit_code == 0
    files = snapshot(out)
    one_line_error(run("compare", digits_checkpoint, *FAST, "--out", out),
                   "already holds a diagnostics result", "data.n", "--overwrite")
    assert snapshot(out) == files
    assert run("compare", digits_checkpoint, *FAST, "--out", out, "--overwrite").exit_code == 0
    assert json.loads((out / "natural" / "diagnostics.json").read_text())["provenance"][
        "data"]["n"] == 24


def test_an_interrupted_overwrite_leaves_no_previous_report(digits_checkpoint: Path,
                                                           tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    out = tmp_path / "cmp"
    assert run("compare", digits_checkpoint, *FAST, "--out", out).exit_code == 0
    assert (out / "compare.json").is_file() and (out / "report.html").is_file()

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("epsl.runs.compare.evaluate_model", interrupted)
    result = run("compare", digits_checkpoint, *FAST, "--eps", "0.2", "--out", out, "--overwrite")
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: interrupted")
    for name in ("compare.json", "comparison.csv", "comparison.md", "report.html"):
        assert not (out / name).exists(), name


def _save_like(digits_checkpoint: Path, path: Path, change) -> Path:
    net, meta = checkpoint.load(digits_checkpoint)
    change(net)
    checkpoint.save(path, net, {k: v for k, v in meta.items() if k != "weights"})
    return path


def test_non_finite_weights_are_refused(digits_checkpoint: Path, tmp_path: Path) -> None:
    def poison(net: torch.nn.Module) -> None:
        with torch.no_grad():
            list(net.parameters())[-1][0] = float("nan")

    bad = _save_like(digits_checkpoint, tmp_path / "nan.safetensors", poison)
    out = tmp_path / "diag"
    one_line_error(run("diagnose", bad, "--eps", "0.1", "--out", out),
                   "non-finite", "NaN or inf")
    assert not out.exists()


def test_non_finite_logits_and_outputs_that_are_not_logits_are_refused(
        factory_module, digits_checkpoint: Path, tmp_path: Path) -> None:
    nan = factory_module(SMALL_CNN + """
    class Nan(type(f())):
        def forward(self, x):
            return super().forward(x) * float("inf") * 0

    def f():
        return Nan(**checkpoint.model_kwargs_for("digits"))
""")
    one_line_error(run("diagnose", digits_checkpoint, "--model", nan, "--eps", "0.1",
                       "--out", tmp_path / "a"), "non-finite logits")
    pair = factory_module(SMALL_CNN + """
    class Pair(type(f())):
        def forward(self, x):
            return super().forward(x), x

    def f():
        return Pair(**checkpoint.model_kwargs_for("digits"))
""")
    one_line_error(run("diagnose", digits_checkpoint, "--model", pair, "--eps", "0.1",
                       "--out", tmp_path / "b"), "returns a tuple, not N x K logits")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_failed_write_leaves_no_part_of_the_result(digits_checkpoint: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "diag"
    assert run("diagnose", digits_checkpoint, "--eps", "0.1", "--limit", "8",
               "--out", out).exit_code == 0
    (out / "diagnostics.csv").unlink()
    (out / "diagnostics.csv").mkdir()  # the table cannot be written
    one_line_error(run("diagnose", digits_checkpoint, "--eps", "0.1", "--limit", "8",
                       "--out", out, "--overwrite"), "diagnostics.csv")
    assert sorted(p.name for p in out.iterdir()) == ["diagnostics.csv"]


def test_stale_temporaries_are_swept_by_the_next_run(digits_checkpoint: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "diag"
    (out / "figures").mkdir(parents=True)
    stale = [out / ".diagnostics.csv.a1b2c3d4.tmp", out / "figures" / ".fig2_logits.png.zz9y8x7w.tmp"]
    for path in stale:
        path.write_text("left by a killed run")
    kept = out / "figures" / "notes.tmp"  # not one of epsl's temporaries
    kept.write_text("mine")
    assert run("diagnose", digits_checkpoint, "--eps", "0.1", "--limit", "8",
               "--out", out).exit_code == 0
    assert not any(path.exists() for path in stale) and kept.read_text() == "mine"
    assert sweep_temporaries(out) == []


def _start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "epsl", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_ctrl_c_while_starting_is_one_line(tmp_path: Path) -> None:
    proc = _start("--version", cwd=tmp_path)
    time.sleep(0.3)  # torch and pandas take seconds to import
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == "Error: interrupted while starting; nothing was written"


def test_sigterm_mid_run_exits_with_one_line_and_no_temporaries(digits_checkpoint: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "audit"
    proc = _start("audit", str(digits_checkpoint), "--eps", "0.1", "--out", str(out),
                  cwd=tmp_path)
    time.sleep(8)  # imports and loading take a few seconds; the audit, minutes
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("Error: terminated")
    assert not [p for p in tmp_path.rglob("*.tmp")]
    assert not (out / "audit.json").exists()


def test_the_sweep_leaves_folders_another_run_is_writing(tmp_path: Path) -> None:
    out, busy = tmp_path / "out", tmp_path / "out" / "m"
    busy.mkdir(parents=True)
    (out / ".old.csv.a1b2c3d4.tmp").write_text("stale")
    writing = busy / ".diagnostics.csv.zz9y8x7w.tmp"
    with held_by_another_process(busy):
        writing.write_text("being written by the holder")
        assert sweep_temporaries(out) == [out / ".old.csv.a1b2c3d4.tmp"]
        assert writing.exists()
    assert sweep_temporaries(out) == [writing]


def test_sigterm_outside_a_command_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaving torchrun's group after a command (or joining it before) is outside the command:
    SIGTERM there still ends in one line and 143, not click's 'Aborted!'."""
    from epsl.cli.entry import Terminated

    def terminated() -> None:
        raise Terminated

    monkeypatch.setattr("epsl.distributed.finish", terminated)
    result = run("explain", "steps")
    assert result.exit_code == 143, result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: terminated")
