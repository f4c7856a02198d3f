"""Does label smoothing's optimism survive the box and the exact minimum? Two small ReLU MLPs on
digits, trained alike but for label smoothing, with ε_L, ε* (FMN + FAB), ε_cert (CROWN) and the
exact minimal ℓ∞ perturbation ε_exact (MILP, scipy's HiGHS) per test image; and the cost per
example of each against ε*'s (docs/results.md, docs/benchmarks.md).

    python benchmarks/certify.py                      # 60 test images, 20 s per image at most
    python benchmarks/certify.py --images 20 --exact-time 10 --json runs/bench-certify.json

Each model is trained here (seeded) with epsl's own training loop.

``--speed`` times CROWN alone instead: milliseconds per example of one bound evaluation
(:func:`epsl.certify.crown.crown_margins`, tracing excluded) on a small ResNet-like CIFAR net
with BatchNorm, a residual block and an average pool (:func:`resnet_like`, random weights,
BatchNorm statistics from a few batches of random images), at three radii:

    python benchmarks/certify.py --speed --repeats 2   # 8 images, best of 2 per radius

``--lirpa`` times auto_LiRPA's CROWN beside it (github.com/Verified-Intelligence/auto_LiRPA,
installed separately; intermediate bounds by CROWN too) on the same float64 net, boxes and
margins, calls interleaved, and prints the largest difference between the two bounds:

    python benchmarks/certify.py --speed --lirpa --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from epsl.analysis.cards import proof_card, proof_lines
from epsl.attacks.eps_star import EpsStarConfig, find_eps_star
from epsl.certify.crown import ball, crown_margins, trace_network
from epsl.certify.radius import CertifyOptions, certify
from epsl.data import load_split
from epsl.defenses import DefenseConfig
from epsl.defenses.train import TrainConfig, train
from epsl.diagnostics import diagnose
from epsl.models.checkpoint import load
from epsl.stats import clopper_pearson, mcnemar


def run(label_smoothing: float, images: int, exact_time: float, hidden: int,
        seed: int) -> dict[str, object]:
    config = TrainConfig(dataset="digits", arch="mlp",
                         arch_kwargs={"hidden": hidden, "depth": 2}, epochs=30, seed=seed,
                         defense=DefenseConfig(label_smoothing=label_smoothing), device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mlp.safetensors"
        train(config, path)
        model, _ = load(path)
    model.eval()
    test = load_split("digits", "test").subset(images)
    x, y = test.x, test.y
    t0 = time.perf_counter()
    found = find_eps_star(model, x, y, config=EpsStarConfig(seed=seed))
    t_star = time.perf_counter() - t0
    eps_l = diagnose(model, x, y).eps_l.double().numpy()
    star = found.eps_star.double().numpy()
    out = certify(model, x, y, hi=star, hi_unbroken=~np.isfinite(star),
                  options=CertifyOptions(exact=True, exact_time=exact_time))
    eps_l = np.where(out.correct, eps_l, 0.0)
    cert = np.where(out.correct, out.eps_cert, 0.0)
    card = proof_card(eps_l, cert, star, out.eps_exact, grid=[0.1])
    solved = out.correct & np.isfinite(out.eps_exact)
    return {"label_smoothing": label_smoothing, "n": len(y), "card": card,
            "eps_l": eps_l.tolist(), "eps_star": star.tolist(), "eps_cert": cert.tolist(),
            "eps_exact": out.eps_exact.tolist(), "solved": int(solved.sum()),
            "status": {s: out.exact_status.count(s) for s in set(out.exact_status)},
            "median_exact_over_star": float(np.median(out.eps_exact[solved] / star[solved])),
            "median_eps_l_over_exact": float(np.median(eps_l[solved] / out.eps_exact[solved])),
            "median_cert_over_exact": float(np.median(cert[solved] / out.eps_exact[solved])),
            "seconds_per_example": {"eps_star": t_star / len(y),
                                    "crown": out.seconds["crown"] / len(y),
                                    "ibp": out.seconds["ibp"] / len(y),
                                    "exact": out.seconds["exact"] / len(y)}}


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU (C x H x W -> C x H x W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))


def resnet_like(seed: int = 0) -> nn.Module:
    """3 x 32 x 32 -> 10 logits: conv 8 (stride 2) + BN + ReLU, a residual block of width 8,
    conv 16 (stride 2) + BN + ReLU, average pool 2, linear; random weights, BatchNorm
    statistics from 8 batches of random images (so that they are a trained net's, roughly)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        ResidualBlock(8),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    model.train()
    with torch.no_grad():
        for _ in range(8):
            model(torch.rand(64, 3, 32, 32))
    return model.eval()


def lirpa_crown(model: nn.Module, x: torch.Tensor) -> Callable[..., torch.Tensor]:
    """auto_LiRPA's CROWN (intermediate bounds by CROWN too) on a float64 copy of ``model``,
    built here: ``bound(lower, upper, spec)`` is the lower bound of ``spec`` @ logits over the
    box [lower, upper]."""
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    bounded = BoundedModule(copy.deepcopy(model).double(), x[:1].double())

    def bound(lower: torch.Tensor, upper: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
        box = PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper)
        return bounded.compute_bounds(x=(BoundedTensor(lower, box),), C=spec, method="CROWN",
                                      bound_upper=False)[0]
    return bound


def time_crown(images: int, repeats: int, seed: int, lirpa: bool = False
               ) -> dict[float, dict[str, float]]:
    """Milliseconds per example of one CROWN bound evaluation on :func:`resnet_like`, by
    radius: the best of ``repeats`` calls on ``images`` images at once. With ``lirpa``, also
    auto_LiRPA's on the same boxes and margins (calls interleaved) and the largest absolute
    difference between the two margin bounds."""
    model = resnet_like(seed)
    x = torch.rand(images, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    network = trace_network(model, x[:1])
    others = lirpa_crown(model, x) if lirpa else None
    eye = torch.eye(10, dtype=torch.float64)  # the margins e_y - e_c (c != y), in class order
    spec = (eye[y][:, None] - eye[None])[~torch.eye(10, dtype=torch.bool)[y]].view(-1, 9, 10)
    out: dict[float, dict[str, float]] = {}
    for eps in (0.1 / 255, 0.25 / 255, 0.5 / 255):
        lower, upper = ball(x, eps)  # the box both bound: the ℓ∞ ball clipped to [0, 1]
        times: dict[str, list[float]] = {"epsl": [], "auto_LiRPA": []}
        for _ in range(repeats):
            with torch.no_grad():
                t0 = time.perf_counter()
                ours = crown_margins(network, x, y, eps, with_intervals=False)
                times["epsl"].append(time.perf_counter() - t0)
                if others is not None:
                    t0 = time.perf_counter()
                    theirs = others(lower, upper, spec)
                    times["auto_LiRPA"].append(time.perf_counter() - t0)
        out[eps] = {name: 1000 * min(t) / images for name, t in times.items() if t}
        if others is not None:
            out[eps]["max_diff"] = float((ours - theirs).abs().max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--exact-time", type=float, default=20.0)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--speed", action="store_true",
                        help="time CROWN per example on a small ResNet-like net instead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lirpa", action="store_true",
                        help="with --speed: time auto_LiRPA's CROWN beside epsl's, same boxes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.speed:
        images = 8 if args.images == 60 else args.images
        if args.lirpa and importlib.util.find_spec("auto_LiRPA") is None:
            raise SystemExit("--lirpa needs auto_LiRPA (installed as docs/benchmarks.md says)")
        print(f"CROWN on resnet_like (BatchNorm, residual, avg pool; 3x32x32), {images} images, "
              f"{args.threads} threads, best of {args.repeats}:")
        for eps, row in time_crown(images, args.repeats, args.seed, args.lirpa).items():
            line = f"  eps = {eps * 255:g}/255: epsl {row['epsl']:.1f} ms per example"
            if args.lirpa:
                line += (f", auto_LiRPA {row['auto_LiRPA']:.1f} ms "
                         f"(epsl / auto_LiRPA {row['epsl'] / row['auto_LiRPA']:.2f}), "
                         f"max |difference| of the margin bounds {row['max_diff']:.1e}")
            print(line)
        return
    rows = [run(ls, args.images, args.exact_time, args.hidden, args.seed) for ls in (0.0, 0.5)]
    for row in rows:
        card = row["card"]
        print(f"--- mlp {args.hidden}x2, label smoothing {row['label_smoothing']}: "
              f"{row['solved']} of {card['n_correct']} solved exactly ({row['status']})")
        for line in proof_lines(card):
            print("  " + line)
        print(f"  median eps_exact / eps* {row['median_exact_over_star']:.4f}, "
              f"eps_L / eps_exact {row['median_eps_l_over_exact']:.3f}, "
              f"eps_cert / eps_exact {row['median_cert_over_exact']:.3f}")
        cost = row["seconds_per_example"]
        print("  seconds per example: " + ", ".join(f"{k} {v:.3f}" for k, v in cost.items()))
    # the paired question: on the images both models solve and classify right, is Eq. 4
    # optimistic against the exact minimum more often with label smoothing?
    a, b = rows
    both = [i for i in range(len(a["eps_exact"]))
            if np.isfinite(a["eps_exact"][i]) and np.isfinite(b["eps_exact"][i])
            and a["eps_l"][i] > 0 and b["eps_l"][i] > 0]
    opt_a = np.array([a["eps_l"][i] > a["eps_exact"][i] for i in both])
    opt_b = np.array([b["eps_l"][i] > b["eps_exact"][i] for i in both])
    if both:
        test = mcnemar(~opt_a, ~opt_b)  # "correct" = not optimistic
        for name, opt in (("natural", opt_a), ("LS 0.5", opt_b)):
            lo, hi = clopper_pearson(int(opt.sum()), len(opt))
            print(f"{name}: optimistic against eps_exact on {opt.sum()} of {len(opt)} "
                  f"({100 * opt.mean():.1f}% [{100 * lo:.1f}, {100 * hi:.1f}])")
        print(f"paired (same {len(both)} images): LS minus natural "
              f"{-100 * test.difference:+.1f} points [{-100 * test.difference_hi:+.1f}, "
              f"{-100 * test.difference_lo:+.1f}], exact McNemar p = {test.p_value:.2g}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
