"""Safe checkpoints: round trip, foreign state_dicts, user factories, refusals."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import epsl
from epsl.errors import EpslError
from epsl.models import MODELS, checkpoint, create_model

MARKER = Path("/tmp/epsl-pickle-marker")


class _Evil:
    """Unpickling this runs a shell command that writes MARKER."""

    def __reduce__(self):
        import os

        return (os.system, (f"touch {MARKER}",))


def _kwargs() -> dict:
    return checkpoint.model_kwargs_for("digits")


def test_round_trip_keeps_weights_and_metadata(tmp_path: Path) -> None:
    model = create_model("small-cnn", **_kwargs()).eval()
    meta = {"arch": "small-cnn", "arch_kwargs": _kwargs(), "dataset": "digits",
            "metrics": {"test_accuracy": 0.5}}
    path = checkpoint.save(tmp_path / "m.safetensors", model, meta)
    loaded, got = epsl.load(path)
    assert not loaded.training
    assert got["metrics"] == {"test_accuracy": 0.5} and got["epsl_version"] == epsl.__version__
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))


def test_foreign_state_dict_loads_with_arch(tmp_path: Path) -> None:
    model = create_model("small-cnn", **_kwargs()).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               tmp_path / "m.pth")
    loaded, meta = epsl.load(tmp_path / "m.pth", arch="small-cnn", dataset="digits")
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(model(x), loaded(x)) and meta["arch"] == "small-cnn"
    with pytest.raises(EpslError, match="arch=NAME"):
        epsl.load(tmp_path / "m.pth")


def test_user_factory(tmp_path: Path) -> None:
    model = create_model("small-cnn", **_kwargs())
    torch.save(model.state_dict(), tmp_path / "m.pt")
    loaded, _ = checkpoint.load(tmp_path / "m.pt", model="tests.factories:digits_cnn")
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(model.eval()(x), loaded(x))
    with pytest.raises(EpslError, match="cannot import"):
        checkpoint.load(tmp_path / "m.pt", model="tests.nowhere:factory")
    with pytest.raises(EpslError, match="module:factory"):
        checkpoint.load(tmp_path / "m.pt", model="no_colon")


def test_user_factory_in_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """`epsl info w.pt --model mynet:build` run from the folder that holds mynet.py."""
    (tmp_path / "epsl_user_net_cwd.py").write_text(
        "from torch import nn\n\ndef build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n")
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).state_dict(), tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    loaded, meta = checkpoint.load(tmp_path / "w.pt", model="epsl_user_net_cwd:build")
    assert meta["arch"] == "epsl_user_net_cwd:build" and loaded(torch.rand(1, 1, 8, 8)).shape == (1, 10)


def test_pickle_that_carries_code_never_runs(tmp_path: Path) -> None:
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"weight": _Evil()}, f)
    with pytest.raises(EpslError, match="refused"):
        checkpoint.load(path, arch="small-cnn")
    # the same file through torch.save's zip format
    torch.save({"weight": _Evil()}, tmp_path / "evil2.pt")
    with pytest.raises(EpslError, match="refused"):
        checkpoint.load(tmp_path / "evil2.pt", arch="small-cnn")
    assert not MARKER.exists()


def test_wrong_architecture_and_corrupt_files(tmp_path: Path) -> None:
    model = create_model("small-cnn", **_kwargs())
    torch.save(model.state_dict(), tmp_path / "m.pt")
    with pytest.raises(EpslError, match="do not fit"):
        checkpoint.load(tmp_path / "m.pt", arch="madry-mnist", dataset="mnist")
    meta = {"arch": "small-cnn", "arch_kwargs": _kwargs()}
    path = checkpoint.save(tmp_path / "m.safetensors", model, meta)
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(EpslError, match="not a readable safetensors"):
        checkpoint.load(tmp_path / "trunc.safetensors")
    with pytest.raises(EpslError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "missing.safetensors")


def test_check_dataset_mismatch() -> None:
    with pytest.raises(EpslError, match="expects inputs of shape"):
        checkpoint.check_dataset({"input_shape": [1, 8, 8]}, (1, 28, 28), 10)
    checkpoint.check_dataset({"input_shape": [1, 8, 8], "num_classes": 10}, (1, 8, 8), 10)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_round_trips(tmp_path: Path, name: str) -> None:
    kwargs = checkpoint.model_kwargs_for("cifar10" if name in {"wrn", "wrn-28-10",
                                                               "preact-resnet18"} else "mnist")
    if name.startswith("wrn"):
        kwargs.update(depth=10, widen_factor=1)
    model = create_model(name, **kwargs).eval()
    path = checkpoint.save(tmp_path / f"{name}.safetensors", model,
                           {"arch": name, "arch_kwargs": kwargs})
    loaded, _ = checkpoint.load(path)
    x = torch.rand(2, kwargs["in_channels"], kwargs["input_size"], kwargs["input_size"])
    assert torch.allclose(model(x), loaded(x))
    assert model.features(x).ndim == 2
    assert torch.allclose(model.head(model.features(x)), model(x))
