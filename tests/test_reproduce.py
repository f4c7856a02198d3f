"""``epsl reproduce`` on a tiny preset: stages, reuse, resume, bad input."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from epsl.cli.main import main
from epsl.errors import EpslError
from epsl.models.checkpoint import read_metadata
from epsl.study.config import PRESETS, load_preset, override
from tests.files import run_study, snapshot

TINY = """
name = "tiny"
dataset = "digits"
arch = "small-cnn"
eps = 0.1
eps_grid = [0.05, 0.2]
limit = 40

[train]
steps = 6
batch_size = 128
extra_seeds = [1]

[attacks]
pgd_steps = 3
transfer_from = "natural"
sweep_model = "lsq"
sweep_steps = [1, 3]
sweep_restarts = [1, 2]

[audit]
enabled = true
limit = 20
quick = true

[landscape]
images = 2
span = 0.2
steps = 5

[eps_star]
fmn_steps = 10
fab_steps = 5

[certify]
enabled = true
images = 4
steps = 3

[[threat_models]]
norm = "l2"
eps = 0.5
eps_grid = [1.0]
[threat_models.eps_star]
fmn_steps = 10
ddn_steps = 10
fab_steps = 5

[[models]]
name = "natural"

[[models]]
name = "lsq"
logit_squeeze = 2.0
noise_sigma = 0.3
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    return run_study(tmp_path_factory.mktemp("study"), TINY, "tiny")


def test_every_stage_writes_its_outputs(study: tuple[Path, Path, str]) -> None:
    _, out, output = study
    for name in ("natural", "lsq"):
        assert (out / "models" / f"{name}.safetensors").is_file()
        run = out / "runs" / name
        for path in ("diagnostics.csv", "diagnostics.json", "attacks/attack.csv",
                     "activations/activations.csv", "landscape-random/landscape.csv",
                     "landscape-adversarial/landscape.csv", "audit/audit.json"):
            assert (run / path).is_file(), path
    sweeps = pd.read_csv(out / "runs" / "lsq" / "sweeps" / "attack.csv")
    assert set(sweeps["steps"]) == {1, 3, 100} and set(sweeps["restarts"]) == {1, 2}
    # the unbounded check (eps = 1) must bring accuracy to 0 (Table 9)
    assert sweeps[sweeps["eps"] == 1.0]["correct"].astype(bool).mean() == 0.0
    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == 2
    diag = pd.read_csv(out / "runs" / "natural" / "diagnostics.csv")
    assert len(diag) == 40
    assert (out / "report.html").stat().st_size > 10_000
    assert any((out / "figures").glob("*.png"))
    # the run ends with the headline table, the audit verdicts and the report's path
    assert "| model | clean | Eq. 4 predicted | FGSM | PGD-3 (CW) |" in output
    assert "worst case, all attacks |" in output and "Audit at ε = 0.1:" in output
    assert output.rstrip().endswith(f"report: {out / 'report.html'}")
    assert (out / "headline.md").read_text() in output


def test_eps_star_is_found_once_and_feeds_the_audit_and_the_table(
        study: tuple[Path, Path, str]) -> None:
    """stage_eps_star finds eps* (and eps_L, in the run folder) before the audit; the audit
    re-scores its points as the min-norm attack; the comparison reuses both (same
    provenance) and shows the report card."""
    from epsl.results.records import load

    _, out, output = study
    compare_record = load(out / "runs", "comparison", table=False).summary
    for name in ("natural", "lsq"):
        eps_star = load(out / "runs" / name / "eps_star", "eps_star")
        assert eps_star.table is not None and len(eps_star.table) == 40
        assert {"diagnostics", "eps_star"} <= set(compare_record["reused"][name])
        audit = pd.read_csv(out / "runs" / name / "audit" / "audit.csv")
        assert len(audit) == 20 and "min-norm" in audit.columns
        # where the min-norm attack ran, it broke exactly the examples with eps* <= eps
        ran = audit["min-norm"].notna()
        star = eps_star.table["eps_star"].to_numpy()[:20][ran.to_numpy()]
        broken = ~audit.loc[ran, "min-norm"].astype(bool).to_numpy()
        assert (broken == (star <= 0.1)).all()
    table = pd.read_csv(out / "comparison.csv")
    assert table["eq4_spearman"].notna().all() and table["eps_star_accuracy"].notna().all()
    assert "Spearman ρ(ε_L, ε*)" in output
    # seeds other than the main one skip eps* (documented): their folders hold none
    assert not list((out / "runs" / "seed1").rglob("eps_star.json"))


def test_second_run_reuses_everything(study: tuple[Path, Path, str]) -> None:
    preset, out, _ = study
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    result = CliRunner().invoke(main, ["reproduce", "--preset", str(preset), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "0 stages run" in result.output
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    changed = [p for p in before if after.get(p) != before[p] and p.name != "preset.json"]
    assert changed == []


def test_interrupted_study_completes(tmp_path: Path, study: tuple[Path, Path, str]) -> None:
    import shutil

    preset, done, _ = study
    out = tmp_path / "partial"
    shutil.copytree(done, out)
    # as if killed during the lsq audit: its later stages and the report are missing
    for path in ("runs/lsq/audit", "runs/lsq/sweeps"):
        shutil.rmtree(out / path)
    for path in ("report.html", "stages.json"):
        (out / path).unlink()
    again = CliRunner().invoke(main, ["reproduce", "--preset", str(preset), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "train natural" not in again.output and "train lsq" not in again.output
    assert "lsq: audit" in again.output
    assert "natural: audit" not in again.output
    assert (out / "runs" / "lsq" / "audit" / "audit.json").is_file()
    assert (out / "report.html").is_file()


def test_a_subset_of_models_runs_alone(tmp_path: Path, study: tuple[Path, Path, str]) -> None:
    preset, _, _ = study
    out = tmp_path / "subset"
    args = ["reproduce", "--preset", str(preset), "--out", str(out), "--models", "natural",
            "--no-audit", "--limit", "10"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert not (out / "models" / "lsq.safetensors").exists()
    assert len(pd.read_csv(out / "comparison.csv")) == 1


def test_other_settings_in_the_same_folder_are_refused(study: tuple[Path, Path, str]) -> None:
    preset, out, _ = study
    before = snapshot(out)
    result = CliRunner().invoke(main, ["reproduce", "--preset", str(preset), "--out", str(out),
                                       "--eps", "0.2"])
    assert result.exit_code == 1
    assert snapshot(out) == before
    assert "other settings" in result.output and "Traceback" not in result.output


def test_bundled_presets_load() -> None:
    for name in PRESETS:
        preset = load_preset(name)
        assert preset.models and 0 < preset.eps < 1
        assert preset.attacks.transfer_from in {m.name for m in preset.models}
    digits = load_preset("digits")
    assert {m.defense.name for m in digits.models} >= {"natural", "noise0.3", "pgd7"}
    changed = override(digits, **{"train.epochs": 3, "eps": 0.2, "limit": None})
    assert changed.train.epochs == 3 and changed.eps == 0.2 and changed.limit == digits.limit


@pytest.mark.parametrize("text, message", [
    ("name='x'\ndataset='digits'\narch='small-cnn'\neps=0.1\n", "no [[models]]"),
    ("name='x'\ndataset='digits'\narch='small-cnn'\neps=2\n[[models]]\nname='a'\n", "eps"),
    ("name='x'\ndataset='digits'\narch='small-cnn'\neps=0.1\nbogus=1\n[[models]]\nname='a'\n",
     "unknown keys"),
    ("name='x'\ndataset='digits'\narch='small-cnn'\neps=0.1\n[[models]]\nname='a'\n"
     "label_smoothing=3\n", "label_smoothing"),
    ("not toml [", "not valid TOML"),
    ("name='x'\ndataset='digits'\narch='small-cnn'\neps=0.1\n[eps_star]\nfmn_step=5\n"
     "[[models]]\nname='a'\n", "[eps_star]: unknown keys ['fmn_step']"),
    ("name='x'\ndataset='digits'\narch='small-cnn'\neps=0.1\n[eps_star]\nattacks=['pgd']\n"
     "[[models]]\nname='a'\n", "pgd"),
])
def test_bad_presets(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(EpslError, match=re.escape(message)):
        load_preset(str(path))
    result = CliRunner().invoke(main, ["reproduce", "--preset", str(path), "--out",
                                       str(tmp_path / "o")])
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_unknown_preset() -> None:
    result = CliRunner().invoke(main, ["reproduce", "--preset", "imagenet", "--out", "/tmp/x"])
    assert result.exit_code == 1 and "unknown preset" in result.output


@pytest.mark.parametrize("command", ["reproduce", "compare", "audit"])
def test_missing_torchattacks_fails_before_any_work(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path, command: str,
                                                    digits_checkpoint: Path) -> None:
    """The audit's APGD and Square come from torchattacks: without it, the commands that will
    audit stop at once in one line naming the install command, before training a model."""
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    preset, out = tmp_path / "tiny.toml", tmp_path / "out"
    preset.write_text(TINY)
    args = {"reproduce": ["reproduce", "--preset", preset, "--out", out],
            "compare": ["compare", digits_checkpoint, "--eps", "0.1", "--audit", "--out", out],
            "audit": ["audit", digits_checkpoint, "--eps", "0.1", "--limit", 4, "--out", out]}
    result = CliRunner().invoke(main, [str(a) for a in args[command]])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: APGD and Square need torchattacks, which is missing from this environment: "
        "pip install torchattacks (or reinstall epsl)"]
    assert not out.exists()
    # --no-audit (and the audit's --skip-expensive) need no torchattacks, but eps* does (FAB)
    if command == "reproduce":
        result = CliRunner().invoke(main, [str(a) for a in args[command]] + ["--no-audit"])
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines() == [
            "Error: the minimum-norm attack FAB needs torchattacks, which is missing from this "
            "environment: pip install torchattacks (or reinstall epsl)"]
        assert not out.exists()
        monkeypatch.setattr("epsl.study.run.train", _no_training)
        with pytest.raises(_Trained):
            CliRunner().invoke(main, [str(a) for a in args[command]]
                               + ["--no-audit", "--no-min-norm"], catch_exceptions=False)


class _Trained(Exception):
    pass


def _no_training(*args: object, **kwargs: object) -> None:
    raise _Trained


def test_extra_seeds_train_other_models_and_summarise_them(study: tuple[Path, Path, str]
                                                           ) -> None:
    _, out, output = study
    main, other = out / "models" / "natural.safetensors", out / "models" / "seed1" /\
        "natural.safetensors"
    assert main.read_bytes() != other.read_bytes()  # another seed, another model
    assert read_metadata(other)["train_config"]["seed"] == 1
    per_seed = pd.read_csv(out / "seeds.csv")
    assert sorted(set(per_seed["seed"])) == [0, 1] and len(per_seed) == 2 * 2
    # each seed's row is that seed's comparison
    for seed, table in ((0, out / "comparison.csv"),
                        (1, out / "runs" / "seed1" / "comparison.csv")):
        mine = per_seed[per_seed["seed"] == seed].set_index("run")
        theirs = pd.read_csv(table).set_index("run")
        for column in ("clean_accuracy", "eq4_predicted", "pgd_cw", "attacks_worst"):
            assert mine[column].to_dict() == pytest.approx(theirs[column].to_dict())
    # the summary is pandas' own mean and sample sd over the per-seed rows
    summary = pd.read_csv(out / "seeds_summary.csv").set_index("model")
    for model, rows in per_seed.groupby("model"):
        assert summary.loc[model, "seeds"] == 2
        for column in ("clean_accuracy", "fgsm_xent", "transfer_pgd_cw", "attacks_worst"):
            assert summary.loc[model, f"{column}_mean"] == pytest.approx(rows[column].mean())
            assert summary.loc[model, f"{column}_sd"] == pytest.approx(rows[column].std(ddof=1))
    assert "Across 2 training seeds (mean ± sd in points" in output


def test_seeds_must_differ(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(TINY.replace("extra_seeds = [1]", "extra_seeds = [0]"))
    with pytest.raises(EpslError, match=re.escape("seed and extra_seeds must all differ")):
        load_preset(str(path))


def test_eps_star_section_is_the_library_config(tmp_path: Path) -> None:
    """``[eps_star]`` fills :class:`EpsStarConfig` itself; ``enabled = false`` is no ensemble,
    and the JSON form written to preset.json reads back to the same preset."""
    from epsl.attacks.eps_star import EpsStarConfig
    from epsl.study.config import preset_from_dict, preset_to_dict

    head = "name='x'\ndataset='digits'\narch='small-cnn'\neps=0.1\n"
    path = tmp_path / "m.toml"
    path.write_text(head + "[eps_star]\nattacks=['fmn']\nfmn_steps=7\nseed=3\n"
                    "[[models]]\nname='natural'\n")
    preset = load_preset(str(path))
    assert preset.eps_star == EpsStarConfig(attacks=("fmn",), fmn_steps=7, seed=3)
    assert preset_from_dict(preset_to_dict(preset)) == preset
    path.write_text(head + "[eps_star]\nenabled=false\n[[models]]\nname='natural'\n")
    off = load_preset(str(path))
    assert off.eps_star is None and preset_from_dict(preset_to_dict(off)).eps_star is None
    assert override(off, **{"eps_star.fmn_steps": 9}).eps_star == EpsStarConfig(fmn_steps=9)
    assert override(preset, **{"eps_star.enabled": False}).eps_star is None


def test_train_section_is_the_library_config(tmp_path: Path) -> None:
    """``[train]`` fills :class:`TrainConfig` itself (any field, e.g. precision); dataset,
    architecture and device are the preset's, the defense each model's; ``extra_seeds`` stays
    a preset setting and overrides reach both."""
    from epsl.defenses.train import TrainConfig
    from epsl.study.config import preset_from_dict, preset_to_dict
    from epsl.study.run import train_config

    path = tmp_path / "t.toml"
    path.write_text("name='x'\ndataset='digits'\narch='small-cnn'\narch_kwargs={width=8}\n"
                    "eps=0.1\n[train]\nepochs=2\nprecision='bf16'\nlr_milestones=[0.5]\n"
                    "extra_seeds=[4]\n[[models]]\nname='natural'\n[[models]]\nname='ls'\n"
                    "label_smoothing=0.5\n")
    preset = load_preset(str(path))
    assert preset.train == TrainConfig(dataset="digits", arch="small-cnn",
                                       arch_kwargs={"width": 8}, epochs=2, precision="bf16",
                                       lr_milestones=(0.5,))
    assert preset.extra_seeds == (4,) and preset_from_dict(preset_to_dict(preset)) == preset
    config = train_config(preset, preset.model("ls"), seed=4)
    assert config.defense.label_smoothing == 0.5 and config.seed == 4 and config.epochs == 2
    changed = override(preset, **{"train.epochs": 3, "train.extra_seeds": [5, 6]})
    assert changed.train.epochs == 3 and changed.extra_seeds == (5, 6)
    assert override(preset, dataset="fashion-mnist").train.dataset == "fashion-mnist"


def test_the_l2_section_is_l2_throughout(study: tuple[Path, Path, str]) -> None:
    """``[[threat_models]]`` norm l2: its own folder, ε_L, ε* and attacks all in ℓ2 (the ε*
    points re-measured here in ℓ2), never mixed with the main ℓ∞ results."""
    import json

    import numpy as np
    from safetensors.torch import load_file

    from epsl.data import load_split

    _, out, output = study
    section = out / "l2"
    for name in ("comparison.csv", "report.html", "compare.json"):
        assert (section / name).is_file(), name
    assert "the l2 section" in output
    for model in ("natural", "lsq"):
        runs = section / "runs" / model
        assert json.loads((runs / "diagnostics.json").read_text())["norm"] == "l2"
        assert json.loads((runs / "eps_star" / "eps_star.json").read_text())["norm"] == "l2"
        assert "grad_gap_l2" in pd.read_csv(runs / "diagnostics.csv").columns
        attacks = pd.read_csv(runs / "attacks" / "attack.csv")
        assert set(attacks["norm"]) == {"l2"} and set(attacks["eps"]) == {0.5, 1.0}
        table = pd.read_csv(runs / "eps_star" / "eps_star.csv")
        points = load_file(str(runs / "eps_star" / "eps_star.safetensors"))
        x = load_split("digits", "test").x[:40]
        found = np.isfinite(table["eps_star"]) & (table["eps_star"] > 0)
        dist = (points["x_adv"] - x).flatten(1).double().norm(dim=1).numpy()
        assert np.allclose(dist[found], table["eps_star"][found], rtol=1e-6)
        main = json.loads((out / "runs" / model / "diagnostics.json").read_text())
        assert main["norm"] == "linf"
    assert json.loads((section / "compare.json").read_text())["config"]["norm"] == "l2"


@pytest.mark.parametrize("section, message", [
    ("[[threat_models]]\nnorm='l3'\neps=0.5\n", "norm must be one of"),
    ("[[threat_models]]\nnorm='l2'\neps=0.5\n[[threat_models]]\nnorm='l2'\neps=1.0\n",
     "each norm once"),
    ("[[threat_models]]\nnorm='linf'\neps=0.5\n", "each norm once"),
    ("[[threat_models]]\nnorm='l2'\neps=-1\n", "positive radius"),
    ("[[threat_models]]\nnorm='l2'\neps=0.5\n[threat_models.eps_star]\nfmn_step=3\n",
     "unknown keys ['fmn_step']"),
    ("[[threat_models]]\neps=0.5\n", "each needs norm"),
])
def test_bad_threat_models(tmp_path: Path, section: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("name='x'\ndataset='digits'\narch='small-cnn'\neps=0.1\n" + section
                    + "[[models]]\nname='a'\n")
    with pytest.raises(EpslError, match=re.escape(message)):
        load_preset(str(path))


def test_threat_models_round_trip_and_a_study_in_l2(tmp_path: Path) -> None:
    from epsl.attacks.eps_star import EpsStarConfig
    from epsl.study.config import preset_from_dict, preset_to_dict

    path = tmp_path / "l2.toml"
    path.write_text("name='x'\ndataset='digits'\narch='small-cnn'\nnorm='l2'\neps=0.5\n"
                    "eps_grid=[1.0, 2.0]\n[eps_star]\nfmn_steps=7\n[[threat_models]]\n"
                    "norm='linf'\neps=0.1\n[[models]]\nname='natural'\n")
    preset = load_preset(str(path))
    assert preset.norm == "l2" and preset.eps_star == EpsStarConfig(norm="l2", fmn_steps=7)
    assert preset.threat_models[0].norm == "linf"
    assert preset_from_dict(preset_to_dict(preset)) == preset
    path.write_text("name='x'\ndataset='digits'\narch='small-cnn'\neps=0.5\n"
                    "[[models]]\nname='natural'\n")
    with pytest.raises(EpslError, match="linf norm"):
        override(load_preset(str(path)), eps=2.0)


def test_the_certified_floor_joins_the_study(study: tuple[Path, Path, str]) -> None:
    """[certify]: ε_cert on the first images of every main-seed model, under ε* and beside
    ε_L, and the three-way card in the comparison table and the headline."""
    _, out, output = study
    comparison = pd.read_csv(out / "comparison.csv")
    for name in ("natural", "lsq"):
        table = pd.read_csv(out / "runs" / name / "certify" / "certify.csv")
        assert len(table) == 4
        eps_star = pd.read_csv(out / "runs" / name / "eps_star" / "eps_star.csv").head(4)
        assert (table["eps_star"].to_numpy() == eps_star["eps_star"].to_numpy()).all()
        assert (table["eps_cert"] <= table["eps_star"]).all()
        assert set(table["group"]) <= {"conservative", "optimistic", "undecided",
                                       "misclassified"}
        row = comparison.set_index("run").loc[name]
        correct = (table["group"] != "misclassified").sum()
        assert row["certify_n"] == 4
        assert row["eq4_proven_optimistic"] == pytest.approx(
            (table["group"] == "optimistic").sum() / correct)
    assert "With proofs, on the first 4 test images" in output
    assert not (out / "l2" / "runs" / "natural" / "certify").exists()  # l_inf only


def test_a_seeded_sample_replaces_the_presets_limit(tmp_path: Path) -> None:
    preset = override(load_preset("digits"), sample=40, sample_seed=3)
    data = preset.data()
    assert (data.limit, data.sample, data.sample_seed) == (None, 40, 3)
    picked = data.for_checkpoint("unused").sample
    assert picked == 40
    with pytest.raises(EpslError, match="sample must be at least 1"):
        override(load_preset("digits"), sample=0)
    result = CliRunner().invoke(main, ["reproduce", "--sample", "100000", "--models", "natural",
                                       "--out", str(tmp_path / "big")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
