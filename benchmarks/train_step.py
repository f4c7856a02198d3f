"""Time one training step of every defense against natural training, side by side in one run.

    python benchmarks/train_step.py [--arch madry-mnist] [--batch-size 64] [--repeats 20]

Label smoothing, logit squeezing and noise should cost at most 1.10x natural; k-step PGD
training about k+1 x (k attack forward/backward passes plus the training step).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from epsl.defenses import DefenseConfig, objective
from epsl.models import checkpoint, create_model

DEFENSES = {
    "natural": DefenseConfig(),
    "label smoothing a=0.75": DefenseConfig(label_smoothing=0.75),
    "logit squeeze b=2": DefenseConfig(logit_squeeze=2.0),
    "noise s=0.3": DefenseConfig(noise_sigma=0.3),
    "ls + noise": DefenseConfig(label_smoothing=0.75, noise_sigma=0.3),
    "lsq + noise": DefenseConfig(logit_squeeze=2.0, noise_sigma=0.3),
    "fgsm k=1 (kappa=0)": DefenseConfig(adv="fgsm", adv_eps=0.3, adv_kappa=0.0),
    "pgd k=7 (kappa=0)": DefenseConfig(adv="pgd", adv_eps=0.3, adv_steps=7, adv_kappa=0.0),
    "pgd k=7 (kappa=0.5)": DefenseConfig(adv="pgd", adv_eps=0.3, adv_steps=7, adv_kappa=0.5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="madry-mnist")
    parser.add_argument("--dataset", default="mnist", help="shape source (no data is read)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    kwargs = checkpoint.model_kwargs_for(args.dataset)
    model = create_model(args.arch, **kwargs).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    shape = (args.batch_size, kwargs["in_channels"], kwargs["input_size"], kwargs["input_size"])
    x = torch.rand(shape, device=device)
    y = torch.randint(0, kwargs["num_classes"], (args.batch_size,), device=device)

    def step(defense: DefenseConfig) -> None:
        out = objective(model, x, y, defense, kwargs["num_classes"])
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {name: [] for name in DEFENSES}
    for defense in DEFENSES.values():  # warm-up
        step(defense)
    # interleave the defenses so drift in machine load hits them all alike
    for _ in range(args.repeats):
        for name, defense in DEFENSES.items():
            sync()
            t0 = time.perf_counter()
            step(defense)
            sync()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["natural"])
    print(f"{args.arch} batch {args.batch_size} on {device} "
          f"({torch.get_num_threads()} threads), median of {args.repeats}")
    print(f"{'defense':<24}{'ms/step':>10}{'x natural':>12}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<24}{1000 * median:>10.2f}{median / base:>12.2f}")


if __name__ == "__main__":
    main()
