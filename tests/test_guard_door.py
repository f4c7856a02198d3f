"""Issue 30, rows 7 and 9: bad input at the door. Each case goes through the CLI as a user meets
it and ends in one ``Error:`` line, a non-zero exit, no traceback and nothing written; the
messages say what to do and never suggest unsafe loading."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner, Result

from epsl.analysis.synthetic import PRESETS, diagnostics_frame
from epsl.attacks.audit import AuditConfig
from epsl.attacks.eps_star import EpsStarConfig
from epsl.cli.main import main
from epsl.data import load_split
from epsl.defenses.train import TrainConfig
from epsl.diagnostics import loss_landscape
from epsl.errors import SEED_MAX, EpslError
from epsl.models import checkpoint, create_model
from epsl.results.records import Result as Record
from epsl.runs.attack import AttackRunConfig
from epsl.runs.compare import CompareConfig
from epsl.runs.context import DataConfig
from epsl.runs.diagnose import LandscapeConfig
from epsl.study.config import AttackSettings, load_preset


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result: Result, status: int | None = 1) -> str:
    """The one ``Error:`` line of a failed command (click's usage errors, status 2, print the
    usage above it); no traceback."""
    assert result.exit_code != 0 and (status is None or result.exit_code == status),\
        result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (
        AttributeError, TypeError, ValueError, OSError)), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    if status == 1:
        assert [line for line in result.output.splitlines() if line.strip()] == errors
    return errors[0]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An untrained digits small-cnn as an epsl checkpoint and as a plain .pt state_dict, and
    its first test images with every label wrong (nothing correctly classified)."""
    folder = tmp_path_factory.mktemp("door")
    kwargs = checkpoint.model_kwargs_for("digits")
    torch.manual_seed(0)
    model = create_model("small-cnn", **kwargs).eval()
    ckpt = checkpoint.save(folder / "m.safetensors", model,
                           {"arch": "small-cnn", "arch_kwargs": kwargs, "dataset": "digits",
                            "input_shape": [1, 8, 8], "num_classes": 10})
    torch.save(model.state_dict(), folder / "sd.pt")
    x = load_split("digits", "test", limit=6).x
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 10
    np.savez(folder / "wrong.npz", x=x.numpy(), y=wrong.numpy())
    return {"ckpt": ckpt, "state_dict": folder / "sd.pt", "wrong": folder / "wrong.npz"}


# ------------------------------------------------------------------ row 7: seeds

@pytest.mark.parametrize("command, seed_option, value", [
    ("eps-star", "--seed", "-5"), ("compare", "--seed", "-5"), ("attack", "--seed", "-5"),
    ("audit", "--seed", "-5"), ("certify", "--seed", "-1"), ("landscape", "--seed", "-1"),
    ("diagnose", "--sample-seed", "-1"), ("train", "--seed", "99999999999999999999"),
    ("attack", "--seed", str(2**63)), ("reproduce", "--seed", "-1"),
])
def test_seeds_are_checked_before_any_work(model_files: dict[str, Path], tmp_path: Path,
                                           command: str, seed_option: str, value: str) -> None:
    out = tmp_path / "out"
    args: dict[str, list[object]] = {
        "train": ["--steps", 1, "--out", out / "m.safetensors"],
        "reproduce": ["--preset", "digits", "--out", out],
        "diagnose": [model_files["ckpt"], "--sample", 3, "--out", out],
        "compare": [model_files["ckpt"], "--eps", "0.1", "--out", out],
        "attack": [model_files["ckpt"], "--eps", "0.1", "--out", out],
        "audit": [model_files["ckpt"], "--eps", "0.1", "--out", out],
    }
    common = args.get(command, [model_files["ckpt"], "--out", out])
    line = error_line(run(command, *common, seed_option, value), status=2)
    assert seed_option in line and value in line
    assert not out.exists()


@pytest.mark.parametrize("make, name", [
    (lambda seed: EpsStarConfig(seed=seed), "seed"),
    (lambda seed: CompareConfig(checkpoints=("m",), eps=0.1, seed=seed), "seed"),
    (lambda seed: AttackRunConfig(data=DataConfig(), eps=(0.1,), seed=seed), "seed"),
    (lambda seed: AuditConfig(seed=seed), "seed"),
    (lambda seed: TrainConfig(steps=1, seed=seed), "seed"),
    (lambda seed: LandscapeConfig(data=DataConfig(), seed=seed), "seed"),
    (lambda seed: DataConfig(sample=3, sample_seed=seed), "sample_seed"),
    (lambda seed: AttackSettings(seed=seed), "[attacks] seed"),
], ids=["eps_star", "compare", "attack", "audit", "train", "landscape", "data", "preset"])
@pytest.mark.parametrize("seed", [-5, 2**63, 1.5, True])
def test_every_config_checks_its_seed(make: object, name: str, seed: object) -> None:
    with pytest.raises(EpslError, match=rf"^{re.escape(name)} must be a non-negative integer "
                                        r"below 2\*\*63") as info:
        make(seed)  # type: ignore[operator]
    assert "\n" not in str(info.value)
    make(SEED_MAX)  # type: ignore[operator]  # the largest seed is a seed


def test_the_largest_seed_runs(model_files: dict[str, Path], tmp_path: Path) -> None:
    """Seeds derived from the largest one (per epoch, per restart) stay within torch's range."""
    result = run("attack", model_files["ckpt"], "--eps", "0.1", "--restarts", 2, "--limit", 3,
                 "--seed", SEED_MAX, "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    result = run("train", "--steps", 1, "--train-limit", 64, "--seed", SEED_MAX,
                 "--out", tmp_path / "t" / "m.safetensors")
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------ row 7: malformed table cells

@pytest.mark.parametrize("column, cell, says", [
    ("eps_l", "xyz", "numbers"), ("correct", "maybe", "true or false"),
    ("correct", 2, "true or false"),
])
def test_figures_refuse_a_malformed_cell(tmp_path: Path, column: str, cell: object,
                                         says: str) -> None:
    """A cell the record was written with (its digest matches) but that is not of its
    column's type: one line naming the file, the column and the line, never a figure."""
    frame = diagnostics_frame(PRESETS["natural"], n=12)
    frame[column] = frame[column].astype(object)
    frame.loc[3, column] = cell
    Record("diagnostics", {"n": 12, "norm": "linf"}, None, frame).save(tmp_path / "run")
    out = tmp_path / "figs"
    line = error_line(run("figures", tmp_path / "run", "--out", out))
    assert "diagnostics.csv" in line and repr(column) in line and "line 5" in line
    assert says in line and not out.exists()


def test_true_false_cells_are_read_as_bools(tmp_path: Path) -> None:
    from epsl.analysis.folders import check_table

    frame = pd.DataFrame({"index": [0, 1, 2], "correct": ["true", "False", "0"],
                          "eps_l": ["0.1", "inf", None]})
    checked = check_table(frame, "diagnostics", tmp_path / "diagnostics.csv")
    assert checked["correct"].tolist() == [True, False, False]
    assert checked["eps_l"].dtype.kind == "f" and np.isinf(checked["eps_l"][1])


# ------------------------------------------------------------------ row 7: landscape memory

def test_landscape_grid_beyond_the_memory_budget(model_files: dict[str, Path],
                                                 tmp_path: Path) -> None:
    out = tmp_path / "land"
    line = error_line(run("landscape", model_files["ckpt"], "--steps", 100000, "--out", out))
    assert "80,000,000,000 rows" in line and "TiB" in line and "--steps" in line
    line = error_line(run("landscape", model_files["ckpt"], "--steps", 2, "--images", 1,
                          "--memory", "1KiB", "--out", out))
    assert "too small for one grid point" in line and "--memory" in line
    assert not out.exists()


def test_landscape_in_small_chunks_is_the_same(model_files: dict[str, Path]) -> None:
    model, _ = checkpoint.load(model_files["ckpt"])
    data = load_split("digits", "test", limit=2)
    whole = loss_landscape(model, data.x, data.y, steps=9)
    chunked = loss_landscape(model, data.x, data.y, steps=9, memory="40KiB")  # 1 point a pass
    pd.testing.assert_frame_equal(whole, chunked, check_exact=False, rtol=1e-5)


# ------------------------------------------------------------------ row 7: long paths

def test_a_long_out_is_one_line(model_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / ("x" * 300)
    line = error_line(run("diagnose", model_files["ckpt"], "--limit", 3, "--out", out))
    assert "File name too long" in line and "choose a shorter path" in line
    line = error_line(run("info", tmp_path / ("y" * 300 + ".pt")))
    assert "File name too long" in line
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ row 9: unclear messages

def test_certify_with_nothing_correctly_classified(model_files: dict[str, Path],
                                                   tmp_path: Path) -> None:
    out = tmp_path / "cert"
    line = error_line(run("certify", model_files["ckpt"], "--data", model_files["wrong"],
                          "--out", out))
    assert "none of the 6 examples is correctly classified" in line
    assert "nothing to certify" in line and "--data" in line and "batch_size" not in line
    assert not out.exists()


class Pickled:
    """A class a checkpoint would have to import to be loaded."""


@pytest.mark.parametrize("kind", ["legacy-object", "plain-pickle", "not-torch"])
def test_info_on_a_pickle_never_suggests_unsafe_loading(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model.pt"
    if kind == "legacy-object":
        torch.save({"w": Pickled()}, path, _use_new_zipfile_serialization=False)
    elif kind == "plain-pickle":
        path.write_bytes(pickle.dumps({"w": [1, 2]}, protocol=4))
    else:
        path.write_bytes(b"not a pickle at all")
    line = error_line(run("info", path))
    assert "refused to load" in line and ".safetensors" in line and "state_dict" in line
    assert "weights_only" not in line and "trust" not in line
    if kind == "legacy-object":
        assert "Pickled" in line


def test_arch_that_does_not_fit_says_why_and_which(model_files: dict[str, Path],
                                                   tmp_path: Path) -> None:
    out = tmp_path / "d"
    line = error_line(run("diagnose", model_files["state_dict"], "--arch", "mlp",
                          "--dataset", "digits", "--limit", 3, "--out", out))
    assert "missing: layers.0.weight" in line and "unexpected: conv1.weight" in line
    assert "fc.weight is 10x128 in the file, 10x32 in the model" in line
    assert line.endswith("pass --arch small-cnn")
    line = error_line(run("diagnose", model_files["ckpt"], "--arch", "mlp", "--limit", 3,
                          "--out", out))
    assert "its metadata says it is 'small-cnn'" in line
    assert not out.exists()


def test_a_limit_beyond_the_split_is_refused_like_a_sample(model_files: dict[str, Path],
                                                           tmp_path: Path) -> None:
    out = tmp_path / "d"
    for option in ("--limit", "--sample"):
        line = error_line(run("diagnose", model_files["ckpt"], option, 100000, "--out", out))
        assert f"{option} 100000 is more than the 359 examples of the split" in line
        assert "pass at most 359" in line
    line = error_line(run("landscape", model_files["ckpt"], "--data", model_files["wrong"],
                          "--out", out))
    assert "--images 8 is more than the 6 examples" in line
    assert not out.exists()


def test_the_digits_study_asks_for_no_more_examples_than_there_are() -> None:
    """The bundled digits preset evaluates all of its test split without relying on a limit
    being cut to the split."""
    preset = load_preset("digits")
    n = len(load_split("digits", "test"))
    assert preset.limit is None or preset.limit <= n
    data = preset.data()
    assert len(load_split(data.dataset, "test", limit=data.limit, sample=data.sample)) == n
