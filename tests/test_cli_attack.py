"""``epsl attack`` and ``epsl audit`` through click's CliRunner: files written, summaries
consistent with the per-example table, one-line errors on bad input and nothing half-written."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import binomtest

from epsl.attacks import pgd
from epsl.cli.main import main
from epsl.models import checkpoint, create_model
from tests.files import snapshot


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_attack_sweep_writes_table_and_summary(digits_checkpoint, digits_model, digits_test,
                                               tmp_path):
    out = tmp_path / "pgd"
    result = run("attack", digits_checkpoint, "--dataset", "digits", "--limit", 30,
                 "--eps", "0.05", "--eps", "0.1", "--steps", 5, "--steps", 10,
                 "--out", out)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "attack.csv")
    summary = json.loads((out / "attack.json").read_text())
    assert len(frame) == 4 * 30 and set(frame["eps"]) == {0.05, 0.1}
    assert len(summary["settings"]) == 4
    assert summary["provenance"]["data"]["n"] == 30
    for setting in summary["settings"]:
        rows = frame[(frame.eps == setting["eps"]) & (frame.steps == setting["steps"])]
        assert setting["accuracy"] == pytest.approx(rows["correct"].mean())
        assert setting["step_size"] == pytest.approx(2.5 * setting["eps"] / setting["steps"])
    # the CLI's numbers are the library's numbers
    x, y = digits_test.x[:30], digits_test.y[:30]
    direct = pgd(digits_model, x, y, eps=0.1, step_size=0.025, steps=10, seed=0)
    rows = frame[(frame.eps == 0.1) & (frame.steps == 10)]
    assert rows["correct"].to_numpy().tolist() == direct.correct.tolist()
    assert "accuracy" in result.output and "0.1000" in result.output
    # every accuracy printed and saved carries its 95% Clopper-Pearson interval (scipy)
    for setting in summary["settings"]:
        k = round(setting["accuracy"] * setting["n"])
        exact = binomtest(k, setting["n"]).proportion_ci(method="exact")
        assert (setting["lo"], setting["hi"]) == pytest.approx((exact.low, exact.high))
        assert (f"{setting['accuracy']:.1%} [{100 * exact.low:.1f}, {100 * exact.high:.1f}]"
                in result.output)


def test_fgsm_cw_and_fraction_eps(digits_checkpoint, tmp_path):
    result = run("attack", digits_checkpoint, "--limit", 20, "--attack", "fgsm", "--loss", "cw",
                 "--eps", "8/255", "--out", tmp_path / "f")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "f" / "attack.csv")
    assert set(frame["loss_name"]) == {"cw"} and frame["eps"].iloc[0] == pytest.approx(8 / 255)


def test_transfer_attack_records_its_source(digits_checkpoint, tmp_path):
    result = run("attack", digits_checkpoint, "--limit", 20, "--eps", "0.1", "--steps", 5,
                 "--source", digits_checkpoint, "--out", tmp_path / "t")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "t" / "attack.csv")
    assert (frame["source"] == str(digits_checkpoint)).all()


@pytest.mark.parametrize("args, message", [
    (["--eps", "0"], "0"),
    (["--eps", "1.5"], "1.5"),
    (["--eps", "0.1", "--steps", "0"], "0"),
    (["--eps", "0.1", "--attack", "deepfool"], "deepfool"),
    (["--eps", "0.1", "--attack", "fgsm", "--steps", "5"], "fgsm takes no --steps"),
    (["--eps", "0.1", "--attack", "apgd", "--no-random-start"], "apgd takes no --no-random-start"),
    (["--eps", "0.1", "--limit", "0"], "--limit"),
], ids=["eps-zero", "eps-above-one", "no-steps", "unknown-attack", "fgsm-steps",
        "apgd-random-start", "limit-zero"])
def test_bad_input_is_one_line_and_writes_nothing(digits_checkpoint, tmp_path, args, message):
    out = tmp_path / "bad"
    result = CliRunner().invoke(main, ["attack", str(digits_checkpoint), *args, "--out",
                                       str(out)])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (out / "attack.csv").exists() and not (out / "attack.json").exists()


def test_source_with_other_input_shape_is_refused(digits_checkpoint, tmp_path):
    kwargs = checkpoint.model_kwargs_for("digits") | {"input_size": 16}
    torch.manual_seed(0)
    other = create_model("small-cnn", **kwargs).eval()
    path = tmp_path / "other.safetensors"
    checkpoint.save(path, other, {"arch": "small-cnn", "arch_kwargs": kwargs,
                                  "dataset": "digits", "input_shape": [1, 16, 16],
                                  "num_classes": 10})
    out = tmp_path / "t"
    result = run("attack", digits_checkpoint, "--limit", 5, "--eps", "0.1", "--source", path,
                 "--out", out)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "shape" in result.output
    assert not out.exists() or not any(out.iterdir())


def test_existing_results_need_overwrite(digits_checkpoint, tmp_path):
    args = ["attack", digits_checkpoint, "--limit", 5, "--attack", "fgsm", "--eps", "0.1",
            "--out", tmp_path]
    assert run(*args).exit_code == 0
    before = snapshot(tmp_path)
    again = run(*args)
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert snapshot(tmp_path) == before
    assert run(*args, "--overwrite").exit_code == 0


def test_audit_writes_csv_json_and_prints_a_verdict(digits_checkpoint, tmp_path):
    out = tmp_path / "audit"
    result = run("audit", digits_checkpoint, "--eps", "0.1", "--limit", 16, "--quick",
                 "--skip-expensive", "--pgd-steps", 5, "--strong-steps", 10,
                 "--strong-restarts", 2, "--unbounded-steps", 20,
                 "--source", digits_checkpoint, "--out", out)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "audit.json").read_text())
    table = pd.read_csv(out / "audit.csv")
    assert len(table) == 16 and {"robust", "broken_by", "transfer"} <= set(table.columns)
    assert record["robust_accuracy"] == pytest.approx(table["robust"].mean())
    assert record["provenance"]["checkpoint"] == str(digits_checkpoint)
    assert record["provenance"]["source"]["checkpoint"] == str(digits_checkpoint)
    assert record["config"]["skip_expensive"] is True
    assert record["config"]["budgets"]["strong_steps"] == 10 and "pgd10-xent" in table.columns
    assert "verdict:" in result.output and "robust accuracy" in result.output


def test_audit_bad_eps_is_refused(digits_checkpoint, tmp_path):
    result = CliRunner().invoke(main, ["audit", str(digits_checkpoint), "--eps", "2",
                                       "--out", str(tmp_path / "a")])
    assert result.exit_code != 0 and not (tmp_path / "a").exists()
