"""``epsl estimate`` end to end on a small digits model: the interval is ppi_py's on the table it
writes, the labelled images are the seeded draw, the truth is the audit's, results are reused,
and bad input is one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from epsl.cli.main import main
from epsl.data import sample_indices

FAST = ["--limit", "40", "--labelled", "14", "--quick-audit", "--fmn-steps", "5",
        "--fab-steps", "3", "--pgd-steps", "5"]


@pytest.fixture(scope="module")
def estimated(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, CliRunner]:
    out = tmp_path_factory.mktemp("estimate") / "est"
    result = CliRunner().invoke(main, ["estimate", str(digits_checkpoint), "--eps", "0.08",
                                       "--eps", "0.12", "--eps", "0.5", *FAST, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result


def test_it_writes_one_row_per_image_and_eps(estimated: tuple[Path, CliRunner]) -> None:
    out, _ = estimated
    table = pd.read_csv(out / "estimate.csv")
    assert len(table) == 120 and sorted(set(table["eps"])) == [0.08, 0.12, 0.5]
    for column in ("index", "eps_l", "eq4_robust", "pgd_robust", "pgd_margin", "prediction",
                   "labelled", "robust", "eps_star", "eps_floor"):
        assert column in table, column
    labelled = table[table["eps"] == 0.08]["labelled"].to_numpy()
    assert np.flatnonzero(labelled).tolist() == sample_indices(40, 14, 0).tolist()
    assert table.loc[~table["labelled"], "robust"].isna().all()
    assert table.loc[table["labelled"], "robust"].isin([0, 1]).all()
    # Eq. 4's prediction is eps_L > eps, the pgd predictor the cheap attack's survival
    assert (table["eq4_robust"] == (table["eps_l"] > table["eps"])).all()
    assert (table["prediction"] == table["pgd_robust"]).all()


def test_the_interval_is_ppi_pys_on_that_table(estimated: tuple[Path, CliRunner]) -> None:
    ppi_py = pytest.importorskip("ppi_py")
    out, result = estimated
    table = pd.read_csv(out / "estimate.csv")
    record = json.loads((out / "estimate.json").read_text())
    for eps in (0.08, 0.12):
        rows = table[table["eps"] == eps]
        mask = rows["labelled"].to_numpy()
        y, yhat = rows["robust"].to_numpy()[mask], rows["prediction"].to_numpy()
        low, high = ppi_py.ppi_mean_ci(y, yhat[mask], yhat[~mask], alpha=0.05)
        point = ppi_py.ppi_mean_pointestimate(y, yhat[mask], yhat[~mask])
        found = record["results"][repr(eps)]
        assert found["robust_accuracy"]["interval"] == pytest.approx([low[0], high[0]],
                                                                     abs=1e-12)
        assert found["robust_accuracy"]["estimate"] == pytest.approx(point[0], abs=1e-12)
        assert found["classical"]["estimate"] == pytest.approx(y.mean())
        assert f"{point[0]:.1%}" in result.output


def test_an_eps_with_no_spread_gets_the_exact_interval(estimated: tuple[Path, CliRunner]
                                                       ) -> None:
    """At eps=0.5 every audited image is broken: no prediction-powered interval there, the
    audited images' exact one instead, and the other radii keep theirs."""
    out, result = estimated
    record = json.loads((out / "estimate.json").read_text())
    found = record["results"]["0.5"]
    assert "no spread" in found["refused"] and found["effective_labelled"] is None
    assert found["robust_accuracy"]["estimate"] == 0.0
    assert found["robust_accuracy"]["interval"] == pytest.approx([0.0, 1 - 0.025 ** (1 / 14)])
    assert "refused" not in record["results"]["0.08"]
    assert "eps=0.5 (linf): no prediction-powered interval" in result.output


def test_the_truth_is_the_labelled_audit_and_is_reused(estimated: tuple[Path, CliRunner],
                                                        digits_checkpoint: Path) -> None:
    out, _ = estimated
    table = pd.read_csv(out / "estimate.csv")
    audit = pd.read_csv(out / "labelled" / "n14-seed0" / "audit-0.08" / "audit.csv")
    rows = table[(table["eps"] == 0.08) & table["labelled"]]
    assert rows["robust"].astype(bool).tolist() == audit["robust"].tolist()
    # the audit's rows are the labelled images in order (its index counts within the sample)
    assert rows["index"].tolist() == sample_indices(40, 14, 0).tolist()
    assert audit["index"].tolist() == list(range(14))
    again = CliRunner().invoke(main, ["estimate", str(digits_checkpoint), "--eps", "0.08",
                                      "--eps", "0.12", "--eps", "0.5", *FAST, "--out", str(out),
                                      "--overwrite"])
    assert again.exit_code == 0, again.output
    assert "audit at" not in again.output and "eps_L diagnostics" not in again.output
    assert pd.read_csv(out / "estimate.csv").equals(table)


@pytest.mark.parametrize(("args", "message"), [
    (["--labelled", "40"], "--labelled 40 is not fewer than the 40 images"),
    (["--labelled", "1"], "Invalid value for '--labelled'"),
    (["--alpha", "1.5"], "Invalid value for '--alpha'"),
])
def test_bad_input_is_one_line_and_nothing_is_written(digits_checkpoint: Path, tmp_path: Path,
                                                      args: list[str], message: str) -> None:
    out = tmp_path / "est"
    result = CliRunner().invoke(main, ["estimate", str(digits_checkpoint), "--eps", "0.1",
                                       "--limit", "40", "--labelled", "10", *args,
                                       "--out", str(out)])
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_compare_labels_the_same_images_for_every_model(digits_checkpoint: Path,
                                                         digits_train: object,
                                                         tmp_path: Path) -> None:
    """``compare --labelled``: one draw for every model; each pair's difference is ppi_py's
    vector mean of the differences."""
    ppi_py = pytest.importorskip("ppi_py")
    from epsl.models import checkpoint
    from tests.conftest import quick_train

    other = tmp_path / "weak.safetensors"
    checkpoint.save(other, quick_train(digits_train, epochs=1, seed=3), {  # type: ignore[arg-type]
        "arch": "small-cnn", "arch_kwargs": checkpoint.model_kwargs_for("digits"),
        "dataset": "digits", "input_shape": [1, 8, 8], "num_classes": 10,
        "normalization": {"mean": [0.3], "std": [0.4]}, "train_config": {"defense": {}}})
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, [
        "compare", str(digits_checkpoint), str(other), "--eps", "0.08", "--limit", "40",
        "--labelled", "14", "--no-min-norm", "--pgd-steps", "5", "--no-figures",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    tables = {name: pd.read_csv(out / name / "estimate" / "estimate.csv")
              for name in ("natural", "weak")}
    mask = tables["natural"]["labelled"].to_numpy()
    assert (tables["weak"]["labelled"].to_numpy() == mask).all()
    y = (tables["weak"]["robust"] - tables["natural"]["robust"]).to_numpy()[mask]
    yhat = (tables["weak"]["prediction"] - tables["natural"]["prediction"]).to_numpy()
    low, high = ppi_py.ppi_mean_ci(y, yhat[mask], yhat[~mask], alpha=0.05)
    pairs = pd.read_csv(out / "estimate_pairs.csv")
    assert pairs[["model", "against"]].values.tolist() == [["weak", "natural"]]
    assert pairs[["low", "high"]].to_numpy()[0] == pytest.approx([low[0], high[0]], abs=1e-12)
    assert "weak - natural" in result.output


def test_eps_cert_is_set_beside_the_floor(estimated: tuple[Path, CliRunner],
                                          digits_checkpoint: Path, digits_test: object) -> None:
    """``--certify crown``: ε_cert of the labelled images is CROWN's bisection on [0, ε*] of
    those images (computed here again from the library), never above ε*, and the summary
    counts the images whose floor it proves from the table itself; the run reuses the draw's
    ε* and audits."""
    from epsl.certify.radius import CertifyOptions, certify
    from epsl.models.checkpoint import load

    out, _ = estimated
    result = CliRunner().invoke(main, ["estimate", str(digits_checkpoint), "--eps", "0.08",
                                       "--eps", "0.12", "--eps", "0.5", *FAST, "--certify",
                                       "crown", "--alpha", "0.2", "--out", str(out),
                                       "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "audit at" not in result.output and "eps_star" not in result.output
    table = pd.read_csv(out / "estimate.csv")
    rows = table[(table["eps"] == 0.08) & table["labelled"]]
    assert table.loc[~table["labelled"], "eps_cert"].isna().all()
    cert, star = rows["eps_cert"].to_numpy(), rows["eps_star"].to_numpy()
    assert (cert <= star + 1e-12).all() and (cert > 0).any()
    model, _ = load(digits_checkpoint)
    index = rows["index"].to_numpy()
    again = certify(model.eval(), digits_test.x[index], digits_test.y[index],  # type: ignore[attr-defined]
                    hi=np.where(np.isfinite(star), star, 1.0), hi_unbroken=~np.isfinite(star),
                    options=CertifyOptions())
    assert np.array_equal(again.eps_cert, cert)
    correct = rows["eps_l"].to_numpy() > 0
    found = json.loads((out / "estimate.json").read_text())["certify"]
    assert found["images"] == int(correct.sum())
    assert found["certified"] == int((cert[correct] > 0).sum())
    # alpha = 0.2: 14 labelled images are enough for a floor above 0 (at 0.05, too few)
    assert not json.loads((out / "estimate.json").read_text())["floor"]["trivial"]
    assert found["floor_proven"] == int((rows["eps_floor"].to_numpy()[correct]
                                         <= cert[correct]).sum())
    assert f"eps_floor <= eps_cert on {found['floor_proven']}" in result.output


def test_under_torchrun_the_estimate_needs_a_shared_folder(digits_checkpoint: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each process's temporary folder is its own, so without ``folder=`` the other ranks
    would read results only the writing rank saved: refused in one line, before any work."""
    import epsl.runs.estimate as estimate_module
    from epsl.distributed import World
    from epsl.errors import EpslError
    from epsl.runs.context import DataConfig
    from epsl.runs.estimate import EstimateConfig, run_estimate

    monkeypatch.setattr(estimate_module, "world", lambda: World(rank=1, size=2))
    config = EstimateConfig(data=DataConfig(checkpoint=str(digits_checkpoint), limit=20),
                            eps=(0.1,), labelled=5)
    with pytest.raises(EpslError, match="under torchrun, give run_estimate a folder="):
        run_estimate(config)
