"""A result folder written by epsl 0.1.0 (tests/data/v0.1.0/run: ``DiagnoseConfig`` and an FGSM
``AttackRunConfig`` of a seeded small-cnn on the first 12 digits, saved by that release's
``run_diagnose`` and ``run_attack``) is read by this one, and never reused as its own."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from epsl.analysis import load_run
from epsl.cli.main import main
from epsl.results.records import Provenance, digests, kind, load, reusable

OLD = Path(__file__).resolve().parent / "data" / "v0.1.0" / "run"


def test_a_folder_of_the_previous_release_is_read() -> None:
    run = load_run(OLD)
    diagnostics = pd.read_csv(OLD / "diagnostics.csv")
    assert run.diagnostics is not None and len(run.diagnostics) == 12 == len(diagnostics)
    pd.testing.assert_series_equal(run.diagnostics["eps_l"], diagnostics["eps_l"])
    assert run.attack is not None and set(run.attack["attack"]) == {"fgsm"}
    attack = load(OLD / "attacks", "attack")
    assert attack.summary["attack"] == "fgsm" and len(attack.table) == 12
    assert attack.provenance is not None and attack.provenance.epsl_version == "0.1.0"


def test_its_figures_render(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["figures", str(OLD), "--out", str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "figs").glob("*.png"))


def test_it_is_never_reused_as_this_releases(tmp_path: Path) -> None:
    """Its record pins no file digests and names another release: read, never reused."""
    folder = shutil.copytree(OLD, tmp_path / "run")
    raw = json.loads((folder / "diagnostics.json").read_text())
    same = Provenance.from_dict(raw["provenance"])
    assert reusable(folder, "diagnostics", same) is None  # no digests: recompute
    raw["files"] = {}
    (folder / "diagnostics.json").write_text(json.dumps(raw))
    assert reusable(folder, "diagnostics", same) is None  # its files are not pinned
    raw["files"] = digests(folder, kind("diagnostics"))
    (folder / "diagnostics.json").write_text(json.dumps(raw))
    assert reusable(folder, "diagnostics", same) is not None  # pinned, asked as 0.1.0 asks
    assert reusable(folder, "diagnostics", replace(same, epsl_version="0.2.0")) is None
