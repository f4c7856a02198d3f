"""``epsl train`` / ``epsl info`` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from epsl.cli.main import main
from epsl.models import checkpoint
from tests.files import snapshot


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_train_then_info(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "ls.safetensors"
    result = runner.invoke(main, ["train", "--label-smoothing", "0.5", "--noise-sigma", "30/255",
                                  "--steps", "4", "--seed", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    meta = checkpoint.read_metadata(out)
    assert meta["train_config"]["defense"]["noise_sigma"] == pytest.approx(30 / 255)
    assert meta["defense"] == "ls0.5+noise0.118"
    info = runner.invoke(main, ["info", str(out)])
    assert info.exit_code == 0
    assert json.loads(info.output)["steps_done"] == 4


def test_train_on_own_npz(runner: CliRunner, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 1, 8, 8), dtype=np.uint8)
    y = np.arange(40) % 3
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    out = tmp_path / "mine.safetensors"
    result = runner.invoke(main, ["train", "--data", str(tmp_path / "mine.npz"), "--steps", "2",
                                  "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert checkpoint.read_metadata(out)["num_classes"] == 3


@pytest.mark.parametrize("args, message", [
    (["--label-smoothing", "1.5"], "must be <= 1.0"),
    (["--adv", "pgd", "--adv-eps", "0"], "must be > 0.0"),
    (["--adv-eps", "8/0"], "not a number"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--data", "/nonexistent.npz"], "no such file"),
    (["--out", "model.pt"], "written as .safetensors"),
    (["--arch-arg", "depth"], "KEY=VALUE"),
])
def test_train_bad_input(runner: CliRunner, tmp_path: Path, args: list[str], message: str
                         ) -> None:
    argv = ["train", "--steps", "1", "--out", str(tmp_path / "m.safetensors"), *args]
    if "--out" in args:
        argv = ["train", "--steps", "1", *args]
    result = runner.invoke(main, argv)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "m.safetensors").exists()


def test_train_refuses_to_overwrite_and_resumes(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    assert runner.invoke(main, ["train", "--steps", "2", "--out", str(out)]).exit_code == 0
    before = snapshot(tmp_path)
    again = runner.invoke(main, ["train", "--steps", "2", "--out", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert snapshot(tmp_path) == before
    resumed = runner.invoke(main, ["train", "--steps", "2", "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output


def test_info_bad_files(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    result = runner.invoke(main, ["info", str(tmp_path / "junk.safetensors")])
    assert result.exit_code == 1 and result.output.startswith("Error:")
    assert len(result.output.strip().splitlines()) == 1
    missing = runner.invoke(main, ["info", str(tmp_path / "nope.safetensors")])
    assert missing.exit_code == 1 and "no such checkpoint" in missing.output
