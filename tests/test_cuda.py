"""CPU and CUDA agree: Jacobians and ε_L, attacks, ε*, the audit, training and the commands.

Marked ``cuda`` and skipped without a GPU; ``benchmarks/gpu_check.py`` runs them on a device
machine. TF32 is switched off for the comparisons of numbers, so fp32 means fp32 on both.
Tolerances: Jacobians and ε_L to float32 rounding of different kernels (rtol 1e-4); robust
accuracies within one point (borderline examples may flip with the order of floating-point
sums); training within one point of clean accuracy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from epsl.attacks import apgd, fgsm, pgd, square, transfer
from epsl.attacks.audit import AuditConfig, audit
from epsl.attacks.eps_star import EpsStarConfig, find_eps_star
from epsl.cli.main import main
from epsl.defenses.train import TrainConfig, train
from epsl.diagnostics import METHODS, diagnose

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

N = 200  # digits test images compared
POINT = 0.01 + 1e-9


@pytest.fixture(autouse=True)
def no_tf32() -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.fixture(scope="module")
def pair(digits_model: torch.nn.Module, digits_test: object) -> tuple:
    x, y = digits_test.x[:N], digits_test.y[:N]  # type: ignore[attr-defined]
    gpu = copy.deepcopy(digits_model).cuda().eval()
    return digits_model.eval(), gpu, x, y


@pytest.mark.parametrize("method", METHODS)
def test_eps_l_agrees(pair: tuple, method: str) -> None:
    cpu, gpu, x, y = pair
    a = diagnose(cpu, x, y, method=method)
    b = diagnose(gpu, x.cuda(), y.cuda(), method=method)
    assert torch.equal(a.correct, b.correct.cpu())
    assert torch.allclose(a.eps_l, b.eps_l.cpu(), rtol=1e-4, atol=1e-7)
    assert torch.allclose(a.grad_gap, b.grad_gap.cpu(), rtol=1e-4)
    assert (a.rival == b.rival.cpu()).float().mean() >= 0.99  # ties may break either way


ATTACKS = {
    "fgsm": lambda m, x, y: fgsm(m, x, y, eps=0.1),
    "pgd-xent": lambda m, x, y: pgd(m, x, y, eps=0.1, step_size=0.0125, steps=20, seed=0),
    "pgd-cw": lambda m, x, y: pgd(m, x, y, eps=0.1, step_size=0.0125, steps=20, loss="cw",
                                  seed=0),
    "apgd-dlr": lambda m, x, y: apgd(m, x, y, eps=0.1, steps=20, loss="dlr", seed=0),
    "square": lambda m, x, y: square(m, x, y, eps=0.1, steps=100, seed=0),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_agree_within_one_point(pair: tuple, name: str) -> None:
    cpu, gpu, x, y = pair
    on_cpu = ATTACKS[name](cpu, x, y)
    on_gpu = ATTACKS[name](gpu, x.cuda(), y.cuda())
    assert on_gpu.x_adv.device.type == "cuda"
    assert abs(on_cpu.accuracy - on_gpu.accuracy) <= POINT
    assert float((on_gpu.x_adv.cpu() - x).abs().max()) <= 0.1 + 1e-6


def test_transfer_agrees(pair: tuple) -> None:
    cpu, gpu, x, y = pair
    settings = {"eps": 0.1, "step_size": 0.0125, "steps": 10, "seed": 0}
    a = transfer(cpu, cpu, x, y, attack="pgd", **settings)
    b = transfer(gpu, gpu, x.cuda(), y.cuda(), attack="pgd", **settings)
    assert abs(a.accuracy - b.accuracy) <= POINT


def test_eps_star_agrees(pair: tuple) -> None:
    cpu, gpu, x, y = pair
    config = EpsStarConfig(fmn_steps=50, fab_steps=20)
    a = find_eps_star(cpu, x[:100], y[:100], config=config)
    b = find_eps_star(gpu, x[:100].cuda(), y[:100].cuda(), config=config)
    assert abs(a.accuracy(0.1) - b.accuracy(0.1)) <= POINT
    finite = torch.isfinite(a.eps_star) & torch.isfinite(b.eps_star.cpu()) & (a.eps_star > 0)
    ratio = (b.eps_star.cpu()[finite] / a.eps_star[finite]).median()
    assert abs(float(ratio) - 1) <= 0.01


def test_audit_agrees(pair: tuple) -> None:
    cpu, gpu, x, y = pair
    config = AuditConfig.quick(seed=0, square_queries=100,
                               eps_star=EpsStarConfig(fmn_steps=30, fab_steps=10))
    a = audit(cpu, x[:100], y[:100], eps=0.1, config=config)
    b = audit(gpu, x[:100].cuda(), y[:100].cuda(), eps=0.1, config=config)
    assert abs(a.robust_accuracy - b.robust_accuracy) <= 0.02  # two points: many attacks
    assert [w.code for w in a.warnings] == [w.code for w in b.warnings]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_agrees_within_one_point(tmp_path: Path, precision: str) -> None:
    results = {}
    for device in ("cpu", "cuda"):
        config = TrainConfig(epochs=2, seed=0, device=device,
                             precision=precision if device == "cuda" else "fp32")
        results[device] = train(config, tmp_path / f"{device}.safetensors").metadata
    cpu_acc = results["cpu"]["metrics"]["test_accuracy"]
    gpu_acc = results["cuda"]["metrics"]["test_accuracy"]
    assert abs(cpu_acc - gpu_acc) <= (0.01 if precision == "fp32" else 0.03) + 1e-9


def test_commands_run_on_cuda(tmp_path: Path, digits_checkpoint: Path) -> None:
    """compare (with the audit and ε*), eps-star and a shrunk reproduce, all on --device cuda."""
    runner = CliRunner()
    for args in (
        ["compare", str(digits_checkpoint), "--eps", "0.1", "--limit", "40", "--audit",
         "--fmn-steps", "20", "--fab-steps", "10", "--device", "cuda", "--out",
         str(tmp_path / "cmp")],
        ["eps-star", str(digits_checkpoint), "--limit", "40", "--device", "cuda", "--out",
         str(tmp_path / "cal")],
        ["reproduce", "--models", "natural,pgd7", "--epochs", "1", "--limit", "40",
         "--device", "cuda", "--out", str(tmp_path / "study")],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, f"{args[0]}: {result.output}"


def test_sync_bn_trains_and_saves_plain_batchnorm(tmp_path: Path) -> None:
    """--sync-bn on one GPU: SyncBatchNorm falls back to BatchNorm in one process, so the model
    equals the one trained without it, and the checkpoint loads into the plain architecture."""
    from epsl.models.checkpoint import load

    paths = {}
    for sync_bn in (False, True):
        config = TrainConfig(arch="wrn", arch_kwargs={"depth": 10, "widen_factor": 1},
                             epochs=1, train_limit=256, seed=0, device="cuda", sync_bn=sync_bn)
        paths[sync_bn] = train(config, tmp_path / f"{sync_bn}.safetensors").path
    plain, _ = load(paths[False], device="cpu")
    synced, _ = load(paths[True], device="cpu")
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    for a, b in zip(plain.state_dict().values(), synced.state_dict().values(), strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-5)


def test_the_nccl_group_joins(tmp_path: Path) -> None:
    """torchrun on the GPUs there are (NCCL for CUDA tensors, gloo for the gathers on the
    CPU): a training run and a sharded diagnose complete and diagnose equals one process."""
    import os
    import subprocess
    import sys

    import pandas as pd

    gpus = str(torch.cuda.device_count())
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            gpus, "-m", "epsl"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for args in (["train", "--epochs", "1", "--train-limit", "256", "--device", "cuda",
                  "--out", "m.safetensors"],
                 ["diagnose", "m.safetensors", "--device", "cuda", "--out", "two"]):
        done = subprocess.run(base + args, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    one = CliRunner().invoke(main, ["diagnose", str(tmp_path / "m.safetensors"), "--device",
                                    "cuda", "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "one" / "diagnostics.csv"),
                                  pd.read_csv(tmp_path / "two" / "diagnostics.csv"))
