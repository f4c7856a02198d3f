"""Benchmark: sharded eps_L diagnostics with 1 and 2 processes, and DDP's traffic on paper.

Three ways to compute :func:`epsl.diagnostics.diagnose` on the same inputs (``madry-mnist``,
untrained, 1x28x28 inputs, ``--examples`` of them), measured side by side in one run:

- ``single``: one process, no torchrun, torch's default threads (what ``epsl diagnose`` does);
- ``torchrun x1``: ``torchrun --nproc-per-node 1`` with one thread;
- ``torchrun x2``: ``torchrun --nproc-per-node 2``, one thread each (torchrun's default
  OMP_NUM_THREADS=1), the batches shared.

Times are the computation only (a barrier before and after; process start and imports are
reported apart), best of ``--repeats``. Every configuration checks that its eps_L equals the
single process's. Then, on paper, what DistributedDataParallel moves per training step for
WRN-28-10 (its parameter count, from the model): a ring all-reduce sends and receives
``2 (N-1)/N`` times the gradient bytes per GPU.

    python benchmarks/distributed.py            # prints a table and ratios
    python benchmarks/distributed.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def inputs(examples: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from epsl.models import create_model

    torch.manual_seed(0)
    model = create_model("madry-mnist", in_channels=1, num_classes=10, input_size=28,
                         mean=[0.13], std=[0.31]).eval()
    x = torch.rand(examples, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (examples,), generator=torch.Generator().manual_seed(2))
    return model, x, y


def worker(examples: int, batch: int, repeats: int, out: Path) -> None:
    """Run under torchrun (or alone): time diagnose, rank 0 writes the result."""
    from epsl import distributed
    from epsl.diagnostics import diagnose

    world = distributed.setup()
    model, x, y = inputs(examples)
    best = float("inf")
    result = None
    for _ in range(repeats + 1):  # the first round warms up
        distributed.barrier()
        start = time.perf_counter()
        result = diagnose(model, x, y, batch_size=batch, method="backward")
        distributed.barrier()
        best = min(best, time.perf_counter() - start)
    if world.writer and result is not None:
        torch.save({"eps_l": result.eps_l, "seconds": best, "processes": world.size,
                    "threads": torch.get_num_threads()}, out)


def launch(processes: int | None, args: argparse.Namespace, folder: Path) -> dict:
    out = folder / f"{processes or 0}.pt"
    command = [sys.executable, __file__, "--worker", "--examples", str(args.examples),
               "--batch", str(args.batch), "--repeats", str(args.repeats), "--result", str(out)]
    if processes is not None:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(processes), *command[1:]]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    if processes is not None:
        env["OMP_NUM_THREADS"] = "1"
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    result = torch.load(out, weights_only=True)
    result["wall"] = wall
    return result


def ddp_traffic() -> list[str]:
    from epsl.models import create_model

    params = sum(p.numel() for p in create_model("wrn-28-10", in_channels=3, num_classes=10, input_size=32,
                                                     mean=[0.5] * 3, std=[0.25] * 3).parameters())
    grad_mb = params * 4 / 1e6
    lines = [f"WRN-28-10: {params / 1e6:.1f} M parameters, {grad_mb:.0f} MB of fp32 gradient "
             "per step (bf16 autocast keeps fp32 gradients)"]
    for n in (2, 4, 8):
        per_gpu = 2 * (n - 1) / n * grad_mb
        lines.append(f"  {n} GPUs: ring all-reduce moves {per_gpu:.0f} MB in and out of each GPU "
                     f"per step; at ~150 GB/s of NVLink bus bandwidth {per_gpu / 150:.1f} ms, "
                     f"at ~12 GB/s over PCIe 4 {per_gpu / 12:.0f} ms")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.examples, args.batch, args.repeats, args.result)
        return
    if args.quick:
        args.examples, args.batch, args.repeats = 128, 32, 1
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"single": launch(None, args, Path(tmp)),
                "torchrun x1": launch(1, args, Path(tmp)),
                "torchrun x2": launch(2, args, Path(tmp))}
    base = runs["single"]
    print(f"eps_L diagnostics, madry-mnist, {args.examples} examples, batch {args.batch}, "
          f"{os.cpu_count()} CPU cores, best of {args.repeats}")
    print(f"{'':<12} {'procs':>5} {'threads':>7} {'compute s':>10} {'ex/s':>8} "
          f"{'vs single':>9} {'wall s':>7}  eps_L equal")
    for name, run in runs.items():
        equal = run["equal"] = bool(torch.equal(run["eps_l"], base["eps_l"]))
        print(f"{name:<12} {run['processes']:>5} {run['threads']:>7} {run['seconds']:>10.2f} "
              f"{args.examples / run['seconds']:>8.0f} {base['seconds'] / run['seconds']:>8.2f}x "
              f"{run['wall']:>7.1f}  {equal}")
    speedup = runs["torchrun x1"]["seconds"] / runs["torchrun x2"]["seconds"]
    print(f"2 processes against 1 (one thread each): {speedup:.2f}x")
    for line in ddp_traffic():
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps({name: {k: v for k, v in run.items() if k != "eps_l"}
                                         for name, run in runs.items()}, indent=2))
    if not all(run["equal"] for run in runs.values()):
        sys.exit("eps_L under torchrun differs from one process")


if __name__ == "__main__":
    main()
