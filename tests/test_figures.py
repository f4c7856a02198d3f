"""Figures render from small synthetic tables: non-empty PNGs of sane size with labelled axes,
the right scales and marks, and runs labelled from their training metadata."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from epsl.analysis import figures as F
from epsl.analysis.folders import Run, defense_kind, defense_label, load_run, load_runs
from epsl.analysis.metrics import predicted_accuracy
from epsl.analysis.synthetic import model_meta, write_synthetic_run
from epsl.cli.main import main
from epsl.errors import EpslError
from tests.files import snapshot

EPS = 0.3
KINDS = ["natural", "noise", "ls", "ls+noise", "lsq+noise", "pgd"]
CALIBRATED = ["noise", "ls+noise", "pgd"]  # runs with a ε* table


@pytest.fixture(scope="module")
def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for seed, kind in enumerate(KINDS):
        tables = ("diagnostics", "activations", "attack") + (("landscape",) if kind == "pgd"
                                                             else ())
        tables += ("eps_star",) if kind in CALIBRATED else ()
        write_synthetic_run(root / kind, kind, n=80, seed=seed, tables=tables)
    return root


@pytest.fixture(scope="module")
def runs(run_root: Path) -> list[Run]:
    return load_runs([run_root / k for k in KINDS])


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


BUILDERS: dict[str, Callable[[list[Run]], object]] = {
    "fig1_eps_l_panels": lambda rs: F.fig_eps_l_panels(rs, eps=EPS),
    "fig3_noise_ablation_ls": lambda rs: F.fig_noise_ablation(rs, regulariser="ls", eps=EPS),
    "fig2_logits": lambda rs: F.fig_logits(rs),
    "fig4_gradient_norms_alpha": lambda rs: F.fig_gradient_norms(rs,
                                                                 parameter="label_smoothing"),
    "fig4_gradient_norms_beta": lambda rs: F.fig_gradient_norms(rs, parameter="logit_squeeze"),
    "fig5_landscape_random": lambda rs: F.fig_landscape(rs[-1], direction="random"),
    "fig9_landscape_adversarial": lambda rs: F.fig_landscape(rs[-1], direction="adversarial"),
    "fig10_penultimate": lambda rs: F.fig_penultimate_activity(rs),
    "fig11_logits": lambda rs: F.fig_logit_activity(rs),
    "accuracy_vs_eps": lambda rs: F.fig_accuracy_vs_eps(rs, eps=EPS),
    "accuracy_vs_steps": lambda rs: F.fig_accuracy_vs_steps(rs, eps=EPS),
    "accuracy_vs_restarts": lambda rs: F.fig_accuracy_vs_restarts(rs, eps=EPS),
    "eps_l_vs_eps_star": lambda rs: F.fig_eps_l_vs_eps_star(rs),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_figure_renders_a_labelled_png(name: str, runs: list[Run], tmp_path: Path) -> None:
    fig = BUILDERS[name](runs)
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert visible, "figure has no axes"
    assert any(ax.get_xlabel().strip() for ax in visible)
    assert any(ax.get_ylabel().strip() for ax in visible)
    if not name.startswith(("fig5", "fig9", "accuracy_vs_eps", "eps_l_vs_eps_star")):
        # grids label outer axes only
        for ax in visible:
            assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), ax.get_title()
    has_legend = bool(fig.legends) or any(ax.get_legend() for ax in visible)
    assert has_legend or name.startswith(("fig5", "fig9")), "no legend naming the runs"
    paths = F.save_figure(fig, tmp_path, name)
    width, height = png_size(paths["png"])
    assert 400 <= width <= 2500 and 250 <= height <= 2000, (width, height)
    assert paths["png"].stat().st_size > 10_000
    assert ET.parse(paths["svg"]).getroot().tag.endswith("svg")


def test_legends_name_the_defense_parameters(runs: list[Run]) -> None:
    fig = F.fig_eps_l_panels(runs, eps=EPS)
    texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert any(t.startswith("LS α=0.75 + σ=0.5") for t in texts)
    assert any(t.startswith("LSq β=0.5 + σ=0.5") for t in texts)
    assert any(t.startswith("PGD-7 ε=0.3") for t in texts)
    # the legend's Eq. 4 number is the share of examples with eps < eps_L, computed here
    natural = runs[0].diagnostics
    expected = sum(float(v) > EPS for v in natural["eps_l"]) / len(natural)
    assert any(f"Eq. 4 at ε=0.3: {expected:.1%}" in t for t in texts if t.startswith("natural"))


def test_eps_panels_scales_and_attack_line(runs: list[Run]) -> None:
    fig = F.fig_eps_l_panels(runs[:2], eps=EPS)
    logit_gap, eps_l, grad_gap, cosine = fig.axes[:4]
    assert logit_gap.get_yscale() == "log"  # the paper chopped this axis at 30k
    assert grad_gap.get_xscale() == "log"
    assert "epsilon_L" in eps_l.get_xlabel() and "pixel" in eps_l.get_xlabel()
    vertical = [line for line in eps_l.get_lines() if np.allclose(line.get_xdata(), EPS)]
    assert vertical, "attack eps not marked on the eps_L histogram"
    assert cosine.get_xlim() == (-1.0, 1.0)


def test_gradient_norm_sweep_is_sorted_by_parameter(run_root: Path, tmp_path: Path) -> None:
    for alpha in (0.5, 0.1, 0.9):
        write_synthetic_run(tmp_path / f"a{alpha}", {"label_smoothing": alpha,
                                                      "noise_sigma": 0.3},
                            n=40, tables=("diagnostics",))
    runs = load_runs([tmp_path / "a0.5", tmp_path / "a0.1", tmp_path / "a0.9",
                      run_root / "natural"])
    fig = F.fig_gradient_norms(runs, parameter="label_smoothing")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["LS α=0.1 + σ=0.3", "LS α=0.5 + σ=0.3", "LS α=0.9 + σ=0.3"]


def test_ablation_picks_the_four_roles_in_order(runs: list[Run]) -> None:
    picked = F.ablation_runs(runs, "ls")
    assert [defense_kind(r.meta) for r in picked] == ["natural", "noise", "ls", "ls+noise"]
    lsq = F.ablation_runs(runs, "lsq")
    assert [defense_kind(r.meta) for r in lsq] == ["natural", "noise", "lsq+noise"]
    with pytest.raises(EpslError):
        F.fig_noise_ablation([runs[0]], regulariser="lsq")


def test_penultimate_legend_counts_inactive_neurons(runs: list[Run]) -> None:
    fig = F.fig_penultimate_activity(runs[:2])
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    for run, text in zip(runs[:2], texts, strict=True):
        table = run.activations[run.activations["layer"] == "penultimate"]
        inactive = sum(int(c) == 0 for c in table["active_count"])
        assert f"{inactive} of {len(table)} neurons inactive" in text


def test_accuracy_vs_eps_plots_eq4_curve_and_attack_points(runs: list[Run]) -> None:
    fig = F.fig_accuracy_vs_eps(runs[:1], eps=EPS)
    ax = fig.axes[0]
    lines = ax.get_lines()
    eq4 = lines[0]
    x, y = np.asarray(eq4.get_xdata()), np.asarray(eq4.get_ydata())
    eps_l = runs[0].diagnostics["eps_l"].to_numpy()
    assert np.allclose(y, [np.mean(eps_l > v) for v in x])
    attack = runs[0].attack
    rows = attack[(attack.attack == "fgsm") & (attack.loss_name == "xent")]
    expected = rows.groupby("eps")["correct"].mean()
    plotted = [ln for ln in lines[1:] if ln.get_marker() == "o"]
    assert plotted and np.allclose(plotted[0].get_ydata(), expected.to_numpy())


def _by_kind(runs: list[Run], kind: str) -> Run:
    return runs[KINDS.index(kind)]


def _points(ax, gid: str) -> list[tuple[float, float]]:
    found = [c for c in ax.collections if c.get_gid() == gid]
    assert len(found) == 1, gid
    return sorted(map(tuple, np.asarray(found[0].get_offsets(), dtype=float).tolist()))


def test_eps_l_vs_eps_star_plots_each_calibrated_run(runs: list[Run]) -> None:
    fig = F.fig_eps_l_vs_eps_star(runs)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    calibrated = [_by_kind(runs, k) for k in CALIBRATED]
    assert len(panels) == len(calibrated) == 3
    for ax, run in zip(panels, calibrated, strict=True):
        assert ax.get_title().startswith(run.label + "\n")
        assert ax.get_xscale() == ax.get_yscale() == "log"
        # the plotted points are the table's positive finite (ε*, ε_L), split by ratio > 1
        rows = run.eps_star.to_dict("records")
        drawn = [r for r in rows if 0 < r["eps_star"] < math.inf and 0 < r["eps_l"] < math.inf]
        optimistic = sorted((r["eps_star"], r["eps_l"]) for r in drawn if r["ratio"] > 1)
        conservative = sorted((r["eps_star"], r["eps_l"]) for r in drawn if not r["ratio"] > 1)
        assert optimistic and conservative
        assert _points(ax, "optimistic") == optimistic
        assert _points(ax, "conservative") == conservative
        identity = [ln for ln in ax.get_lines() if ln.get_gid() == "identity"]
        assert len(identity) == 1
        x, y = identity[0].get_xdata(), identity[0].get_ydata()
        assert np.allclose(x, y) and x[0] <= min(ax.get_xlim()) and x[-1] >= max(ax.get_xlim())
        # the title's numbers come from the record's report card
        card = run.eps_star_summary["report_card"]
        assert (f"ρ = {card['spearman']:.2f} [{card['spearman_lo']:.2f}, "
                f"{card['spearman_hi']:.2f}]") in ax.get_title()
        assert f"{card['optimistic_share']:.0%} [" in ax.get_title()
        unbroken = sum(math.isinf(r["eps_star"]) for r in rows)
        notes = " ".join(t.get_text() for t in ax.texts)
        assert (f"{unbroken} never flipped" in notes) == bool(unbroken)
    assert sum(math.isinf(v) for v in _by_kind(runs, "pgd").eps_star["eps_star"]) > 0
    assert panels[0].get_shared_x_axes().joined(panels[0], panels[-1])
    assert panels[0].get_shared_y_axes().joined(panels[0], panels[-1])


def test_eps_l_vs_eps_star_computes_the_card_without_a_record(runs: list[Run]) -> None:
    run = replace(_by_kind(runs, "noise"), eps_star_summary={})
    title = F.fig_eps_l_vs_eps_star([run]).axes[0].get_title()
    table = run.eps_star[(run.eps_star["eps_l"] > 0) & (run.eps_star["eps_star"] > 0)]
    rho = table["eps_l"].corr(table["eps_star"], method="spearman")
    assert f"Spearman ρ = {rho:.2f} [" in title
    share = sum(r > 1 for r in table["ratio"]) / len(table)
    assert f"optimistic (ε_L > ε*): {share:.0%} [" in title


def test_eps_l_vs_eps_star_needs_a_eps_star_table(runs: list[Run]) -> None:
    with pytest.raises(EpslError, match="no run has a eps_star table"):
        F.fig_eps_l_vs_eps_star([_by_kind(runs, "natural")])


def _eps_star_lines(fig) -> list:
    return [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "eps_star"]


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_accuracy_vs_eps_draws_the_eps_star_curve(runs: list[Run]) -> None:
    run = _by_kind(runs, "noise")
    fig = F.fig_accuracy_vs_eps([run], eps=EPS)
    (line,) = _eps_star_lines(fig)
    assert line.get_drawstyle() == "steps-post"
    x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    star = run.eps_star["eps_star"].tolist()
    assert np.allclose(y, [sum(s > v for s in star) / len(star) for v in x])
    assert x[0] == 0 and x[-1] == pytest.approx(fig.axes[0].get_xlim()[1])
    assert F.EPS_STAR_LABEL in _legend_texts(fig)
    # the rest of the panel is what the run draws without its ε* table
    plain = F.fig_accuracy_vs_eps([replace(run, eps_star=None, eps_star_summary={})], eps=EPS)
    assert not _eps_star_lines(plain) and F.EPS_STAR_LABEL not in _legend_texts(plain)
    assert "ε*" in fig.get_suptitle() and "ε*" not in plain.get_suptitle()
    others = [ln for ln in fig.axes[0].get_lines() if ln is not line]
    assert len(others) == len(plain.axes[0].get_lines())
    for mine, theirs in zip(others, plain.axes[0].get_lines(), strict=True):
        assert np.array_equal(mine.get_xdata(), theirs.get_xdata())
        assert np.array_equal(mine.get_ydata(), theirs.get_ydata())


def test_render_all_lists_eps_star_figure_only_with_eps_star(runs: list[Run],
                                                            tmp_path: Path) -> None:
    # render_all renders exactly figure_specs: without an ε* table, no ε* figure
    plain, calibrated = _by_kind(runs, "natural"), _by_kind(runs, "noise")
    assert "eps_l_vs_eps_star" not in {s.name for s in F.figure_specs([plain], eps=EPS)}
    specs = {s.name: s for s in F.figure_specs([plain, calibrated], eps=EPS)}
    assert specs["eps_l_vs_eps_star"].runs == (calibrated.label,)
    # a run with nothing but ε*: the scatter, and the accuracy curves (Eq. 4 from its ε_L, ε*)
    write_synthetic_run(tmp_path / "calibrated", "ls+noise", n=40, tables=("eps_star",))
    only = load_run(tmp_path / "calibrated")
    index = F.render_all([only], tmp_path / "figs")
    assert [e["name"] for e in index] == ["accuracy_vs_eps", "eps_l_vs_eps_star"]
    for entry in index:
        assert entry["runs"] == [only.label]
        assert (tmp_path / "figs" / entry["png"]).stat().st_size > 10_000


def test_synthetic_eps_star_table_is_consistent(tmp_path: Path) -> None:
    base = ("diagnostics", "activations", "attack", "audit")
    write_synthetic_run(tmp_path / "a" / "run", "pgd", n=60, seed=3, tables=base)
    write_synthetic_run(tmp_path / "b" / "run", "pgd", n=60, seed=3, tables=(*base, "eps_star"))
    before, after = load_run(tmp_path / "a" / "run"), load_run(tmp_path / "b" / "run")
    for name in base:  # adding ε* changes no other table
        pd.testing.assert_frame_equal(getattr(before, name), getattr(after, name))
    table, diagnostics = after.eps_star, after.diagnostics
    assert list(table.columns) == ["index", "label", "eps_star", "eps_star_attack", "pred_adv",
                                   "eps_fmn", "eps_fab", "eps_l", "rival", "ratio",
                                   "optimistic"]
    for row, diag in zip(table.to_dict("records"), diagnostics.to_dict("records"),
                         strict=True):
        assert row["eps_l"] == diag["eps_l"]
        assert (row["eps_star"] == 0) == (not diag["correct"])
        assert row["eps_star"] <= 1 or math.isinf(row["eps_star"])
        assert min(row["eps_fmn"], row["eps_fab"]) == row["eps_star"]
        if row["eps_star"] > 0 and row["eps_l"] > 0:
            expected = 0.0 if math.isinf(row["eps_star"]) else row["eps_l"] / row["eps_star"]
            assert row["ratio"] == pytest.approx(expected)
            assert row["optimistic"] == (expected > 1)
        else:
            assert math.isnan(row["ratio"]) and not row["optimistic"]
    assert after.eps_star_summary["report_card"]["n"] == 60


def test_predicted_accuracy_matches_a_loop() -> None:
    frame = pd.DataFrame({"eps_l": [-0.1, 0.05, 0.2, 0.3, 0.31, 1.0]})
    grid = [0.0, 0.1, 0.3, 0.5]
    expected = [sum(v > e for v in frame["eps_l"]) / 6 for e in grid]
    assert np.allclose(predicted_accuracy(frame, grid), expected)
    assert predicted_accuracy(frame, 0.3) == pytest.approx(2 / 6)


@pytest.mark.parametrize(("defense", "label"), [
    ({}, "natural"),
    ({"noise_sigma": 0.5}, "noise σ=0.5"),
    ({"label_smoothing": 0.75, "noise_sigma": 0.3}, "LS α=0.75 + σ=0.3"),
    ({"logit_squeeze": 2.0, "noise_sigma": 0.5}, "LSq β=2 + σ=0.5"),
    ({"adv": "pgd", "adv_eps": 0.3, "adv_steps": 7}, "PGD-7 ε=0.3"),
    ({"adv": "fgsm", "adv_eps": 0.1, "label_smoothing": 0.2}, "FGSM ε=0.1 + LS α=0.2"),
    ({"adv": "pgd", "adv_eps": 0.3, "adv_steps": 40, "adv_kappa": 50}, "PGD-40 ε=0.3 κ=50"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_defense_label(defense: dict, label: str) -> None:
    assert defense_label(model_meta(defense)) == label


def test_defense_label_without_training_config_falls_back() -> None:
    assert defense_label({"arch": "wrn"}, fallback="madry.pt") == "madry.pt"


def test_clashing_labels_are_made_unique(tmp_path: Path) -> None:
    for name, steps in (("short", 1000), ("long", 4000)):
        write_synthetic_run(tmp_path / name, "ls+noise", n=20, steps=steps,
                            tables=("diagnostics",))
    labels = [r.label for r in load_runs([tmp_path / "short", tmp_path / "long"])]
    assert labels == ["LS α=0.75 + σ=0.5 (k=1k)", "LS α=0.75 + σ=0.5 (k=4k)"]


def test_load_run_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(EpslError, match="no such folder"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EpslError, match="no recognised tables"):
        load_run(tmp_path / "empty")


def test_run_tables_found_in_subfolders(run_root: Path) -> None:
    run = load_run(run_root / "natural")
    assert run.tables() == ["diagnostics", "activations", "attack"]
    assert run.label == "natural" and run.num_classes == 10


def test_analysis_does_not_import_torch() -> None:
    code = ("import sys, epsl.analysis, epsl.analysis.synthetic; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.') "
            "or m in ('epsl.models', 'epsl.models.checkpoint', 'epsl.diagnostics', 'epsl.attacks')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_figures(run_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs"
    runner = CliRunner()
    args = ["figures", str(run_root / "natural"), str(run_root / "ls+noise"), "--out", str(out),
            "--eps", "0.3"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    index = json.loads((out / "figures.json").read_text())
    names = {e["name"] for e in index}
    assert {"fig1_eps_l_panels", "fig2_logits", "fig10_penultimate_activity",
            "accuracy_vs_eps", "accuracy_vs_steps", "eps_l_vs_eps_star"} <= names
    for entry in index:
        assert (out / entry["png"]).stat().st_size > 0 and (out / entry["svg"]).is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["eps"] == 0.3 and [r["label"] for r in config["runs"]] ==\
        ["natural", "LS α=0.75 + σ=0.5"]
    assert (out / "report.html").is_file() and (out / "comparison.csv").is_file()
    before = snapshot(out)
    again = runner.invoke(main, args)
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert snapshot(out) == before


@pytest.mark.parametrize("setup", ["missing", "empty"])
def test_cli_figures_one_line_errors(setup: str, tmp_path: Path) -> None:
    target = tmp_path / "run"
    if setup == "empty":
        target.mkdir()
        (target / "notes.txt").write_text("nothing here")
    result = CliRunner().invoke(main, ["figures", str(target), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert ("no such folder" if setup == "missing" else "no recognised tables") in lines[0]


# --------------------------------------------------------------------------- threat models

L2_KINDS = ["natural", "noise", "ls", "ls+noise", "lsq+noise", "pgd"]


@pytest.fixture(scope="module")
def l2_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("l2runs")
    for seed, kind in enumerate(L2_KINDS):
        tables = ("diagnostics", "activations", "attack", "audit", "eps_star") + (
            ("landscape",) if kind == "pgd" else ())
        write_synthetic_run(root / kind, kind, n=40, seed=seed, tables=tables, norm="l2")
    return root


def _texts(fig: object) -> list[str]:
    """Every axis label, title, suptitle and legend text of a figure."""
    texts = [fig._suptitle.get_text()] if fig._suptitle is not None else []  # type: ignore[attr-defined]
    for ax in fig.axes:  # type: ignore[attr-defined]
        texts += [ax.get_xlabel(), ax.get_ylabel(), ax.get_title()]
        if ax.get_legend() is not None:
            texts += [t.get_text() for t in ax.get_legend().get_texts()]
    texts += [t.get_text() for legend in fig.legends for t in legend.get_texts()]  # type: ignore[attr-defined]
    return [t for t in texts if t]


def _registered(spec_name: str) -> F.RegisteredFigure:
    return next(entry for name, entry in F.FIGURES.items() if spec_name.startswith(name))


def test_runs_know_their_norm(run_root: Path, l2_root: Path) -> None:
    from epsl.norms import Norm

    assert load_run(run_root / "natural").norm is Norm.LINF
    run = load_run(l2_root / "noise")
    assert run.norm is Norm.L2 and run.grad_gap_column == "grad_gap_l2"
    assert "grad_gap_l1" not in run.diagnostics.columns
    assert set(run.attack["norm"]) == {"l2"}


def test_a_record_without_a_norm_is_linf(tmp_path: Path) -> None:
    folder = write_synthetic_run(tmp_path / "old", "natural", n=20, tables=("diagnostics",
                                                                            "attack"))
    for record in (folder / "diagnostics.json", folder / "attacks" / "attack.json"):
        raw = json.loads(record.read_text())
        raw.pop("norm")
        raw.pop("files")  # as an older epsl wrote it: no norm, no digests
        record.write_text(json.dumps(raw))
    table = folder / "attacks" / "attack.csv"
    pd.read_csv(table).drop(columns=["norm"]).to_csv(table, index=False)
    assert load_run(folder).norm == "linf"


def test_a_folder_of_two_norms_is_refused_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_synthetic_run(folder, "natural", n=20, tables=("diagnostics",), norm="l2")
    write_synthetic_run(folder, "natural", n=20, tables=("eps_star",))  # an l-inf eps*
    with pytest.raises(EpslError) as error:
        load_run(folder)
    message = str(error.value)
    assert "\n" not in message
    assert f"{folder / 'diagnostics.json'} is l2" in message
    assert f"{folder / 'eps_star' / 'eps_star.json'} is linf" in message


def test_runs_of_two_norms_never_share_a_table_or_figure(run_root: Path, l2_root: Path,
                                                          tmp_path: Path) -> None:
    from epsl.analysis.tables import comparison_table

    with pytest.raises(EpslError, match=r"natural .* is linf, noise σ=0\.5 .* is l2") as error:
        load_runs([run_root / "natural", l2_root / "noise"])
    assert "\n" not in str(error.value)
    # runs loaded one by one are refused by every builder that would mix them
    mixed = [load_run(run_root / "natural"), load_run(l2_root / "noise")]
    for build in (lambda: comparison_table(mixed), lambda: F.figure_specs(mixed),
                  lambda: F.fig_eps_l_panels(mixed), lambda: F.fig_accuracy_vs_eps(mixed),
                  lambda: F.fig_eps_l_vs_eps_star([load_run(run_root / "noise"), mixed[1]])):
        with pytest.raises(EpslError, match="runs of two norms cannot share"):
            build()
    result = CliRunner().invoke(main, ["figures", str(run_root / "natural"),
                                       str(l2_root / "noise"), "--out", str(tmp_path / "f")])
    assert result.exit_code == 1
    assert "runs of two norms cannot share a table or figure" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_an_l2_run_renders_every_figure_with_the_norm_in_its_labels(l2_root: Path,
                                                                   tmp_path: Path) -> None:
    import warnings

    runs = load_runs([l2_root / k for k in L2_KINDS])
    specs = F.figure_specs(runs)
    # every figure whose inputs exist, as for an l-inf study of the same tables (certify is
    # l-inf only, so no l2 run has its table)
    assert {_registered(s.name).name for s in specs} == set(F.FIGURES) - {"certified_accuracy"}
    for spec in specs:
        entry = _registered(spec.name)
        fig = spec.build()
        texts = _texts(fig)
        if entry.norm_free:  # logits, l1 gradient magnitudes, activations, landscapes
            assert not any("ℓ" in t for t in texts), (spec.name, texts)
            assert "Threat model" not in spec.caption
        else:
            assert any("ℓ2" in ax.get_xlabel() or "ℓ2" in ax.get_ylabel()
                       or "ℓ2" in ax.get_title() for ax in fig.axes), (spec.name, texts)
            assert spec.caption.endswith("Threat model: ℓ2 (gradient gap in the dual ℓ2).")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            paths = F.save_figure(fig, tmp_path, spec.name)
        assert not [w for w in caught if "missing from" in str(w.message)], spec.name
        assert paths["png"].stat().st_size > 10_000
    fig = F.fig_eps_l_panels(runs, eps=1.5)
    logit_gap, eps_l, grad_gap, _ = fig.axes[:4]
    assert eps_l.get_xlabel().startswith("$\\epsilon_L$ (ℓ2; pixel units, [0,1] scale)")
    assert eps_l.get_title() == "$\\epsilon_L$ (Eq. 4, ℓ2)"
    assert grad_gap.get_xlabel() == ("gradient gap  $\\|\\nabla_x z_y - \\nabla_x z_{\\bar y}"
                                     "\\|_2$  (logit units per pixel, log scale)")
    assert grad_gap.get_title() == "Denominator of Eq. 4 (ℓ2): gradient gap"
    assert logit_gap.get_xlabel() == "logit gap  $z_y - z_{\\bar y}$  (logit units)"
    legend = [t.get_text() for t in eps_l.get_legend().get_texts()]
    assert legend == ["attack ε (ℓ2) = 1.5"]
    # the gradient-gap histogram draws grad_gap_l2 (its log bins span exactly those values)
    values = np.concatenate([r.diagnostics["grad_gap_l2"].to_numpy() for r in runs])
    edges = [p.get_xy()[:, 0] for p in grad_gap.patches]
    assert np.isclose(min(e.min() for e in edges), values[values > 0].min())
    accuracy = F.fig_accuracy_vs_eps(runs, eps=1.5)
    assert "ε (ℓ2; pixel units, [0,1] scale)" in [ax.get_xlabel() for ax in accuracy.axes]
    assert accuracy._suptitle.get_text().startswith("Accuracy against ε (ℓ2): attacks, ε*")
    # ℓ2 radii exceed 1: the axis follows ε* and ε_L, not the l-inf box
    assert accuracy.axes[0].get_xlim()[1] > 1
    star = F.fig_eps_l_vs_eps_star(runs)
    assert "$\\epsilon^*$ (ℓ2), min-norm ensemble (pixel units, [0,1] scale, log)" in [
        ax.get_xlabel() for ax in star.axes]
    assert star.axes[0].get_ylabel() == "$\\epsilon_L$ (ℓ2), Eq. 4 (log)"
    steps = F.fig_accuracy_vs_steps(runs)
    assert "(ε (ℓ2) = 1.5, restarts = 1)" in steps.axes[0].get_title()


def test_an_l1_run_reads_the_linf_gradient_gap(tmp_path: Path) -> None:
    folder = write_synthetic_run(tmp_path / "l1", "natural", n=30, tables=("diagnostics",),
                                 norm="l1")
    run = load_run(folder)
    assert run.grad_gap_column == "grad_gap_linf"
    fig = F.fig_eps_l_panels([run])
    assert "\\|_{\\infty}$" in fig.axes[2].get_xlabel()
    assert fig.axes[1].get_xlabel().startswith("$\\epsilon_L$ (ℓ1; pixel units")


def test_linf_labels_are_unchanged(runs: list[Run]) -> None:
    """The paper's threat model keeps today's labels (its PNGs are byte-identical)."""
    fig = F.fig_eps_l_panels(runs[:2], eps=EPS)
    _, eps_l, grad_gap, _ = fig.axes[:4]
    assert eps_l.get_xlabel().startswith("$\\epsilon_L$  (pixel units, [0,1] scale)")
    assert eps_l.get_title() == "$\\epsilon_L$ (Eq. 4)"
    assert grad_gap.get_xlabel() == ("gradient gap  $\\|\\nabla_x z_y - \\nabla_x z_{\\bar y}"
                                     "\\|_1$  (logit units per pixel, log scale)")
    assert grad_gap.get_title() == "Denominator of Eq. 4: gradient gap"
    assert [t.get_text() for t in eps_l.get_legend().get_texts()] == ["attack ε = 0.3"]
    accuracy = F.fig_accuracy_vs_eps(runs, eps=EPS)
    assert "ε (pixel units, [0,1] scale)" in [ax.get_xlabel() for ax in accuracy.axes]
    star = F.fig_eps_l_vs_eps_star(runs)
    assert star.axes[0].get_ylabel() == "$\\epsilon_L$, Eq. 4 (log)"
    for figure in (fig, accuracy, star, F.fig_accuracy_vs_steps(runs, eps=EPS)):
        assert not any("ℓ" in t for t in _texts(figure))


def test_epsl_figures_renders_an_l2_folder(l2_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs"
    result = CliRunner().invoke(main, ["figures", str(l2_root / "noise"), str(l2_root / "pgd"),
                                       "--out", str(out), "--eps", "1.5"])
    assert result.exit_code == 0, result.output
    assert "at eps=1.5 (l2)" in result.output
    assert json.loads((out / "config.json").read_text())["norm"] == "l2"
    entries = json.loads((out / "figures.json").read_text())
    assert any(e["caption"].endswith("Threat model: ℓ2 (gradient gap in the dual ℓ2).")
               for e in entries)
    assert "Threat model: ℓ2 (l2)." in (out / "index.md").read_text()
    assert pd.read_csv(out / "comparison.csv")["norm"].tolist() == ["l2", "l2"]



def test_epsl_figures_refuses_an_linf_radius_beyond_the_box(run_root: Path,
                                                            tmp_path: Path) -> None:
    bad = CliRunner().invoke(main, ["figures", str(run_root / "natural"), "--out",
                                    str(tmp_path / "x"), "--eps", "1.5"])
    assert bad.exit_code == 1
    assert "eps must lie in (0, 1] for the linf norm" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_svg_files_are_the_same_bytes_on_every_run(tmp_path: Path) -> None:
    """matplotlib salts an SVG's element ids per process; epsl fixes the salt, so a rerun of a
    study writes the same files (PNG and SVG alike)."""
    import hashlib
    import subprocess
    import sys

    code = ("import sys, matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt\n"
            "from epsl.analysis.figures.base import save_figure\n"
            "fig, ax = plt.subplots(); ax.plot([1, 10], [1, 0]); ax.set_xscale('log')\n"
            "save_figure(fig, sys.argv[1], 'f')\n")
    digests = set()
    for run in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / run)], check=True)
        digests.add(hashlib.sha256((tmp_path / run / "f.svg").read_bytes()).hexdigest())
    assert len(digests) == 1
