"""eps_L diagnostics against independent references: an autograd loop, an affine model."""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from epsl.diagnostics import (
    METHODS,
    Diagnostics,
    activations,
    auto_chunk_size,
    diagnose,
    jacobian,
    loss_landscape,
    predicted_accuracy,
)
from epsl.errors import EpslError
from epsl.models import Classifier, create_model
from epsl.results.records import Result


def _model(name: str, channels: int, size: int, **kwargs: object) -> Classifier:
    torch.manual_seed(0)
    net = create_model(name, in_channels=channels, num_classes=10, input_size=size,
                       mean=[0.4] * channels, std=[0.3] * channels, **kwargs)
    gen = torch.Generator().manual_seed(1)
    for module in net.modules():  # non-trivial BatchNorm statistics and affine parameters
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
            module.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)
    return net.eval()


ARCHS = {
    "small-cnn": lambda: (_model("small-cnn", 1, 8), (1, 8, 8)),
    "madry-mnist": lambda: (_model("madry-mnist", 1, 12), (1, 12, 12)),
    "wrn-10-1-bn": lambda: (_model("wrn", 3, 8, depth=10, widen_factor=1), (3, 8, 8)),
    "preact-resnet18-bn": lambda: (_model("preact-resnet18", 3, 8, width=4), (3, 8, 8)),
}


def _autograd_loop(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Independent reference: one example and one class at a time."""
    rows = []
    for example in x:
        per_class = []
        for k in range(10):
            xi = example.clone().unsqueeze(0).requires_grad_(True)
            (grad,) = torch.autograd.grad(model(xi)[0, k], xi)
            per_class.append(grad[0])
        rows.append(torch.stack(per_class))
    return torch.stack(rows)


@functools.cache
def _reference(arch: str) -> tuple[Classifier, torch.Tensor, torch.Tensor]:
    model, shape = ARCHS[arch]()
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(2))
    return model, x, _autograd_loop(model, x)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_jacobian_matches_autograd_loop(arch: str, method: str) -> None:
    model, x, expected = _reference(arch)
    shape = tuple(x.shape[1:])
    got = jacobian(model, x, method=method, chunk_size=2)
    assert got.shape == (3, 10, *shape)
    assert expected.abs().max() > 1e-3  # the reference is not trivially zero
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_train_mode_warns_computes_in_eval_and_restores_mode() -> None:
    model, shape = ARCHS["wrn-10-1-bn"]()
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(3))
    expected = jacobian(model, x)
    model.train()
    with pytest.warns(UserWarning, match="train mode"):
        got = jacobian(model, x)
    assert model.training
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_auto_chunk_size_respects_budget() -> None:
    model, shape = ARCHS["madry-mnist"]()
    x = torch.rand(64, *shape)
    small = auto_chunk_size(model, x, 10, budget=2_000_000)
    assert 1 <= small < 64
    assert auto_chunk_size(model, x, 10, budget=10**12) == 64
    assert auto_chunk_size(model, x, 10, budget=1) == 1
    assert auto_chunk_size(model, x, 10, method="vjp", budget=2_000_000) <= small


# --------------------------------------------------------------------------- affine model


class Affine(nn.Module):
    """z = W x + b on flattened pixels: Eq. 4 is exact for it (no box)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0]).double()
        self.linear.weight.data.copy_(weight)
        self.linear.bias.data.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def _affine(seed: int = 0, classes: int = 5) -> tuple[Affine, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(classes, 16, generator=gen, dtype=torch.float64)
    bias = torch.randn(classes, generator=gen, dtype=torch.float64)
    x = torch.rand(40, 1, 4, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (40,), generator=gen)
    return Affine(weight, bias).eval(), x, y


def test_affine_eps_l_is_the_smallest_flipping_linf_perturbation() -> None:
    model, x, y = _affine()
    d = diagnose(model, x, y)
    weight = model.linear.weight.detach()
    assert d.correct.any() and (~d.correct).any()
    for i in range(len(y)):
        label, rival, eps = int(y[i]), int(d.rival[i]), float(d.eps_l[i])
        z = model(x[i:i + 1])[0].detach()
        # independent closed form from W
        ratios = [(z[label] - z[k]) / (weight[label] - weight[k]).abs().sum()
                  for k in range(5) if k != label]
        assert eps == pytest.approx(float(min(ratios)), rel=1e-9)
        if not d.correct[i]:
            assert eps < 0
            continue
        delta = -eps * (1 + 1e-4) * torch.sign(weight[label] - weight[rival]).view(1, 1, 4, 4)
        assert int(model(x[i:i + 1] + delta).argmax()) != label
        for k in range(5):  # a slightly smaller perturbation flips no class
            if k == label:
                continue
            delta = -eps * (1 - 1e-4) * torch.sign(weight[label] - weight[k]).view(1, 1, 4, 4)
            assert int(model(x[i:i + 1] + delta).argmax()) == label


def test_misclassified_examples_have_negative_eps_l_against_the_argmax() -> None:
    model, x, y = _affine(seed=1)
    d = diagnose(model, x, y)
    wrong = ~d.correct
    assert wrong.any()
    assert (d.eps_l[wrong] < 0).all() and (d.eps_l[~wrong] > 0).all()
    assert (d.logit_gap[wrong] < 0).all()
    # per-class matrices: +inf / NaN exactly at the true class
    rows = torch.arange(len(y))
    assert torch.isinf(d.eps_l_all[rows, y]).all()
    assert torch.isnan(d.logit_gap_all[rows, y]).all()
    assert torch.equal(d.eps_l, d.eps_l_all.min(1).values)


def test_quantities_at_rival_match_definitions() -> None:
    model, x, y = _affine(seed=2)
    d = diagnose(model, x, y)
    weight = model.linear.weight.detach()
    for i in range(len(y)):
        g_y, g_r = weight[int(y[i])], weight[int(d.rival[i])]
        assert float(d.grad_gap[i]) == pytest.approx(float((g_y - g_r).abs().sum()))
        assert float(d.grad_cosine[i]) == pytest.approx(float(F.cosine_similarity(g_y, g_r, 0)))
        assert torch.allclose(d.grad_l1[i], weight.abs().sum(1))


def test_flat_model_gives_infinite_eps_l_without_nan() -> None:
    model, x, y = _affine()
    model.linear.weight.data.zero_()
    model.linear.bias.data.copy_(torch.tensor([3.0, 1.0, 0.0, -1.0, -2.0], dtype=torch.float64))
    d = diagnose(model, x, y)
    assert not torch.isnan(d.eps_l).any() and not torch.isnan(d.grad_cosine).any()
    assert torch.equal(torch.isposinf(d.eps_l), y == 0)
    assert torch.equal(torch.isneginf(d.eps_l), y != 0)
    assert (d.rival[y == 0] == 1).all() and (d.rival[y != 0] == 0).all()
    assert predicted_accuracy(d.eps_l, 0.5) == pytest.approx(float((y == 0).double().mean()))


# --------------------------------------------------------------------------- invariances


@pytest.fixture(scope="module")
def trained(digits_model: Classifier, digits_test: object) -> tuple[Classifier, Diagnostics]:
    data = digits_test.subset(48)  # type: ignore[attr-defined]
    return digits_model, diagnose(digits_model, data.x, data.y, chunk_size=48, batch_size=48)


def test_chunk_and_batch_size_invariance(trained: tuple[Classifier, Diagnostics],
                                         digits_test: object) -> None:
    model, reference = trained
    data = digits_test.subset(48)  # type: ignore[attr-defined]
    for chunk_size, batch_size, method in ((1, 7, "backward"), (5, 48, "vjp"),
                                           (None, 20, "jacrev"), (None, 256, "backward")):
        got = diagnose(model, data.x, data.y, chunk_size=chunk_size, batch_size=batch_size,
                       method=method)
        for name, value in got.tensors().items():
            torch.testing.assert_close(value, getattr(reference, name), equal_nan=True,
                                       atol=1e-5, rtol=1e-4, msg=name)


def test_batch_order_invariance(trained: tuple[Classifier, Diagnostics],
                                digits_test: object) -> None:
    model, reference = trained
    data = digits_test.subset(48)  # type: ignore[attr-defined]
    perm = torch.randperm(48, generator=torch.Generator().manual_seed(0))
    got = diagnose(model, data.x[perm], data.y[perm], index=perm, chunk_size=16)
    assert torch.equal(got.index, perm)
    back = torch.argsort(perm)
    for name, value in got.tensors().items():
        torch.testing.assert_close(value[back], getattr(reference, name), equal_nan=True,
                                   atol=1e-5, rtol=1e-4, msg=name)


def test_trained_model_is_sane(trained: tuple[Classifier, Diagnostics]) -> None:
    _, d = trained
    assert d.clean_accuracy > 0.85
    assert torch.equal(d.eps_l > 0, d.correct)
    assert torch.equal(d.pred, d.logits.argmax(1))
    acc = predicted_accuracy(d.eps_l, [0.001, 0.01, 0.05, 0.3])
    assert isinstance(acc, dict)
    values = list(acc.values())
    assert values == sorted(values, reverse=True) and values[0] <= d.clean_accuracy
    assert predicted_accuracy(d.eps_l, 0.3) == acc[0.3]


def test_predicted_accuracy_counts_strictly_larger_eps_l() -> None:
    eps_l = torch.tensor([-0.1, 0.05, 0.1, 0.2, math.inf])
    assert predicted_accuracy(eps_l, 0.1) == pytest.approx(0.4)
    assert predicted_accuracy(eps_l, [0.01, 0.5]) == {0.01: 0.8, 0.5: 0.2}
    with pytest.raises(EpslError):
        predicted_accuracy(torch.tensor([]), 0.1)


def test_frame_columns_and_save_load_round_trip(trained: tuple[Classifier, Diagnostics],
                                                tmp_path: object) -> None:
    _, d = trained
    frame = d.to_frame()
    assert list(frame.columns) == [
        "index", "label", "pred", "correct", "logit_gap", "grad_gap_l1", "grad_cosine",
        "eps_l", "rival", "grad_l1_label", "grad_l1_rival", "logit_label", "logit_rival",
        *[f"top_{r}" for r in range(1, 11)], *[f"logit_top_{r}" for r in range(1, 11)]]
    assert len(frame) == 48
    # at 10 classes the top 10 are every logit, highest first
    top = frame[[f"logit_top_{r}" for r in range(1, 11)]].to_numpy()
    assert np.array_equal(top, np.sort(d.logits.numpy(), axis=1)[:, ::-1])
    assert frame["top_1"].tolist() == d.pred.tolist()
    assert frame["logit_label"].tolist() == [float(d.logits[i, d.label[i]]) for i in range(48)]
    assert frame["grad_l1_rival"].tolist() == [float(d.grad_l1[i, d.rival[i]]) for i in range(48)]
    Result("diagnostics", {"n": 48}, None, frame,  # the tensors are written with it
           tensors=d).save(tmp_path)  # type: ignore[arg-type]
    back = Diagnostics.load(tmp_path)  # type: ignore[arg-type]
    for name, value in d.tensors().items():
        loaded = getattr(back, name)
        assert loaded.dtype == value.dtype, name
        torch.testing.assert_close(loaded, value, equal_nan=True, atol=0, rtol=0, msg=name)
    table = pd.read_csv(tmp_path / "diagnostics.csv")  # type: ignore[operator]
    pd.testing.assert_frame_equal(table, frame, check_dtype=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree() -> None:
    model, shape = ARCHS["preact-resnet18-bn"]()
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(5))
    y = torch.arange(6) % 10
    cpu = diagnose(model, x, y)
    gpu = diagnose(model.cuda(), x.cuda(), y.cuda())
    for name, value in gpu.tensors().items():
        assert value.device.type == "cpu"
        torch.testing.assert_close(value, getattr(cpu, name), equal_nan=True, atol=1e-4,
                                   rtol=1e-3, msg=name)
    model.cpu()


def test_bad_inputs_raise() -> None:
    model, x, y = _affine()
    with pytest.raises(EpslError):
        diagnose(model, x, y[:-1])
    with pytest.raises(EpslError):
        diagnose(model, x, y, chunk_size=0)
    with pytest.raises(EpslError):
        diagnose(model, x, torch.full_like(y, 7))
    with pytest.raises(EpslError):
        jacobian(model, x, method="finite-differences")


# --------------------------------------------------------------------------- activations


def test_activations_sum_per_unit_and_count_dead_neurons(digits_test: object) -> None:
    model = _model("small-cnn", 1, 8)
    model.fc1.weight.data[:7] = 0.0  # seven features that can never fire
    model.fc1.bias.data[:7] = -1.0
    x = digits_test.x[:50]  # type: ignore[attr-defined]
    stats = activations(model, x, batch_size=16)
    with torch.no_grad():
        feats, logits = model.features(x).double(), model(x).double()
    torch.testing.assert_close(stats.penultimate_sum, feats.sum(0))
    torch.testing.assert_close(stats.penultimate_abs_sum, feats.abs().sum(0))
    torch.testing.assert_close(stats.logit_sum, logits.sum(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.logit_abs_sum, logits.abs().sum(0), rtol=1e-5, atol=1e-5)
    assert stats.n_inactive == int((feats.abs().sum(0) == 0).sum()) >= 7
    frame = stats.to_frame()
    assert list(frame.columns) == ["layer", "unit", "activation_sum", "activation_abs_sum",
                                   "active_count"]
    assert frame["layer"].value_counts().to_dict() == {"penultimate": 128, "logit": 10}
    same = activations(model, x, batch_size=50)
    torch.testing.assert_close(same.penultimate_sum, stats.penultimate_sum)


def test_activations_need_features_and_head() -> None:
    model, x, _ = _affine()
    with pytest.raises(EpslError, match="features"):
        activations(model, x)


# --------------------------------------------------------------------------- landscapes


def test_landscape_grid_center_and_affine_reference() -> None:
    model, x, y = _affine()
    x, y = x[:3], y[:3]
    frame = loss_landscape(model, x, y, direction="adversarial", span=0.2, steps=5, seed=1)
    assert list(frame.columns) == ["image", "index", "label", "direction", "eps1", "eps2", "loss"]
    assert len(frame) == 3 * 25
    center = frame[(frame.eps1 == 0) & (frame.eps2 == 0)].sort_values("image")
    clean = F.cross_entropy(model(x), y, reduction="none").detach()
    assert center["loss"].to_numpy() == pytest.approx(clean.numpy())
    # independent reference: along eps2 only, the point is x + eps2 * sign(grad xent)
    weight = model.linear.weight.detach()
    for i in range(3):
        probs = torch.softmax(model(x[i:i + 1])[0], 0).detach()
        grad = (probs @ weight - weight[y[i]]).view(1, 1, 4, 4)
        point = x[i:i + 1] + 0.2 * grad.sign()
        expected = F.cross_entropy(model(point), y[i:i + 1]).item()
        row = frame[(frame.image == i) & (frame.eps1 == 0) & (frame.eps2 == 0.2)]
        assert float(row["loss"].iloc[0]) == pytest.approx(expected)
        assert float(row["loss"].iloc[0]) > float(center["loss"].iloc[i])  # uphill


def test_landscape_random_is_seeded_and_unclipped() -> None:
    model, x, y = _affine()
    a = loss_landscape(model, x[:2], y[:2], span=3.0, steps=3, seed=4)
    b = loss_landscape(model, x[:2], y[:2], span=3.0, steps=3, seed=4)
    c = loss_landscape(model, x[:2], y[:2], span=3.0, steps=3, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert not a["loss"].equals(c["loss"])
    assert (a["direction"] == "random").all()
    with pytest.raises(EpslError):
        loss_landscape(model, x, y, direction="sideways")


def test_no_warning_for_eval_model() -> None:
    model, x, y = _affine()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        diagnose(model, x, y)


def test_auto_method_picks_the_measured_method_per_device() -> None:
    """``method="auto"`` (the default) resolves per device type to the method measured fastest
    there; an unknown name is a one-line error."""
    from epsl.diagnostics.jacobians import AUTO_METHOD, DEFAULT_METHOD, resolve_method

    assert DEFAULT_METHOD == "auto"
    assert resolve_method("auto", torch.device("cpu")) == AUTO_METHOD["cpu"] == "backward"
    assert resolve_method("vjp", torch.device("cpu")) == "vjp"
    with pytest.raises(EpslError, match="unknown Jacobian method"):
        resolve_method("forward", torch.device("cpu"))
