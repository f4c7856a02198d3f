"""Does label smoothing's optimism survive the box and the exact minimum? Two small ReLU MLPs on
digits, trained alike but for label smoothing, with ε_L, ε* (FMN + FAB), ε_cert (CROWN) and the
exact minimal ℓ∞ perturbation ε_exact (MILP, scipy's HiGHS) per test image; and the cost per
example of each against ε*'s (docs/results.md, docs/benchmarks.md).

    python benchmarks/certify.py                      # 60 test images, 20 s per image at most
    python benchmarks/certify.py --images 20 --exact-time 10 --json runs/bench-certify.json

Each model is trained here (seeded) with epsl's own training loop.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from epsl.analysis.cards import proof_card, proof_lines
from epsl.attacks.eps_star import MinimalConfig, minimal_perturbation
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
    found = minimal_perturbation(model, x, y, config=MinimalConfig(seed=seed))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--exact-time", type=float, default=20.0)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
