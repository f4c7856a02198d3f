"""What prediction-powered evaluation saves: the attack compute needed for a robust accuracy to
±2 points (95%), the full audit on enough images against the audit on a few and the cheap
predictor (ε_L and PGD-20 CW) on a pool, as a ratio; and the time of each part per image.

    python benchmarks/estimate.py --time --quick               # WRN-28-10 (random weights), CPU
    python benchmarks/estimate.py --time --arch small-cnn      # the digits models' architecture
    python benchmarks/estimate.py STUDY_OUT --pool 10000       # the ratio on the study's models
    python benchmarks/estimate.py STUDY_OUT --time --quick --images 2 --pool 10000 --labelled 1000

``--time`` runs each part on ``--images`` random CIFAR-shaped images (3 x 32 x 32; 8 x 8 digits
for ``small-cnn``) and prints seconds per image: ε_L (Eq. 4), PGD-20 (CW), ε* (FMN 100 + FAB
50) and the default audit (``--quick``: the quick audit of the zoo preset; with ε*'s points
re-scored, as ``epsl audit`` runs it). The ratio
reads each study model's tables: the classical interval needs
``n_c = 1.96² p(1 − p) / 0.02²`` audited images; prediction-powered inference needs
``n_c / e`` of them, with ``e`` the median effective labelled size per labelled image measured
over 1,000 draws of 10% of the study's images (:func:`epsl.analysis.estimates.simulate`), plus
the cheap predictor on the ``--pool`` images. The per-image times come from ``--time`` on the
same machine (``--audit-seconds``, ``--cheap-seconds``). ``--labelled n`` with ``--time`` also
prints what ``epsl reproduce --labelled n`` saves on ``--pool`` images: ε_L and PGD-20 (CW) on all
of them, ε* and the audit on n, against all four on every image.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from epsl.analysis.estimates import image_table, simulate
from epsl.analysis.folders import load_run
from epsl.attacks import pgd
from epsl.attacks.audit import AuditConfig, audit
from epsl.attacks.eps_star import find_eps_star
from epsl.attacks.threat import default_step_size
from epsl.diagnostics import diagnose
from epsl.errors import EpslError
from epsl.models import MODELS
from epsl.models.checkpoint import model_kwargs_for


def _seconds(run: object) -> float:
    start = time.perf_counter()
    run()  # type: ignore[operator]
    return time.perf_counter() - start


def time_parts(arch: str, images: int, eps: float, quick: bool = False) -> dict[str, float]:
    """Seconds per image of each part on a randomly initialised ``arch``."""
    torch.manual_seed(0)
    digits = arch == "small-cnn"
    shape = (1, 8, 8) if digits else (3, 32, 32)
    kwargs = ({"in_channels": 1, "input_size": 8, "mean": (0.3,), "std": (0.4,),
               "num_classes": 10} if digits else model_kwargs_for("cifar10"))
    model = MODELS[arch](**kwargs).eval()
    x = torch.rand(images, *shape)
    y = model(x).argmax(1)  # correctly classified, so every attack has work to do
    found = {}
    parts = {
        "eps_l": lambda: diagnose(model, x, y),
        "pgd20_cw": lambda: pgd(model, x, y, eps=eps, step_size=default_step_size(eps, 20),
                                steps=20, loss="cw", seed=0),
        "eps_star": lambda: found.setdefault("points", find_eps_star(model, x, y)),
    }
    seconds = {name: _seconds(run) / images for name, run in parts.items()}
    config = AuditConfig.quick() if quick else AuditConfig()
    seconds["audit"] = _seconds(lambda: audit(model, x, y, eps=eps, config=config,
                                              eps_star=found["points"])) / images
    return seconds


def ratio(study: Path, pool: int, audit_seconds: float, cheap_seconds: float) -> None:
    runs = sorted(p for p in (study / "runs").iterdir() if p.is_dir())
    print(f"pool {pool} images; audit {audit_seconds:.3g} s/image; ε_L + PGD-20 (CW) "
          f"{cheap_seconds:.3g} s/image; ±2 points at 95%")
    print("| model | robust accuracy | n audited, classical | e (×n) | n audited, PPI | "
          "compute, classical / PPI |")
    print("|---|---|---|---|---|---|")
    for path in runs:
        try:
            table, eps = image_table(load_run(path))
        except EpslError:  # not a model's run folder (figures/), or not audited
            continue
        p = float(table["robust"].mean())
        draws = simulate(table, eps, round(0.1 * len(table)), draws=1000)
        classical = math.ceil(1.96 ** 2 * p * (1 - p) / 0.02 ** 2)
        labelled = math.ceil(classical / draws.effective)
        full = classical * audit_seconds
        ppi = labelled * audit_seconds + pool * cheap_seconds
        print(f"| {path.name} | {p:.1%} | {classical} | {draws.effective:.2f} | {labelled} | "
              f"{full / ppi:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", nargs="?", type=Path, help="a study folder (epsl reproduce)")
    parser.add_argument("--time", action="store_true", help="time each part per image")
    parser.add_argument("--arch", default="wrn-28-10", help="the architecture timed")
    parser.add_argument("--images", type=int, default=4, help="images timed")
    parser.add_argument("--quick", action="store_true",
                        help="time the quick audit (the zoo preset's) instead of the default")
    parser.add_argument("--eps", type=float, default=8 / 255, help="radius of the timed attacks")
    parser.add_argument("--pool", type=int, default=10000, help="images the predictor runs on")
    parser.add_argument("--labelled", type=int, default=None,
                        help="with --time: the parts' compute on --pool images with ε* and the "
                             "audit on this many of them (epsl reproduce --labelled), against "
                             "on all")
    parser.add_argument("--audit-seconds", type=float, default=None,
                        help="audit + ε* seconds per image (default: measured with --time)")
    parser.add_argument("--cheap-seconds", type=float, default=None,
                        help="ε_L + PGD-20 seconds per image (default: measured with --time)")
    args = parser.parse_args()
    audit_s, cheap_s = args.audit_seconds, args.cheap_seconds
    if args.time:
        seconds = time_parts(args.arch, args.images, args.eps, quick=args.quick)
        print(f"{args.arch}, {args.images} images, seconds per image on "
              f"{torch.get_num_threads()} threads: "
              + ", ".join(f"{k} {v:.3g}" for k, v in seconds.items()))
        audit_s = audit_s or seconds["audit"] + seconds["eps_star"]
        cheap_s = cheap_s or seconds["eps_l"] + seconds["pgd20_cw"]
        if args.labelled is not None:
            full = args.pool * (audit_s + cheap_s)
            sampled = args.pool * cheap_s + args.labelled * audit_s
            print(f"{args.pool} images, ε* and the audit on {args.labelled}: "
                  f"{sampled / 3600:.1f} h against {full / 3600:.1f} h on all "
                  f"({full / sampled:.1f}x less) per model on this machine")
    if args.study is not None:
        if audit_s is None or cheap_s is None:
            parser.error("give --time or --audit-seconds and --cheap-seconds")
        ratio(args.study, args.pool, audit_s, cheap_s)


if __name__ == "__main__":
    main()
