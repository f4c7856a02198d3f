"""ε_L in every ℓp norm: the dual-norm form of Eq. 4 against closed forms and scipy.optimize."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize
from torch import nn

from epsl.diagnostics import diagnose, diagnose_norms, grad_gap_column
from epsl.errors import EpslError
from epsl.norms import NORMS, Norm, check_radius, distance, dual, lp, max_radius, parse_norm
from epsl.runs.diagnose import DiagnoseConfig

DUAL_ORD = {"linf": 1, "l2": 2, "l1": math.inf}


def affine_model(seed: int = 0, classes: int = 5, shape: tuple[int, ...] = (1, 4, 4)
                 ) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """z = W x + b on flattened pixels, in float64; returns (model, W, b)."""
    gen = torch.Generator().manual_seed(seed)
    dim = int(np.prod(shape))
    linear = nn.Linear(dim, classes).double()
    with torch.no_grad():
        linear.weight.copy_(torch.randn(classes, dim, generator=gen, dtype=torch.float64))
        linear.bias.copy_(torch.randn(classes, generator=gen, dtype=torch.float64))
    return nn.Sequential(nn.Flatten(), linear).eval(), linear.weight.detach(), linear.bias.detach()


def test_parse_and_dual() -> None:
    assert [parse_norm(n) for n in NORMS] == [Norm.LINF, Norm.L2, Norm.L1]
    assert parse_norm(" L2 ") is Norm.L2
    assert [dual(n).value for n in NORMS] == ["l1", "l2", "linf"]
    with pytest.raises(EpslError, match="norm must be one of linf, l2, l1"):
        parse_norm("l3")


@pytest.mark.parametrize("norm", NORMS)
def test_lp_matches_numpy(norm: str) -> None:
    values = torch.randn(6, 11, dtype=torch.float64)
    order = {"linf": math.inf, "l2": 2, "l1": 1}[norm]
    assert np.allclose(lp(values, norm).numpy(), np.linalg.norm(values.numpy(), ord=order, axis=1))
    a, b = torch.rand(3, 1, 2, 2), torch.rand(3, 1, 2, 2)
    assert np.allclose(distance(a, b, norm).numpy(),
                       np.linalg.norm((a - b).flatten(1).double().numpy(), ord=order, axis=1))


def test_radius_limits() -> None:
    assert max_radius("l2", 64) == 8.0 and max_radius("l1", 64) == 64.0
    check_radius("l2", [0.5, 2.0, 8.0], 64)
    check_radius("l1", 64.0, 64)
    for norm, eps, dim, text in [("linf", 1.5, None, "in \\(0, 1\\] for the linf norm"),
                                 ("l2", 8.01, 64, "exceeds the whole \\[0, 1\\] box in l2"),
                                 ("l1", 65, 64, "exceeds the whole \\[0, 1\\] box in l1"),
                                 ("l2", 0.0, 64, "positive radius"),
                                 ("l2", math.inf, None, "positive radius")]:
        with pytest.raises(EpslError, match=text):
            check_radius(norm, eps, dim)


@pytest.mark.parametrize("norm", NORMS)
def test_affine_eps_l_is_the_closed_form(norm: str) -> None:
    """On z = Wx + b, ε_L^p = min_c (z_y - z_c) / ||w_y - w_c||_q exactly (the Jacobian is W)."""
    model, weight, bias = affine_model()
    x = torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    logits = model(x).detach()
    y = logits.argmax(1)
    found = diagnose(model, x, y, norm=norm)
    for i in range(len(y)):
        gaps = logits[i, y[i]] - logits[i]
        denom = np.linalg.norm((weight[y[i]] - weight).numpy(), ord=DUAL_ORD[norm], axis=1)
        ratios = [gaps[c].item() / denom[c] for c in range(len(gaps)) if c != y[i]]
        assert found.eps_l[i].item() == pytest.approx(min(ratios), rel=1e-9)
        assert found.grad_gap[i].item() == pytest.approx(denom[found.rival[i]], rel=1e-9)
    assert found.norm == norm
    assert grad_gap_column(norm) in found.to_frame().columns


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_affine_eps_l_is_the_true_minimum_without_the_box(norm: str) -> None:
    """Eq. 4 is exact for an affine model while the box is inactive: the smallest ℓp
    perturbation that puts some class c ahead of y, found by scipy (a linear program for ℓ1 and
    ℓ∞, SLSQP for ℓ2) per class, equals ε_L^p."""
    model, weight, bias = affine_model(seed=2, classes=4, shape=(1, 3, 3))
    x = torch.full((1, 1, 3, 3), 0.5, dtype=torch.float64)
    logits = model(x).detach()[0]
    y = int(logits.argmax())
    eps_l = diagnose(model, x, torch.tensor([y]), norm=norm).eps_l.item()
    w = weight.numpy()
    best = math.inf
    dim = w.shape[1]
    for c in range(len(logits)):
        if c == y:
            continue
        g, gap = w[y] - w[c], float(logits[y] - logits[c])  # flip: g . delta <= -gap
        if norm == "l2":
            res = minimize(lambda d: d @ d, np.zeros(dim), jac=lambda d: 2 * d,
                           constraints=[{"type": "ineq", "fun": lambda d, g=g, gap=gap:
                                         -(g @ d) - gap, "jac": lambda d, g=g: -g}],
                           method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
            value = math.sqrt(res.fun)
        elif norm == "l1":  # delta = u - v, u, v >= 0; min sum(u + v)
            res = linprog(np.ones(2 * dim), A_ub=np.concatenate([g, -g])[None], b_ub=[-gap],
                          bounds=[(0, None)] * (2 * dim))
            value = res.fun
        else:  # min t with -t <= delta_i <= t
            cost = np.zeros(dim + 1)
            cost[-1] = 1
            rows = [np.append(g, 0.0)]
            rows += [np.append(np.eye(dim)[i], -1.0) for i in range(dim)]
            rows += [np.append(-np.eye(dim)[i], -1.0) for i in range(dim)]
            res = linprog(cost, A_ub=np.array(rows), b_ub=[-gap] + [0.0] * (2 * dim),
                          bounds=[(None, None)] * dim + [(0, None)])
            value = res.fun
        best = min(best, value)
    assert eps_l == pytest.approx(best, rel=1e-5)


def test_one_jacobian_gives_every_norm() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4)).eval()
    x = torch.rand(7, 1, 4, 4)
    y = torch.randint(0, 4, (7,))
    every = diagnose_norms(model, x, y, batch_size=3)
    assert list(every) == list(NORMS)
    for norm, found in every.items():
        alone = diagnose(model, x, y, norm=norm, batch_size=3)
        assert torch.equal(found.eps_l, alone.eps_l) and torch.equal(found.rival, alone.rival)
        # against an autograd loop over the classes
        for i in range(len(y)):
            xi = x[i:i + 1].clone().requires_grad_(True)
            z = model(xi)[0]
            grads = torch.stack([torch.autograd.grad(z[k], xi, retain_graph=True)[0].flatten()
                                 for k in range(4)])
            ratios = [((z[y[i]] - z[c]) / lp(grads[y[i]] - grads[c], dual(norm), 0)).item()
                      for c in range(4) if c != y[i]]
            assert found.eps_l[i].item() == pytest.approx(min(ratios), rel=1e-5, abs=1e-7)
    # the l2 eps_L lies between the l_inf one and sqrt(D) times it (norm equivalence)
    linf, l2 = every["linf"].eps_l, every["l2"].eps_l
    ok = every["linf"].correct
    assert bool((l2[ok] >= linf[ok] - 1e-6).all()) and bool((l2[ok] <= 4 * linf[ok] + 1e-6).all())


def test_config_validates_eps_per_norm() -> None:
    from epsl.runs.context import DataConfig

    data = DataConfig(checkpoint="unused.safetensors")
    assert DiagnoseConfig(data=data, norm="l2").eps == (0.1, 0.25, 0.5, 1.0, 2.0)
    assert DiagnoseConfig(data=data, norm="l2", eps=(0.5, 3.0)).reuse_settings() == {"norm": "l2"}
    with pytest.raises(EpslError, match="linf norm"):
        DiagnoseConfig(data=data, eps=(2.0,))
    with pytest.raises(EpslError, match="norm must be one of"):
        DiagnoseConfig(data=data, norm="l0")
