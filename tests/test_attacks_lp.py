"""Attacks in every l_p norm: the projections against scipy and closed forms, the threat model
of every attack in every norm, FGM on an affine model against its closed-form flip point, the
random starts (which never make PGD weaker), and one-line refusals (library and CLI). l2 PGD
against torchattacks' PGDL2 and Foolbox's L2PGD is in test_attacks.py, beside l_inf."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats
from torch import nn

from epsl.attacks import (
    ATTACK_NORMS,
    ATTACKS,
    apgd,
    ball_noise,
    fgsm,
    pgd,
    project,
    sign_steps,
    square,
    steepest_direction,
    sweep,
)
from epsl.cli.main import main
from epsl.errors import EpslError
from epsl.norms import NORMS, distance, dual, lp
from epsl.runs.attack import AttackRunConfig, accuracy_table
from epsl.runs.context import DataConfig
from tests.attack_cases import clean_correct, tiny_data, tiny_model

PROPERTY = settings(max_examples=20, deadline=None)
#: a radius per norm that moves a digit (D = 64 pixels) about as far in each
RADII = {"linf": 0.2, "l2": 1.0, "l1": 4.0}


def assert_in_threat_model(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> None:
    assert x_adv.shape == x.shape
    assert float(distance(x_adv, x, norm).max()) <= eps * (1 + 1e-6)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


# --------------------------------------------------------------------------- projections


def scipy_ball_projection(v: np.ndarray, radius: float, norm: str) -> np.ndarray:
    """argmin_z ||z - v||_2^2 subject to ||z||_p <= radius, by SLSQP. l1 is written smoothly
    with z = a - b, a, b >= 0, sum(a + b) <= radius."""
    if norm == "l2":
        found = optimize.minimize(
            lambda z: np.sum((z - v) ** 2), np.zeros_like(v), jac=lambda z: 2 * (z - v),
            constraints=[{"type": "ineq", "fun": lambda z: radius ** 2 - np.sum(z ** 2),
                          "jac": lambda z: -2 * z}], method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500})
        return found.x
    d = len(v)

    def objective(ab: np.ndarray) -> float:
        return float(np.sum((ab[:d] - ab[d:] - v) ** 2))

    def gradient(ab: np.ndarray) -> np.ndarray:
        r = 2 * (ab[:d] - ab[d:] - v)
        return np.concatenate([r, -r])

    found = optimize.minimize(
        objective, np.zeros(2 * d), jac=gradient, bounds=[(0, None)] * (2 * d),
        constraints=[{"type": "ineq", "fun": lambda ab: radius - ab.sum(),
                      "jac": lambda ab: -np.ones(2 * d)}], method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500})
    return found.x[:d] - found.x[d:]


@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("seed", range(4), ids=lambda s: f"seed{s}")
def test_ball_projection_against_scipy(norm: str, seed: int) -> None:
    """x = 0.5 everywhere and a radius below 0.5: the box never binds, so ``project`` is the
    ball's Euclidean projection, which SLSQP finds independently."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.full((3, 1, 3, 4), 0.5, dtype=torch.float64)
    delta = torch.randn(x.shape, generator=gen, dtype=torch.float64) * 0.3
    radius = 0.45 if norm == "l1" else 0.4
    projected = project(x + delta, x, radius, norm) - x
    for row in range(3):
        v = delta[row].flatten().numpy()
        expected = (scipy_ball_projection(v, radius, norm) if lp(delta[row].flatten(), norm)
                    > radius else v)
        assert np.allclose(projected[row].flatten().numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("norm, delta, radius, expected", [
    ("l2", [0.3, 0.4, 0.0, 0.0], 0.25, [0.15, 0.2, 0.0, 0.0]),
    ("l1", [0.4, 0.2, -0.1, 0.0], 0.3, [0.25, 0.05, 0.0, 0.0]),  # Duchi: rho = 2, theta = 0.15
    ("l1", [-0.4, 0.1, 0.1, 0.1], 0.2, [-0.2, 0.0, 0.0, 0.0]),  # rho = 1, theta = 0.2
    ("l1", [0.1, -0.05, 0.0, 0.0], 0.3, [0.1, -0.05, 0.0, 0.0]),  # inside: unchanged
], ids=["l2-scale", "l1-two-left", "l1-one-left", "l1-inside"])
def test_ball_projection_closed_forms(norm, delta, radius, expected) -> None:
    x = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    got = project(x + torch.tensor(delta, dtype=torch.float64).view(x.shape), x, radius, norm)
    assert torch.allclose(got - x, torch.tensor(expected, dtype=torch.float64).view(x.shape),
                          atol=1e-12)


@PROPERTY
@given(seed=st.integers(0, 10_000), eps=st.floats(0.01, 6.0), scale=st.floats(0.0, 5.0),
       norm=st.sampled_from(NORMS))
def test_project_lands_in_ball_and_box_and_keeps_inside_points(seed, eps, scale, norm) -> None:
    if norm == "linf":
        eps = min(eps, 1.0)
    x, _ = tiny_data(seed, 5)
    gen = torch.Generator().manual_seed(seed + 1)
    x_adv = x + scale * torch.randn(x.shape, generator=gen)
    projected = project(x_adv, x, eps, norm)
    assert projected.dtype == x.dtype
    assert_in_threat_model(projected, x, eps, norm)
    inside = (distance(x_adv, x, norm) <= eps * (1 - 1e-5)) & (x_adv.flatten(1) >= 0).all(1)\
        & (x_adv.flatten(1) <= 1).all(1)
    assert torch.allclose(projected[inside], x_adv[inside], atol=1e-6)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_project_takes_one_radius_per_example(norm: str) -> None:
    x, _ = tiny_data(0, 4)
    x_adv = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    radii = torch.tensor([0.1, 0.5, 1.0, 2.0])
    together = project(x_adv, x, radii.view(-1, 1, 1, 1), norm)
    for i, radius in enumerate(radii.tolist()):
        assert torch.equal(together[i:i + 1], project(x_adv[i:i + 1], x[i:i + 1], radius, norm))
        assert float(distance(together[i:i + 1], x[i:i + 1], norm)) <= radius * (1 + 1e-6)


# --------------------------------------------------------------------------- steps and starts


def test_step_directions_have_size_one_in_their_norm() -> None:
    grad = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    grad[0] = 0.0
    assert torch.equal(steepest_direction(grad, "linf"), grad.sign())
    l2 = steepest_direction(grad, "l2")
    assert torch.equal(l2[0], torch.zeros_like(l2[0]))  # zero where g is 0
    assert torch.allclose(lp(l2[1:].flatten(1), "l2", 1), torch.ones(4))
    assert torch.allclose(l2[1:], grad[1:] / grad[1:].flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    l1 = steepest_direction(grad, "l1")
    assert torch.allclose(lp(l1[1:].flatten(1), "l1", 1), torch.ones(4))
    # 16 pixels: the 99th percentile keeps one coordinate, the largest |g|, with g's sign
    flat, g = l1[1:].flatten(1), grad[1:].flatten(1)
    top = g.abs().argmax(1)
    assert ((flat != 0).sum(1) == 1).all()
    assert torch.equal(flat.gather(1, top[:, None]).squeeze(1), g.gather(1, top[:, None])
                       .squeeze(1).sign())


def test_l1_step_skips_pixels_that_cannot_move() -> None:
    grad = torch.tensor([[[[5.0, -4.0], [1.0, 0.5]]]])
    x_adv = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])  # the two largest push out of the box
    direction = steepest_direction(grad, "l1", x_adv=x_adv)
    assert direction.flatten().tolist() == [0.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_random_start_has_a_uniform_radius_and_a_symmetric_direction(norm: str) -> None:
    """As torchattacks' PGDL2: the size ||delta|| / eps is uniform on [0, 1] (not the
    volume-uniform U^(1/D), which crowds the sphere), and the direction has mean ~ 0."""
    x = torch.zeros(4000, 1, 4, 4)
    noise = ball_noise(x, 0.7, norm, generator=torch.Generator().manual_seed(0))
    sizes = lp(noise.double().flatten(1), norm, 1)
    assert float(sizes.max()) <= 0.7 * (1 + 1e-9)
    assert stats.kstest((sizes / 0.7).numpy(), "uniform").pvalue > 0.01
    assert noise.flatten(1).mean(0).abs().max() < 0.03
    again = ball_noise(x[:10], 0.7, norm, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, ball_noise(x[:10], 0.7, norm,
                                         generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_batching_does_not_change_random_starts(norm: str) -> None:
    model, (x, y) = tiny_model(1), tiny_data(7, 11)
    kwargs = dict(eps=0.8, step_size=0.2, steps=3, restarts=2, seed=5, norm=norm)
    whole, batched = pgd(model, x, y, **kwargs), pgd(model, x, y, batch_size=4, **kwargs)
    assert torch.allclose(whole.x_adv, batched.x_adv)
    assert torch.equal(whole.correct, batched.correct)


@PROPERTY
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), eps=st.floats(0.01, 3.0),
       loss=st.sampled_from(["xent", "cw"]), norm=st.sampled_from(NORMS))
def test_fgsm_equals_one_pgd_step_of_size_eps_in_every_norm(seed, n, eps, loss, norm) -> None:
    if norm == "linf":
        eps = min(eps, 1.0)
    model, (x, y) = tiny_model(seed % 4), tiny_data(seed, n)
    one = fgsm(model, x, y, eps=eps, loss=loss, norm=norm)
    step = pgd(model, x, y, eps=eps, step_size=eps, steps=1, loss=loss, random_start=False,
               norm=norm)
    assert torch.equal(one.x_adv, step.x_adv) and torch.equal(one.correct, step.correct)


def test_sign_steps_takes_a_norm_and_defaults_to_linf() -> None:
    model, (x, y) = tiny_model(), tiny_data(0, 6)
    kwargs = dict(eps=0.5, step_size=0.1, steps=3)
    assert torch.equal(sign_steps(model, x, y, **kwargs),
                       sign_steps(model, x, y, norm="linf", **kwargs))
    l2 = sign_steps(model, x, y, norm="l2", **kwargs)
    assert_in_threat_model(l2, x, 0.5, "l2")


# --------------------------------------------------------------------------- closed form


@pytest.mark.parametrize("norm", NORMS)
def test_fgm_flips_an_affine_model_exactly_at_the_dual_norm_radius(norm: str) -> None:
    """Two classes, z = W x + b: the input gradient of the cross-entropy is p_c (w_c - w_y), so
    one step of l_p size eps in the steepest direction lowers the margin by
    eps * ||w_y - w_c||_q (q the dual norm; l1's one-coordinate step reaches the l_inf dual
    exactly on 16 pixels). It flips at eps_L = gap / ||w_y - w_c||_q, as long as the box does
    not bind (x in [0.4, 0.6], eps_L < 0.35)."""
    torch.manual_seed(3)
    affine = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    with torch.no_grad():
        affine[1].weight.mul_(4.0)
    gen = torch.Generator().manual_seed(4)
    x = 0.4 + 0.2 * torch.rand(200, 1, 4, 4, generator=gen)
    w, b = affine[1].weight.detach().double(), affine[1].bias.detach().double()
    logits = x.double().flatten(1) @ w.T + b  # the reference, in float64
    y = logits.argmax(1)
    gap = logits.max(1).values - logits.min(1).values
    eps_l = gap / lp((w[0] - w[1])[None], dual(norm), 1)
    checked = 0
    for i in torch.nonzero((eps_l > 0.01) & (eps_l < 0.35)).flatten().tolist():
        xi, yi, e = x[i:i + 1], y[i:i + 1], float(eps_l[i])
        assert fgsm(affine, xi, yi, eps=e * (1 - 1e-3), norm=norm).correct.item()
        assert not fgsm(affine, xi, yi, eps=e * (1 + 1e-3), norm=norm).correct.item()
        checked += 1
    assert checked >= 5


# --------------------------------------------------------------------------- on the digits model


@pytest.fixture(scope="module")
def digits_batch(digits_test):
    return digits_test.x[:48], digits_test.y[:48]


CASES = [(attack, norm) for attack in ATTACKS.names() for norm in ATTACK_NORMS[attack]]


@pytest.mark.parametrize("attack, norm", CASES, ids=[f"{a}-{n}" for a, n in CASES])
def test_every_attack_in_every_norm_respects_the_threat_model(attack, norm, digits_model,
                                                              digits_batch):
    x, y = digits_batch
    eps = RADII[norm]
    small = {"fgsm": {}, "pgd": {"steps": 10, "step_size": 2.5 * eps / 10, "seed": 0},
             "apgd": {"steps": 10}, "apgd-dlr": {"steps": 10}, "square": {"steps": 100}}
    result = ATTACKS[attack](digits_model, x, y, eps=eps, norm=norm, **small[attack])
    assert len(result) == len(y)
    assert_in_threat_model(result.x_adv, x, eps, norm)
    clean = clean_correct(digits_model, x, y)
    assert not (result.correct & ~clean).any()  # per example, so also on average
    assert result.accuracy < clean.float().mean().item()


#: a radius per norm at which PGD-20 from x leaves 60-75% of the digits correct (clean 99%)
HALF_RADII = {"linf": 0.1, "l2": 0.5, "l1": 1.0}


@pytest.mark.parametrize("norm", NORMS)
def test_a_random_start_never_makes_pgd_weaker_on_any_digit(digits_model, digits_test, norm):
    """Per example: robust to PGD with random starts implies robust to PGD from x. A single
    run from a random point can end farther from the boundary than the run from x (the
    reference libraries' randomly started PGD leaves more digits correct than from x); epsl
    keeps the run from x among its starts."""
    x, y = digits_test.x, digits_test.y
    eps = HALF_RADII[norm]
    kwargs = dict(eps=eps, step_size=2.5 * eps / 20, steps=20, norm=norm)
    from_x = pgd(digits_model, x, y, random_start=False, **kwargs)
    assert 0.1 < from_x.accuracy < 0.9  # random starts matter at this radius
    for seed, restarts in [(0, 1), (1, 1), (2, 3)]:
        randomly = pgd(digits_model, x, y, random_start=True, seed=seed, restarts=restarts,
                       **kwargs)
        assert not (randomly.correct & ~from_x.correct).any()
        assert_in_threat_model(randomly.x_adv, x, eps, norm)


@PROPERTY
@given(seed=st.integers(0, 10_000), n=st.integers(1, 8), eps=st.floats(0.01, 3.0),
       steps=st.integers(1, 4), restarts=st.integers(1, 3), loss=st.sampled_from(["xent", "cw"]),
       norm=st.sampled_from(NORMS), attack=st.sampled_from(["fgsm", "pgd"]))
def test_a_random_start_never_makes_an_attack_weaker(seed, n, eps, steps, restarts, loss, norm,
                                                     attack) -> None:
    if norm == "linf":
        eps = min(eps, 1.0)
    model, (x, y) = tiny_model(seed % 4), tiny_data(seed, n)
    if attack == "fgsm":
        from_x = fgsm(model, x, y, eps=eps, loss=loss, norm=norm)
        randomly = fgsm(model, x, y, eps=eps, loss=loss, norm=norm, random_start=True, seed=seed)
    else:
        kwargs = dict(eps=eps, step_size=eps / steps, steps=steps, loss=loss, norm=norm)
        from_x = pgd(model, x, y, random_start=False, **kwargs)
        randomly = pgd(model, x, y, restarts=restarts, seed=seed, **kwargs)
    assert not (randomly.correct & ~from_x.correct).any()


def test_l1_pgd_breaks_more_with_a_larger_radius(digits_model, digits_batch):
    x, y = digits_batch
    accuracies = [pgd(digits_model, x, y, eps=e, step_size=2.5 * e / 20, steps=20, seed=0,
                      norm="l1").accuracy for e in (1.0, 4.0, 16.0)]
    assert accuracies[0] >= accuracies[1] >= accuracies[2]
    assert accuracies[2] < 0.2


def test_sweep_records_the_norm_and_accuracy_table_groups_by_it(digits_model, digits_batch):
    x, y = digits_batch[0][:16], digits_batch[1][:16]
    frames = [sweep(digits_model, x, y, attack="pgd", eps=[RADII[n]], steps=[5], seed=0, norm=n)
              for n in NORMS]
    frame = pd.concat(frames, ignore_index=True)
    assert set(frame["norm"]) == set(NORMS)
    table = accuracy_table(frame)
    assert len(table) == 3 and list(table["norm"]) == list(NORMS)
    for row in table.itertuples():
        assert row.accuracy == pytest.approx(frame[frame.norm == row.norm]["correct"].mean())


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("call, message", [
    (lambda m, x, y: pgd(m, x, y, eps=0.5, step_size=0.1, steps=2, norm="l3"),
     "norm must be one of linf, l2, l1 (got 'l3')"),
    (lambda m, x, y: apgd(m, x, y, eps=0.5, norm="l1"), "apgd supports norm linf or l2 (got 'l1')"),
    (lambda m, x, y: square(m, x, y, eps=0.5, norm="l1"),
     "square supports norm linf or l2 (got 'l1')"),
    (lambda m, x, y: fgsm(m, x, y, eps=1.5), "(0, 1] for the linf norm"),
    (lambda m, x, y: fgsm(m, x, y, eps=4.5, norm="l2"), "exceeds the whole [0, 1] box in l2"),
    (lambda m, x, y: fgsm(m, x, y, eps=17, norm="l1"), "exceeds the whole [0, 1] box in l1"),
    (lambda m, x, y: sweep(m, x, y, attack="pgd", eps=[0.5, 9.0], steps=[2], norm="l2"),
     "eps = 9 exceeds"),
], ids=["unknown-norm", "apgd-l1", "square-l1", "linf-above-one", "l2-above-sqrt-d",
        "l1-above-d", "sweep-checks-every-eps-first"])
def test_bad_norms_and_radii_are_one_line_errors(call, message) -> None:
    model, (x, y) = tiny_model(), tiny_data(0, 3)  # D = 16: sqrt(D) = 4
    with pytest.raises(EpslError) as info:
        call(model, x, y)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("norm, eps", [("l2", 0.5), ("l2", 2.0), ("l2", 4.0), ("l1", 16.0)],
                         ids=["l2-half", "l2-two", "l2-sqrt-d", "l1-d"])
def test_radii_within_the_box_are_accepted(norm: str, eps: float) -> None:
    model, (x, y) = tiny_model(), tiny_data(0, 3)
    assert_in_threat_model(fgsm(model, x, y, eps=eps, norm=norm).x_adv, x, eps, norm)


def test_run_config_carries_the_norm(tmp_path) -> None:
    data = DataConfig(checkpoint=str(tmp_path / "m.safetensors"), dataset="digits")
    assert AttackRunConfig(data=data, eps=(0.1,)).norm == "linf"
    config = AttackRunConfig(data=data, eps=(0.5, 2.0), norm="L2")
    assert config.norm == "l2" and config.reuse_settings()["norm"] == "l2"
    assert AttackRunConfig(data=data, eps=(0.5,)).reuse_settings() !=\
        AttackRunConfig(data=data, eps=(0.5,), norm="l2").reuse_settings()
    for bad, message in [({"norm": "l3"}, "norm must be one of"),
                         ({"attack": "apgd", "norm": "l1"}, "apgd supports norm linf or l2"),
                         ({"eps": (1.5,)}, "(0, 1] for the linf norm")]:
        with pytest.raises(EpslError, match=None) as info:
            AttackRunConfig(data=data, **{"eps": (0.5,), **bad})
        assert message in str(info.value)


# --------------------------------------------------------------------------- CLI


def test_cli_attack_in_l2_writes_rows_that_say_l2(digits_checkpoint, digits_model, digits_test,
                                                  tmp_path):
    out = tmp_path / "l2"
    result = CliRunner().invoke(main, ["attack", str(digits_checkpoint), "--limit", "20",
                                       "--norm", "l2", "--eps", "0.5", "--steps", "5",
                                       "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "attack.csv")
    summary = json.loads((out / "attack.json").read_text())
    assert len(frame) == 20 and set(frame["norm"]) == {"l2"}
    assert summary["norm"] == "l2" and summary["config"]["norm"] == "l2"
    assert [row["norm"] for row in summary["settings"]] == ["l2"]
    direct = pgd(digits_model, digits_test.x[:20], digits_test.y[:20], eps=0.5,
                 step_size=2.5 * 0.5 / 5, steps=5, seed=0, norm="l2")
    assert frame["correct"].tolist() == direct.correct.tolist()
    assert "l2" in result.output


@pytest.mark.parametrize("args, message", [
    (["--norm", "l2", "--eps", "100"], "exceeds the whole [0, 1] box in l2"),
    (["--norm", "l1", "--eps", "0.5", "--attack", "apgd"], "apgd supports norm linf or l2"),
    (["--norm", "linf", "--eps", "2"], "(0, 1] for the linf norm"),
    (["--norm", "l3", "--eps", "0.5"], "l3"),
], ids=["l2-eps-100", "apgd-l1", "linf-eps-2", "unknown-norm"])
def test_cli_bad_norm_or_radius_is_one_line_and_writes_nothing(digits_checkpoint, tmp_path,
                                                               args, message):
    out = tmp_path / "bad"
    result = CliRunner().invoke(main, ["attack", str(digits_checkpoint), "--limit", "8", *args,
                                       "--out", str(out)])
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output
    if args[1] != "l3":  # click's own usage error for a bad choice spans a few lines
        assert result.exit_code == 1 and result.output.strip().count("\n") == 0
    assert not out.exists() or not any(out.iterdir())


def test_every_attack_says_which_norms_it_supports() -> None:
    assert set(ATTACK_NORMS) == set(ATTACKS.names())
    for attack, norms in ATTACK_NORMS.items():
        assert "norm" in ATTACKS[attack].__kwdefaults__ and set(norms) <= set(NORMS)
