"""``--norm`` on diagnose, eps-star, audit and compare: the record says the norm, the numbers are
the library's in that norm, reuse never serves one norm for another, and bad radii are one line
with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from epsl.cli.main import main
from epsl.diagnostics import diagnose


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_diagnose_l2_is_the_library_l2(digits_checkpoint, digits_model, digits_test, tmp_path):
    out = tmp_path / "d"
    result = run("diagnose", digits_checkpoint, "--norm", "l2", "--limit", 20, "--eps", 0.5,
                 "--out", out)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "diagnostics.csv")
    record = json.loads((out / "diagnostics.json").read_text())
    assert record["norm"] == "l2" and record["provenance"]["settings"] == {"norm": "l2"}
    expected = diagnose(digits_model, digits_test.x[:20], digits_test.y[:20], norm="l2")
    assert np.allclose(table["eps_l"], expected.eps_l.numpy(), rtol=1e-5)
    assert "grad_gap_l2" in table.columns and "grad_gap_l1" not in table.columns
    share = float((expected.eps_l > 0.5).float().mean())
    assert record["predicted_accuracy"][repr(0.5)] == pytest.approx(share)


@pytest.mark.parametrize("args, message", [
    (["diagnose", "--norm", "l2", "--eps", "8.5"], "exceeds the whole [0, 1] box in l2"),
    (["diagnose", "--eps", "1.5"], "in (0, 1] for the linf norm"),
    (["diagnose", "--norm", "l1", "--eps", "65"], "exceeds the whole [0, 1] box in l1"),
    (["eps-star", "--norm", "l2", "--eps", "9"], "exceeds the whole [0, 1] box in l2"),
    (["audit", "--norm", "l2", "--eps", "9"], "exceeds the whole [0, 1] box in l2"),
    (["audit", "--eps", "2"], "in (0, 1] for the linf norm"),
    (["attack", "--attack", "apgd", "--norm", "l1", "--eps", "2"], "apgd supports norm"),
    (["diagnose", "--norm", "l3"], "'l3' is not one of"),
])
def test_bad_radii_are_one_line_and_write_nothing(digits_checkpoint, tmp_path, args, message):
    out = tmp_path / "o"
    result = run(args[0], digits_checkpoint, *args[1:], "--limit", 4, "--out", out)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_compare_in_l2_is_l2_throughout_and_never_reuses_linf(digits_checkpoint, tmp_path):
    out = tmp_path / "cmp"
    common = [digits_checkpoint, "--limit", 24, "--fmn-steps", 10, "--fab-steps", 5,
              "--ddn-steps", 10, "--pgd-steps", 3, "--no-figures", "--out", out]
    first = run("compare", *common, "--eps", 0.1)
    assert first.exit_code == 0, first.output
    model = out / Path(digits_checkpoint).stem
    assert json.loads((model / "diagnostics.json").read_text())["norm"] == "linf"
    second = run("compare", *common, "--eps", 0.5, "--norm", "l2", "--overwrite")
    assert second.exit_code == 0, second.output
    assert "eps_L diagnostics (l2)" in second.output  # recomputed, not reused from l_inf
    assert json.loads((model / "diagnostics.json").read_text())["norm"] == "l2"
    eps_star = json.loads((model / "eps_star" / "eps_star.json").read_text())
    assert eps_star["norm"] == "l2" and eps_star["eps_star"]["attacks"] == ["fmn", "ddn", "fab"]
    attacks = pd.read_csv(model / "attacks" / "attack.csv")
    assert set(attacks["norm"]) == {"l2"} and set(attacks["eps"]) == {0.5}
    record = json.loads((out / "compare.json").read_text())
    assert record["config"]["norm"] == "l2"
