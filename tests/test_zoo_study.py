"""``epsl reproduce`` on an evaluate preset: checkpoints made elsewhere (a RobustBench model in
RobustBench's own layout, with random weights, and an epsl checkpoint file) evaluated by the
study's stages with no training, the leaderboard's reported accuracies beside epsl's worst
case, on a few generated CIFAR-shaped images (an ``.npz``: torchvision's CIFAR reader checks
the files' md5, so generated CIFAR pickles cannot stand in for the real ones)."""

from __future__ import annotations

import math
import re
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import epsl
from epsl.cli.main import main
from epsl.errors import EpslError
from epsl.models import checkpoint, create_model
from epsl.study.config import load_preset, override, preset_from_dict, preset_to_dict
from tests.files import snapshot

pytest.importorskip("timm")  # RobustBench's zoo imports it

EPS = 8 / 255
IMAGES = 4  # Eq. 4 on a ResNet-18 is ~7 s an image on 2 CPU cores (10 reverse passes)
#: the leaderboard's numbers as RobustBench's model_info JSONs give them (percent), checked
#: against the preset's fractions
LEADERBOARD = {"Standard": (94.78, 0.0), "Wong2020Fast": (83.34, 43.21),
               "Engstrom2019Robustness": (87.03, 49.25), "Rice2020Overfitting": (85.34, 53.42),
               "Carmon2019Unlabeled": (89.69, 59.53)}


def _zoo_models() -> dict[str, dict]:
    from epsl.models.sources import robustbench_zoo

    zoo = robustbench_zoo()
    (dataset,) = [d for d in zoo if d.value == "cifar10"]
    (threat,) = [t for t in zoo[dataset] if t.value == "Linf"]
    return zoo[dataset][threat]  # type: ignore[no-any-return]


def _bundled() -> dict:
    text = resources.files("epsl.study.presets").joinpath("zoo-cifar10-linf.toml").read_text()
    return tomllib.loads(text)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """RobustBench's layout with Wong2020Fast (a PreAct ResNet-18, the cheapest of the preset's
    architectures) at random weights, an epsl checkpoint file of a small CNN for CIFAR, and
    ``IMAGES`` generated CIFAR-shaped images as an ``.npz``."""
    root = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    net = _zoo_models()["Wong2020Fast"]["model"]()
    # RobustBench's file lacks the architecture's mu/sigma buffers (tests/test_sources.py)
    state = {k: v for k, v in net.state_dict().items() if k not in ("mu", "sigma")}
    (root / "models" / "cifar10" / "Linf").mkdir(parents=True)
    torch.save(state, root / "models" / "cifar10" / "Linf" / "Wong2020Fast.pt")
    kwargs = checkpoint.model_kwargs_for("cifar10", width=4, hidden=16)
    small = create_model("small-cnn", **kwargs)
    checkpoint.save(root / "small.safetensors", small, {
        "arch": "small-cnn", "arch_kwargs": kwargs, "dataset": "cifar10",
        "input_shape": [3, 32, 32], "num_classes": 10})
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(IMAGES, 3, 32, 32, generator=gen)
    # labels that Wong2020Fast's random weights get right on the first image only, so that
    # eps* and the audit attack one survivor (on every image, Eq. 4's Jacobian costs the most)
    model, _ = epsl.load("robustbench:cifar10/Linf/Wong2020Fast", model_dir=root / "models")
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = (pred + 1) % 10
    y[0] = pred[0]
    np.savez(root / "cifar.npz", x=x.numpy(), y=y.numpy())
    return root / "models", root / "small.safetensors", root / "cifar.npz"


def _test_preset(small: Path) -> str:
    """A preset of the zoo's kind with the bundled Wong2020Fast entry (its reported numbers)
    and a checkpoint file, at budgets that run in seconds."""
    (wong,) = [m for m in _bundled()["models"] if m["name"] == "Wong2020Fast"]
    reported = ", ".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}"
                         for k, v in wong["reported"].items()).replace("'", '"')
    return f"""
name = "zoo-test"
kind = "evaluate"
dataset = "cifar10"
eps = {EPS!r}
limit = {IMAGES}

[attacks]
pgd_steps = 2
transfer_from = "small"

[audit]
limit = 2
quick = true
square_queries = 5
strong_steps = 3
strong_restarts = 1
apgd_steps = 2
unbounded_steps = 2

[eps_star]
fmn_steps = 4
fab_steps = 2

[[models]]
name = "Wong2020Fast"
checkpoint = "{wong["checkpoint"]}"
reported = {{ {reported} }}

[[models]]
name = "small"
checkpoint = "{small}"
"""


@pytest.fixture(scope="module")
def study(zoo: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[Path, Path, str]:
    models, small, data = zoo
    root = tmp_path_factory.mktemp("study")
    preset = root / "zoo-test.toml"
    preset.write_text(_test_preset(small))
    out = root / "out"
    result = CliRunner().invoke(main, ["reproduce", "--preset", str(preset), "--model-dir",
                                       str(models), "--data", str(data), "--device", "cpu",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    return preset, out, result.output


def test_the_bundled_preset_names_real_zoo_models_with_the_leaderboards_numbers() -> None:
    preset = load_preset("zoo-cifar10-linf")
    assert preset.kind == "evaluate" and preset.train is None and preset.arch is None
    assert preset.eps == pytest.approx(EPS) and preset.norm == "linf"
    models = _zoo_models()
    for spec in preset.models:
        assert spec.checkpoint == f"robustbench:cifar10/Linf/{spec.name}"
        assert spec.name in models  # in RobustBench 1.1.1's model_zoo
        assert spec.reported is not None and "RobustBench" in spec.reported.source
        clean, robust = LEADERBOARD[spec.name]
        assert (100 * spec.reported.clean, 100 * spec.reported.robust) ==\
            (pytest.approx(clean), pytest.approx(robust))
    assert set(LEADERBOARD) == {m.name for m in preset.models}
    assert preset_from_dict(preset_to_dict(preset)) == preset
    assert preset.attacks.transfer_from == "Standard"
    # a subset without the transfer source drops the transfer attacks
    assert override(preset, models=["Wong2020Fast"]).attacks.transfer_from is None


def test_robustbench_does_not_ship_the_leaderboard() -> None:
    """The docs say the installed package has no leaderboard numbers: its model_info JSONs
    live in the repository, read from ./model_info (hence the preset's copies)."""
    import sys

    _zoo_models()  # imports robustbench the way epsl does (the autoattack alias)
    package = Path(str(sys.modules["robustbench"].__file__)).parent
    assert not list(package.rglob("*.json")) or not [
        p for p in package.rglob("*.json") if "autoattack" in p.read_text()]
    assert not (package / "model_info").exists()


def test_the_study_evaluates_without_training(study: tuple[Path, Path, str]) -> None:
    _, out, output = study
    assert not (out / "models").exists()  # nothing trained
    for name in ("Wong2020Fast", "small"):
        run = out / "runs" / name
        for path in ("diagnostics.csv", "attacks/attack.csv", "eps_star/eps_star.csv",
                     "audit/audit.csv"):
            assert (run / path).is_file(), path
        assert not (run / "activations").exists() and not (run / "landscape-random").exists()
    table = pd.read_csv(out / "comparison.csv").set_index("run")
    assert list(table.index) == ["Wong2020Fast", "small"] and (table["n"] == IMAGES).all()
    assert table.loc["Wong2020Fast", "clean_accuracy"] == 1 / IMAGES
    assert {"reported_clean", "reported_robust", "reported_verdict", "reported_source",
            "eps_star_accuracy", "audit_worst", "transfer_pgd_cw"} <= set(table.columns)
    wong = table.loc["Wong2020Fast"]
    assert (wong["reported_clean"], wong["reported_robust"]) == (0.8334, 0.4321)
    assert wong["reported_against"] == "audit_worst"
    # random weights on 8 generated images: far from the leaderboard, and the table says so
    lo, hi = wong["clean_accuracy_lo"], wong["clean_accuracy_hi"]
    assert not lo <= 0.8334 <= hi
    assert wong["reported_verdict"].startswith("disagrees: clean 83.3% above epsl's [")
    assert pd.isna(table.loc["small", "reported_robust"])
    assert (out / "report.html").stat().st_size > 10_000
    assert "reported" in (out / "report.html").read_text()
    assert any((out / "figures").glob("*.png"))
    headline = (out / "headline.md").read_text()
    assert headline in output
    assert headline.startswith("Evaluated 2 checkpoints (Wong2020Fast, small); ran ")
    assert "not run: training" in headline
    assert "Against the reported accuracies at ε = 0.0313725" in headline
    assert "| AutoAttack (reported) |" in headline
    assert re.search(r"\| Wong2020Fast \| .* \| 83\.3% \| .* \| 43\.2% \| disagrees", headline)
    assert "1 of 1 model disagrees with the reported accuracies" in headline
    assert "intervals are up to" in headline and "says little" in headline
    assert "train " not in output


def test_a_second_run_reuses_everything(study: tuple[Path, Path, str],
                                        zoo: tuple[Path, Path, Path]) -> None:
    preset, out, _ = study
    models, _, data = zoo
    before = snapshot(out)
    result = CliRunner().invoke(main, ["reproduce", "--preset", str(preset), "--model-dir",
                                       str(models), "--data", str(data), "--device", "cpu",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "0 stages run" in result.output
    assert {k: v for k, v in snapshot(out).items() if "preset.json" not in str(k)} ==\
        {k: v for k, v in before.items() if "preset.json" not in str(k)}


def test_missing_weights_fail_in_one_line_before_anything_is_written(
        tmp_path: Path, zoo: tuple[Path, Path, Path]) -> None:
    _, _, data = zoo
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["reproduce", "--preset", "zoo-cifar10-linf",
                                       "--model-dir", str(tmp_path / "empty"), "--data",
                                       str(data), "--out", str(out)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("Error: model Standard (robustbench:cifar10/Linf/Standard): "
                               "no weights file at ")
    assert not out.exists()
    again = CliRunner().invoke(main, ["reproduce", "--preset", "zoo-cifar10-linf",
                                      "--epochs", "2", "--out", str(out)])
    assert again.exit_code == 1 and "trains nothing" in again.output
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    ("arch = 'small-cnn'\n", "trains nothing: remove arch"),
    ("[train]\nepochs = 1\n", "remove its [train] section"),
    ("[[models]]\nname = 'b'\n", "models ['b'] name no checkpoint"),
    ("[[models]]\nname = 'b'\ncheckpoint = 'b.pt'\nlabel_smoothing = 0.5\n",
     "models ['b'] give defense terms"),
    ("[[models]]\nname = 'b'\ncheckpoint = 'b.pt'\nreported = { clean = 83.34, robust = 0.4, "
     "source = 'x' }\n", "a fraction in [0, 1]"),
])
def test_bad_evaluate_presets(tmp_path: Path, extra: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    head = "name = 'x'\nkind = 'evaluate'\ndataset = 'cifar10'\neps = 0.03\n"
    model = "[[models]]\nname = 'a'\ncheckpoint = 'robustbench:cifar10/Linf/Standard'\n"
    text = (head + extra + model) if not extra.startswith("[[") else head + model + extra
    if extra.startswith("[train]"):
        text = head + model + extra
    path.write_text(text)
    with pytest.raises(EpslError, match=re.escape(message)):
        load_preset(str(path))


def test_a_train_preset_cannot_name_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("name='x'\ndataset='digits'\narch='small-cnn'\neps=0.1\n[[models]]\n"
                    "name='a'\ncheckpoint='a.safetensors'\n")
    with pytest.raises(EpslError, match="set kind = \"evaluate\""):
        load_preset(str(path))


@pytest.mark.distributed
def test_a_sharded_zoo_study_writes_the_tables_of_one_process(
        zoo: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun (2 processes, gloo on the CPU), an evaluate study's tables are byte for
    byte those of one process (the epsl checkpoint alone: the ResNet-18 would double the
    test's time for no other code path)."""
    import torch.distributed as dist

    from tests.test_distributed import torchrun

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    _, small, data = zoo
    text = _test_preset(small)
    text = text[:text.index("[[models]]")].replace('transfer_from = "small"', "") +\
        f'[[models]]\nname = "small"\ncheckpoint = "{small}"\nreported = {{ clean = 0.5, '\
        'robust = 0.25, source = "a test" }\n'
    (tmp_path / "p.toml").write_text(text)
    args = ["reproduce", "--preset", str(tmp_path / "p.toml"), "--data", str(data),
            "--device", "cpu"]
    torchrun(*args, "--out", "two", cwd=tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, [*args, "--out", "one"])
    assert result.exit_code == 0, result.output
    tables = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.csv"))
    assert {"comparison.csv", "runs/small/audit/audit.csv", "runs/small/eps_star/eps_star.csv"}\
        <= {str(t) for t in tables}
    for table in [*tables, Path("headline.md")]:
        assert (tmp_path / "one" / table).read_bytes() ==\
            (tmp_path / "two" / table).read_bytes(), table


def test_reported_accuracies_beside_the_interval() -> None:
    """A reported accuracy inside epsl's 95% interval agrees; outside it, the verdict says
    which and on which side; the worst case is the audit's where there is one."""
    from epsl.analysis.tables import reported_markdown, with_reported

    table = pd.DataFrame({
        "model": ["a", "b", "c"], "run": ["a", "b", "c"], "n": [1000] * 3, "eps": [EPS] * 3,
        "clean_accuracy": [0.83, 0.90, 0.5], "clean_accuracy_lo": [0.806, 0.88, 0.47],
        "clean_accuracy_hi": [0.853, 0.918, 0.53],
        "attacks_worst": [0.45, 0.60, 0.2], "attacks_worst_lo": [0.42, 0.57, 0.18],
        "attacks_worst_hi": [0.48, 0.63, 0.23],
        "audit_worst": [0.40, math.nan, math.nan], "audit_worst_lo": [0.37, math.nan, math.nan],
        "audit_worst_hi": [0.43, math.nan, math.nan]})
    reported = {"a": {"clean": 0.8334, "robust": 0.4321, "source": "x"},
                "b": {"clean": 0.8969, "robust": 0.5, "source": "y"}}
    out = with_reported(table, reported).set_index("run")
    assert out.loc["a", "reported_against"] == "audit_worst"
    assert out.loc["a", "reported_verdict"] == "disagrees: robust 43.2% above epsl's [37.0, 43.0]"
    assert out.loc["b", "reported_against"] == "attacks_worst"
    assert out.loc["b", "reported_verdict"] == "disagrees: robust 50.0% below epsl's [57.0, 63.0]"
    assert pd.isna(out.loc["c", "reported_verdict"]) and pd.isna(out.loc["c", "reported_clean"])
    text = reported_markdown(with_reported(table, reported))
    assert "2 of 2 models disagree" in text and "says little" not in text
    agreeing = with_reported(table, {"a": {"clean": 0.83, "robust": 0.41, "source": "x"}})
    assert reported_markdown(agreeing).rstrip().endswith(
        "The 1 model agrees with the reported accuracies within epsl's 95% interval.")


def test_the_zoo_at_eps_l_cost(zoo: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """``--labelled``: the audit and ε* on a seeded random sample of the evaluated images, ε_L
    and the paper's attacks on all of them, and each checkpoint's estimate on all; the
    headline says what ran on the sample."""
    models, small, data = zoo
    preset = tmp_path / "zoo-test.toml"
    preset.write_text(_test_preset(small))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["reproduce", "--preset", str(preset), "--model-dir",
                                       str(models), "--data", str(data), "--device", "cpu",
                                       "--labelled", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("Wong2020Fast", "small"):
        run = out / "runs" / name
        assert not (run / "audit").exists() and not (run / "eps_star").exists()
        table = pd.read_csv(run / "estimate" / "estimate.csv")
        assert len(table) == IMAGES and int(table["labelled"].sum()) == 3
        assert table.loc[table["labelled"], "robust"].notna().all()
    estimates = pd.read_csv(out / "estimates.csv")
    assert estimates["model"].tolist() == ["Wong2020Fast", "small"]
    assert (estimates["images"] == IMAGES).all() and (estimates["labelled"] == 3).all()
    headline = (out / "headline.md").read_text()
    assert headline.startswith("Evaluated 2 checkpoints (Wong2020Fast, small); ran ")
    assert "ε* and the audit on 3 examples drawn at random (seed 0)" in headline
    assert "The full audit ran on 3 of the 4 images" in headline
    table = pd.read_csv(out / "comparison.csv").set_index("run")
    assert table.loc["Wong2020Fast", "reported_against"] != "audit_worst"
