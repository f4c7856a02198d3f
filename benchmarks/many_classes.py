"""ε* (the minimum-norm ensemble) and the audit's attacks at 100 and 1000 classes: time per
example, peak memory, and untargeted FAB against targeted FAB over the top-k classes, measured
side by side in one run.

    python benchmarks/many_classes.py                 # both models, --targets 3 9
    python benchmarks/many_classes.py --quick         # a smoke run (seconds)
    python benchmarks/many_classes.py --case cifar100 --n 32 --targets 1 3 9 --json out.json

Two small-cnn models (epsl.models):

- ``cifar100``: 3x32x32, 100 classes (width 16, hidden 64), trained here for 2 epochs
  (seeded Adam) on 6,000 synthetic images: 100 smooth random prototypes plus Gaussian noise
  (σ = 0.15), so that its margins and boundaries are those of a trained classifier; the test
  images are fresh noise around the same prototypes.
- ``imagenet``: 3x224x224, 1000 classes (width 8, hidden 64), random weights, uniform random
  images labelled with the model's own prediction (every example is classified correctly,
  which is all the timing needs).

What runs, each timed alone on the same images (interleaved after a warm-up, median over
repeats, because the machine may be shared):

- each member of the default ℓ∞ ensemble (FMN 100, FAB 50) and, for ℓ2, DDN 100, through
  :func:`epsl.attacks.eps_star.find_eps_star` with that member alone (``attacks=(name,)``);
- targeted FAB 50 over the top-k classes (``EpsStarConfig(fab_targets=k)``) for each k of
  ``--targets``, against untargeted FAB on the same images: time, and ε* as the median ratio
  targeted / untargeted and the share of examples within 1% of the untargeted ensemble
  (FMN + untargeted FAB) and of their own ensemble's (FMN + targeted FAB) ε*;
- the audit's attacks at ε = the median ε* of the ensemble (about half the examples survive,
  so Square's queries do not stop at once): PGD-40 (epsl), APGD-CE and APGD-DLR 100 steps,
  Square 300 queries (torchattacks, via epsl.attacks).

Untargeted FAB at 1000 classes costs 1000 backward passes per step; it runs there on
``--imagenet-fab-n`` examples and ``--imagenet-fab-steps`` steps only, scaled to 50 steps
(its cost per step does not depend on the step). Peak memory: the growth of ``ru_maxrss``,
measured in a fresh spawned process per attack (``--memory``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from epsl.attacks import apgd, pgd, square
from epsl.attacks.eps_star import EpsStarConfig, find_eps_star
from epsl.models import Classifier, create_model

warnings.simplefilter("ignore", DeprecationWarning)  # foolbox 3.3 imports a deprecated scipy

CASES = {  # side, classes, width, hidden
    "cifar100": (32, 100, 16, 64),
    "imagenet": (224, 1000, 8, 64),
}


def prototypes_data(classes: int, per_class: int, side: int, *, seed: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` images of each of ``classes`` smooth random prototypes (seed 0) plus
    Gaussian noise drawn with ``seed``, in [0, 1]."""
    protos = F.interpolate(torch.rand(classes, 3, 4, 4, generator=torch.Generator()
                                      .manual_seed(0)), size=side, mode="bilinear",
                           align_corners=False)
    y = torch.arange(classes).repeat_interleave(per_class)
    noise = torch.randn(len(y), 3, side, side, generator=torch.Generator().manual_seed(seed))
    return (0.25 + 0.5 * protos[y] + 0.15 * noise).clamp(0, 1), y


def build(case: str, n: int, *, epochs: int = 2) -> tuple[Classifier, torch.Tensor,
                                                          torch.Tensor]:
    """The model of ``case`` and n test images it classifies (see the module docstring)."""
    side, classes, width, hidden = CASES[case]
    torch.manual_seed(0)
    model = create_model("small-cnn", in_channels=3, num_classes=classes, input_size=side,
                         mean=(0.5,) * 3, std=(0.25,) * 3, width=width, hidden=hidden)
    if case == "imagenet":
        model.eval()
        x = torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            return model, x, model(x).argmax(1)
    x_train, y_train = prototypes_data(classes, 60, side, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(y_train), generator=order).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
    model.eval()
    x, y = prototypes_data(classes, 1, side, seed=2)
    with torch.no_grad():
        right = (model(x).argmax(1) == y).nonzero().squeeze(1)[:n]
    return model, x[right], y[right]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _peak_worker(case: str, n: int, name: str, targets: tuple[int, ...], queue: Any) -> None:
    torch.set_num_threads(2)
    model, x, y = build(case, n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _members(model, x, y, 1 if name == "fab" else 50, targets)[name]()  # memory: one step
    queue.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)


def peak_mib(case: str, n: int, name: str, targets: tuple[int, ...] = ()) -> float:
    """Peak memory growth (MiB) of one attack on n examples, in a fresh spawned process."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_worker, args=(case, n, name, targets, queue))
    proc.start()
    proc.join()
    return float(queue.get()) if proc.exitcode == 0 else float("nan")


def _members(model: Classifier, x: torch.Tensor, y: torch.Tensor, fab_steps: int,
             targets: tuple[int, ...] = ()) -> dict[str, Callable[[], Any]]:
    def ensemble(**settings: Any) -> Callable[[], Any]:
        config = EpsStarConfig(fab_steps=fab_steps, **settings)
        return lambda: find_eps_star(model, x, y, config=config)

    runs = {"fmn": ensemble(attacks=("fmn",)), "fab": ensemble(attacks=("fab",)),
            "ddn": ensemble(attacks=("ddn",), norm="l2")}
    for k in targets:
        runs[f"fab-top{k}"] = ensemble(attacks=("fab",), fab_targets=k)
    return runs


def _attacks(model: Classifier, x: torch.Tensor, y: torch.Tensor,
             eps: float) -> dict[str, Callable[[], Any]]:
    return {
        "pgd40": lambda: pgd(model, x, y, eps=eps, step_size=2.5 * eps / 40, steps=40, seed=0),
        "apgd-ce": lambda: apgd(model, x, y, eps=eps, steps=100),
        "apgd-dlr": lambda: apgd(model, x, y, eps=eps, steps=100, loss="dlr"),
        "square": lambda: square(model, x, y, eps=eps, steps=300),
    }


def run_case(case: str, *, n: int, repeats: int, targets: tuple[int, ...],
             fab_n: int, fab_steps: int, memory: bool) -> dict[str, Any]:
    model, x, y = build(case, n)
    side, classes, _, _ = CASES[case]
    slow_fab = case == "imagenet"  # untargeted FAB: 1000 backward passes per step
    members = _members(model, x, y, 50, targets)
    if slow_fab:
        members["fab"] = _members(model, x[:fab_n], y[:fab_n], fab_steps)["fab"]
    warm = _members(model, x[:2], y[:2], 2, targets)
    for name in members:
        (warm if name != "fab" or not slow_fab else members)[name]()  # imports, allocator
    seconds: dict[str, list[float]] = {name: [] for name in members}
    found: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in members.items():
            spent, found[name] = _timed(fn)
            seconds[name].append(spent)
    per_example = {name: statistics.median(v) / (fab_n if name == "fab" and slow_fab else len(y))
                   for name, v in seconds.items()}
    if slow_fab:
        per_example["fab"] *= 50 / fab_steps
    fmn_eps = found["fmn"].eps_star.double()
    ensemble = torch.minimum(fmn_eps[:len(found["fab"])], found["fab"].eps_star.double())
    eps = float(torch.minimum(fmn_eps, found[f"fab-top{targets[-1]}"].eps_star.double())
                .median()) if targets else float(ensemble.median())
    attacks = _attacks(model, x, y, eps)
    for fn in attacks.values():  # warm-up
        fn()
    attack_seconds: dict[str, list[float]] = {name: [] for name in attacks}
    accuracy: dict[str, float] = {}
    for _ in range(repeats):
        for name, fn in attacks.items():
            spent, result = _timed(fn)
            attack_seconds[name].append(spent)
            accuracy[name] = result.accuracy
    per_example.update({name: statistics.median(v) / len(y) for name, v in attack_seconds.items()})
    m = len(found["fab"])
    comparison = {}
    for k in targets:
        own = found[f"fab-top{k}"].eps_star.double()
        with_fmn = torch.minimum(fmn_eps, own)
        comparison[k] = {
            "seconds_per_example": per_example[f"fab-top{k}"],
            "time_vs_untargeted": per_example[f"fab-top{k}"] / per_example["fab"],
            "fab_median_ratio": float((own[:m] / found["fab"].eps_star.double()).median()),
            "ensemble_median_ratio": float((with_fmn[:m] / ensemble).median()),
            "ensemble_within_1pct": float((with_fmn[:m] <= 1.01 * ensemble).double().mean()),
            "fab_within_1pct": float((own[:m] <= 1.01 * found["fab"].eps_star.double())
                                     .double().mean()),
        }
    peaks = {name: peak_mib(case, min(n, 8), name, targets) for name in ("fmn", "fab", *[
        f"fab-top{k}" for k in targets[-1:]])} if memory else {}
    return {"case": case, "shape": [3, side, side], "classes": classes, "n": len(y),
            "fab_n": fab_n if slow_fab else len(y), "fab_steps": fab_steps if slow_fab else 50,
            "repeats": repeats, "eps": eps, "seconds_per_example": per_example,
            "accuracy": accuracy, "targeted": comparison, "peak_mib_8_examples": peaks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--n", type=int, default=32, help="test examples per model")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--targets", type=int, nargs="+", default=[3, 9])
    parser.add_argument("--imagenet-fab-n", type=int, default=2)
    parser.add_argument("--imagenet-fab-steps", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="peak memory per attack too")
    parser.add_argument("--quick", action="store_true", help="cifar100, 4 examples (smoke run)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = args.case or (["cifar100"] if args.quick else sorted(CASES))
    n = 4 if args.quick else args.n
    rows = [run_case(case, n=n, repeats=args.repeats, targets=tuple(args.targets),
                     fab_n=args.imagenet_fab_n, fab_steps=args.imagenet_fab_steps,
                     memory=args.memory) for case in cases]
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}")
    for row in rows:
        print(f"\n{row['case']} ({'x'.join(map(str, row['shape']))}, {row['classes']} classes), "
              f"n {row['n']}, attacks at eps {row['eps']:.4g} (median eps*)")
        fab = row["seconds_per_example"]["fab"]
        print(f"{'':<12} {'s/example':>10} {'x FAB':>7} {'robust acc':>10}")
        for name, spent in row["seconds_per_example"].items():
            acc = row["accuracy"].get(name)
            print(f"{name:<12} {spent:>10.3f} {spent / fab:>7.3f} "
                  f"{'' if acc is None else f'{acc:.1%}':>10}")
        if row["case"] == "imagenet":
            print(f"(untargeted FAB on {row['fab_n']} examples x {row['fab_steps']} steps, "
                  "scaled to 50 steps)")
        for k, c in row["targeted"].items():
            print(f"top-{k}: time x{c['time_vs_untargeted']:.3f} of untargeted FAB; FAB eps* "
                  f"median ratio {c['fab_median_ratio']:.4f}, within 1% {c['fab_within_1pct']:.1%};"
                  f" ensemble median ratio {c['ensemble_median_ratio']:.4f}, within 1% "
                  f"{c['ensemble_within_1pct']:.1%}")
        if row["peak_mib_8_examples"]:
            print("peak MiB (8 examples): " + ", ".join(
                f"{k} {v:.0f}" for k, v in row["peak_mib_8_examples"].items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
