"""Benchmark: examples per second of the full eps_L computation (Eq. 4) against the floor and
a naive loop, with peak memory.

For each model (``madry-mnist`` on 1x28x28, a CIFAR-shaped ``preact-resnet18`` on 3x32x32, and
with ``--models robustbench:cifar10/Linf/Standard`` RobustBench's WRN-28-10, random weights
loaded through ``epsl.load``'s zoo path, ``benchmarks/zoo.py``):

- ``diagnose[<method>]``: :func:`epsl.diagnostics.diagnose` end to end (Jacobian, gaps,
  cosines, eps_L, per-class matrices), for every Jacobian method;
- ``floor``: one forward pass plus one backward pass per class on the whole batch, nothing
  else (the least any exact per-example Jacobian can cost with reverse-mode autograd);
- ``naive``: a per-example, per-class autograd loop (one forward and one backward per example
  and class), timed on a small subset and extrapolated per example.

Times are the best of ``--repeats`` rounds after a warm-up; each round runs every computation
once, interleaved, so load from other processes hits them alike. Peak memory is measured once
per computation in its own spawned process: the growth of ``ru_maxrss`` over the footprint
after setup on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA.

    python benchmarks/diagnostics.py                 # both models, CPU (or --device cuda)
    python benchmarks/diagnostics.py --quick         # small batches, a smoke run

``--table1 CKPT [CKPT ...]`` instead prints the check in the spirit of Table 1 of the paper:
for each checkpoint, on its whole test split, the accuracy predicted by Eq. 4 (fraction with
eps < eps_L) beside the empirical accuracy under FGSM on the cross-entropy and on the CW
logit margin at the same eps (``--eps``, repeatable).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

ZOO_STANDARD = "robustbench:cifar10/Linf/Standard"
IMAGENET_SMALL = "conv-1000"
MODELS = {  # name -> (arch or zoo spec, channels, size, extra kwargs)
    "madry-mnist": ("madry-mnist", 1, 28, {}),
    "preact-resnet18": ("preact-resnet18", 3, 32, {}),
    ZOO_STANDARD: (ZOO_STANDARD, 3, 32, {}),  # WRN-28-10, loaded through epsl's zoo path
    IMAGENET_SMALL: (IMAGENET_SMALL, 3, 224, {}),  # a small 1000-class net on 224x224
}
CLASSES = {IMAGENET_SMALL: 1000}  # 10 for the others
DEFAULT_MODELS = ["madry-mnist", "preact-resnet18", IMAGENET_SMALL]
BATCH = {"madry-mnist": 256, "preact-resnet18": 16, ZOO_STANDARD: 8, IMAGENET_SMALL: 3}
NAIVE_SUBSET = {"madry-mnist": 8, "preact-resnet18": 2, ZOO_STANDARD: 1, IMAGENET_SMALL: 1}
METHODS = ("backward", "vjp", "jacrev")
#: at many classes: the rival among the top-k logits only, and the Jacobian held whole (what
#: diagnose did before it reduced class block by class block; 5.9 GiB on conv-1000)
MANY_CLASS_COMPUTATIONS = ("diagnose[backward,top10]", "full-jacobian")


@dataclass(frozen=True)
class Task:
    model: str
    n: int
    naive_n: int
    repeats: int
    device: str
    threads: int


COMPUTATIONS = ("floor", *(f"diagnose[{m}]" for m in METHODS), "naive")


def computations(model: str) -> tuple[str, ...]:
    """The rows measured for ``model``: at 1000 classes the vmapped methods (their batched
    backward passes hold 16 class columns of activations at once) give way to the top-k
    search and the whole-Jacobian path it replaces."""
    if CLASSES.get(model, 10) > 100:
        return ("floor", "diagnose[backward]", *MANY_CLASS_COMPUTATIONS, "naive")
    return COMPUTATIONS


def small_imagenet_net(classes: int = 1000) -> Any:
    """A small 1000-class conv net on 3 x 224 x 224 pixels in [0, 1] (normalisation inside):
    two strided convolutions, a 4 x 4 average pool and a linear head, 0.5 M parameters. Its
    Jacobian is 1000 x 150528 floats, 602 MB, per example."""
    from torch import nn

    from epsl.models import Normalize

    return nn.Sequential(Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                         nn.Conv2d(3, 16, 7, stride=4, padding=3), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, classes))


def _setup(task: Task) -> tuple[Any, Any, Any]:
    import torch

    from epsl.models import create_model

    if task.threads:
        torch.set_num_threads(task.threads)
    arch, channels, size, extra = MODELS[task.model]
    torch.manual_seed(0)
    classes = CLASSES.get(task.model, 10)
    if arch.startswith("robustbench:"):
        from zoo import zoo_model

        model = zoo_model(arch)[0]
    elif arch == IMAGENET_SMALL:
        model = small_imagenet_net(classes)
    else:
        model = create_model(arch, in_channels=channels, num_classes=10, input_size=size,
                             mean=[0.5] * channels, std=[0.25] * channels, **extra)
    model = model.to(task.device).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(task.n, channels, size, size, generator=gen).to(task.device)
    y = torch.randint(0, classes, (task.n,), generator=gen).to(task.device)
    return model, x, y


def _floor(model: Any, x: Any) -> None:
    import torch

    x = x.detach().requires_grad_(True)
    logits = model(x)
    for k in range(logits.shape[1]):
        torch.autograd.grad(logits[:, k].sum(), x, retain_graph=k < logits.shape[1] - 1)


def _naive(model: Any, x: Any) -> None:
    import torch

    for example in x:
        for k in range(int(model(example[None]).shape[1])):
            xi = example.unsqueeze(0).detach().requires_grad_(True)
            torch.autograd.grad(model(xi)[0, k], xi)


def _runner(task: Task, computation: str) -> tuple[Callable[[], None], int]:
    """``(run once, examples per run)`` for one computation on the task's batch."""
    import torch

    from epsl.diagnostics import diagnose

    model, x, y = _setup(task)
    cuda = task.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if computation == "floor":
        return (lambda: (_floor(model, x), sync())[1]), task.n
    if computation == "naive":
        return (lambda: (_naive(model, x[:task.naive_n]), sync())[1]), task.naive_n
    if computation == "full-jacobian":
        from epsl.diagnostics import jacobian_and_logits
        from epsl.diagnostics.margins import margins_from_jacobian

        def whole() -> None:
            jac, logits = jacobian_and_logits(model, x, chunk_size=len(x))
            margins_from_jacobian(jac, logits, y, torch.arange(len(x)))
            sync()

        return whole, task.n
    method, _, top = computation.removeprefix("diagnose[").removesuffix("]").partition(",")
    top_k = int(top.removeprefix("top")) if top else None
    return (lambda: (diagnose(model, x, y, method=method, batch_size=len(x), top_k=top_k),
                     sync())[1]), task.n


def _time_all(task: Task) -> dict[str, float]:
    """Seconds per example of every computation, best of ``repeats`` rounds; the rounds
    interleave the computations so that load from other processes hits them alike."""
    runners = {c: _runner(task, c) for c in computations(task.model)}
    for run, _ in runners.values():
        run()  # warm-up
    best = {c: float("inf") for c in runners}
    for _ in range(task.repeats):
        for name, (run, n) in runners.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], (time.perf_counter() - start) / n)
    return best


def _peak_mib(task: Task, computation: str) -> tuple[float, float]:
    """Peak memory of one run, in a fresh process: ``(growth, whole process)`` in MiB, the
    ru_maxrss growth over the footprint after setup and the process's peak RSS, torch and the
    model included (CPU), or the CUDA peak and the CUDA peak allocated in all."""
    import torch

    run, _ = _runner(task, computation)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if task.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
        run()
        peak = torch.cuda.max_memory_allocated()
        return (peak - base_cuda) / 2**20, peak / 2**20
    run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak - base) / 1024, peak / 1024  # KiB -> MiB


def _spawn(func: Callable[..., Any], *args: Any) -> Any:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(func, args)


def _eq3_accuracy(model: Any, x: Any, y: Any, rival: Any, eps: float, clip: bool) -> float:
    """Accuracy after the Eq. 3 step delta = -eps * sign(grad z_y - grad z_rival)."""
    import torch

    from epsl.diagnostics import jacobian

    correct = 0
    for start in range(0, len(y), 256):
        part = slice(start, start + 256)
        jac = jacobian(model, x[part])
        rows = torch.arange(len(jac))
        step = -eps * torch.sign(jac[rows, y[part]] - jac[rows, rival[part]])
        moved = x[part] + step
        with torch.no_grad():
            pred = model(moved.clamp(0, 1) if clip else moved).argmax(1)
        correct += int((pred == y[part]).sum())
    return correct / len(y)


def table1(checkpoints: list[str], eps: list[float]) -> list[dict[str, Any]]:
    """Eq. 4 predicted accuracy vs empirical FGSM accuracy (xent and CW) at each eps, and the
    accuracy after the Eq. 3 step itself, without and with clipping to the [0, 1] box."""
    from epsl.attacks import fgsm
    from epsl.diagnostics import diagnose, predicted_accuracy
    from epsl.runs.context import DataConfig, prepare

    rows = []
    for path in checkpoints:
        ev = prepare(DataConfig(str(path), device="cpu"))
        x, y = ev.data.x, ev.data.y
        diag = diagnose(ev.model, x, y)
        defense = (ev.meta.get("train_config") or {}).get("defense", {})
        for e in eps:
            rows.append({
                "checkpoint": path, "defense": defense, "n": len(y),
                "clean": diag.clean_accuracy, "eps": e,
                "eq4": predicted_accuracy(diag.eps_l, e),
                "fgsm_xent": fgsm(ev.model, x, y, eps=e, loss="xent").accuracy,
                "fgsm_cw": fgsm(ev.model, x, y, eps=e, loss="cw").accuracy,
                "eq3_step": _eq3_accuracy(ev.model, x, y, diag.rival, e, clip=False),
                "eq3_step_clipped": _eq3_accuracy(ev.model, x, y, diag.rival, e, clip=True),
            })
    return rows


def machine(device: str, threads: int) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {mp.cpu_count()} cores, torch {torch.__version__}, "
            f"{threads or torch.get_num_threads()} threads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=DEFAULT_MODELS,
                        help=f"default: {' '.join(DEFAULT_MODELS)}; {ZOO_STANDARD} needs "
                             "epsl[zoo] (about a minute per example-batch on 2 CPU cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--quick", action="store_true", help="small batches (a smoke run)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--table1", nargs="+", metavar="CKPT", default=None,
                        help="print Eq. 4 vs FGSM accuracy for these checkpoints instead")
    parser.add_argument("--eps", type=float, action="append", default=None,
                        help="eps for --table1 (repeatable; default 0.05 0.1 0.2 0.3)")
    args = parser.parse_args()
    if args.table1:
        rows = table1(args.table1, args.eps or [0.05, 0.1, 0.2, 0.3])
        print("| checkpoint | clean | eps | FGSM (xent) | FGSM (CW) | Eq. 4 | Eq. 3 step | "
              "Eq. 3 step, clipped |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['checkpoint']} | {r['clean']:.2%} | {r['eps']:g} | "
                  f"{r['fgsm_xent']:.2%} | {r['fgsm_cw']:.2%} | {r['eq4']:.2%} | "
                  f"{r['eq3_step']:.2%} | {r['eq3_step_clipped']:.2%} |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=2)
        return

    print(f"machine: {machine(args.device, args.threads)}")
    rows = []
    for name in args.models:
        n = max(2, BATCH[name] // 8) if args.quick else BATCH[name]
        if args.device.startswith("cuda"):
            n *= 8
        task = Task(name, n, min(n, NAIVE_SUBSET[name]), args.repeats, args.device,
                    args.threads)
        seconds = _spawn(_time_all, task)
        peaks = {c: _spawn(_peak_mib, task, c) for c in computations(name)}
        floor, naive = seconds["floor"], seconds["naive"]
        print(f"\n{name}: batch {n} (naive loop on {task.naive_n}, extrapolated per example)")
        print(f"{'computation':<22}{'ex/s':>10}{'x floor time':>14}{'x faster than naive':>21}"
              f"{'peak MiB':>10}{'process MiB':>13}")
        for label in computations(name):
            spe = seconds[label]
            rows.append({"model": name, "computation": label, "batch": n,
                         "examples_per_second": 1 / spe, "time_vs_floor": spe / floor,
                         "speedup_vs_naive": naive / spe, "peak_mib": peaks[label][0],
                         "process_peak_mib": peaks[label][1],
                         "task": asdict(task)})
            print(f"{label:<22}{1 / spe:>10.2f}{spe / floor:>14.2f}{naive / spe:>21.1f}"
                  f"{peaks[label][0]:>10.0f}{peaks[label][1]:>13.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(args.device, args.threads), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
