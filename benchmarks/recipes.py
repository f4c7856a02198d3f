"""Train every documented digits recipe (docs/training.md) and print clean accuracy and time.

    python benchmarks/recipes.py [--epochs 15]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from epsl.defenses import RECIPES
from epsl.defenses.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    print(f"digits, small-cnn, {args.epochs} epochs, batch 64, Adam, seed 0, "
          f"{torch.get_num_threads()} threads")
    print("| recipe | clean test accuracy | train time (s) |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, defense) in enumerate(RECIPES.items()):
            t0 = time.perf_counter()
            meta = train(TrainConfig(epochs=args.epochs, device="cpu", defense=defense),
                         Path(tmp) / f"{i}.safetensors").metadata
            print(f"| {name} | {100 * meta['metrics']['test_accuracy']:.2f}% | "
                  f"{time.perf_counter() - t0:.1f} |", flush=True)


if __name__ == "__main__":
    main()
