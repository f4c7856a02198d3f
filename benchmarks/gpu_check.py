"""The prepared device check: run it first in any session that has a GPU (issue 13).

    python benchmarks/gpu_check.py --out "$OUT"            # on the GPU: about 5 minutes
    python benchmarks/gpu_check.py --quick --out /tmp/gc   # CPU, seconds: what CI runs

On a device machine that lacks torchattacks or Foolbox, carry their wheels (the device README
says how) and put them on PYTHONPATH before running. Nothing is downloaded: models are built
with random weights and inputs drawn seeded, except the digits smoke run, which uses the
bundled scikit-learn digits. Every figure is a ratio measured side by side in this one run:

1. ``pytest -m cuda`` (CUDA only): CPU and CUDA agree on Jacobians, ε_L, attacks, ε* and
   training;
2. ε_L diagnostics for ``madry-mnist`` (batch 1024) and ``wrn-28-10`` (batch 128, CIFAR-shaped)
   with every Jacobian method against the floor (one forward plus one backward per class),
   and peak memory; the fastest method is what ``method="auto"`` should pick on the device;
   and at 1000 classes on 224 x 224 (a small net, batch 64): the exact search, reduced class
   block by class block within the memory budget, and the top-10 search, against the floor;
3. the same for RobustBench's ``cifar10/Linf/Standard`` (WRN-28-10, batch 128) loaded through
   ``epsl.load``'s zoo path (``benchmarks/zoo.py``; needs ``epsl[zoo]`` or its wheels);
4. PGD-20 of epsl against torchattacks' PGD on ``wrn-28-10`` (batch 256): time ratio and robust
   accuracy (labels are the model's own clean predictions, so clean accuracy is 100%);
5. one training step of natural, label smoothing, logit squeezing, noise and PGD-7 training on
   ``wrn-28-10`` (batch 128) in fp32 and bf16 (and compiled with ``--compile``): images per
   second and the ratio of each defense to natural training;
6. the digits study end to end on the device, as a smoke run;
7. ``benchmarks/distributed.py``: sharded ε_L with 1 and 2 processes (gloo, CPU), equal to one
   process.

Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out``; exits 1 if any part failed (the
other parts still run). ``--quick`` shrinks every model and batch so the same code runs on the
CPU in CI and cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from epsl.attacks import default_step_size, pgd
from epsl.defenses import DefenseConfig, objective
from epsl.diagnostics import diagnose
from epsl.diagnostics.jacobians import METHODS, resolve_method
from epsl.models import create_model

ROOT = Path(__file__).resolve().parents[1]
DEFENSES = {
    "natural": DefenseConfig(),
    "label smoothing a=0.75": DefenseConfig(label_smoothing=0.75),
    "logit squeeze b=2": DefenseConfig(logit_squeeze=2.0),
    "noise s=0.1": DefenseConfig(noise_sigma=0.1),
    "pgd-7": DefenseConfig(adv="pgd", adv_eps=8 / 255, adv_steps=7),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` runs after one warm-up."""
    run()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _model(arch: str, channels: int, size: int, device: torch.device, **kw: Any) -> Any:
    torch.manual_seed(0)
    return create_model(arch, in_channels=channels, num_classes=10, input_size=size,
                        mean=[0.5] * channels, std=[0.25] * channels, **kw).to(device)


def _inputs(n: int, channels: int, size: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, channels, size, size, generator=gen).to(device)


def _peak(device: torch.device, run: Callable[[], Any]) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    run()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def check_tests(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"skipped": "no CUDA device"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p",
                             "no:cacheprovider", str(ROOT / "tests")], capture_output=True,
                            text=True, cwd=ROOT)
    summary = (result.stdout.strip().splitlines() or [""])[-1]
    if result.returncode != 0:
        raise RuntimeError(f"pytest -m cuda failed: {summary}\n{result.stdout[-3000:]}")
    return {"summary": summary, "seconds": round(time.perf_counter() - start, 1)}


def _floor(model: Any, x: torch.Tensor) -> None:
    """The least an exact per-example Jacobian costs: one forward, one backward per class."""
    xg = x.detach().requires_grad_(True)
    logits = model(xg)
    for k in range(logits.shape[1]):
        torch.autograd.grad(logits[:, k].sum(), xg, retain_graph=k < logits.shape[1] - 1)


def _diagnostics_case(args: argparse.Namespace, device: torch.device, arch: str,
                      channels: int, size: int, n: int, model: Any = None) -> dict[str, Any]:
    """Every Jacobian method against the floor on one model and batch."""
    model = (_model(arch, channels, size, device) if model is None else model.to(device)).eval()
    x = _inputs(n, channels, size, device)
    y = torch.zeros(n, dtype=torch.long, device=device)

    def floor() -> None:
        _floor(model, x)

    base = _timed(floor, device, args.repeats)
    row: dict[str, Any] = {"model": arch, "batch": n, "floor_ms": round(1000 * base, 2),
                           "floor_peak_mib": _peak(device, floor)}
    for method in METHODS:
        def run(method: str = method) -> None:
            diagnose(model, x, y, method=method, batch_size=n, chunk_size=n)

        row[f"{method}_x_floor"] = round(_timed(run, device, args.repeats) / base, 3)
        row[f"{method}_peak_mib"] = _peak(device, run)
    fixed = [m for m in METHODS if m != "auto"]
    row["fastest"] = min(fixed, key=lambda m: row[f"{m}_x_floor"])
    row["auto_picks"] = resolve_method("auto", device)
    return row


def check_diagnostics(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    cases = ([("madry-mnist", 1, 28, 16), ("small-cnn", 3, 32, 8)] if args.quick else
             [("madry-mnist", 1, 28, 1024), ("wrn-28-10", 3, 32, 128)])
    return [_diagnostics_case(args, device, *case) for case in cases]


def check_many_classes(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """eps_L at 1000 classes on 224 x 224 (``benchmarks/diagnostics.py``'s small net): the
    exact search reduced class block by class block and the top-10 search, against the floor,
    with their peak memory; every class stays exact (checked against each other)."""
    from diagnostics import small_imagenet_net

    classes, size, n = (100, 64, 2) if args.quick else (1000, 224, 64)
    torch.manual_seed(0)
    model = small_imagenet_net(classes).to(device).eval()
    x = _inputs(n, 3, size, device)
    y = torch.arange(n, device=device) % classes

    def floor() -> None:
        _floor(model, x)

    base = _timed(floor, device, args.repeats)
    row: dict[str, Any] = {"model": f"small net, {classes} classes, {size}x{size}", "batch": n,
                           "floor_ms": round(1000 * base, 2), "floor_peak_mib": _peak(device, floor)}
    for label, top_k in (("exact", None), ("top10", 10)):
        def run(top_k: int | None = top_k) -> None:
            diagnose(model, x, y, batch_size=n, top_k=top_k)

        row[f"{label}_x_floor"] = round(_timed(run, device, args.repeats) / base, 3)
        row[f"{label}_peak_mib"] = _peak(device, run)
    return row


def check_zoo(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """RobustBench's ``cifar10/Linf/Standard`` (WRN-28-10) through ``epsl.load``'s zoo path
    (random weights in RobustBench's layout): every Jacobian method against the floor."""
    from zoo import zoo_model

    from epsl.errors import EpslError
    from epsl.models.sources import robustbench_zoo

    try:
        robustbench_zoo()
    except EpslError as exc:  # not installed: say so, as the rest of the check still runs
        return {"skipped": f"{exc} (or carry its wheels)"}

    spec = "robustbench:cifar10/Linf/" + ("Wong2020Fast" if args.quick else "Standard")
    model, _ = zoo_model(spec)
    return _diagnostics_case(args, device, spec, 3, 32, 4 if args.quick else 128, model=model)


def check_pgd(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    import torchattacks

    arch, channels, size, n = ("small-cnn", 3, 32, 8) if args.quick else ("wrn-28-10", 3, 32, 256)
    model = _model(arch, channels, size, device).eval()
    x = _inputs(n, channels, size, device)
    with torch.no_grad():
        y = model(x).argmax(1)  # the model's own predictions: clean accuracy 100%
    eps, steps = 8 / 255, 20
    step = default_step_size(eps, steps)
    accuracy: dict[str, float] = {}

    def ours() -> None:
        accuracy["epsl"] = pgd(model, x, y, eps=eps, step_size=step, steps=steps, seed=0).accuracy

    def theirs() -> None:
        x_adv = torchattacks.PGD(model, eps=eps, alpha=step, steps=steps)(x, y)
        with torch.no_grad():
            accuracy["torchattacks"] = float((model(x_adv).argmax(1) == y).float().mean())

    epsl_s, ta_s = _timed(ours, device, args.repeats), _timed(theirs, device, args.repeats)
    return {"model": arch, "batch": n, "steps": steps, "epsl_ms": round(1000 * epsl_s, 1),
            "torchattacks_ms": round(1000 * ta_s, 1), "ratio": round(epsl_s / ta_s, 3),
            "epsl_accuracy": accuracy["epsl"], "torchattacks_accuracy": accuracy["torchattacks"]}


def _training_case(args: argparse.Namespace, device: torch.device, arch: str, n: int,
                   precision: str, compiled: bool) -> dict[str, Any]:
    """One training step of every defense, side by side, in one precision."""
    model = _model(arch, 3, 32, device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    module: Any = torch.compile(model) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = _inputs(n, 3, 32, device)
    y = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(2)).to(device)
    seconds = {}
    for name, defense in DEFENSES.items():
        def step(defense: DefenseConfig = defense) -> None:
            out = objective(module, x, y, defense, 10, precision=precision)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()

        seconds[name] = _timed(step, device, args.repeats)
    base = seconds["natural"]
    return {"model": arch, "batch": n, "precision": precision, "compiled": compiled,
            **{f"{k} img/s": round(n / v, 1) for k, v in seconds.items()},
            **{f"{k} x natural": round(v / base, 3) for k, v in seconds.items()}}


def check_training(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    arch, n = ("small-cnn", 8) if args.quick else ("wrn-28-10", 128)
    return [_training_case(args, device, arch, n, precision, compiled)
            for precision in ("fp32", "bf16")
            for compiled in ([False, True] if args.compile else [False])]


def check_study(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    out = Path(args.out) / "study"
    command = [str(Path(sys.executable).parent / "epsl"), "reproduce", "--out", str(out),
               "--device", device.type, "--force"]
    if args.quick:
        command += ["--models", "natural", "--epochs", "1", "--limit", "20", "--no-audit",
                    "--no-min-norm"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"reproduce failed: {result.stderr.strip()[-2000:]}")
    first = (result.stdout.strip().splitlines() or [""])[0]
    return {"seconds": round(time.perf_counter() - start, 1), "summary": first}


def check_torchrun(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """benchmarks/distributed.py: sharded eps_L on 1 and 2 CPU processes (the device machine
    has more cores than the development machine), each checked equal to one process."""
    figures = Path(args.out) / "distributed.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "distributed.py"), "--json",
               str(figures)] + (["--quick"] if args.quick else [])
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"distributed.py failed: {result.stderr.strip()[-2000:]}")
    runs = json.loads(figures.read_text())
    return {name: f"{run['seconds']:.2f} s ({run['processes']}x{run['threads']} threads)"
            for name, run in runs.items()}


CHECKS: dict[str, Callable[[argparse.Namespace, torch.device], Any]] = {
    "cuda tests": check_tests, "diagnostics": check_diagnostics,
    "many classes": check_many_classes, "zoo": check_zoo,
    "pgd": check_pgd,
    "training": check_training, "digits study": check_study, "torchrun": check_torchrun,
}


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# gpu_check on {report['device_name']}", "",
             f"torch {report['torch']}, quick={report['quick']}", ""]
    for name, value in report["checks"].items():
        lines.append(f"## {name}")
        rows = value if isinstance(value, list) else [value]
        if rows and all(isinstance(r, dict) for r in rows):
            keys = list(dict.fromkeys(k for r in rows for k in r))
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    parser.add_argument("--quick", action="store_true", help="tiny models and batches (CPU, CI)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", action="append", choices=list(CHECKS), default=None)
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 5)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    if device.type == "cuda":  # fp32 figures are fp32 figures
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    Path(args.out).mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__, "quick": args.quick, "checks": {}, "errors": {},
        "seconds": {}}
    for name, check in CHECKS.items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        try:
            report["checks"][name] = check(args, device)
        except Exception as exc:  # noqa: BLE001 - every check runs; failures are reported
            report["errors"][name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        report["seconds"][name] = round(time.perf_counter() - start, 1)
        print(f"[gpu_check] {name}: {report['seconds'][name]} s"
              + (f" FAILED: {report['errors'][name]}" if name in report["errors"] else ""),
              flush=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    text = _markdown(report)
    (Path(args.out) / "gpu_check.md").write_text(text)
    print(text)
    sys.exit(1 if report["errors"] else 0)


if __name__ == "__main__":
    main()
