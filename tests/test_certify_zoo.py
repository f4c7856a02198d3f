"""Every architecture that the zoo preset names (``epsl/study/presets/zoo-cifar10-linf.toml``),
built by RobustBench's model zoo with random weights (nothing is downloaded), is accepted by
certify's tracer, not refused: its float64 copy computes the model's logits, and CROWN's last
backward pass runs through every op and bounds every margin of one image soundly. These are
WideResNets and ResNets of 11-184 M parameters, so the check is kept cheap: one image, a radius
of 1e-15, the intermediate bounds by intervals. Those are loose on such deep random nets (the
bound is far below zero), so nothing is certified here: refining them by CROWN, as
``certify`` does, costs one backward pass through the network per unstable ReLU."""

from __future__ import annotations

import tomllib
from importlib import resources

import pytest
import torch

from epsl.certify.crown import ball, trace_network

pytest.importorskip("timm")  # RobustBench's zoo imports it

EPS = 1e-15


def _preset_names() -> list[str]:
    text = resources.files("epsl.study.presets").joinpath("zoo-cifar10-linf.toml").read_text()
    return [m["checkpoint"].removeprefix("robustbench:cifar10/Linf/")
            for m in tomllib.loads(text)["models"]]


def _build(name: str) -> torch.nn.Module:
    from epsl.models.sources import robustbench_zoo

    zoo = robustbench_zoo()
    (dataset,) = [d for d in zoo if d.value == "cifar10"]
    (threat,) = [t for t in zoo[dataset] if t.value == "Linf"]
    torch.manual_seed(0)
    return zoo[dataset][threat][name]["model"]().eval()  # type: ignore[no-any-return]


def test_the_preset_names_robustbench_models_only() -> None:
    text = resources.files("epsl.study.presets").joinpath("zoo-cifar10-linf.toml").read_text()
    assert all(m["checkpoint"].startswith("robustbench:cifar10/Linf/")
               for m in tomllib.loads(text)["models"])


@pytest.mark.slow
@pytest.mark.parametrize("name", _preset_names())
def test_a_zoo_architecture_is_traced_exactly_and_bounded(name: str) -> None:
    model = _build(name)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    network = trace_network(model, x)
    with torch.no_grad():
        logits = model(x)
    assert torch.allclose(network.forward(x), logits.double(), rtol=1e-4, atol=1e-4)
    y = logits.argmax(1)
    lower, upper = ball(x, EPS)
    bounds = network.intervals(lower, upper)
    classes = logits.shape[1]
    spec = (torch.eye(classes, dtype=torch.float64)[y] - torch.eye(classes, dtype=torch.float64)
            )[None, torch.arange(classes) != y]  # 1 x (K-1) x K: e_y - e_c
    margins = network.backward(len(network.ops) - 1, spec, bounds, lower, upper)
    true = (network.forward(x)[0, y] - network.forward(x)[0])[torch.arange(classes) != y]
    assert torch.all(torch.isfinite(margins))
    assert torch.all(margins[0] <= true + 1e-9)  # sound at the centre of the ball
