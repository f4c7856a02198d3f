"""Robust accuracy under epsl's PGD against torchattacks' (PGD, PGDL2) and Foolbox's (LinfPGD,
L2PGD), from x and from a random start, in l_inf and l2, over several seeds and models.

    python benchmarks/attack_strength.py                      # small-cnn and mlp, seeds 0-4
    python benchmarks/attack_strength.py --seeds 10 --json runs/attack-strength.json

Every attack gets the same model, the whole digits test split, eps, step size and steps
(l_inf: eps 0.1, step 0.01; l2: eps 0.5, step 2.5 * eps / steps; 20 steps), the cross-entropy
loss and, for the random start, each library's own start. Seed s seeds epsl's ``pgd(seed=s)``
and torch's global generator before each reference attack (torchattacks and Foolbox draw from
it). Each model is trained here exactly as the test suite's ``digits_model`` fixture is (Adam,
lr 2e-3, batches of 64, 8 epochs, seeded), so the numbers are the ones the tests compare.

For each model, norm, start and reference the table prints the robust accuracy of epsl and of
the reference (mean ± sd over seeds, in %), the reference's range over seeds (max - min) and
the largest per-seed difference epsl - reference (positive: epsl weaker on that seed). From x
the attacks are deterministic, so every seed gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import foolbox
import torch
import torchattacks
from common import plain_train

from epsl.attacks import pgd
from epsl.data import Split, load_split
from epsl.models import Classifier

#: eps and step size per norm (None: 2.5 * eps / steps), as in the tests that compare with
#: the reference libraries
EPS = {"linf": 0.1, "l2": 0.5}
STEP_SIZES: dict[str, float | None] = {"linf": 0.01, "l2": None}
Reference = Callable[[Classifier, torch.Tensor, torch.Tensor, float, float, int, bool],
                     torch.Tensor]


def torchattacks_pgd(norm: str) -> Reference:
    make = {"linf": torchattacks.PGD, "l2": torchattacks.PGDL2}[norm]

    def run(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float,
            steps: int, random_start: bool) -> torch.Tensor:
        return make(model, eps=eps, alpha=step_size, steps=steps, random_start=random_start)(x, y)

    return run


def foolbox_pgd(norm: str) -> Reference:
    make = {"linf": foolbox.attacks.LinfPGD, "l2": foolbox.attacks.L2PGD}[norm]

    def run(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float,
            steps: int, random_start: bool) -> torch.Tensor:
        attack = make(abs_stepsize=step_size, steps=steps, random_start=random_start)
        _, clipped, _ = attack(foolbox.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=eps)
        return clipped

    return run


REFERENCES = {"torchattacks": torchattacks_pgd, "foolbox": foolbox_pgd}
REFERENCE_NAMES = {("torchattacks", "linf"): "PGD", ("torchattacks", "l2"): "PGDL2",
                   ("foolbox", "linf"): "LinfPGD", ("foolbox", "l2"): "L2PGD"}


def robust_accuracy(model: Classifier, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item()


def measure(model: Classifier, data: Split, *, norm: str, random_start: bool, seeds: int,
            steps: int) -> list[dict[str, object]]:
    """One row per reference: per-seed robust accuracies of epsl and the reference."""
    eps = EPS[norm]
    step_size = STEP_SIZES[norm] or 2.5 * eps / steps
    x, y = data.x, data.y
    ours = [pgd(model, x, y, eps=eps, step_size=step_size, steps=steps, seed=seed, norm=norm,
                random_start=random_start).accuracy for seed in range(seeds)]
    rows = []
    for library, make in REFERENCES.items():
        attack = make(norm)
        theirs = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            x_adv = attack(model, x, y, eps, step_size, steps, random_start)
            theirs.append(robust_accuracy(model, x_adv, y))
        rows.append({"norm": norm, "eps": eps, "step_size": step_size, "steps": steps,
                     "random_start": random_start, "reference": library,
                     "attack": REFERENCE_NAMES[library, norm], "epsl": ours,
                     "reference_accuracy": theirs})
    return rows


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):5.1f} ± {100 * sd:3.1f}"


def print_table(rows: list[dict[str, object]]) -> None:
    print(f"{'model':<12} {'norm':<5} {'start':<7} {'reference':<20} {'epsl %':>12} "
          f"{'reference %':>12} {'ref range':>9} {'max diff':>8}")
    for row in rows:
        ours, theirs = row["epsl"], row["reference_accuracy"]
        assert isinstance(ours, list) and isinstance(theirs, list)
        spread = 100 * (max(theirs) - min(theirs))
        worst = 100 * max(a - b for a, b in zip(ours, theirs, strict=True))
        reference = f"{row['reference']} {row['attack']}"
        start = "random" if row["random_start"] else "x"
        print(f"{row['model']!s:<12} {row['norm']!s:<5} {start:<7} {reference:<20} "
              f"{mean_sd(ours):>12} {mean_sd(theirs):>12} {spread:9.1f} {worst:+8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small-cnn:0", "mlp:0"],
                        help="ARCH:SEED of each digits model to train and attack")
    parser.add_argument("--seeds", type=int, default=5, help="attack seeds 0..N-1 per setting")
    parser.add_argument("--steps", type=int, default=20, help="PGD steps")
    parser.add_argument("--norms", nargs="+", default=["linf", "l2"], choices=sorted(EPS),
                        help="threat models to compare")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write every per-seed number here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_split, test_split = load_split("digits", "train"), load_split("digits", "test")
    rows = []
    for spec in args.models:
        arch, _, seed = spec.partition(":")
        model = plain_train(arch, train_split, seed=int(seed or 0))  # the tests' digits_model
        clean = robust_accuracy(model, test_split.x, test_split.y)
        print(f"{spec}: clean accuracy {100 * clean:.1f}% on {len(test_split)} test digits")
        for norm in args.norms:
            for random_start in (False, True):
                rows += [{"model": spec, **row} for row in measure(
                    model, test_split, norm=norm, random_start=random_start, seeds=args.seeds,
                    steps=args.steps)]
    print_table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
