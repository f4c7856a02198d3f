"""Which cheap predictor makes prediction-powered inference (epsl.ppi) narrowest, and do its
intervals cover? From per-image tables where the full audit ran on every image: for each model,
many random labelled samples of 10% and 20% of the images play the part of the audited sample,
the rest are unlabelled, and the full-set robust accuracy is the answer to cover.

    python benchmarks/estimate_predictors.py STUDY_OUT              # every out/runs/<model>/
    python benchmarks/estimate_predictors.py RUN_FOLDER... --draws 2000 --fractions 0.1 0.2
    python benchmarks/estimate_predictors.py images.csv --eps 0.031 # one per-image table
    python benchmarks/estimate_predictors.py --synthetic            # analysis/synthetic.py runs

Predictors (a value in [0, 1] per image; :mod:`epsl.analysis.estimates`, whose
:func:`~epsl.analysis.estimates.simulate` does the draws and the study's section uses too):

- ``eq4``: Eq. 4's ``eps_l > eps``, PPI++ (tuned λ);
- ``pgd``: the cheap attack's survival: the study's PGD CW at the audit's ε with ``--pgd-steps``
  steps from ``attack.csv`` (every image attacked), PPI++ (tuned λ);
- ``combined``: a ridge logistic probability from ``clip(eps_l/eps, -1, 3)``, ``eq4``, ``pgd``
  and ``sign(m)·log(1 + |m|)`` of the PGD margin m, cross-fitted on the labelled images
  (10 folds), cross-PPI (Zrnic & Candès 2024).

Per model, fraction and predictor it prints the median width ratio (PPI / classical on the
labelled alone), the median effective labelled size as a multiple of n (n·(classical /
PPI width)²), the coverage of the full-set robust accuracy, that of the classical interval,
and how many draws were refused (a labelled sample with no spread); and, where ε* is known
(the ε* table), the coverage of the conformal floor ε* ≥ q·ε_L over the unlabelled images.

A per-image CSV needs ``robust`` (the truth, 0/1) and ``eps_l`` (with ``--eps``);
``pgd_robust``, ``pgd_margin`` and ``eps_star`` are used when present. A run folder is read with
:func:`epsl.analysis.estimates.image_table` (its ``audit``, ``diagnostics``, ``attacks`` and ε*
results); a study folder is every ``runs/<model>/`` under it and under each ``<norm>/`` that
holds them.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from epsl.analysis.estimates import PREDICTORS, Draws, image_table, labelled_size, simulate
from epsl.analysis.folders import load_run
from epsl.errors import EpslError


def table_from_run(path: Path, pgd_steps: int) -> tuple[str, pd.DataFrame, float]:
    """``(label, per-image table, eps)`` of one run folder
    (:func:`epsl.analysis.estimates.image_table`)."""
    run = load_run(path)
    table, eps = image_table(run, pgd_steps)
    return run.label or run.name, table, eps


def model_tables(paths: list[Path], eps: float | None, pgd_steps: int
                 ) -> list[tuple[str, pd.DataFrame, float]]:
    """Every model's per-image table from CSV files, run folders and study folders (a study's
    run folder without an audit, diagnostics or the cheap PGD is left out)."""
    found = []
    for path in paths:
        if path.is_file():
            table = pd.read_csv(path)
            if "eps_l" not in table or eps is None:
                raise EpslError(f"{path}: a per-image CSV needs an eps_l column and --eps")
            found.append((path.stem, table, eps))
            continue
        studies = [path / "runs", *sorted(path.glob("*/runs"))]
        runs = [child for folder in studies if folder.is_dir()
                for child in sorted(folder.iterdir()) if child.is_dir()]
        for run in runs or [path]:
            try:
                found.append(table_from_run(run, pgd_steps))
            except EpslError:
                if not runs:  # the one folder asked for
                    raise
    return found


def measure(table: pd.DataFrame, eps: float, fraction: float, *, draws: int, seed: int,
            alpha: float) -> tuple[int, dict[str, Draws]]:
    """``(n, per-predictor draws)`` over ``draws`` random labelled samples of ``fraction`` of
    the images (the same samples for every predictor: one seed), by
    :func:`epsl.analysis.estimates.simulate`; a table without ``pgd_robust`` has ``eq4``
    only."""
    if "pgd_robust" in table and "pgd_margin" not in table:
        table = table.assign(pgd_margin=float("nan"))  # the combined predictor reads it as 0
    n = labelled_size(len(table), fraction)
    names = [name for name in PREDICTORS if name == "eq4" or "pgd_robust" in table]
    # the floor does not depend on the predictor: measured with eq4's draws only
    plain = table.drop(columns="eps_star", errors="ignore")
    return n, {name: simulate(table if name == "eq4" else plain, eps, n, draws=draws,
                              seed=seed, predictor=name, alpha=alpha) for name in names}


def synthetic_folders(root: Path, images: int) -> list[Path]:
    """A small study of synthetic run folders (analysis/synthetic.py) under ``root/runs``."""
    from epsl.analysis.synthetic import write_synthetic_run

    tables = ("diagnostics", "attack", "audit", "eps_star")
    return [write_synthetic_run(root / "runs" / name, name, n=images, seed=k, tables=tables)
            for k, name in enumerate(("natural", "ls+noise", "lsq+noise", "pgd"))]


def report(models: list[tuple[str, pd.DataFrame, float]], args: argparse.Namespace) -> None:
    print(f"{args.draws} draws per fraction, 95% intervals, floor α = {args.alpha}; width: "
          "median PPI / classical; effective: median n_eff / n; coverage of the full-set "
          "robust accuracy (classical beside it); refused: draws with no spread")
    for label, table, eps in models:
        print(f"\n## {label}: {len(table)} images, robust accuracy {table['robust'].mean():.3f}"
              f" at ε = {eps:g}")
        print("| fraction | n | predictor | width | effective | coverage | classical | refused |")
        print("|---|---|---|---|---|---|---|---|")
        for fraction in args.fractions:
            n, rows = measure(table, eps, fraction, draws=args.draws, seed=args.seed,
                              alpha=args.alpha)
            for name, row in rows.items():
                print(f"| {fraction:g} | {n} | {name} | {row.width_ratio:.3f} | "
                      f"{row.effective:.2f}× | {row.coverage:.3f} | "
                      f"{row.classical_coverage:.3f} | {row.refused} |")
            floor = rows["eq4"].floor_coverage
            if floor == floor:  # NaN without eps*
                print(f"| {fraction:g} | {n} | conformal floor | | | {floor:.3f} | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path,
                        help="study folders, run folders or per-image CSV files")
    parser.add_argument("--synthetic", action="store_true",
                        help="measure synthetic run folders (analysis/synthetic.py) instead")
    parser.add_argument("--images", type=int, default=359, help="images per synthetic model")
    parser.add_argument("--eps", type=float, default=None,
                        help="ε for a CSV without eq4_robust (eq4 = eps_l > eps)")
    parser.add_argument("--pgd-steps", type=int, default=20, help="the cheap PGD CW's steps")
    parser.add_argument("--draws", type=int, default=1000, help="random labelled samples")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2],
                        help="labelled fractions of the images")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="miscoverage of the conformal floor (the intervals are 95%%)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the labelled draws")
    args = parser.parse_args()
    if args.synthetic == bool(args.paths):
        parser.error("give folders or CSV files, or --synthetic")
    with tempfile.TemporaryDirectory() as tmp:
        paths = synthetic_folders(Path(tmp), args.images) if args.synthetic else args.paths
        try:
            report(model_tables(paths, args.eps, args.pgd_steps), args)
        except EpslError as error:
            parser.exit(1, f"Error: {error}\n")


if __name__ == "__main__":
    main()
