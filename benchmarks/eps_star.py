"""ε* (the minimum-norm ensemble of epsl.attacks.eps_star) against one PGD-40 run: wall time on the same
model and the same batch, in one run, with the ratio ε* / PGD-40 and the time per example.

    python benchmarks/eps_star.py                          # digits small-cnn trained here
    python benchmarks/eps_star.py --checkpoint runs/natural.safetensors --repeats 5
    python benchmarks/eps_star.py --quick                  # 24 examples, 1 repeat, 2 epochs

ε* runs :func:`epsl.attacks.eps_star.find_eps_star` with the default :class:`EpsStarConfig`
(FMN 100 steps, FAB 50 steps, one chunk of 256) and gives ε* at every ε at once; PGD-40 is
:func:`epsl.attacks.pgd` at ε = 0.1 (step 2.5 ε / 40, cross-entropy, a seeded random start)
and gives the robust accuracy at one ε. The per-attack times come from
``EpsStarResult.seconds``. Runs are interleaved and the median over repeats is reported, after
a warm-up, because the machine may be shared. Without ``--checkpoint`` a digits small-cnn is
trained here (seeded Adam, a few seconds) so that the attacks have something real to break.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from attacks import train  # benchmarks/attacks.py: the seeded training loop of the benchmarks
from torch import nn

from epsl.attacks import default_step_size, pgd
from epsl.attacks.eps_star import EpsStarConfig, find_eps_star
from epsl.data import load_split
from epsl.models import checkpoint

EPS, STEPS = 0.1, 40


def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, repeats: int,
        config: EpsStarConfig) -> dict[str, object]:
    step_size = default_step_size(EPS, STEPS)
    times: dict[str, list[float]] = {"eps_star": [], "pgd40": []}
    per_attack: dict[str, list[float]] = {name: [] for name in config.attacks}
    accuracy: dict[str, float] = {}
    warm = slice(0, min(8, len(y)))  # first calls pay for imports and allocator growth
    find_eps_star(model, x[warm], y[warm], config=config)
    pgd(model, x[warm], y[warm], eps=EPS, step_size=step_size, steps=STEPS, seed=0)
    for _ in range(repeats):
        start = time.perf_counter()
        attacked = pgd(model, x, y, eps=EPS, step_size=step_size, steps=STEPS, seed=0)
        times["pgd40"].append(time.perf_counter() - start)
        start = time.perf_counter()
        found = find_eps_star(model, x, y, config=config)
        times["eps_star"].append(time.perf_counter() - start)
        for name, seconds in found.seconds.items():
            per_attack[name].append(seconds)
        accuracy = {"clean": found.accuracy(0.0), "eps_star": found.accuracy(EPS),
                    "pgd40": attacked.accuracy}
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "n": len(y), "eps": EPS, "pgd_steps": STEPS, "pgd_step_size": step_size,
        "eps_star": config.reuse_settings(), "repeats": repeats,
        "eps_star_seconds": median["eps_star"], "pgd40_seconds": median["pgd40"],
        "ratio": median["eps_star"] / median["pgd40"],
        "eps_star_ms_per_example": 1000 * median["eps_star"] / len(y),
        "pgd40_ms_per_example": 1000 * median["pgd40"] / len(y),
        "attack_seconds": {name: statistics.median(v) for name, v in per_attack.items()},
        "clean_accuracy": accuracy["clean"], "eps_star_accuracy": accuracy["eps_star"],
        "pgd40_accuracy": accuracy["pgd40"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="an epsl checkpoint (default: train a digits small-cnn here)")
    parser.add_argument("--n", type=int, default=None,
                        help="test examples (default: the whole test split; 24 with --quick)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the model trained here")
    parser.add_argument("--quick", action="store_true",
                        help="24 examples, 1 repeat, a 2-epoch model (a smoke run)")
    parser.add_argument("--json", type=Path, default=None, help="also write the row here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n if args.n is not None else (24 if args.quick else None)
    repeats = 1 if args.quick else args.repeats
    epochs = min(args.epochs, 2) if args.quick else args.epochs

    if args.checkpoint is None:
        model = train("small-cnn", "digits", examples=1437, epochs=epochs)
        dataset, source = "digits", "trained here"
    else:
        model, meta = checkpoint.load(args.checkpoint)
        dataset, source = meta.get("dataset", "digits"), str(args.checkpoint)
    data = load_split(dataset, "test")
    data = data.subset(n) if n is not None else data
    row = run(model, data.x, data.y, repeats=repeats, config=EpsStarConfig())

    print(f"eps* (default EpsStarConfig: {', '.join(row['eps_star']['attacks'])}) against "
          f"PGD-{STEPS} (eps {EPS}, step {row['pgd_step_size']:.4g}, xent); {dataset} "
          f"({source}), n {row['n']}; torch {torch.__version__}, {args.threads} threads, "
          f"median of {repeats}")
    print(f"{'':<10} {'seconds':>8} {'ms/example':>11} {'acc@0.1':>8}")
    print(f"{'eps*':<10} {row['eps_star_seconds']:>8.2f} {row['eps_star_ms_per_example']:>11.2f} "
          f"{row['eps_star_accuracy']:>8.1%}")
    for name, seconds in row["attack_seconds"].items():
        print(f"{'  ' + name:<10} {seconds:>8.2f} {1000 * seconds / row['n']:>11.2f}")
    print(f"{'PGD-40':<10} {row['pgd40_seconds']:>8.2f} {row['pgd40_ms_per_example']:>11.2f} "
          f"{row['pgd40_accuracy']:>8.1%}")
    print(f"ratio eps* / PGD-40: {row['ratio']:.2f} (clean accuracy {row['clean_accuracy']:.1%})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
