"""Bad input from the bad-input sweep: every case is one ``Error:`` line, a non-zero exit, no
traceback, and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner, Result

from epsl.attacks import pgd
from epsl.cli.main import main
from epsl.errors import EpslError
from epsl.models import checkpoint, create_model
from epsl.results.files import read_table, write_table
from epsl.results.records import Result as Record


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result: Result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert fragment in lines[0], lines[0]


def assert_usage_error(result: Result, fragment: str) -> None:
    """Click's own option checks: exit code 2 and an ``Error:`` line, never a traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error:")
    assert fragment in result.output


def other_shape_checkpoint(path: Path, size: int = 16) -> Path:
    kwargs = checkpoint.model_kwargs_for("digits") | {"input_size": size}
    torch.manual_seed(0)
    model = create_model("small-cnn", **kwargs).eval()
    return checkpoint.save(path, model, {"arch": "small-cnn", "arch_kwargs": kwargs,
                                         "dataset": "digits", "input_shape": [1, size, size],
                                         "num_classes": 10})


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained digits checkpoint: every case here fails before a model is used."""
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    return other_shape_checkpoint(path, size=8)


# ------------------------------------------------------------------ info and --model factories

def test_user_factory_that_is_not_callable_or_fails(tmp_path: Path) -> None:
    model = create_model("small-cnn", **checkpoint.model_kwargs_for("digits"))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    with pytest.raises(EpslError, match="not callable"):
        checkpoint.load(tmp_path / "m.pt", model="tests.factories:NOT_A_FACTORY")
    with pytest.raises(EpslError, match="the factory failed .*boom"):
        checkpoint.load(tmp_path / "m.pt", model="tests.factories:broken_factory")
    assert_one_line_error(run("info", tmp_path / "m.pt", "--model", "os:sep"), "not callable")
    assert_one_line_error(run("info", tmp_path / "m.pt", "--model",
                              "tests.factories:broken_factory"), "factory failed")


def test_info_dataset_is_a_choice(tmp_path: Path) -> None:
    model = create_model("small-cnn", **checkpoint.model_kwargs_for("digits"))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert_usage_error(run("info", tmp_path / "m.pt", "--arch", "small-cnn", "--dataset",
                           "nope"), "nope")


def test_info_reports_the_normalisation_loaded_from_foreign_weights(tmp_path: Path) -> None:
    kwargs = checkpoint.model_kwargs_for("digits") | {"mean": [0.5], "std": [0.25]}
    torch.save(create_model("small-cnn", **kwargs).state_dict(), tmp_path / "m.pt")
    result = run("info", tmp_path / "m.pt", "--arch", "small-cnn")
    assert result.exit_code == 0, result.output
    meta = json.loads(result.output)
    assert meta["normalization"] == {"mean": [0.5], "std": [0.25]}
    assert meta["arch_kwargs"]["mean"] == [0.5] and meta["arch_kwargs"]["std"] == [0.25]


# ------------------------------------------------------------------ reproduce

MINIMAL = 'name = "x"\ndataset = "digits"\narch = "small-cnn"\neps = 0.1\n'


@pytest.mark.parametrize("text, message", [
    ('name = "x"\n', "missing keys ['dataset', 'eps']"),
    (MINIMAL.replace("0.1", '"abc"') + '[[models]]\nname = "a"\n', "eps must be float (got 'abc')"),
    (MINIMAL.replace('"digits"', '"nope"') + '[[models]]\nname = "a"\n', "unknown dataset 'nope'"),
    (MINIMAL.replace('"small-cnn"', '"nope"') + '[[models]]\nname = "a"\n',
     "unknown arch 'nope'"),
    (MINIMAL + '[train]\nepochs = -1\n[[models]]\nname = "a"\n',
     "[train]: epochs must be at least 1 (got -1)"),
    (MINIMAL + '[train]\ndataset = "mnist"\n[[models]]\nname = "a"\n',
     "[train]: dataset belong at the top of the preset"),
    (MINIMAL + '[train]\nprecision = "fp64"\n[[models]]\nname = "a"\n',
     "[train]: precision must be one of"),
    (MINIMAL + '[attacks]\npgd_steps = 0\n[[models]]\nname = "a"\n',
     "[attacks] pgd_steps must be at least 1 (got 0)"),
    (MINIMAL + 'limit = 0\n[[models]]\nname = "a"\n', "limit must be at least 1"),
    (MINIMAL + '[landscape]\nspan = nan\n[[models]]\nname = "a"\n', "[landscape] span"),
    (MINIMAL + 'models = "abc"\n', "models must be a list"),
    (MINIMAL + 'train = 5\n[[models]]\nname = "a"\n', "expected a table"),
    (MINIMAL + '[[models]]\nname = "a"\nadv_steps = true\n', "adv_steps must be int"),
    (MINIMAL.replace('arch = "small-cnn"\n', "") + '[[models]]\nname = "a"\n',
     "a train preset needs arch"),
    (MINIMAL + 'sample = 0\n[[models]]\nname = "a"\n', "sample must be at least 1"),
], ids=["missing-keys", "eps-type", "dataset", "arch", "epochs", "train-dataset",
          "train-precision", "pgd-steps", "limit", "span",
        "models-type", "section-type", "defense-type", "no-arch", "sample"])
def test_bad_preset_fails_before_anything_is_written(tmp_path: Path, text: str,
                                                     message: str) -> None:
    preset, out = tmp_path / "p.toml", tmp_path / "o"
    preset.write_text(text)
    assert_one_line_error(run("reproduce", "--preset", preset, "--out", out), message)
    assert not out.exists()


def test_preset_that_is_not_utf8(tmp_path: Path) -> None:
    preset, out = tmp_path / "p.toml", tmp_path / "o"
    preset.write_bytes(MINIMAL.encode("utf-16"))
    assert_one_line_error(run("reproduce", "--preset", preset, "--out", out), "not UTF-8")
    assert not out.exists()


def test_reproduce_out_that_cannot_be_a_folder(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_one_line_error(run("reproduce", "--out", afile / "sub", "--limit", 5),
                          "is not a folder")
    assert afile.read_text() == "x"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_reproduce_out_under_proc() -> None:
    assert_one_line_error(run("reproduce", "--out", "/proc/epsl-x", "--limit", 5),
                          "cannot write into /proc/epsl-x")


def test_reproduce_eps_range_matches_the_preset(tmp_path: Path) -> None:
    """The radius is checked in the preset's norm (l_inf: at most 1), before any work."""
    assert_one_line_error(run("reproduce", "--eps", "1.5", "--out", tmp_path / "o"),
                          "in (0, 1] for the linf norm")
    assert not (tmp_path / "o").exists()
    assert_one_line_error(run("reproduce", "--norm", "l2", "--out", tmp_path / "o"),
                          "--norm l2: give eps in l2 too")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ compare

def test_compare_source_with_other_input_shape_writes_nothing(digits_checkpoint: Path,
                                                              tmp_path: Path) -> None:
    source = other_shape_checkpoint(tmp_path / "big.safetensors")
    out = tmp_path / "o"
    result = run("compare", digits_checkpoint, "--source", source, "--eps", "0.1", "--limit", 5,
                 "--out", out)
    assert_one_line_error(result, "expects inputs of shape (1, 16, 16)")
    assert not out.exists()


@pytest.mark.parametrize("bad", ["junk", "shape"])
def test_compare_checks_every_checkpoint_first(digits_checkpoint: Path, tmp_path: Path,
                                               bad: str) -> None:
    if bad == "junk":
        second = tmp_path / "evil.pt"
        second.write_bytes(b"not a pickle at all")
        message = "refused to load"
    else:
        second = other_shape_checkpoint(tmp_path / "big.safetensors")
        message = "expects inputs of shape"
    out = tmp_path / "o"
    for role in (["--source", second], [second]):
        result = run("compare", digits_checkpoint, *role, "--eps", "0.1", "--limit", 5,
                     "--out", out)
        assert_one_line_error(result, message)
        assert not out.exists()


# ------------------------------------------------------------------ tables on disk

def test_read_table_refuses_empty_truncated_and_garbage_files(tmp_path: Path) -> None:
    good = write_table(pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}), tmp_path / "good.csv")
    assert read_table(good).shape == (2, 2)
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "cut.csv").write_text("a,b,c\n1,2,3\n4,")
    (tmp_path / "bad.parquet").write_bytes(b"garbage")
    for name, message in [("empty.csv", "empty"), ("cut.csv", "line 3 has 2 fields"),
                          ("bad.parquet", "not a readable table")]:
        with pytest.raises(EpslError, match=message) as info:
            read_table(tmp_path / name)
        assert name in str(info.value)


@pytest.mark.parametrize("content, message, pinned", [
    ("", "the file is empty", False),
    ("index,label,eps\n0,1,0.1\n1,", "is it truncated", False),
    ("", "diagnostics.csv is not the file this record was written with", True),
    ("index,label,eps\n0,1,0.1\n1,", "is not the file this record was written with", True),
], ids=["empty", "truncated", "empty-pinned", "truncated-pinned"])
def test_figures_name_an_unreadable_table(tmp_path: Path, content: str, message: str,
                                          pinned: bool) -> None:
    """A table damaged after its record: the record's digest names it; a record without
    digests (an older epsl's) still gets the reader's own one line."""
    run_dir = tmp_path / "run"
    Record("diagnostics", {"n": 2}, None, pd.DataFrame({"index": [0, 1]})).save(run_dir)
    if not pinned:
        record = json.loads((run_dir / "diagnostics.json").read_text())
        del record["files"]
        (run_dir / "diagnostics.json").write_text(json.dumps(record))
    (run_dir / "diagnostics.csv").write_text(content)  # the table, damaged after its record
    out = tmp_path / "o"
    result = run("figures", run_dir, "--out", out)
    assert_one_line_error(result, message)
    assert "diagnostics.csv" in result.output and not out.exists()


# ------------------------------------------------------------------ data, attack, train

@pytest.mark.parametrize("kind, message", [
    ("nan", "NaN or infinite pixels"), ("inf", "NaN or infinite pixels"),
    ("text", "not a valid .npz"),
])
def test_npz_with_bad_pixels_or_not_npz(digits_checkpoint: Path, tmp_path: Path, kind: str,
                                        message: str) -> None:
    data = tmp_path / "d.npz"
    if kind == "text":
        data.write_text("x,y\n1,2\n")
    else:
        x = np.full((4, 1, 8, 8), 0.5, dtype=np.float32)
        x[0, 0, 0, 0] = np.nan if kind == "nan" else np.inf
        np.savez(data, x=x, y=np.arange(4))
    out = tmp_path / "o"
    assert_one_line_error(run("diagnose", digits_checkpoint, "--data", data, "--eps", "0.1",
                              "--out", out), message)
    assert not out.exists()


@pytest.mark.parametrize("kappa", ["nan", "inf", "-1"])
def test_cw_confidence_must_be_finite_and_non_negative(digits_checkpoint: Path, tmp_path: Path,
                                                       kappa: str) -> None:
    out = tmp_path / "o"
    result = run("attack", digits_checkpoint, "--loss", "cw", "--cw-confidence", kappa,
                 "--eps", "0.1", "--limit", 5, "--out", out)
    assert_usage_error(result, "--cw-confidence")
    assert not out.exists()
    model = create_model("small-cnn", **checkpoint.model_kwargs_for("digits")).eval()
    with pytest.raises(EpslError, match="cw_confidence"):
        pgd(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), eps=0.1, step_size=0.05,
            steps=1, loss="cw", cw_confidence=float(kappa))


def test_train_out_under_a_file_says_the_parent_is_not_a_folder(tmp_path: Path) -> None:
    afile = tmp_path / "m.safetensors"
    afile.write_text("x")
    result = run("train", "--steps", 1, "--out", afile / "x.safetensors")
    assert_one_line_error(result, f"{afile} is not a folder")
    assert afile.read_text() == "x"


# ------------------------------------------------------------------ through the installed executable

EPSL = Path(sys.executable).with_name("epsl")  # what `pip install -e .` put beside python


def _cases(tmp: Path, ckpt: Path) -> dict[str, tuple[list[object], int, str]]:
    """One bad call per command: (arguments, exit status, fragment of the one Error: line)."""
    afile = tmp / "afile"
    afile.write_text("x")
    (tmp / "junk.pt").write_bytes(b"not a pickle at all")
    (tmp / "bad.toml").write_text('name = "x"\n')
    nan = np.full((4, 1, 8, 8), 0.5, dtype=np.float32)
    nan[0, 0, 0, 0] = np.nan
    np.savez(tmp / "nan.npz", x=nan, y=np.arange(4))
    out = tmp / "out"
    return {
        "train": (["train", "--steps", 1, "--out", afile / "m.safetensors"], 1,
                  f"{afile} is not a folder"),
        "info": (["info", tmp / "junk.pt"], 1, "refused to load"),
        "diagnose": (["diagnose", ckpt, "--data", tmp / "nan.npz", "--out", out], 1,
                     "NaN or infinite pixels"),
        "diagnose-usage": (["diagnose", ckpt, "--eps", "0", "--out", out], 2, "must be > 0"),
        "activations": (["activations", tmp / "none.safetensors", "--out", out], 1,
                        "no such checkpoint"),
        "landscape": (["landscape", ckpt, "--data", afile, "--out", out], 1,
                      "not a valid .npz"),
        "attack": (["attack", ckpt, "--attack", "fgsm", "--steps", 5, "--eps", "0.1",
                    "--out", out], 1, "fgsm takes no --steps"),
        "audit": (["audit", ckpt, "--eps", "0.1", "--source", tmp / "junk.pt", "--limit", 4,
                   "--out", out], 1, "refused to load"),
        "figures": (["figures", tmp / "nowhere", "--out", out], 1, "no such folder"),
        "compare": (["compare", ckpt, tmp / "junk.pt", "--eps", "0.1", "--out", out], 1,
                    "refused to load"),
        "reproduce": (["reproduce", "--preset", tmp / "bad.toml", "--out", out], 1,
                      "missing keys"),
        "eps-star": (["eps-star", ckpt, "--limit", 0, "--out", out], 2,
                      "Invalid value for '--limit'"),
        "eps-star-data": (["eps-star", ckpt, "--data", tmp / "nan.npz", "--out", out], 1,
                           "NaN or infinite pixels"),
    }


CASES = ["train", "info", "diagnose", "diagnose-usage", "activations", "landscape", "attack",
         "audit", "figures", "compare", "reproduce", "eps-star", "eps-star-data"]


@pytest.mark.parametrize("case", CASES)
def test_installed_command_fails_in_one_line(digits_checkpoint: Path, tmp_path: Path,
                                             case: str) -> None:
    """Under CliRunner no traceback is ever printed; a real process shows what a user sees:
    the exit status, exactly one ``Error:`` line on stderr, no traceback, nothing written."""
    assert EPSL.is_file(), f"{EPSL}: the epsl executable is not installed beside python"
    args, status, fragment = _cases(tmp_path, digits_checkpoint)[case]
    result = subprocess.run([str(EPSL), *map(str, args)], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == status, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    if status == 1:  # library errors: that one line is all of stderr
        assert [line for line in result.stderr.splitlines() if line.strip()] == errors
    assert not (tmp_path / "out").exists()


def test_every_eps_option_has_one_range() -> None:
    """Every ε a command takes is one of two types, fractions accepted: a radius in the
    command's --norm (positive here, checked per norm by the library) wherever the command has
    --norm (or, for ``epsl figures``, the runs' norm), and (0, 1] for adversarial training's
    ℓ∞ ε."""
    from epsl.cli.common import EPS, RADIUS

    found = {f"{name} {param.name}": (param.type, any(p.name == "norm" for p in command.params))
             for name, command in main.commands.items()
             for param in command.params if param.name in ("eps", "adv_eps", "eps_grid")}
    assert set(found) >= {"attack eps", "audit eps", "compare eps", "compare eps_grid",
                          "diagnose eps", "reproduce eps", "train adv_eps", "eps-star eps"}
    # figures read the norm from the runs' records and check --eps in it
    assert all((kind is RADIUS) == (has_norm or key == "figures eps")
               for key, (kind, has_norm) in found.items()), found
    assert found["train adv_eps"][0] is EPS
    assert EPS.convert("1", None, None) == 1.0 and EPS.convert("8/255", None, None) == 8 / 255
    assert RADIUS.convert("8/255", None, None) == 8 / 255 and RADIUS.convert("2", None, None) == 2
