"""eps_L at many classes: reduced class block by class block within a memory budget, exact
against the whole Jacobian and an autograd loop; the top-k rival search against the exact one."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from epsl.diagnostics import METHODS, diagnose, jacobian
from epsl.diagnostics.jacobians import parse_memory, plan_chunks
from epsl.diagnostics.margins import margins_from_jacobian
from epsl.errors import EpslError
from epsl.models import Normalize

CLASSES = 100


def _net(classes: int = CLASSES) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Normalize([0.5, 0.4, 0.3], [0.25, 0.2, 0.3]),
                         nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, classes)).eval()


@pytest.fixture(scope="module")
def data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(7, 3, 16, 16, generator=gen)
    return _net(), x, torch.randint(0, CLASSES, (7,), generator=gen)


@pytest.fixture(scope="module")
def loop_eps_l(data) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return _loop_eps_l(*data)


def _loop_eps_l(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Independent reference: one example and one class at a time, Eq. 4 written out."""
    out = []
    for example, label in zip(x, y, strict=True):
        xi = example[None].clone().requires_grad_(True)
        z = model(xi)[0]
        best = math.inf
        grad_y = torch.autograd.grad(z[label], xi, retain_graph=True)[0]
        for k in range(z.shape[0]):
            if k == int(label):
                continue
            grad_k = torch.autograd.grad(z[k], xi, retain_graph=True)[0]
            gap = (z[label] - z[k]).detach()
            best = min(best, float(gap / (grad_y - grad_k).abs().sum()))
        out.append(best)
    return torch.tensor(out)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "auto"])
def test_small_budgets_give_the_whole_jacobians_result(data, loop_eps_l, method: str) -> None:  # type: ignore[no-untyped-def]
    model, x, y = data
    whole = margins_from_jacobian(jacobian(model, x), model(x).detach(), y, torch.arange(7))
    # a budget that holds two examples and a few class columns at a time
    examples, columns = plan_chunks(model, x, method=method, budget=400_000)
    assert examples < len(x) and columns < CLASSES
    got = diagnose(model, x, y, method=method, memory=400_000, batch_size=5)
    for name, value in whole.tensors().items():
        torch.testing.assert_close(getattr(got, name), value, equal_nan=True, rtol=1e-5,
                                   atol=1e-6, msg=name)
    torch.testing.assert_close(got.eps_l, loop_eps_l.float(), rtol=1e-4,
                               atol=1e-6)


def test_top_k_is_never_below_the_exact_eps_l(data) -> None:  # type: ignore[no-untyped-def]
    model, x, y = data
    exact = diagnose(model, x, y)
    logits = exact.logits.masked_fill(torch.nn.functional.one_hot(y, CLASSES).bool(), -math.inf)
    for k in (1, 5, 20):
        top = diagnose(model, x, y, top_k=k, memory="8MiB")
        assert top.top_k == k and exact.top_k is None
        # never below, but for float rounding: a class's gradient may come from a pass with
        # other classes' cotangents beside it
        assert (top.eps_l >= exact.eps_l - 1e-5 * exact.eps_l.abs()).all()
        searched = logits.topk(k, dim=1).indices
        inside = (searched == exact.rival[:, None]).any(1)
        # where the exact rival is among the k highest wrong logits, nothing moves
        torch.testing.assert_close(top.eps_l[inside], exact.eps_l[inside], rtol=1e-5, atol=0)
        assert torch.equal(top.rival[inside], exact.rival[inside])
        # the classes not searched are unknown, not zero
        per_row = (~torch.isnan(top.grad_gap_all)).sum(1)
        assert per_row.tolist() == [k] * len(x)
        assert torch.isnan(top.eps_l_all).sum(1).tolist() == [CLASSES - 1 - k] * len(x)
    assert diagnose(model, x, y, top_k=CLASSES - 1).top_k is None  # every wrong class: exact


def test_the_record_and_tensors_say_which_search(data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from epsl.diagnostics import Diagnostics
    from epsl.results.records import Result

    model, x, y = data
    top = diagnose(model, x, y, top_k=5)
    Result("diagnostics", {"n": 7}, None, top.to_frame(), tensors=top).save(tmp_path)
    assert Diagnostics.load(tmp_path).top_k == 5
    frame = top.to_frame()
    assert [c for c in frame.columns if c.startswith("logit_top_")][-1] == "logit_top_10"
    assert not any(c.startswith("logit_") and c[6:].isdigit() for c in frame.columns)


def test_a_budget_too_small_for_one_example_is_refused(data) -> None:  # type: ignore[no-untyped-def]
    model, x, y = data
    with pytest.raises(EpslError, match="too small for one example") as info:
        diagnose(model, x, y, memory=1000)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("2GiB", 2 * 1024**3), ("512MB", 512 * 1024**2), ("1.5G", int(1.5 * 1024**3)),
    ("64k", 65536), (4096, 4096), (None, None)])
def test_parse_memory(text: object, expected: int | None) -> None:
    assert parse_memory(text) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["lots", "-1G", "0", "2 parsecs"])
def test_parse_memory_refuses(text: str) -> None:
    with pytest.raises(EpslError, match="memory"):
        parse_memory(text)


@pytest.fixture(scope="module")
def hundred_class_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    import numpy as np

    from epsl.models import checkpoint, create_model

    folder = tmp_path_factory.mktemp("hundred")
    torch.manual_seed(0)
    kwargs = {"in_channels": 3, "num_classes": CLASSES, "input_size": 8, "mean": [0.5] * 3,
              "std": [0.25] * 3, "width": 4, "hidden": 16}
    net = create_model("small-cnn", **kwargs)
    path = folder / "net.safetensors"
    checkpoint.save(path, net, {"arch": "small-cnn", "arch_kwargs": kwargs,
                                "dataset": "npz", "input_shape": [3, 8, 8],
                                "num_classes": CLASSES,
                                "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}})
    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, 12)
    y[0] = CLASSES - 1
    np.savez(folder / "data.npz", x=rng.random((12, 3, 8, 8), dtype=np.float32), y=y)
    return str(path), str(folder / "data.npz")


def test_the_cli_runs_top_k_within_a_budget_and_reuse_keeps_them_apart(
        hundred_class_files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    import pandas as pd
    from click.testing import CliRunner

    from epsl.cli.main import main

    ckpt, data = hundred_class_files
    runner = CliRunner()
    exact = runner.invoke(main, ["diagnose", ckpt, "--data", data, "--memory", "4MiB",
                                 "--out", str(tmp_path / "exact")])
    assert exact.exit_code == 0, exact.output
    top = runner.invoke(main, ["diagnose", ckpt, "--data", data, "--top-k", "5",
                               "--out", str(tmp_path / "top")])
    assert top.exit_code == 0, top.output
    assert "top-5" in top.output and "optimistic" in top.output
    record = json.loads((tmp_path / "top" / "diagnostics.json").read_text())
    assert record["rivals"] == "top-5"
    assert record["provenance"]["settings"] == {"norm": "linf", "top_k": 5}
    assert json.loads((tmp_path / "exact" / "diagnostics.json").read_text())["rivals"] == "all"
    a = pd.read_csv(tmp_path / "exact" / "diagnostics.csv")
    b = pd.read_csv(tmp_path / "top" / "diagnostics.csv")
    assert (b["eps_l"] >= a["eps_l"] - 1e-12).all()
    assert len(a.columns) == 13 + 2 * 10  # never one column per class
    bad = runner.invoke(main, ["diagnose", ckpt, "--data", data, "--memory", "2 parsecs",
                               "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert len(bad.output.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    small = runner.invoke(main, ["diagnose", ckpt, "--data", data, "--memory", "1k",
                                 "--out", str(tmp_path / "small")])
    assert small.exit_code != 0 and "too small for one example" in small.output
    assert not (tmp_path / "small" / "diagnostics.json").exists()


def test_the_cli_runs_targeted_fab_and_records_it(hundred_class_files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from click.testing import CliRunner

    from epsl.cli.main import main

    ckpt, data = hundred_class_files
    result = CliRunner().invoke(main, ["eps-star", ckpt, "--data", data, "--fab-targets", "3",
                                       "--fmn-steps", "5", "--fab-steps", "5",
                                       "--out", str(tmp_path / "cal")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "cal" / "eps_star.json").read_text())
    assert record["provenance"]["settings"]["fab_targets"] == 3
