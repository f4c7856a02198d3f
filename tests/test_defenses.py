"""Defense terms against hand computations (label smoothing, Eq. 5, Eq. 1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from epsl.defenses import (
    DefenseConfig,
    adversarial_examples,
    gaussian_noise,
    objective,
    smooth_labels,
    soft_cross_entropy,
    squeeze_penalty,
)
from epsl.errors import EpslError


def test_label_smoothing_hand_example() -> None:
    # N_c = 4, alpha = 0.75: y_warm = y_hot - 0.75 (y_hot - 1/4)
    warm = smooth_labels(torch.tensor([2]), 4, 0.75)
    assert torch.allclose(warm, torch.tensor([[0.1875, 0.1875, 0.4375, 0.1875]]))
    assert torch.allclose(smooth_labels(torch.tensor([0]), 4, 1.0), torch.full((1, 4), 0.25))
    assert torch.equal(smooth_labels(torch.tensor([1]), 3, 0.0), torch.tensor([[0.0, 1.0, 0.0]]))


def test_soft_cross_entropy_with_hot_targets_is_cross_entropy() -> None:
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 6, 2, 2])
    assert torch.allclose(soft_cross_entropy(logits, smooth_labels(y, 7, 0.0)),
                          F.cross_entropy(logits, y))


def test_squeeze_term_is_beta_frobenius_norm() -> None:
    z = torch.tensor([[3.0, -4.0], [0.0, 12.0]])  # ||Z||_F = 13
    assert squeeze_penalty(z, 2.0).item() == pytest.approx(26.0)


class _Fixed(torch.nn.Module):
    """Logits = x flattened @ W: a model whose loss we can compute by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 3, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w


def test_objective_composes_smoothing_and_squeeze() -> None:
    model = _Fixed()
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    cfg = DefenseConfig(label_smoothing=0.5, logit_squeeze=3.0)
    z = model(x)
    expected = soft_cross_entropy(z, smooth_labels(y, 3, 0.5)) + 3.0 * z.norm() / 6
    assert objective(model, x, y, cfg, 3).loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("kappa", [0.0, 0.3, 1.0])
def test_kappa_mixes_clean_and_adversarial_losses(kappa: float) -> None:
    model = _Fixed()
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    eps = 0.1
    cfg = DefenseConfig(adv="fgsm", adv_eps=eps, adv_kappa=kappa)
    # FGSM by hand: x + eps * sign(grad of the mean cross-entropy), clipped to [0, 1]
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    x_adv = (x + eps * g.sign()).clamp(0, 1)
    expected = (kappa * F.cross_entropy(model(x), y)
                + (1 - kappa) * F.cross_entropy(model(x_adv), y))
    got = objective(model, x, y, cfg, 3).loss
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("adv", ["fgsm", "pgd"])
def test_adversarial_examples_equal_a_plain_sign_step_loop(adv: str) -> None:
    # The loop adversarial training always ran, written out: the models it trained must not
    # change, so the attack core has to reproduce it bit for bit, random start included.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 3))
    model.train()
    x = torch.rand(10, 1, 6, 6, generator=torch.Generator().manual_seed(4)) * 1.2 - 0.1
    y = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(5))
    cfg = DefenseConfig(adv=adv, adv_eps=0.1, adv_steps=5)
    model.eval()
    x_ref = x.clamp(0, 1)
    gen = torch.Generator().manual_seed(6)
    x_adv = x_ref
    if adv == "pgd":
        u = torch.rand(x.shape, generator=gen)
        x_adv = torch.minimum(torch.maximum(x_ref + (2 * u - 1) * 0.1, x_ref - 0.1),
                              x_ref + 0.1).clamp(0, 1)
    for _ in range(1 if adv == "fgsm" else 5):
        x_adv = x_adv.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = torch.minimum(torch.maximum(x_adv.detach() + cfg.step_size * g.sign(),
                                            x_ref - 0.1), x_ref + 0.1).clamp(0, 1)
    model.train()
    gen_core = torch.Generator().manual_seed(6)
    assert torch.equal(adversarial_examples(model, x, y, cfg, gen_core), x_adv)
    assert torch.equal(gen_core.get_state(), gen.get_state())  # the same draws, no more
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_noise_has_the_requested_sigma() -> None:
    x = torch.zeros(200, 1, 10, 10)
    noisy = gaussian_noise(x, 30 / 255, torch.Generator().manual_seed(0))
    assert noisy.std().item() == pytest.approx(30 / 255, rel=0.02)
    assert torch.equal(gaussian_noise(x, 0.0), x)


@pytest.mark.parametrize("bad", [dict(label_smoothing=1.5), dict(logit_squeeze=-1),
                                 dict(noise_sigma=-0.1), dict(adv="cw"),
                                 dict(adv="pgd", adv_eps=0.0), dict(adv="pgd", adv_steps=0)])
def test_bad_defense_settings_are_refused(bad: dict) -> None:
    with pytest.raises(EpslError):
        DefenseConfig(**bad)


def test_defense_names() -> None:
    assert DefenseConfig().name == "natural"
    assert DefenseConfig(label_smoothing=0.75, noise_sigma=0.3).name == "ls0.75+noise0.3"
    assert DefenseConfig(logit_squeeze=2, adv="pgd", adv_steps=7).name == "lsq2+pgd7"
    assert math.isclose(DefenseConfig(adv="pgd", adv_eps=0.3, adv_steps=40).step_size, 0.01875)
