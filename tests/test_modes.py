"""The shared plumbing for running a model: eval_mode, model_device and input_gradient, against
plain autograd loops and hand-set flags."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from epsl.attacks import input_gradient
from epsl.device import model_device
from epsl.diagnostics import METHODS, jacobian
from epsl.errors import EpslError
from epsl.modes import eval_mode


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.5), nn.Linear(3 * 4 * 4, 5))


def _data(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 6, 6, generator=gen), torch.randint(0, 5, (n,), generator=gen)


def test_eval_mode_freezes_then_restores_mode_and_requires_grad() -> None:
    net = _net().train()
    frozen_before = net[0].bias
    frozen_before.requires_grad_(False)  # the caller's own choice survives the block
    with pytest.warns(UserWarning, match="train mode"), torch.no_grad(), eval_mode(net):
        assert not net.training and not any(m.training for m in net.modules())
        assert not any(p.requires_grad for p in net.parameters())
        assert torch.is_grad_enabled()  # input gradients also inside a caller's no_grad
    assert net.training
    assert [p.requires_grad for p in net.parameters()] == [
        p is not frozen_before for p in net.parameters()]


def test_eval_mode_warns_only_when_asked_and_restores_after_an_error() -> None:
    net = _net().train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="inside"), eval_mode(net, warn=False):
            raise RuntimeError("inside")
    assert net.training and all(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_jacobian_methods_work_on_frozen_parameters(method: str) -> None:
    net = _net().eval()
    x, _ = _data(3)
    reference = []
    for example in x:  # one example and one class at a time, parameters trainable
        xi = example[None].clone().requires_grad_(True)
        reference.append(torch.stack([torch.autograd.grad(net(xi)[0, k], xi)[0][0]
                                      for k in range(5)]))
    for param in net.parameters():
        param.requires_grad_(False)
    torch.testing.assert_close(jacobian(net, x, method=method), torch.stack(reference),
                               atol=1e-6, rtol=1e-5)
    assert not any(p.requires_grad for p in net.parameters())


def test_model_device_reads_parameters_then_buffers_else_cpu() -> None:
    assert model_device(_net()) == torch.device("cpu")
    assert model_device(nn.BatchNorm2d(2, affine=False)) == torch.device("cpu")  # buffers only
    assert model_device(nn.ReLU()) == torch.device("cpu")


@pytest.mark.parametrize("loss", ["xent", "cw"])
def test_input_gradient_against_a_per_example_loop(loss: str) -> None:
    net = _net().eval()
    x, y = _data()
    got = input_gradient(net, x, y, loss=loss, cw_confidence=2.0)
    for i in range(len(x)):
        xi = x[i:i + 1].clone().requires_grad_(True)
        logits = net(xi)
        if loss == "xent":
            value = F.cross_entropy(logits, y[i:i + 1])
        else:
            others = logits.clone()
            others[0, y[i]] = float("-inf")
            value = -F.relu(logits[0, y[i]] - others.max() + 2.0)
        (grad,) = torch.autograd.grad(value, xi)
        torch.testing.assert_close(got.grad[i], grad[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got.logits[i], logits[0].detach())
    mean = input_gradient(net, x, y, loss=loss, cw_confidence=2.0, reduction="mean")
    torch.testing.assert_close(mean.grad, got.grad / len(x))
    with pytest.raises(EpslError, match="reduction"):
        input_gradient(net, x, y, reduction="max")
