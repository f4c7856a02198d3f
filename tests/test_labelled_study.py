"""``epsl reproduce --labelled n``: a study that audits a seeded random sample of its examples
(with ε* and CROWN on the same ones) and estimates every model's robust accuracy on all of
them at ε_L's cost. The intervals are ppi_py's on the tables it writes, the cheap attack is the
comparison's own PGD-20 (CW) rows, equal to running it again, and nothing is recomputed on a
second run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from epsl.cli.main import main
from epsl.data import sample_indices
from epsl.study.config import load_preset, override, preset_from_dict
from tests.files import run_study

LABELLED = """
name = "tiny-labelled"
dataset = "digits"
arch = "small-cnn"
eps = 0.1
limit = 40

[train]
steps = 6
batch_size = 128

[attacks]
pgd_steps = 20
transfer_from = "natural"

[audit]
labelled = 12
quick = true

[eps_star]
fmn_steps = 10
fab_steps = 5

[certify]
enabled = true
steps = 3

[landscape]
images = 2
steps = 3

[[models]]
name = "natural"

[[models]]
name = "lsq"
logit_squeeze = 2.0
noise_sigma = 0.3
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    return run_study(tmp_path_factory.mktemp("labelled"), LABELLED, "labelled")


def test_the_sample_is_audited_and_every_image_estimated(study: tuple[Path, Path, str]) -> None:
    ppi_py = pytest.importorskip("ppi_py")
    _, out, output = study
    estimates = pd.read_csv(out / "estimates.csv")
    assert estimates["model"].tolist() == ["natural", "lsq"]
    for name in ("natural", "lsq"):
        run = out / "runs" / name
        # the sample's audit and eps* live with the estimate, never as the run's own
        assert not (run / "audit").exists() and not (run / "eps_star").exists()
        table = pd.read_csv(run / "estimate" / "estimate.csv")
        assert len(table) == 40
        mask = table["labelled"].to_numpy()
        assert np.flatnonzero(mask).tolist() == sample_indices(40, 12, 0).tolist()
        audit = pd.read_csv(run / "estimate" / "labelled" / "n12-seed0" / "audit-0.1" /
                            "audit.csv")
        assert table.loc[mask, "robust"].astype(bool).tolist() == audit["robust"].tolist()
        y, yhat = table["robust"].to_numpy()[mask], table["prediction"].to_numpy()
        low, high = ppi_py.ppi_mean_ci(y, yhat[mask], yhat[~mask], alpha=0.05)
        row = estimates[estimates["model"] == name].iloc[0]
        assert (row["ppi_lo"], row["ppi_hi"]) == pytest.approx((low[0], high[0]), abs=1e-12)
        assert row["images"] == 40 and row["labelled"] == 12 and row["draws"] == 0
        assert np.isnan(row["audit_robust"])  # no full audit to compare against
        # eps_cert beside the floor, on the labelled images only
        assert table.loc[~mask, "eps_cert"].isna().all()
        assert (table.loc[mask, "eps_cert"] <= table.loc[mask, "eps_star"] + 1e-12).all()
    comparison = pd.read_csv(out / "comparison.csv")
    assert "audit_worst" not in comparison or comparison["audit_worst"].isna().all()
    headline = (out / "headline.md").read_text()
    assert "The full audit ran on 12 of the 40 images, chosen at random (seed 0)" in headline
    assert "lsq − natural" in headline and (out / "estimate_pairs.csv").is_file()
    assert "on 12 examples drawn at random" not in headline  # a train preset: no such note
    assert (out / "figures" / "estimates.png").is_file()
    assert "PPI++" in output


def test_the_cheap_attack_is_the_comparisons_pgd(study: tuple[Path, Path, str]) -> None:
    """The study's PGD-20 (CW) is the cheap attack: its rows are reused, and they equal the
    cheap attack run again on the same model and images."""
    from epsl.runs.context import DataConfig
    from epsl.runs.estimate import CheapAttack, EstimateConfig, cheap_attack

    _, out, output = study
    assert "cheap attack" not in output
    table = pd.read_csv(out / "runs" / "natural" / "estimate" / "estimate.csv")
    data = DataConfig(checkpoint=str(out / "models" / "natural.safetensors"), dataset="digits",
                      limit=40)
    again = cheap_attack(data.prepare(), 0.1, EstimateConfig(
        data=data, eps=(0.1,), labelled=12, attack=CheapAttack(seed=0)))
    assert np.array_equal(again["pgd_robust"].to_numpy(), table["pgd_robust"].to_numpy())
    assert np.allclose(again["pgd_margin"].to_numpy(), table["pgd_margin"].to_numpy(),
                       rtol=1e-5, atol=1e-5)


def test_a_second_run_reuses_everything(study: tuple[Path, Path, str]) -> None:
    preset, out, _ = study
    before = (out / "estimates.csv").read_bytes()
    result = CliRunner().invoke(main, ["reproduce", "--preset", str(preset), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert " 0 stages run" in result.output
    assert (out / "estimates.csv").read_bytes() == before


def test_labelled_replaces_the_audit_limit_and_round_trips() -> None:
    preset = override(load_preset("zoo-cifar10-linf"), **{"audit.labelled": 1000,
                                                           "audit.labelled_seed": 3})
    assert preset.audit.labelled == 1000 and preset.audit.limit is None
    from epsl.study.config import preset_to_dict

    back = preset_from_dict(json.loads(json.dumps(preset_to_dict(preset))))
    assert back.audit == preset.audit


@pytest.mark.parametrize(("args", "message"), [
    (["--labelled", "40"], "a labelled sample of 40 is not smaller than the 40 examples"),
    (["--labelled", "1"], "Invalid value for '--labelled'"),
])
def test_bad_labelled_is_one_line_and_nothing_is_written(tmp_path: Path, args: list[str],
                                                        message: str) -> None:
    preset = tmp_path / "labelled.toml"
    preset.write_text(LABELLED)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["reproduce", "--preset", str(preset), *args,
                                       "--out", str(out)])
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(("text", "message"), [
    ("labelled = 2\npredictor = \"combined\"", "labelled must be at least 3"),
    ("labelled = 10\nalpha = 1.5", "alpha must be in (0, 1)"),
    ("labelled = 10\npredictor = \"oracle\"", "unknown [audit] predictor 'oracle'"),
])
def test_bad_labelled_presets(tmp_path: Path, text: str, message: str) -> None:
    from epsl.errors import EpslError

    path = tmp_path / "bad.toml"
    path.write_text(LABELLED.replace("labelled = 12", text))
    with pytest.raises(EpslError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        load_preset(str(path))


def test_the_labelled_audit_transfers_from_the_source(study: tuple[Path, Path, str]) -> None:
    """The sample's audit is the study's: lsq's transfers natural's adversarial examples,
    natural's (the source itself) none."""
    _, out, _ = study
    found = {}
    for name in ("natural", "lsq"):
        record = json.loads((out / "runs" / name / "estimate" / "labelled" / "n12-seed0" /
                             "audit-0.1" / "audit.json").read_text())
        found[name] = record["provenance"]["source"]
    assert found["natural"] is None
    assert found["lsq"] is not None and "natural.safetensors" in json.dumps(found["lsq"])


def test_switching_the_sample_off_leaves_no_estimate_of_it(study: tuple[Path, Path, str],
                                                           tmp_path: Path) -> None:
    """The same folder, then the same preset without ``labelled``: the full audit's section
    replaces the sample's, whose estimates, pairs and headline are gone."""
    import shutil

    from epsl.results.records import holds

    preset, out, _ = study
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    plain = tmp_path / "plain.toml"
    plain.write_text(preset.read_text().replace("labelled = 12\n", "limit = 20\n"))
    result = CliRunner().invoke(main, ["reproduce", "--preset", str(plain), "--out", str(copy)])
    assert result.exit_code == 0, result.output
    assert not (copy / "estimate_pairs.csv").exists()
    for name in ("natural", "lsq"):
        assert not holds(copy / "runs" / name / "estimate", "estimate")
        assert (copy / "runs" / name / "audit" / "audit.csv").is_file()
    headline = (copy / "headline.md").read_text()
    assert "The full audit ran on 12" not in headline
    estimates = pd.read_csv(copy / "estimates.csv")
    assert (estimates["draws"] == 1000).all() and (estimates["images"] == 20).all()
