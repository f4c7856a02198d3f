"""Model sources: RobustBench, timm and torchvision checkpoints in their real layouts (random
weights), loaded bit for bit as the libraries' own loaders give them, safely and offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import epsl
from epsl.cli.main import main
from epsl.errors import EpslError
from epsl.models.safeload import NetworkRefused, numpy_numbers, offline
from epsl.models.sources import robustbench_zoo
from tests.system import REQUIRED

pytest.importorskip("timm")
#: what RobustBench's own torch.load (weights_only by default) needs for the numpy epoch
SCALARS = numpy_numbers()


def _entry(dataset: str, threat: str, name: str) -> dict:
    zoo = robustbench_zoo()
    (d,) = [d for d in zoo if d.value == dataset]
    (t,) = [t for t in zoo[d] if t.value == threat]
    return zoo[d][t][name]


def _unwrapped_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state of the library's own module inside epsl's wrapper (the head put back)."""
    state = dict(model.net.state_dict())
    if model.fc is not None:
        state.update({f"{model.head_name}.{k}": v for k, v in model.fc.state_dict().items()})
    return state


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RobustBench's layout, MODEL_DIR/DATASET/THREAT/NAME.pt, in the three shapes in the wild."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    # 1. a plain state_dict (Wong2020Fast's file lacks the mu/sigma buffers of its architecture)
    net = _entry("cifar10", "Linf", "Wong2020Fast")["model"]()
    plain = {k: v for k, v in net.state_dict().items() if k not in ("mu", "sigma")}
    (root / "cifar10" / "Linf").mkdir(parents=True)
    torch.save(plain, root / "cifar10" / "Linf" / "Wong2020Fast.pt")
    # 2. {"state_dict": ...} with DataParallel's module. prefixes and a numpy epoch beside it
    net = _entry("cifar10", "L2", "Rice2020Overfitting")["model"]()
    (root / "cifar10" / "L2").mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
                "epoch": np.int64(200), "best_acc": np.float64(0.5)},
               root / "cifar10" / "L2" / "Rice2020Overfitting.pt")
    # 3. ImageNet: the inner network's keys; RobustBench adds its normalize_model's "model."
    net = _entry("imagenet", "Linf", "Salman2020Do_R18")["model"]()
    inner = {k.removeprefix("model."): v for k, v in net.state_dict().items()
             if k.startswith("model.")}
    (root / "imagenet" / "Linf").mkdir(parents=True)
    torch.save(inner, root / "imagenet" / "Linf" / "Salman2020Do_R18.pt")
    return root


ZOO = [("cifar10/Linf/Wong2020Fast", (3, 32, 32), 10, "linear"),
       ("cifar10/L2/Rice2020Overfitting", (3, 32, 32), 10, "linear"),
       ("imagenet/Linf/Salman2020Do_R18", (3, 224, 224), 1000, "model.fc")]


@pytest.mark.parametrize(("name", "shape", "classes", "head"), ZOO,
                         ids=["plain", "state_dict+module", "imagenet-inner"])
def test_robustbench_loads_bit_for_bit_as_robustbench_does(
        zoo_dir: Path, name: str, shape: tuple[int, ...], classes: int, head: str) -> None:
    from robustbench.utils import load_model

    model, meta = epsl.load(f"robustbench:{name}", model_dir=zoo_dir)
    dataset, threat, model_name = name.split("/")
    with offline(), torch.serialization.safe_globals(SCALARS):
        reference = load_model(model_name, model_dir=zoo_dir, dataset=dataset,
                               threat_model=threat)
    ours, theirs = _unwrapped_state(model), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
        assert torch.equal(model.head(model.features(x)), model(x))
    assert not model.training
    assert meta["source"] == "robustbench" and meta["threat_model"] == threat
    assert (meta["dataset"], meta["num_classes"], tuple(meta["input_shape"])) ==\
        (dataset, classes, shape)
    assert meta["penultimate"] == head
    assert meta["weights"] == str((zoo_dir / f"{name}.pt").resolve())


def test_robustbench_diagnose_from_the_cli(zoo_dir: Path, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 32, 32, generator=gen).numpy()
    np.savez(tmp_path / "cifar.npz", x=x, y=np.arange(6) % 10)
    out = tmp_path / "diag"
    args = ["diagnose", "robustbench:cifar10/Linf/Wong2020Fast", "--model-dir", str(zoo_dir),
            "--data", str(tmp_path / "cifar.npz"), "--eps", "8/255", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = (out / "diagnostics.csv").read_text().splitlines()
    assert len(table) == 7
    record = epsl.results.records.load(out, "diagnostics")
    assert record.provenance.model["threat_model"] == "Linf"
    # the reuse key is the weights' bytes: another file at the same spec is another model
    assert record.provenance.checkpoint_sha256 == epsl.results.records.file_sha256(
        zoo_dir / "cifar10" / "Linf" / "Wong2020Fast.pt")
    eps = epsl.eps_l(epsl.load("robustbench:cifar10/Linf/Wong2020Fast", model_dir=zoo_dir)[0],
                     torch.from_numpy(x), torch.arange(6) % 10)
    frame = record.table.sort_values("index")
    assert np.allclose(frame["eps_l"].to_numpy(), eps.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("spec", "message"), [
    ("robustbench:cifar10/Linf/Carmon2019Unlabeled", "no weights file at {dir}/cifar10/Linf/"
                                                     "Carmon2019Unlabeled.pt"),
    ("robustbench:cifar10/Linf/Chen2020Adversarial", "an ensemble of 3 checkpoints"),
    ("robustbench:imagenet/Linf/Standard_R50", "from a hub"),
    ("robustbench:cifar10/Linf/NoSuchModel2099", "no model 'NoSuchModel2099'"),
    ("robustbench:cifar10/L7/Standard", "no 'L7' models"),
    ("robustbench:mnist/Linf/Standard", "unknown dataset 'mnist'"),
    ("robustbench:Wong2020Fast", "expected robustbench:DATASET/THREAT/NAME"),
    ("timm:resnet10t", "no weights file at {dir}/resnet10t.safetensors"),
    ("timm:no_such_net_42", "Unknown model"),
    ("torchvision:resnet18", "no weights file at {dir}/resnet18-f37072fd.pth"),
    ("torchvision:resnet18.NOPE", "has no weights 'NOPE'"),
    ("torchvision:nonet", "unknown torchvision model 'nonet'"),
], ids=lambda v: v.split(":")[0] + "-" + v.split("/")[-1][:12] if ":" in v else None)
def test_refusals_are_one_line(tmp_path: Path, spec: str, message: str) -> None:
    result = CliRunner().invoke(main, ["diagnose", spec, "--model-dir", str(tmp_path),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert message.format(dir=tmp_path.resolve()) in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_that_would_run_code_is_refused_and_never_runs(
        zoo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    root = tmp_path / "models"
    shutil.copytree(zoo_dir, root)
    torch.save({"state_dict": {}, "hook": Payload()}, root / "cifar10" / "Linf" / "Wong2020Fast.pt")
    # RobustBench's own loader would unpickle under this variable; epsl asks weights_only
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(EpslError, match=r"refused to load: it would build posix\.system"):
        epsl.load("robustbench:cifar10/Linf/Wong2020Fast", model_dir=root)
    assert not marker.exists()


def test_without_the_zoo_extra_the_error_names_the_install(
        zoo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "robustbench" or m.startswith("robustbench.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "robustbench", None)  # import robustbench -> ImportError
    with pytest.raises(EpslError, match=r"pip install 'epsl\[zoo\]'"):
        epsl.load("robustbench:cifar10/Linf/Wong2020Fast", model_dir=zoo_dir)


def test_offline_refuses_every_connection() -> None:
    import socket
    import urllib.request

    with offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        with pytest.raises(NetworkRefused):
            socket.create_connection(("127.0.0.1", 9))
        with pytest.raises(OSError):
            urllib.request.urlopen("https://download.pytorch.org/models/x.pth", timeout=1)
    assert socket.socket.connect is not None


def _unshare() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _unshare() and not REQUIRED, reason="unshare -n needs root")
def test_the_zoo_loads_with_no_network_at_all(zoo_dir: Path, tmp_path: Path) -> None:
    """A process without any network interface loads and diagnoses a RobustBench model."""
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)).numpy()
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(4))
    code = "from epsl.cli.main import main; main()"
    run = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", code, "diagnose",
         "robustbench:cifar10/Linf/Wong2020Fast", "--model-dir", str(zoo_dir), "--data",
         str(tmp_path / "d.npz"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "o" / "diagnostics.csv").is_file()


# --------------------------------------------------------------------------- timm


def _timm_reference(name: str) -> torch.nn.Module:
    import timm

    torch.manual_seed(3)
    return timm.create_model(name, pretrained=False).eval()


def test_timm_from_a_local_safetensors_file(tmp_path: Path) -> None:
    reference = _timm_reference("test_vit")
    save_file(reference.state_dict(), str(tmp_path / "test_vit.safetensors"))
    model, meta = epsl.load("timm:test_vit", model_dir=tmp_path)
    cfg = reference.pretrained_cfg
    x = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(cfg["mean"]).view(-1, 1, 1)
    std = torch.tensor(cfg["std"]).view(-1, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), reference((x - mean) / std), atol=1e-5, rtol=1e-5)
    assert meta["normalization"] == {"mean": list(cfg["mean"]), "std": list(cfg["std"])}
    assert meta["input_shape"] == [3, 160, 160] and meta["dataset"] == "imagenet"
    assert meta["pretrained_cfg"]["hf_hub_id"] == "timm/test_vit.r160_in1k"
    assert meta["penultimate"] == "head"


def test_timm_from_the_hugging_face_cache_never_the_hub(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    reference = _timm_reference("test_efficientnet")
    snapshot = tmp_path / "models--timm--test_efficientnet.r160_in1k" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    save_file(reference.state_dict(), str(snapshot / "model.safetensors"))
    (tmp_path / "models--timm--test_efficientnet.r160_in1k" / "refs").mkdir()
    (tmp_path / "models--timm--test_efficientnet.r160_in1k" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with offline():  # a reach for the hub would fail here rather than be skipped
        model, meta = epsl.load("timm:test_efficientnet")
    assert meta["weights"] == str((snapshot / "model.safetensors").resolve())
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in _unwrapped_state(model).items())


# --------------------------------------------------------------------------- torchvision


def test_torchvision_from_a_local_weights_file(tmp_path: Path) -> None:
    import torchvision
    from torchvision.models import ResNet18_Weights

    torch.manual_seed(4)
    reference = torchvision.models.resnet18().eval()
    weights = ResNet18_Weights.IMAGENET1K_V1
    torch.save(reference.state_dict(), tmp_path / Path(weights.url).name)
    model, meta = epsl.load("torchvision:resnet18.IMAGENET1K_V1", model_dir=tmp_path)
    transform = weights.transforms()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    normalised = (x - torch.tensor(transform.mean).view(-1, 1, 1)) / torch.tensor(
        transform.std).view(-1, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(normalised), atol=1e-5, rtol=1e-5)
    assert meta["name"] == "resnet18.IMAGENET1K_V1" and meta["num_classes"] == 1000
    assert meta["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["input_shape"] == [3, 224, 224] and meta["penultimate"] == "fc"


# --------------------------------------------------------------------------- the API


def test_eps_l_with_mean_and_std_equals_normalisation_inside(digits_test) -> None:  # type: ignore[no-untyped-def]
    from epsl.diagnostics import diagnose
    from epsl.models import create_model

    torch.manual_seed(0)
    inside = create_model("small-cnn", in_channels=1, num_classes=10, input_size=8,
                          mean=[0.3], std=[0.2]).eval()
    bare = create_model("small-cnn", in_channels=1, num_classes=10, input_size=8,
                        mean=[0.0], std=[1.0]).eval()
    bare.load_state_dict({**inside.state_dict(), "normalize.mean": torch.zeros(1, 1, 1),
                          "normalize.std": torch.ones(1, 1, 1)})
    x, y = digits_test.x[:12], digits_test.y[:12]
    expected = diagnose(inside, x, y).eps_l
    assert torch.allclose(epsl.eps_l(bare, x, y, mean=[0.3], std=[0.2]), expected, rtol=1e-5)
    assert torch.allclose(epsl.eps_l(inside, x, y), expected)
    with pytest.raises(EpslError, match="mean and std together"):
        epsl.eps_l(bare, x, y, mean=[0.3])


def test_every_form_through_the_cli(zoo_dir: Path, tmp_path: Path) -> None:
    """``epsl info`` on timm and torchvision weights; ``epsl activations`` (penultimate
    activations through the split head) on a RobustBench model."""
    import json

    import torchvision

    save_file(_timm_reference("test_vit").state_dict(), str(tmp_path / "test_vit.safetensors"))
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18-f37072fd.pth")
    runner = CliRunner()
    for spec, name in [("timm:test_vit", "test_vit"),
                       ("torchvision:resnet18", "resnet18.IMAGENET1K_V1")]:
        result = runner.invoke(main, ["info", spec, "--model-dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["name"] == name
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0)).numpy()
    np.savez(tmp_path / "c.npz", x=x, y=np.arange(5))
    result = runner.invoke(main, ["activations", "robustbench:cifar10/L2/Rice2020Overfitting",
                                  "--model-dir", str(zoo_dir), "--data", str(tmp_path / "c.npz"),
                                  "--out", str(tmp_path / "act")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "act" / "activations.csv").is_file()
    # mixing a source with --arch is refused: the source builds its own architecture
    result = runner.invoke(main, ["info", "timm:test_vit", "--model-dir", str(tmp_path),
                                  "--arch", "small-cnn"])
    assert result.exit_code == 1 and "builds its own architecture" in result.output
