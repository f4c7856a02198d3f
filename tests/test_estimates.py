"""Robust accuracy at ε_L's cost from full tables (epsl.analysis.estimates): the simulated
draws against answers known in closed form, the study's section (its table, sentence, headline
and stage) and its figure, all from synthetic per-image tables and run folders."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from epsl.analysis import figures as F
from epsl.analysis.estimates import (
    ESTIMATE_COLUMNS,
    estimates_markdown,
    estimates_sentence,
    image_table,
    labelled_size,
    simulate,
    study_estimates,
)
from epsl.analysis.folders import Run, load_runs
from epsl.analysis.headline import estimates_section, headline
from epsl.analysis.synthetic import write_synthetic_run
from epsl.analysis.tables import comparison_table
from epsl.errors import EpslError
from epsl.results.files import read_table, write_table
from epsl.stats import clopper_pearson
from epsl.study.config import load_preset
from epsl.study.grid import stage_estimates, stage_headline
from tests.files import snapshot

FULL = ("diagnostics", "attack", "audit", "eps_star")


def _pool(size: int, seed: int, *, predictor: str) -> pd.DataFrame:
    """A per-image table with a robust accuracy of about 0.5 and a PGD prediction that is the
    truth itself (``"truth"``) or a coin flip independent of it (``"coin"``)."""
    rng = np.random.default_rng(seed)
    robust = (rng.random(size) < 0.5).astype(float)
    guess = robust if predictor == "truth" else (rng.random(size) < 0.5).astype(float)
    eps_l = rng.uniform(0.05, 1.0, size)
    return pd.DataFrame({"index": np.arange(size), "robust": robust, "eps_l": eps_l,
                         "pgd_robust": guess, "pgd_margin": np.where(guess > 0, 1.0, -1.0)})


def test_a_predictor_equal_to_the_truth_is_worth_the_whole_pool() -> None:
    # with ŷ = y, PPI++'s tuned λ ≈ N_u/N and its variance σ²/N: the effective labelled size
    # is N, N/n times n (10 here), and the estimate is the pool's own mean, so it covers it
    draws = simulate(_pool(400, 0, predictor="truth"), 0.3, 40, draws=300)
    assert draws.effective == pytest.approx(400 / 40, rel=0.15)
    assert draws.coverage >= 0.95 and draws.refused == 0
    assert draws.width_ratio == pytest.approx(np.sqrt(40 / 400), rel=0.1)


def test_a_useless_predictor_gives_the_classical_interval() -> None:
    # a coin flip independent of the truth: λ ≈ 0, PPI++ is the classical interval, n_eff ≈ n
    draws = simulate(_pool(400, 1, predictor="coin"), 0.3, 40, draws=300)
    assert 0.9 <= draws.effective <= 1.15
    assert 0.92 <= draws.coverage <= 0.995
    assert draws.coverage == pytest.approx(draws.classical_coverage, abs=0.03)


def test_the_floor_covers_as_split_conformal_promises() -> None:
    # exchangeable ratios ε*/ε_L: q is the k-th smallest of m = 100, k = ⌊0.05·101⌋ = 5, so a
    # new image has ε* ≥ q·ε_L with probability 1 − 5/101 exactly
    table = _pool(1000, 2, predictor="truth")
    ratio = np.random.default_rng(3).lognormal(0.0, 0.5, len(table))
    table["eps_star"] = table["eps_l"] * ratio
    draws = simulate(table, 0.3, 100, draws=300)
    assert draws.floor_coverage == pytest.approx(1 - 5 / 101, abs=0.008)
    assert np.isnan(simulate(table.drop(columns="eps_star"), 0.3, 100, draws=5).floor_coverage)


def test_draws_are_seeded_and_the_first_is_the_same_for_any_number() -> None:
    table = _pool(200, 4, predictor="coin")
    table["eps_star"] = 0.8 * table["eps_l"]
    one, many = (simulate(table, 0.3, 20, draws=d, seed=7) for d in (1, 50))
    assert one.estimate is not None and many.estimate is not None
    assert one.estimate.interval == many.estimate.interval
    again = simulate(table, 0.3, 20, draws=50, seed=7)
    assert replace(again, estimate=None) == replace(many, estimate=None)
    assert replace(simulate(table, 0.3, 20, draws=50, seed=8), estimate=None) != replace(
        many, estimate=None)


@pytest.mark.parametrize(("images", "fraction", "n"), [(359, 0.1, 36), (40, 0.1, 4),
                                                         (10, 0.05, 2), (5, 0.99, 4)])
def test_labelled_size(images: int, fraction: float, n: int) -> None:
    assert labelled_size(images, fraction) == n


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Run]:
    root = tmp_path_factory.mktemp("estimates")
    folders = [write_synthetic_run(root / name, kind, n=120, seed=seed, tables=tables)
               for seed, (name, kind, tables) in enumerate([
                   ("natural", "natural", FULL), ("pgd7", "pgd", FULL),
                   ("ls0.5", "ls", ("diagnostics", "attack")),  # not audited: no row
                   ("noise0.3", "noise", ("diagnostics",))])]
    return load_runs(folders)


def test_study_estimates_from_full_tables(runs: list[Run]) -> None:
    frame = study_estimates(runs, draws=40, seed=3)
    assert list(frame.columns) == ESTIMATE_COLUMNS
    assert list(frame["model"]) == ["natural", "pgd7"]
    for run, row in zip(runs, frame.itertuples(), strict=False):
        assert run.audit is not None and run.diagnostics is not None
        robust = run.audit["robust"].astype(bool).to_numpy()
        assert (row.images, row.labelled, row.draws) == (120, 12, 40)
        assert row.eps == 0.3 and row.predictor == "pgd"
        assert row.audit_robust == pytest.approx(robust.mean())
        assert (row.audit_robust_lo, row.audit_robust_hi) == pytest.approx(
            clopper_pearson(int(robust.sum()), 120))
        assert row.eq4_predicted == pytest.approx((run.diagnostics["eps_l"] > 0.3).mean())
        # the first draw: 12 images drawn by the seeded generator; its classical interval
        # is the mean of their truths ± 1.96·sd/√n
        mask = np.zeros(120, dtype=bool)
        mask[np.random.default_rng(3).choice(120, size=12, replace=False)] = True
        if robust[mask].std() == 0:  # no spread: the draw is refused, and counted
            assert np.isnan([row.ppi, row.ppi_lo, row.classical, row.classical_hi]).all()
            assert row.refused >= 1
        else:
            assert row.classical == pytest.approx(robust[mask].mean())
            half = 1.959964 * robust[mask].std() / np.sqrt(12)
            assert (row.classical_lo, row.classical_hi) == pytest.approx(
                (robust[mask].mean() - half, robust[mask].mean() + half), abs=1e-5)
            assert row.ppi_lo <= row.ppi <= row.ppi_hi
        table, eps = image_table(run)
        again = simulate(table, eps, 12, draws=40, seed=3)
        assert (row.coverage, row.effective, row.refused, row.floor_coverage) == (
            again.coverage, again.effective, again.refused, again.floor_coverage)
        eq4 = simulate(table, eps, 12, draws=40, seed=3, predictor="eq4")
        assert row.effective_eq4 == eq4.effective
    assert study_estimates(runs[2:], draws=5).empty


@pytest.mark.parametrize(("settings", "message"), [({"fraction": 0.0}, "fraction"),
                                                   ({"fraction": 1.0}, "fraction"),
                                                   ({"draws": 0}, "draws")])
def test_study_estimates_refuses_bad_settings(runs: list[Run], settings: dict[str, float],
                                              message: str) -> None:
    with pytest.raises(EpslError, match=message):
        study_estimates(runs, **settings)  # type: ignore[arg-type]


def test_the_table_and_the_sentence(runs: list[Run]) -> None:
    frame = study_estimates(runs, draws=40)
    text = estimates_markdown(frame)
    lines = text.splitlines()
    assert lines[0].startswith("| model | full audit (all images) | labelled n | PPI++ (PGD) |")
    assert len(lines) == 2 + len(frame)
    first = frame.iloc[0]
    assert (f"| natural | {first['audit_robust']:.1%} [{100 * first['audit_robust_lo']:.1f}, "
            f"{100 * first['audit_robust_hi']:.1f}] | 12 of 120 |") in text
    assert f"{first['effective']:.1f}× / {first['effective_eq4']:.1f}×" in text
    sentence = estimates_sentence(frame)
    low, high = sorted(frame["effective"])
    assert f"{low:.1f}–{high:.1f}× as many audited images" in sentence
    assert "n = 12 of 120" in sentence and sentence.count(".") >= 1
    assert estimates_markdown(frame.iloc[:0]) == estimates_sentence(frame.iloc[:0]) == ""


def test_the_headline_keeps_its_tables_and_adds_the_section(runs: list[Run]) -> None:
    table = comparison_table(runs, eps=0.3)
    frame = study_estimates(runs, draws=20)
    before = headline(table)
    after = headline(table, estimates=frame)
    assert after == before + estimates_section(frame)
    assert estimates_sentence(frame) in after and estimates_markdown(frame) in after
    assert headline(table, estimates=frame.iloc[:0]) == before


def test_the_figure_renders_one_row_per_audited_model(runs: list[Run], tmp_path: Path) -> None:
    specs = {s.name: s for s in F.figure_specs(runs)}
    assert specs["estimates"].runs == (runs[0].label, runs[1].label)
    assert "Threat model: ℓ∞" in specs["estimates"].caption
    fig = specs["estimates"].build()
    ax = fig.axes[0]
    assert ax.get_xlabel() == "robust accuracy" and ax.get_ylabel()
    assert "ε = 0.3" in ax.get_title() and fig.legends
    assert [t.get_text().split("\n")[0] for t in ax.get_yticklabels()] == [
        runs[1].label, runs[0].label]
    drawn = {line.get_gid() for line in ax.get_lines() if line.get_gid()}
    assert {"eq4_predicted", "audit_robust", "ppi", "classical"} <= drawn
    paths = F.save_figure(fig, tmp_path, "estimates")
    assert paths["png"].stat().st_size > 10_000
    assert "estimates" not in {s.name for s in F.figure_specs(runs[2:])}
    with pytest.raises(EpslError, match="no run has the audit"):
        F.fig_estimates(runs[2:])


def test_the_stage_writes_its_files_deterministically(runs: list[Run], tmp_path: Path) -> None:
    preset = load_preset("digits")
    out = tmp_path / "study"
    for run in runs:  # a study's layout: out/runs/<model name>/ (the main norm's)
        shutil.copytree(run.path, out / "runs" / run.name)
    write_table(comparison_table(load_runs(sorted((out / "runs").iterdir())), eps=0.3),
                out / "comparison.csv")
    assert stage_estimates(preset, out, recompute=True)
    written = snapshot(out)
    frame = read_table(out / "estimates.csv")
    assert list(frame["model"]) == ["natural", "pgd7"]  # the preset's order, audited only
    assert (out / "estimates.md").read_text() == estimates_section(frame).lstrip("\n")
    assert stage_estimates(preset, out, recompute=True) and snapshot(out) == written
    assert not stage_estimates(preset, out, recompute=False) and snapshot(out) == written
    text = stage_headline(preset, out, recompute=True)
    assert text.endswith(estimates_section(frame))
    assert "estimates" in {s.name for s in F.figure_specs(load_runs(
        sorted((out / "runs").iterdir())))}


def test_the_stage_writes_nothing_without_an_audited_model(tmp_path: Path) -> None:
    out = tmp_path / "study"
    write_synthetic_run(out / "runs" / "natural", "natural", n=40, tables=("diagnostics",))
    assert not stage_estimates(load_preset("digits"), out, recompute=True)
    assert not (out / "estimates.csv").exists() and not (out / "estimates.md").exists()


def test_a_pair_with_no_spread_is_refused_and_the_others_keep_ppi_pys_interval() -> None:
    """Two models broken on every labelled image, and predicted so: their difference has no
    interval (refused, with its value); every other pair is still one vector mean, equal to
    ppi_py's on those pairs alone."""
    ppi_py = pytest.importorskip("ppi_py")
    from epsl.analysis.estimates import paired_estimates

    rng = np.random.default_rng(0)
    size = 200
    labelled = np.zeros(size, dtype=bool)
    labelled[rng.choice(size, 40, replace=False)] = True
    truth = (rng.random(size) < 0.6).astype(float)
    prediction = np.where(rng.random(size) < 0.85, truth, 1 - truth)
    broken = pd.DataFrame({"robust": np.where(labelled, 0.0, np.nan),
                           "prediction": np.zeros(size), "labelled": labelled})
    robust = pd.DataFrame({"robust": np.where(labelled, truth, np.nan),
                           "prediction": prediction, "labelled": labelled})
    pairs = paired_estimates({"a": broken, "b": broken.copy(), "c": robust})
    flat = pairs[(pairs["model"] == "b") & (pairs["against"] == "a")].iloc[0]
    assert flat["refused"] and np.isnan(flat["low"]) and flat["estimate"] == 0
    kept = pairs[pairs["refused"] == ""]
    assert len(kept) == 2
    y = np.column_stack([truth[labelled], truth[labelled]])
    yhat = np.column_stack([prediction, prediction])
    low, high = ppi_py.ppi_mean_ci(y, yhat[labelled], yhat[~labelled], alpha=0.05)
    assert kept["low"].to_numpy() == pytest.approx(low, abs=1e-12)
    assert kept["high"].to_numpy() == pytest.approx(high, abs=1e-12)
