"""``epsl diagnose``, ``activations``, ``landscape`` and ``eps-star`` through click's CliRunner."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import binomtest

from epsl.cli.main import main
from epsl.diagnostics import Diagnostics, diagnose, predicted_accuracy
from tests.files import snapshot
from tests.idx import write_fashion_mnist


def _run(*args: str) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_diagnose_writes_table_summary_and_tensors(digits_checkpoint: Path, tmp_path: Path,
                                                   digits_model: torch.nn.Module,
                                                   digits_test: object) -> None:
    out = tmp_path / "diag"
    result = _run("diagnose", digits_checkpoint, "--limit", "40", "--eps", "0.1",
                  "--eps", "8/255", "--chunk-size", "16", "--out", out)
    assert result.exit_code == 0, result.output
    assert "predicted accuracy" in result.output and "0.1000" in result.output
    frame = pd.read_csv(out / "diagnostics.csv")
    assert len(frame) == 40 and frame["index"].tolist() == list(range(40))
    summary = json.loads((out / "diagnostics.json").read_text())
    origin = summary["provenance"]
    assert summary["schema"] == "epsl.diagnostics" and summary["schema_version"] == 2
    assert summary["n"] == 40 and summary["eps"] == [0.1, 8 / 255]
    k = round(summary["predicted_accuracy"][repr(0.1)] * 40)
    exact = binomtest(k, 40).proportion_ci(method="exact")
    assert summary["predicted_accuracy_interval"][repr(0.1)] == pytest.approx(
        [exact.low, exact.high])
    assert f"[{100 * exact.low:.1f}, {100 * exact.high:.1f}]" in result.output
    assert origin["model"]["arch"] == "small-cnn"
    assert origin["model"]["train_config"] == {"defense": {}}
    assert origin["data"] == {"dataset": "digits", "split": "test",
                              "source": origin["data"]["source"], "n": 40,
                              "sha256": origin["data"]["sha256"]}
    assert summary["config"]["data"]["limit"] == 40 and summary["config"]["chunk_size"] == 16
    assert origin["checkpoint"] == str(digits_checkpoint) and "epsl_version" in origin
    assert origin["checkpoint_sha256"] == hashlib.sha256(digits_checkpoint.read_bytes()).hexdigest()
    assert origin["command"] == shlex.join(["epsl", "diagnose", str(digits_checkpoint), "--limit",
                                             "40", "--eps", "0.1", "--eps", "8/255",
                                             "--chunk-size", "16", "--out", str(out)])
    # the numbers are the library's on the same examples
    data = digits_test.subset(40)  # type: ignore[attr-defined]
    reference = diagnose(digits_model, data.x, data.y)
    np.testing.assert_allclose(frame["eps_l"], reference.eps_l.numpy(), rtol=1e-5, atol=1e-7)
    assert summary["clean_accuracy"] == pytest.approx(reference.clean_accuracy)
    assert summary["predicted_accuracy"][repr(0.1)] == predicted_accuracy(reference.eps_l, 0.1)
    loaded = Diagnostics.load(out)
    assert torch.equal(loaded.rival, torch.tensor(frame["rival"].to_numpy().copy()))


def test_diagnose_parquet_and_overwrite(digits_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "diag"
    args = ["diagnose", digits_checkpoint, "--limit", "5", "--eps", "0.1", "--format",
            "parquet", "--out", out]
    assert _run(*args).exit_code == 0
    assert len(pd.read_parquet(out / "diagnostics.parquet")) == 5
    before = snapshot(out)
    again = _run(*args)
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert snapshot(out) == before
    assert _run(*args, "--overwrite").exit_code == 0


#: (command, its bad options, what the one-line error says), by test id
BAD_INPUT = {
    "diagnose-unknown-dataset": ("diagnose", ["--dataset", "imagenet"], "imagenet"),
    "diagnose-eps-zero": ("diagnose", ["--eps", "0"], "must be >"),
    "diagnose-eps-above-one": ("diagnose", ["--eps", "1.5"], "in (0, 1] for the linf norm"),
    "diagnose-eps-negative": ("diagnose", ["--eps", "-0.1"], "must be >"),
    "diagnose-eps-text": ("diagnose", ["--eps", "abc"], "not a number"),
    "diagnose-limit-zero": ("diagnose", ["--limit", "0"], "--limit"),
    "diagnose-shape-mismatch-idx": (
        "diagnose", ["--dataset", "fashion-mnist", "--data-root", "{data_root}", "--limit", "3"],
        "expects inputs of shape (1, 8, 8)"),
    "diagnose-shape-mismatch-npz": ("diagnose", ["--data", "{npz}"],
                                    "expects inputs of shape (1, 8, 8)"),
    "diagnose-chunk-zero": ("diagnose", ["--chunk-size", "0"], "chunk-size"),
    "landscape-range-in-0-255": ("landscape", ["--range", "10"], "10/255"),
    "landscape-range-zero": ("landscape", ["--range", "0"], "must be >"),
    "landscape-steps-one": ("landscape", ["--steps", "1"], "steps"),
    "landscape-unknown-direction": ("landscape", ["--direction", "up"], "direction"),
    "landscape-images-zero": ("landscape", ["--images", "0"], "images"),
}


@pytest.mark.parametrize("command, args, message", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_one_line_and_writes_nothing(digits_checkpoint: Path, tmp_path: Path,
                                                  command: str, args: list[str],
                                                  message: str) -> None:
    out = tmp_path / "out"
    write_fashion_mnist(tmp_path / "data")  # 28x28 IDX files: the wrong shape for digits
    np.savez(tmp_path / "other.npz", x=np.zeros((4, 1, 12, 12), np.float32), y=np.arange(4))
    args = [a.format(data_root=tmp_path / "data", npz=tmp_path / "other.npz") for a in args]
    result = _run(command, digits_checkpoint, *args, "--out", out)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_missing_checkpoint_is_an_error(tmp_path: Path) -> None:
    result = _run("diagnose", tmp_path / "none.safetensors", "--out", tmp_path / "o")
    assert result.exit_code != 0 and "no such checkpoint" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_activations_command(digits_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "act"
    result = _run("activations", digits_checkpoint, "--limit", "30", "--out", out)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "activations.csv")
    assert list(frame.columns) == ["layer", "unit", "activation_sum", "activation_abs_sum",
                                   "active_count"]
    summary = json.loads((out / "activations.json").read_text())
    assert summary["n"] == 30 and summary["n_features"] == 128
    penultimate = frame[frame.layer == "penultimate"]
    assert summary["n_inactive"] == int((penultimate.active_count == 0).sum())
    assert (penultimate.activation_sum >= 0).all()  # ReLU features
    assert f"never active {summary['n_inactive']}" in result.output
    before = snapshot(out)
    refused = _run("activations", digits_checkpoint, "--limit", "3", "--out", out)
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    assert snapshot(out) == before


def test_landscape_command(digits_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "land"
    result = _run("landscape", digits_checkpoint, "--images", "2", "--direction", "adversarial",
                  "--range", "8/255", "--steps", "5", "--out", out)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "landscape.csv")
    assert len(frame) == 2 * 25 and set(frame["image"]) == {0, 1}
    assert frame["eps1"].max() == pytest.approx(8 / 255)
    summary = json.loads((out / "landscape.json").read_text())
    assert summary["config"]["direction"] == "adversarial" and summary["config"]["steps"] == 5
    assert len(summary["clean_loss"]) == 2


def test_eps_star_writes_eps_star_and_the_report_card(digits_checkpoint: Path,
                                                       tmp_path: Path) -> None:
    """epsl eps-star: eps* per example beside eps_L, the report card printed and saved, the
    verified points kept; a rerun without --overwrite changes nothing."""
    from epsl.attacks.eps_star import EpsStarResult
    from epsl.results.records import load

    out = tmp_path / "calib"
    args = ["eps-star", str(digits_checkpoint), "--limit", "30", "--eps", "0.1",
            "--fmn-steps", "20", "--fab-steps", "10", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["eps_star.csv", "eps_star.json",
                                                     "eps_star.safetensors"]
    record = load(out, "eps_star")
    table = record.table
    assert table is not None and len(table) == 30
    card = record.summary["report_card"]
    assert "Spearman rho(eps_L, eps*)" in result.output
    assert f"{card['spearman']:.3f} [{card['spearman_lo']:.3f}" in result.output
    # eps_L in the table is the diagnose command's, example by example
    diag = CliRunner().invoke(main, ["diagnose", str(digits_checkpoint), "--limit", "30",
                                     "--out", str(tmp_path / "diag")])
    assert diag.exit_code == 0, diag.output
    eps_l = pd.read_csv(tmp_path / "diag" / "diagnostics.csv")["eps_l"]
    assert np.allclose(table["eps_l"], eps_l, rtol=1e-6)
    # the accuracy by eps* at 0.1 is the share of eps* > 0.1, printed with its interval
    share = float((table["eps_star"] > 0.1).mean())
    assert record.summary["eps_star_accuracy"][repr(0.1)] == pytest.approx(share)
    assert f"{share:.1%} [" in result.output
    points = EpsStarResult.load(out)
    assert torch.equal(points.eps_star, torch.as_tensor(table["eps_star"].to_numpy()))
    before = snapshot(out)
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert snapshot(out) == before
