"""The examples in docs/cli.md and docs/api.md run as written."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from epsl.cli.main import main

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _blocks(name: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


@pytest.mark.slow
def test_cli_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    commands = [line for block in _blocks("cli.md", "bash") for line in block.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert len(commands) >= 12
    runner = CliRunner()
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "epsl", command
        result = runner.invoke(main, argv[1:])
        assert result.exit_code == 0, f"{command}\n{result.output}"
    assert (tmp_path / "runs" / "study" / "report.html").is_file()
    assert any((tmp_path / "runs" / "figs").glob("*.png"))


def _zoo_weights(folder: Path) -> None:
    """Random weights in the real layouts the api.md examples read: RobustBench's
    models/DATASET/THREAT/NAME.pt and a timm safetensors file."""
    import timm
    import torch
    from safetensors.torch import save_file

    from epsl.models.sources import robustbench_zoo

    zoo = robustbench_zoo()
    (cifar,) = [d for d in zoo if d.value == "cifar10"]
    (linf,) = [t for t in zoo[cifar] if t.value == "Linf"]
    torch.manual_seed(0)
    net = zoo[cifar][linf]["Carmon2019Unlabeled"]["model"]()
    (folder / "models" / "cifar10" / "Linf").mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
               folder / "models" / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt")
    (folder / "weights").mkdir()
    save_file(timm.create_model("test_vit", pretrained=False).state_dict(),
              str(folder / "weights" / "test_vit.r160_in1k.safetensors"))


@pytest.mark.slow
def test_api_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _zoo_weights(tmp_path)
    namespace: dict = {}
    blocks = _blocks("api.md", "python")
    assert len(blocks) >= 5
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)  # noqa: S102
    assert os.path.isfile("ls.safetensors") and any(Path("figs").glob("*.png"))
