"""Guards at the door of ``epsl reproduce``, ``compare`` and ``diagnose`` (issue 30, rows 5 and
8): a study never takes a checkpoint trained with another config for its model, a preset's
model name never becomes a path outside ``--out``, and an unfinished training checkpoint is
never evaluated as if it were the trained model."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from epsl.cli.main import main
from epsl.defenses import DefenseConfig
from epsl.defenses.train import TrainConfig, train
from epsl.errors import EpslError
from epsl.models.checkpoint import read_metadata
from epsl.results.files import safe_name
from tests.files import snapshot

#: one natural model, a few steps, no eps*, audit or certificate: seconds on a CPU
MINI = """
name = "mini"
dataset = "digits"
arch = "small-cnn"
arch_kwargs = { width = 4, hidden = 16 }
eps = 0.1
limit = 10

[train]
steps = 2
batch_size = 128

[attacks]
pgd_steps = 2
transfer_from = "NAME"

[audit]
enabled = false

[eps_star]
enabled = false

[certify]
enabled = false

[landscape]
images = 2
steps = 3

[[models]]
name = "NAME"
"""

#: ``epsl train`` options that give MINI's training config, but for the defense
TRAIN_AS_MINI = ["--dataset", "digits", "--arch", "small-cnn", "--arch-arg", "width=4",
                 "--arch-arg", "hidden=16", "--steps", "2", "--batch-size", "128"]


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result: Result) -> str:
    """The one ``Error:`` line of a refused command (exit code 1, no traceback)."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    return lines[0]


def mini_preset(folder: Path, name: str = "natural") -> Path:
    path = folder / "mini.toml"
    path.write_text(MINI.replace('"NAME"', f'"{name}"'))
    return path


# ------------------------------------------------------------ a checkpoint of another config


def interrupted(config: TrainConfig, path: Path) -> None:
    """Train ``config`` into ``path`` and stop it after its first epoch, as Ctrl-C does."""

    def stop(_report: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, path, on_epoch=stop)
    assert read_metadata(path)["complete"] is False


@pytest.mark.parametrize("finished, differs", [
    (True, "defense.adv is 'pgd' there, 'none' in the preset"),
    (False, "epochs is 2 there, 15 in the preset"),  # the first field that differs
], ids=["complete", "unfinished"])
def test_a_checkpoint_of_another_config_is_refused_then_retrained_with_force(
        tmp_path: Path, finished: bool, differs: str) -> None:
    """A PGD model at OUT/models/natural.safetensors is not the preset's natural model: the
    study refuses it in one line naming the file and the first differing field, changes
    nothing, and retrains it only with --force."""
    preset, out = mini_preset(tmp_path), tmp_path / "out"
    planted = out / "models" / "natural.safetensors"
    if finished:
        trained = run("train", *TRAIN_AS_MINI, "--adv", "pgd", "--adv-eps", "0.1",
                      "--adv-steps", "2", "--out", planted)
        assert trained.exit_code == 0, trained.output
    else:  # an interrupted run of another config is not resumed as this model either
        interrupted(TrainConfig(dataset="digits", arch="small-cnn",
                                arch_kwargs={"width": 4, "hidden": 16}, epochs=2,
                                batch_size=64, train_limit=128,
                                defense=DefenseConfig(adv="pgd", adv_eps=0.1, adv_steps=2)),
                    planted)
    before = snapshot(out)
    line = one_line_error(run("reproduce", "--preset", preset, "--out", out))
    assert line == (f"Error: {planted} was not trained as the mini preset's natural "
                    f"({differs}); pass --force to retrain it, or choose another --out PATH")
    assert snapshot(out) == before  # nothing replaced, nothing written beside it

    again = run("reproduce", "--preset", preset, "--out", out, "--force")
    assert again.exit_code == 0, again.output
    meta = read_metadata(planted)
    assert meta["complete"] is True
    assert meta["train_config"]["defense"]["adv"] == "none"
    assert meta["train_config"]["steps"] == 2
    reused = run("reproduce", "--preset", preset, "--out", out)
    assert reused.exit_code == 0, reused.output
    assert "train natural" not in reused.output  # the preset's own checkpoint is reused


# ------------------------------------------------------------ names that would leave --out


@pytest.mark.parametrize("name, toml", [
    ("../../../escape", "../../../escape"),
    ("..", ".."),
    ("/tmp/escape", "/tmp/escape"),
    ("a\\b", "a\\\\b"),
    (".hidden", ".hidden"),
    ("a\0b", "a\\u0000b"),
], ids=["parent", "dotdot", "absolute", "backslash", "hidden", "nul"])
def test_a_model_name_that_leaves_out_is_refused_at_load(tmp_path: Path, name: str,
                                                         toml: str) -> None:
    """A preset's model name becomes a file and folder name (models/NAME.safetensors,
    runs/NAME/): one that could reach outside --out is refused in one line before anything is
    trained or written, and a checkpoint waiting where it points is neither read nor
    replaced."""
    preset = mini_preset(tmp_path, toml)
    out = tmp_path / "a" / "b" / "out"
    bait = tmp_path / "a" / "escape.safetensors"  # where models/../../../escape points
    bait.parent.mkdir(parents=True)
    bait.write_bytes(b"a checkpoint left outside --out")
    before = snapshot(tmp_path)
    line = one_line_error(run("reproduce", "--preset", preset, "--out", out))
    assert f"model name {name!r}" in line and str(preset) in line
    assert snapshot(tmp_path) == before
    assert not out.exists()


def test_an_empty_model_name_is_refused(tmp_path: Path) -> None:
    preset = mini_preset(tmp_path, "")
    line = one_line_error(run("reproduce", "--preset", preset, "--out", tmp_path / "out"))
    assert "models[0] has no name" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../x", "x/y", "x\\y", "..", ".x", "", "a\0b", "/x", "C:x",
                                  "x" * 201])
def test_safe_name_refuses_what_is_not_one_file_name(name: str) -> None:
    with pytest.raises(EpslError, match="model name"):
        safe_name(name, "model name")


@pytest.mark.parametrize("name", ["natural", "ls0.5+noise0.3", "pgd7", "a..b", "Wong2020Fast"])
def test_safe_name_keeps_the_names_of_the_bundled_presets(name: str) -> None:
    assert safe_name(name, "model name") == name


# ------------------------------------------------------------ an unfinished checkpoint


def test_an_unfinished_checkpoint_is_not_evaluated(tmp_path: Path,
                                                   digits_checkpoint: Path) -> None:
    """An interrupted ``epsl train`` leaves a checkpoint with ``complete: false``: diagnose,
    attack and compare (as a model or as the transfer source) refuse it in one line that says
    how far it got and how to finish it, and write nothing; once resumed to the end it is
    evaluated."""
    ckpt = tmp_path / "run.safetensors"
    interrupted(TrainConfig(dataset="digits", arch="small-cnn",
                            arch_kwargs={"width": 4, "hidden": 16}, epochs=2, batch_size=64,
                            train_limit=128), ckpt)
    message = (f"Error: {ckpt} is an unfinished training checkpoint (epoch 1 of 2): finish it "
               f"with `epsl train` and the options it was started with plus `--out {ckpt} "
               "--resume`, then evaluate it")
    out = tmp_path / "o"
    commands = {
        "diagnose": ["diagnose", ckpt, "--limit", 10, "--out", out],
        "attack": ["attack", ckpt, "--eps", "0.1", "--limit", 10, "--out", out],
        "compare": ["compare", ckpt, digits_checkpoint, "--eps", "0.1", "--limit", 10,
                    "--no-min-norm", "--no-figures", "--out", out],
        "compare --source": ["compare", digits_checkpoint, "--source", ckpt, "--eps", "0.1",
                             "--limit", 10, "--no-min-norm", "--no-figures", "--out", out],
    }
    before = snapshot(tmp_path)
    for command, args in commands.items():
        assert one_line_error(run(*args)) == message, command
        assert snapshot(tmp_path) == before, command
        assert not out.exists(), command

    resumed = run("train", "--dataset", "digits", "--arch", "small-cnn", "--arch-arg", "width=4",
                  "--arch-arg", "hidden=16", "--epochs", 2, "--batch-size", 64,
                  "--train-limit", 128, "--out", ckpt, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert read_metadata(ckpt)["complete"] is True
    diagnosed = run(*commands["diagnose"])
    assert diagnosed.exit_code == 0, diagnosed.output
    assert (out / "diagnostics.csv").is_file()
