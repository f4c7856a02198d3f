"""ε_cert and ε_exact against independent references: scipy's linprog on an affine model,
sampled and PGD points inside the ball on nets with BatchNorm, residual adds and max pooling,
the ordering ε_cert ≤ ε_exact ≤ ε* on a small ReLU MLP, and CROWN against IBP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linprog
from torch import nn

from benchmarks.common import fit
from epsl.attacks.eps_star import EpsStarConfig, find_eps_star
from epsl.certify.crown import (
    ball,
    crown_margins,
    ibp_margins,
    margin_threshold,
    trace_network,
)
from epsl.certify.radius import CertifyOptions, certify
from epsl.errors import EpslError
from epsl.models import Normalize, checkpoint, create_model


def _margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    classes = logits.shape[1]
    keep = ~torch.eye(classes, dtype=torch.bool)[y]
    return (logits.gather(1, y[:, None]) - logits)[keep].view(len(y), classes - 1)


class Affine(nn.Module):
    def __init__(self, dim: int = 12, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.normalize = Normalize((0.3,), (0.7,))
        self.fc = nn.Linear(dim, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, dim, generator=gen))
            self.fc.bias.copy_(torch.randn(classes, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.normalize(x).flatten(1))


def _linprog_minimum(model: Affine, x: torch.Tensor, label: int) -> float:
    """The exact smallest l_inf radius in the box at which some class reaches the label's
    logit: one LP per class over (x', t), minimise t."""
    weight, bias = model.fc.weight.detach().double(), model.fc.bias.detach().double()
    mean, std = model.normalize.mean.double().flatten(), model.normalize.std.double().flatten()
    w = (weight / std).numpy()  # logits = w x + b on pixels
    b = (bias - (weight * mean / std).sum(1)).numpy()
    x0 = x.double().flatten().numpy()
    d = x0.size
    best = np.inf
    for c in range(w.shape[0]):
        if c == label:
            continue
        # (w_c - w_y) x' >= b_y - b_c ; |x' - x0| <= t ; 0 <= x' <= 1
        a_ub = [np.r_[w[label] - w[c], 0.0]]
        b_ub = [b[c] - b[label]]
        for i in range(d):
            row = np.zeros(d + 1)
            row[i], row[d] = 1.0, -1.0
            a_ub.append(row)
            b_ub.append(x0[i])
            row = np.zeros(d + 1)
            row[i], row[d] = -1.0, -1.0
            a_ub.append(row)
            b_ub.append(-x0[i])
        res = linprog(np.r_[np.zeros(d), 1.0], A_ub=np.array(a_ub), b_ub=np.array(b_ub),
                      bounds=[(0, 1)] * d + [(0, None)], method="highs")
        if res.status == 0:
            best = min(best, float(res.fun))
    return best


def test_affine_eps_cert_is_the_exact_box_constrained_minimum_of_linprog() -> None:
    model = Affine().eval()
    x = torch.rand(24, 1, 3, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    out = certify(model, x, y, options=CertifyOptions(steps=30))
    reference = np.array([_linprog_minimum(model, x[i], int(y[i])) for i in range(len(x))])
    finite = np.isfinite(reference) & (reference < 1)
    assert finite.sum() >= 20
    assert np.all(out.eps_cert[finite] <= reference[finite])  # sound
    # exact up to the bisection's resolution and the rounding threshold
    np.testing.assert_allclose(out.eps_cert[finite], reference[finite], rtol=1e-3, atol=1e-6)
    # intervals bound z_y and z_c apart (lower z_y minus upper z_c), so even here they lose
    assert np.all(out.eps_cert_ibp <= out.eps_cert)
    assert np.median(out.eps_cert_ibp[finite] / reference[finite]) < 0.95


class Residual(nn.Module):
    """Normalize, conv + BN + ReLU, a residual block, max pool, average pool, flatten, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = Normalize((0.5,), (0.25,))
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 2 * 2, 5)
        gen = torch.Generator().manual_seed(3)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.copy_(torch.randn(4, generator=gen) * 0.1)
            bn.running_var.copy_(torch.rand(4, generator=gen) + 0.5)
            with torch.no_grad():
                bn.weight.copy_(torch.randn(4, generator=gen))
                bn.bias.copy_(torch.randn(4, generator=gen) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(self.normalize(x))))
        h = F.relu(h + self.conv3(F.relu(self.bn2(self.conv2(h)))))
        h = F.max_pool2d(h, 2)
        return self.fc(self.pool(h).flatten(1))


def _worst_sampled(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float
                   ) -> torch.Tensor:
    """The smallest margin found in the ball and box: random vertices, uniform points and a
    PGD descent on every margin (float64)."""
    lower, upper = ball(x, eps)
    model = model.double()
    worst = torch.full((len(x), model(x.double()).shape[1] - 1), float("inf"),
                       dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for draw in range(64):
            u = torch.rand(lower.shape, generator=gen, dtype=torch.float64)
            point = lower + (upper - lower) * (u.round() if draw % 2 else u)
            worst = torch.minimum(worst, _margins(model(point), y))
    for target in range(worst.shape[1]):  # PGD toward each margin
        point = ((lower + upper) / 2).clone().requires_grad_(True)
        for _ in range(30):
            m = _margins(model(point), y)[:, target].sum()
            (grad,) = torch.autograd.grad(m, point)
            with torch.no_grad():
                point -= (upper - lower).clamp_min(1e-12) / 10 * grad.sign()
                point.copy_(torch.maximum(torch.minimum(point, upper), lower))
        with torch.no_grad():
            worst = torch.minimum(worst, _margins(model(point), y))
    model.float()
    return worst


@pytest.mark.parametrize("eps", [0.005, 0.02, 0.08])
def test_bounds_contain_sampled_and_pgd_points_with_batchnorm_and_residual_adds(eps) -> None:
    torch.manual_seed(0)
    model = Residual().eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.arange(6) % 5
    network = trace_network(model, x[:1])
    assert {op.kind for op in network.ops} == {"input", "affine", "relu", "add", "maxpool"}
    np.testing.assert_allclose(network.forward(x).numpy(), model(x).detach().double().numpy(),
                               rtol=1e-5, atol=1e-5)
    crown = crown_margins(network, x, y, eps)
    ibp = ibp_margins(network, x, y, eps)
    worst = _worst_sampled(model, x, y, eps)
    assert torch.all(crown <= worst + 1e-9), (crown - worst).max()
    assert torch.all(ibp <= worst + 1e-9)
    assert torch.all(crown >= ibp - 1e-12)  # intersected with IBP at the output
    # the logits' own bounds contain the sampled logits too
    lower, upper = ball(x, eps)
    lo, hi = network.bounds(lower, upper)[-1]
    with torch.no_grad():
        for _ in range(20):
            point = lower + (upper - lower) * torch.rand(lower.shape, dtype=torch.float64)
            z = model.double()(point)
            model.float()
            assert torch.all(z >= lo - 1e-9) and torch.all(z <= hi + 1e-9)


def _quick_mlp(data, seed: int = 0, label_smoothing: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("mlp", hidden=16, depth=2, **checkpoint.model_kwargs_for("digits"))
    return fit(model, data, seed=seed, epochs=15, lr=3e-3, label_smoothing=label_smoothing)


@pytest.mark.slow
def test_eps_cert_le_eps_exact_le_eps_star_on_a_small_relu_mlp(digits_train, digits_test) -> None:
    model = _quick_mlp(digits_train)
    x, y = digits_test.x[:12], digits_test.y[:12]
    found = find_eps_star(model, x, y, config=EpsStarConfig(seed=0))
    star = found.eps_star.numpy()
    out = certify(model, x, y, hi=star, options=CertifyOptions(exact=True, exact_time=30))
    ok = out.correct
    solved = ok & np.isfinite(out.eps_exact)
    assert solved.sum() >= 8
    assert np.all(out.eps_cert[ok] <= out.eps_exact_lo[ok] + 1e-9)
    assert np.all(out.eps_exact_lo[ok] <= out.eps_exact_hi[ok])
    assert np.all(out.eps_cert[solved] <= out.eps_exact[solved])
    assert np.all(out.eps_exact[solved] <= star[solved] * (1 + 1e-6))
    # the solver's point is a real adversarial example at that distance (re-scored)
    np.testing.assert_allclose(out.eps_exact_point[solved], out.eps_exact[solved], atol=1e-5)
    assert np.all(out.eps_cert[ok] > 0)  # every correct example has some certified radius
    assert np.all(out.eps_cert[~ok] == 0)


@pytest.fixture(scope="module")
def narrow_cnn(digits_train) -> nn.Module:
    """A small-cnn of width 8 (hidden 32) trained briefly: the study's architecture, cheap."""
    torch.manual_seed(0)
    model = create_model("small-cnn", width=8, hidden=32, **checkpoint.model_kwargs_for("digits"))
    return fit(model, digits_train, seed=0, epochs=6, lr=3e-3)


def test_crown_is_at_least_as_tight_as_ibp_on_every_example(narrow_cnn, digits_test) -> None:
    x, y = digits_test.x[:16], digits_test.y[:16]
    network = trace_network(narrow_cnn, x[:1])
    for eps in (0.005, 0.02):
        crown = crown_margins(network, x, y, eps, with_intervals=False)  # CROWN's own
        ibp = ibp_margins(network, x, y, eps)
        assert torch.all(crown.amin(1) >= ibp.amin(1)), eps
    out = certify(narrow_cnn, x, y, options=CertifyOptions(steps=7))
    assert np.all(out.eps_cert >= out.eps_cert_ibp)
    ok = out.correct
    assert ok.sum() >= 12
    assert np.median(out.eps_cert[ok] / np.maximum(out.eps_cert_ibp[ok], 1e-12)) > 2


def test_a_certified_radius_clears_the_rounding_threshold() -> None:
    model = Affine().eval()
    x = torch.rand(8, 1, 3, 4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    out = certify(model, x, y, options=CertifyOptions(steps=20))
    network = trace_network(model, x[:1])
    margins = crown_margins(network, x, y, torch.as_tensor(out.eps_cert))
    assert torch.all(margins.amin(1) > margin_threshold(logits))
    # on the decision boundary (classes 0 and 1 tie everywhere) nothing is certified, although
    # argmax calls class 0 correct
    with torch.no_grad():
        model.fc.weight[1] = model.fc.weight[0]
        model.fc.bias[1] = model.fc.bias[0] = model.fc.bias.max() + 10
    tie = certify(model, x[:3], torch.zeros(3, dtype=torch.long))
    assert tie.correct.all() and np.all(tie.eps_cert == 0.0)


def test_an_unsupported_layer_is_a_one_line_error_naming_it() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.raises(EpslError, match=r"cannot bound 2 \(Tanh\); supported layers") as error:
        certify(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]))
    assert "\n" not in str(error.value)


def test_exact_refuses_a_max_pool_network_in_one_line(narrow_cnn, digits_test) -> None:
    with pytest.raises(EpslError, match="--exact supports affine layers and ReLUs only") as e:
        certify(narrow_cnn, digits_test.x[:2], digits_test.y[:2],
                options=CertifyOptions(exact=True, steps=2))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", [dict(method="alpha"), dict(steps=0), dict(exact_time=0)])
def test_bad_options_are_one_line_errors(bad) -> None:
    with pytest.raises(EpslError):
        CertifyOptions(**bad)


def test_the_certify_command_writes_its_table_and_record(tmp_path, digits_checkpoint) -> None:
    import json

    from click.testing import CliRunner

    from epsl.cli.main import main

    out = tmp_path / "cert"
    args = ["certify", str(digits_checkpoint), "--limit", "5", "--steps", "3", "--fmn-steps",
            "10", "--fab-steps", "5", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Eq. 4 provably conservative (eps_L <= eps_cert)" in result.output
    table = __import__("pandas").read_csv(out / "certify.csv")
    assert list(table.columns) == ["index", "label", "eps_cert", "eps_cert_ibp", "bisect_hi",
                                   "eps_l", "eps_star", "group"]
    assert (table["eps_cert"] <= table["eps_star"]).all()
    assert (table["eps_cert"] >= table["eps_cert_ibp"]).all()
    record = json.loads((out / "certify.json").read_text())
    assert record["schema"] == "epsl.certify" and record["n"] == 5
    assert record["provenance"]["settings"]["certify"] == {"method": "crown", "steps": 3}
    # a second call does not overwrite; bad input is one line and writes nothing
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "pass --overwrite" in again.output
    bad = CliRunner().invoke(main, ["certify", str(digits_checkpoint), "--eps-max", "1.5",
                                    "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and not (tmp_path / "bad").exists()
