"""The tracer's ops as people write them (arithmetic with buffers and parameters, functional
and method forms, identity and dropout): sound bounds against sampled and PGD points inside
the ball, exact bounds on affine nets (the closed form), one-line refusals naming the op and
where it is, and a ReLU MLP that normalises as ``(x - mean) / std`` in its forward certified
through ``epsl certify --exact`` with ε_cert ≤ ε_exact ≤ ε*."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from benchmarks.common import fit
from epsl.certify.crown import ball, crown_margins, ibp_margins, trace_network
from epsl.certify.radius import certify
from epsl.errors import EpslError

SHAPE = (3, 6, 6)
CLASSES = 4


def _margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    keep = ~torch.eye(logits.shape[1], dtype=torch.bool)[y]
    return (logits.gather(1, y[:, None]) - logits)[keep].view(len(y), -1)


def _seeded(module: nn.Module, seed: int) -> nn.Module:
    """``module`` with seeded weights and BatchNorm statistics away from the defaults."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return module.eval()


class Arithmetic(nn.Module):
    """(x - mean) / std with buffers, x * scale + shift with parameters (per channel, after a
    conv), numbers on either side, negation, method and torch forms."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1))
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(4, 1, 1))
        self.shift = nn.Parameter(torch.zeros(4, 1, 1))
        self.fc1 = nn.Linear(4 * 36, 12)
        self.fc2 = nn.Linear(12, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x - self.mean) / self.std
        h = 1.0 - h
        h = self.conv(0.5 * h)
        h = F.relu(h * self.scale + self.shift)
        h = torch.sub(h, self.shift).mul(2.0).div(self.scale.abs() + 1)
        h = -h + 0.25
        h = torch.relu(self.fc1(h.flatten(1) / 3))
        return self.fc2(h.add(self.shift.mean()))


class Functional(nn.Module):
    """F.conv2d, F.relu, a residual add written +=, nn.Identity, x.relu(), F.avg_pool2d and
    F.max_pool2d, view by x.size(0), F.dropout and nn.Dropout in eval mode, x.mean over the
    spatial dims, F.adaptive_avg_pool2d, torch.flatten, F.linear, reshape by x.shape[0]."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(5, 3, 3, 3))
        self.bias = nn.Parameter(torch.zeros(5))
        self.bn = nn.BatchNorm2d(5)
        self.conv = nn.Conv2d(5, 5, 3, padding=1)
        self.identity = nn.Identity()
        self.drop = nn.Dropout(0.5)
        self.pooled_weight = nn.Parameter(torch.zeros(CLASSES, 5 * 9))
        self.pooled_bias = nn.Parameter(torch.zeros(CLASSES))
        self.spatial_weight = nn.Parameter(torch.zeros(CLASSES, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(F.conv2d(x, self.weight, self.bias, padding=1)))
        out = self.conv(h)
        out += self.identity(h)
        out = out.relu()
        pooled = (F.avg_pool2d(out, 2) + F.max_pool2d(out, 2)).view(out.size(0), -1)
        pooled = self.drop(F.dropout(pooled, 0.3, training=self.training))
        spatial = out.mean((2, 3)) + torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        logits = F.linear(pooled, self.pooled_weight, self.pooled_bias) \
            + F.linear(spatial, self.spatial_weight)
        return logits.reshape(x.shape[0], -1)


def _worst(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """N x (K-1): the smallest margin found in the ball and box: uniform points, vertices and
    a signed-gradient descent on each margin (float64)."""
    lower, upper = ball(x, eps)
    net = model.double()
    gen = torch.Generator().manual_seed(0)
    worst = torch.full((len(x), CLASSES - 1), float("inf"), dtype=torch.float64)
    with torch.no_grad():
        for draw in range(48):
            u = torch.rand(lower.shape, generator=gen, dtype=torch.float64)
            point = lower + (upper - lower) * (u.round() if draw % 2 else u)
            worst = torch.minimum(worst, _margins(net(point), y))
    for target in range(CLASSES - 1):
        point = ((lower + upper) / 2).requires_grad_(True)
        for _ in range(25):
            (grad,) = torch.autograd.grad(_margins(net(point), y)[:, target].sum(), point)
            with torch.no_grad():
                point -= (upper - lower) / 8 * grad.sign()
                point.copy_(torch.maximum(torch.minimum(point, upper), lower))
        with torch.no_grad():
            worst = torch.minimum(worst, _margins(net(point), y))
    model.float()
    return worst


NETS = {"arithmetic": Arithmetic, "functional": Functional}


@pytest.mark.parametrize("eps", [0.01, 0.05])
@pytest.mark.parametrize("name", list(NETS))
def test_bounds_hold_for_sampled_and_pgd_points(name: str, eps: float) -> None:
    model = _seeded(NETS[name](), seed=1)
    x = torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(2))
    y = torch.arange(5) % CLASSES
    network = trace_network(model, x[:1])
    with torch.no_grad():
        np.testing.assert_allclose(network.forward(x).numpy(), model(x).double().numpy(),
                                   rtol=1e-5, atol=1e-5)
    crown, ibp = crown_margins(network, x, y, eps), ibp_margins(network, x, y, eps)
    worst = _worst(model, x, y, eps)
    assert torch.all(crown <= worst + 1e-9), (crown - worst).max()
    assert torch.all(ibp <= worst + 1e-9), (ibp - worst).max()
    assert torch.all(crown >= ibp - 1e-12)


class AffineArithmetic(nn.Module):
    """Affine only: every arithmetic form, F.linear and nn.Linear, no ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).view(3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1))
        self.weight = nn.Parameter(torch.zeros(8, 3 * 36))
        self.scale = nn.Parameter(torch.ones(8))
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = 2.0 - (x - self.mean) / self.std * 0.5
        h = F.linear(h.flatten(1), self.weight).mul(self.scale) + self.scale
        return -self.fc(h / 4) + 1


def test_affine_nets_get_the_closed_form_bound() -> None:
    model = _seeded(AffineArithmetic(), seed=3)
    x = torch.rand(6, *SHAPE, generator=torch.Generator().manual_seed(4))
    y = torch.arange(6) % CLASSES
    network = trace_network(model, x[:1])
    net64 = model.double()
    jacobian = torch.autograd.functional.jacobian(lambda t: net64(t[None])[0],
                                                  torch.zeros(SHAPE, dtype=torch.float64))
    weight, bias = jacobian.flatten(1), net64(torch.zeros(1, *SHAPE, dtype=torch.float64))[0]
    model.float()
    for eps in (0.003, 0.1):
        lower, upper = ball(x, eps)
        rows = weight[y][:, None] - weight[None]  # N x K x D: the margins' rows
        closed = (rows.clamp_min(0) * lower.flatten(1)[:, None]).sum(-1) \
            + (rows.clamp_max(0) * upper.flatten(1)[:, None]).sum(-1) + bias[y][:, None] - bias
        keep = ~torch.eye(CLASSES, dtype=torch.bool)[y]
        expected = closed[keep].view(len(y), CLASSES - 1)
        got = crown_margins(network, x, y, eps, with_intervals=False)
        np.testing.assert_allclose(got.numpy(), expected.detach().numpy(), rtol=1e-10,
                                   atol=1e-10)


class Lambda(nn.Module):
    """A layer whose forward is ``fn``."""

    def __init__(self, fn) -> None:  # noqa: ANN001 - any function of a tensor
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


REFUSED = {
    "sigmoid": (torch.sigmoid, r"cannot bound 'sigmoid' \(layer 0 \(Lambda\)\); supported"),
    "division by the input": (lambda x: 2 / x, "division by the input is not affine"),
    "product of two tensors": (lambda x: x * x, "'mul' .* of 2 tensors"),
    "difference of two tensors": (lambda x: x - x.relu(), "'sub' .* of 2 tensors"),
    "dropout in training mode": (lambda x: F.dropout(x, 0.5), "'dropout' .* training mode"),
    "mean over everything": (lambda x: x - x.mean(), "'mean' .* without dims"),
    "mean over the batch": (lambda x: x.mean(0, keepdim=True), "over dimension 0"),
    "mean over dim -4": (lambda x: x.mean(-4), "does not keep the batch dimension first"),
    "flatten of the batch": (torch.flatten, "'flatten' .* from dimension 0"),
    "view(-1)": (lambda x: x.view(-1), "moves the batch dimension"),
    "size(1)": (lambda x: x.view(x.size(1), -1), "shape query of dimension 1"),
    "in place, read again": (lambda x: F.relu(x, inplace=True) + x,
                             "in place, on a tensor read again"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_an_unsupported_op_is_refused_in_one_line_naming_it_and_where(name: str) -> None:
    fn, message = REFUSED[name]
    model = nn.Sequential(Lambda(fn), nn.Flatten(), nn.Linear(3 * 36, CLASSES))
    with pytest.raises(EpslError, match=message) as error:
        certify(model, torch.rand(2, *SHAPE), torch.tensor([0, 1]))
    assert "\n" not in str(error.value)


class NormalizedMLP(nn.Module):
    """A ReLU MLP for digits (1 x 8 x 8) that normalises in its forward, with buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.3))
        self.register_buffer("std", torch.tensor(0.4))
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = ((x - self.mean) / self.std).flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(h)))))


@pytest.mark.slow
def test_a_normalizing_mlp_certifies_through_the_cli_and_its_milp_agrees(
        tmp_path, digits_train) -> None:
    from epsl.cli.main import main

    torch.manual_seed(0)
    model = fit(NormalizedMLP(), digits_train, seed=0, epochs=15, lr=3e-3)
    torch.save(model.state_dict(), tmp_path / "mlp.pt")
    out = tmp_path / "cert"
    result = CliRunner().invoke(main, [
        "certify", str(tmp_path / "mlp.pt"), "--model", "tests.test_certify_ops:NormalizedMLP",
        "--dataset", "digits", "--limit", "10", "--steps", "12", "--exact", "--exact-time",
        "20", "--fmn-steps", "50", "--fab-steps", "20", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "certify.csv")
    solved = table[np.isfinite(table["eps_exact"])]
    assert len(solved) >= 7
    assert (solved["eps_cert"] > 0).all()
    assert (solved["eps_cert"] <= solved["eps_exact"] + 1e-9).all()
    assert (solved["eps_exact"] <= solved["eps_star"] * (1 + 1e-6)).all()
    assert json.loads((out / "certify.json").read_text())["n"] == 10
