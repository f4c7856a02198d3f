"""What epsl 0.2.0 called ``minimal`` (ε*) is ``eps_star`` today. A folder written by 0.2.0
(tests/data/v0.2.0/calibrate: ``epsl calibrate`` of a one-epoch small-cnn on the first 12
digits, ``--fmn-steps 10 --fab-steps 5``, saved by that release) is still read, the old command
still runs, and a preset's old ``[minimal]`` section is still understood."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from epsl.analysis import load_run
from epsl.attacks.eps_star import EpsStarResult
from epsl.cli.main import main
from epsl.errors import EpslError
from epsl.results.records import holds, load, reusable, stored_kind
from epsl.study.config import load_preset, preset_from_dict, preset_to_dict

OLD = Path(__file__).resolve().parent / "data" / "v0.2.0" / "calibrate"


def test_a_minimal_folder_is_read_as_eps_star() -> None:
    table = pd.read_csv(OLD / "minimal.csv")
    assert stored_kind(OLD, "eps_star").name == "minimal" and holds(OLD, "eps_star")
    result = load(OLD, "eps_star")
    assert result.kind == "eps_star" and result.table is not None
    pd.testing.assert_frame_equal(result.table, table)
    # its settings are under today's name, in the summary and in the config
    assert result.summary["eps_star"]["fmn_steps"] == 10 and "minimal" not in result.summary
    assert result.summary["config"]["eps_star"]["fab_steps"] == 5
    points = EpsStarResult.load(OLD)
    assert torch.equal(points.eps_star, torch.as_tensor(table["eps_star"].to_numpy().copy()))
    run = load_run(OLD)
    assert run.eps_star is not None and len(run.eps_star) == 12
    assert run.eps_star_summary["report_card"]["n"] == 12


def test_it_is_read_inside_a_compare_folder_and_its_figures_render(tmp_path: Path) -> None:
    """``epsl compare`` 0.2.0 kept ε* in ``OUT/<model>/minimal/``."""
    shutil.copytree(OLD, tmp_path / "natural" / "minimal")
    run = load_run(tmp_path / "natural")
    assert run.eps_star is not None and len(run.eps_star) == 12
    result = CliRunner().invoke(main, ["figures", str(tmp_path / "natural"),
                                       "--out", str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figs" / "eps_l_vs_eps_star.png").is_file()


def test_it_is_never_reused_and_todays_record_wins(tmp_path: Path) -> None:
    folder = shutil.copytree(OLD, tmp_path / "run")
    old = load(folder, "eps_star")
    assert old.provenance is not None
    assert reusable(folder, "eps_star", old.provenance) is None  # read, never reused
    # a folder holding both layouts is read in today's
    (folder / "eps_star.json").write_text(json.dumps({"schema": "epsl.eps_star",
                                                      "schema_version": 1, "n": 0}))
    (folder / "eps_star.csv").write_text("index,label,eps_star\n")
    assert stored_kind(folder, "eps_star").name == "eps_star"
    assert load(folder, "eps_star").summary["n"] == 0


def test_the_old_command_runs_and_says_what_it_became(digits_checkpoint: Path,
                                                      tmp_path: Path) -> None:
    args = [str(digits_checkpoint), "--limit", "6", "--fmn-steps", "5", "--fab-steps", "3"]
    old = CliRunner().invoke(main, ["calibrate", *args, "--out", str(tmp_path / "old")])
    new = CliRunner().invoke(main, ["eps-star", *args, "--out", str(tmp_path / "new")])
    assert old.exit_code == 0 == new.exit_code, old.output + new.output
    assert "'epsl calibrate' is now 'epsl eps-star'" in old.output
    assert "calibrate" not in CliRunner().invoke(main, ["--help"]).output
    assert (pd.read_csv(tmp_path / "old" / "eps_star.csv")
            .equals(pd.read_csv(tmp_path / "new" / "eps_star.csv")))


def test_a_preset_with_the_old_section_is_read() -> None:
    raw = preset_to_dict(load_preset("digits"))
    raw["minimal"] = {**raw.pop("eps_star"), "fmn_steps": 7}
    assert preset_from_dict(raw).eps_star.fmn_steps == 7
    raw["eps_star"] = raw["minimal"]
    with pytest.raises(EpslError, match=r"\[minimal\] is the former name of \[eps_star\]"):
        preset_from_dict(raw)
