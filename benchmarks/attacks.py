"""epsl's PGD-40 against torchattacks' PGD-40 (l_inf) and PGDL2-40 (l2): time and robust
accuracy on the same model, the same batch and the same settings, in one run, with the ratio
(goal: epsl / torchattacks <= 1).

    python benchmarks/attacks.py                 # madry-mnist on Fashion-MNIST + digits small-cnn
    python benchmarks/attacks.py --repeats 5 --json runs/bench-attacks.json

The l_inf attacks use eps, step size and steps of Madry et al.'s MNIST PGD-40 (step 0.01) and
cross-entropy; the l2 ones eps 1.0 (digits) or 1.5 (Fashion-MNIST) with step 2.5 * eps / 40.
Both libraries start at random (l_inf: uniform per pixel; l2: radius eps * U), but epsl first
runs from x and then from one random start, and each example keeps its strongest result, while
torchattacks runs once from its random start. The timing of torchattacks includes the forward
pass that scores its adversarial examples, as epsl's does. Runs are interleaved and the minimum
over repeats is reported, because the machine may be shared. Each model is trained briefly here
(seeded) so that the robust accuracies mean something.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchattacks
from common import plain_train

from epsl.attacks import pgd
from epsl.data import load_split
from epsl.errors import EpslError
from epsl.models import Classifier


def train(arch: str, dataset: str, *, examples: int, epochs: int, seed: int = 0) -> Classifier:
    """``arch`` trained briefly (Adam, lr 1e-3) on the first ``examples`` of ``dataset``'s
    training split."""
    data = load_split(dataset, "train").subset(examples)
    return plain_train(arch, data, dataset=dataset, seed=seed, epochs=epochs, lr=1e-3)


def timed(run: Callable[[], float]) -> tuple[float, float]:
    start = time.perf_counter()
    accuracy = run()
    return time.perf_counter() - start, accuracy


def compare(name: str, model: Classifier, x: torch.Tensor, y: torch.Tensor, *, eps: float,
            step_size: float, steps: int, repeats: int, norm: str = "linf"
            ) -> dict[str, object]:
    reference_attack = {"linf": torchattacks.PGD, "l2": torchattacks.PGDL2}[norm]

    def ours() -> float:
        return pgd(model, x, y, eps=eps, step_size=step_size, steps=steps, seed=0,
                   norm=norm).accuracy

    def reference() -> float:
        x_adv = reference_attack(model, eps=eps, alpha=step_size, steps=steps)(x, y)
        with torch.no_grad():
            return (model(x_adv).argmax(1) == y).float().mean().item()

    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    torch.manual_seed(0)
    times: dict[str, list[float]] = {"epsl": [], "torchattacks": []}
    accuracy: dict[str, list[float]] = {"epsl": [], "torchattacks": []}
    timed(ours), timed(reference)  # warm-up
    for _ in range(repeats):
        for label, run in (("torchattacks", reference), ("epsl", ours)):
            seconds, acc = timed(run)
            times[label].append(seconds)
            accuracy[label].append(acc)
    best = {label: min(values) for label, values in times.items()}
    return {
        "case": name, "norm": norm, "n": len(y), "eps": eps, "step_size": step_size, "steps": steps,
        "clean_accuracy": clean,
        "epsl_seconds": best["epsl"], "torchattacks_seconds": best["torchattacks"],
        "ratio": best["epsl"] / best["torchattacks"],
        "epsl_accuracy": statistics.mean(accuracy["epsl"]),
        "torchattacks_accuracy": statistics.mean(accuracy["torchattacks"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fashion-n", type=int, default=256)
    parser.add_argument("--json", type=Path, default=None, help="Also write the rows here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    digits = load_split("digits", "test")
    small = train("small-cnn", "digits", examples=1437, epochs=8)
    rows.append(compare("small-cnn / digits", small, digits.x, digits.y, eps=0.1,
                        step_size=0.01, steps=40, repeats=args.repeats))
    rows.append(compare("small-cnn / digits", small, digits.x, digits.y, eps=1.0,
                        step_size=2.5 * 1.0 / 40, steps=40, repeats=args.repeats, norm="l2"))
    try:
        fashion = load_split("fashion-mnist", "test").subset(args.fashion_n)
    except EpslError as exc:  # Debian's dataset-fashion-mnist is not installed
        print(f"skipping the Fashion-MNIST cases: {exc}")
    else:
        madry = train("madry-mnist", "fashion-mnist", examples=4000, epochs=2)
        rows.append(compare("madry-mnist / fashion-mnist", madry, fashion.x, fashion.y,
                            eps=0.1, step_size=0.01, steps=40, repeats=args.repeats))
        rows.append(compare("madry-mnist / fashion-mnist", madry, fashion.x, fashion.y,
                            eps=1.5, step_size=2.5 * 1.5 / 40, steps=40, repeats=args.repeats,
                            norm="l2"))

    header = (f"{'case':<28} {'norm':>4} {'eps':>4} {'n':>4} {'clean':>6} {'epsl s':>7} "
              f"{'t.a. s':>7} {'ratio':>6} {'epsl acc':>9} {'t.a. acc':>9}")
    print(f"PGD-40 (torchattacks PGD / PGDL2), xent, random start; torch {torch.__version__}, "
          f"torchattacks {torchattacks.__version__}, {args.threads} threads, "
          f"min of {args.repeats}")
    print(header)
    for row in rows:
        print(f"{row['case']:<28} {row['norm']:>4} {row['eps']:>4g} {row['n']:>4} "
              f"{row['clean_accuracy']:>6.1%} "
              f"{row['epsl_seconds']:>7.2f} {row['torchattacks_seconds']:>7.2f} "
              f"{row['ratio']:>6.2f} {row['epsl_accuracy']:>9.2%} "
              f"{row['torchattacks_accuracy']:>9.2%}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
