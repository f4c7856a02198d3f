"""How large must the minimum-norm ensemble's budgets be? The share of correctly classified
examples whose ε* is within 1% of a large reference ensemble's, per candidate ensemble, with the
time per model (docs/eps-star.md).

    python benchmarks/eps_star_budgets.py --norm l2
    python benchmarks/eps_star_budgets.py --norm l1 --models /tmp/after/models/natural.safetensors
    python benchmarks/eps_star_budgets.py --norm l2 --limit 60       # a smoke run

Each member (an attack at one budget) runs once per model through
:func:`epsl.attacks.eps_star.find_eps_star` with that attack alone, so that its ε per example is
verified and measured in the norm exactly as in the ensemble; an ensemble's ε* is then the
per-example minimum of its members' (which is what the ensemble computes: FMN, DDN and FAB do
not read the best ε so far) and its time the sum of theirs. The reference is the minimum over
the reference members *and* every candidate member (a candidate can only be within 1% of it).
An example counts as within 1% when ε* <= 1.01 x reference (both +inf counts).

Also printed: on the default ensemble of the norm, the share of examples where a member
strictly improves on all the others by more than 1% (e.g. what FAB adds to FMN + DDN in ℓ2).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from epsl.attacks.eps_star import DEFAULT_ATTACKS, EpsStarConfig, find_eps_star
from epsl.norms import parse_norm
from epsl.runs.context import DataConfig

#: a member: (attack, settings of EpsStarConfig); named "<attack> <steps>[x<restarts>]"
Member = tuple[str, dict[str, int]]


def member(attack: str, steps: int, restarts: int = 1) -> tuple[str, Member]:
    key = {"fmn": "fmn_steps", "ddn": "ddn_steps", "fab": "fab_steps"}[attack]
    settings = {key: steps, **({"fab_restarts": restarts} if attack == "fab" else {})}
    name = f"{attack.upper()} {steps}" + (f"x{restarts}" if restarts > 1 else "")
    return name, (attack, settings)


#: per norm: the reference's members and the candidate ensembles (lists of member names)
PLANS: dict[str, dict[str, list[tuple[str, int, int]] | list[list[str]]]] = {
    "l2": {
        "reference": [("fmn", 300, 1), ("ddn", 300, 1), ("fab", 100, 2)],
        "candidates": [["FMN 100"], ["DDN 50"], ["DDN 100"], ["DDN 200"], ["FAB 50"],
                       ["FMN 100", "DDN 100"],
                       ["DDN 50", "FAB 20"], ["DDN 100", "FAB 20"], ["DDN 100", "FAB 50"],
                       ["FMN 100", "DDN 50", "FAB 20"], ["FMN 100", "DDN 50", "FAB 50"],
                       ["FMN 100", "DDN 100", "FAB 20"], ["FMN 100", "DDN 100", "FAB 50"],
                       ["FMN 100", "DDN 200", "FAB 50"]],
    },
}

#: l1 (FAB fails in l1 and DDN is l2-only): the PGD bisection starts below the best eps found
#: so far, so it is not an independent member; each ensemble runs whole through
#: find_eps_star, and the reference is the minimum over the reference ensemble and every
#: candidate. (name, EpsStarConfig settings)
WHOLE: dict[str, dict[str, object]] = {
    "FMN 100": {"attacks": ("fmn",), "fmn_steps": 100},
    "FMN 300": {"attacks": ("fmn",), "fmn_steps": 300},
    "FMN 100 + bisect 8x20": {"attacks": ("fmn", "pgd-bisect"), "fmn_steps": 100,
                              "bisect_steps": 8, "bisect_pgd_steps": 20},
    "FMN 100 + bisect 10x50": {"attacks": ("fmn", "pgd-bisect"), "fmn_steps": 100,
                               "bisect_steps": 10, "bisect_pgd_steps": 50},
}
WHOLE_REFERENCE = ("FMN 300 + bisect 12x100",
                   {"attacks": ("fmn", "pgd-bisect"), "fmn_steps": 300, "bisect_steps": 12,
                    "bisect_pgd_steps": 100})


def run_model_whole(checkpoint: Path, norm: str, limit: int, threads: int) -> dict[str, object]:
    """Each ensemble of :data:`WHOLE` (and the reference) run whole; shares against the best."""
    torch.set_num_threads(threads)
    ev = DataConfig(checkpoint=str(checkpoint), dataset="digits", limit=limit,
                    device="cpu").prepare()
    default = EpsStarConfig(norm=norm)
    default_name = next(name for name, settings in WHOLE.items()
                        if all(getattr(default, k) == v for k, v in settings.items()))
    eps: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    unbroken: dict[str, int] = {}
    correct = None
    for name, settings in [*WHOLE.items(), WHOLE_REFERENCE]:
        config = EpsStarConfig(norm=norm, batch_size=None, **settings)  # type: ignore[arg-type]
        found = find_eps_star(ev.model, ev.data.x, ev.data.y, config=config)
        eps[name] = found.eps_star.numpy()
        seconds[name] = sum(found.seconds.values())
        correct = eps[name] > 0
    assert correct is not None
    reference = np.min(np.stack(list(eps.values())), axis=0)[correct]
    rows = []
    for name in WHOLE:
        star = eps[name][correct]
        excess = np.where(np.isfinite(reference), star / reference - 1, 0.0)
        excess = np.where(np.isinf(star) & np.isfinite(reference), np.inf, excess)
        unbroken[name] = int(np.isinf(star).sum())
        rows.append({"ensemble": name, "within_1pct": float((star <= reference * 1.01).mean()),
                     "median_excess": float(np.median(excess)),
                     "p90_excess": float(np.quantile(excess, 0.9)),
                     "unbroken": unbroken[name], "seconds": seconds[name]})
    rows.append(rows[list(WHOLE).index(default_name)] | {"ensemble": default_name + " (default)"})
    return {"checkpoint": str(checkpoint), "n": int(len(ev.data)), "n_correct": int(correct.sum()),
            "reference": WHOLE_REFERENCE[0], "rows": rows, "default": default_name,
            "reference_unbroken": int(np.isinf(reference).sum()),
            "reference_seconds": seconds[WHOLE_REFERENCE[0]], "improves_by_1pct": {},
            "seconds": seconds}


def parse_member(name: str) -> tuple[str, int, int]:
    attack, budget = name.split()
    steps, _, restarts = budget.partition("x")
    return attack.lower(), int(steps), int(restarts or 1)


def run_model(checkpoint: Path, norm: str, limit: int, threads: int) -> dict[str, object]:
    torch.set_num_threads(threads)
    ev = DataConfig(checkpoint=str(checkpoint), dataset="digits", limit=limit,
                    device="cpu").prepare()
    plan = PLANS[norm]
    names = {f"{a.upper()} {s}" + (f"x{r}" if r > 1 else "") for a, s, r in plan["reference"]}
    names |= {m for cand in plan["candidates"] for m in cand}  # type: ignore[union-attr]
    default_members = [f"{a.upper()} {EpsStarConfig(norm=norm).__dict__[a + '_steps']}"
                       for a in DEFAULT_ATTACKS[parse_norm(norm)]]
    names |= set(default_members)
    eps: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    correct = None
    for name in sorted(names):
        attack, steps, restarts = parse_member(name)
        _, (attack, settings) = member(attack, steps, restarts)
        config = EpsStarConfig(attacks=(attack,), norm=norm, batch_size=None, **settings)
        found = find_eps_star(ev.model, ev.data.x, ev.data.y, config=config)
        eps[name] = found.per_attack[attack].numpy()
        seconds[name] = found.seconds[attack]
        correct = found.eps_star.numpy() > 0
    assert correct is not None
    reference = np.min(np.stack(list(eps.values())), axis=0)[correct]
    rows = []
    for cand in [*plan["candidates"], default_members]:  # type: ignore[misc]
        star = np.min(np.stack([eps[m] for m in cand]), axis=0)[correct]
        within = star <= reference * 1.01
        excess = np.where(np.isfinite(reference), star / reference - 1, 0.0)
        rows.append({"ensemble": " + ".join(cand), "within_1pct": float(within.mean()),
                     "median_excess": float(np.median(excess)),
                     "p90_excess": float(np.quantile(excess, 0.9)),
                     "unbroken": int(np.isinf(star).sum()),
                     "seconds": sum(seconds[m] for m in cand)})
    improves = {}
    for m in default_members:
        others = np.min(np.stack([eps[o] for o in default_members if o != m]), axis=0)\
            if len(default_members) > 1 else np.full(len(eps[m]), math.inf)
        improves[m] = float((eps[m][correct] * 1.01 < others[correct]).mean())
    return {"checkpoint": str(checkpoint), "n": int(len(ev.data)), "n_correct": int(correct.sum()),
            "reference": " + ".join(f"{a.upper()} {s}" + (f"x{r}" if r > 1 else "")
                                    for a, s, r in plan["reference"]),  # type: ignore[misc]
            "rows": rows, "default": " + ".join(default_members),
            "improves_by_1pct": improves, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norm", choices=[*sorted(PLANS), "l1"], default="l2")
    parser.add_argument("--models", nargs="+", type=Path, default=[
        Path("/tmp/after/models") / f"{m}.safetensors"
        for m in ("natural", "lsq2+noise0.3", "pgd7")])
    parser.add_argument("--limit", type=int, default=360, help="test examples per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    run = run_model_whole if args.norm == "l1" else run_model
    results = [run(m, args.norm, args.limit, args.threads) for m in args.models]
    print(f"norm {args.norm}; reference {results[0]['reference']} (and every candidate "
          f"member); share of correctly classified examples with eps* within 1% of it")
    heads = [Path(str(r["checkpoint"])).stem for r in results]
    print(f"{'ensemble':<28}" + "".join(f"{h:>16}" for h in heads) + f"{'seconds':>16}")
    for i, row in enumerate(results[0]["rows"]):  # type: ignore[arg-type]
        shares = "".join(f"{r['rows'][i]['within_1pct']:>16.1%}" for r in results)  # type: ignore[index]
        times = "-".join(f"{r['rows'][i]['seconds']:.1f}" for r in results)  # type: ignore[index]
        print(f"{row['ensemble']:<28}{shares}{times:>16}")
    if args.norm == "l1":
        print("unbroken (eps* = +inf) per ensemble: " + "; ".join(
            f"{Path(str(r['checkpoint'])).stem}: "
            + ", ".join(f"{row['ensemble']} {row['unbroken']}" for row in r["rows"][:-1])  # type: ignore[index]
            + f", reference {r['reference_unbroken']} ({r['reference_seconds']:.1f} s)"
            for r in results))
    for r in results:
        name = Path(str(r["checkpoint"])).stem
        print(f"{name}: n {r['n']} ({r['n_correct']} correct); default {r['default']}: "
              f"median excess {r['rows'][-1]['median_excess']:.2e}, "  # type: ignore[index]
              f"p90 {r['rows'][-1]['p90_excess']:.2e}; "  # type: ignore[index]
              "a member alone better by >1% than the others: "
              + ", ".join(f"{k} {v:.1%}" for k, v in r["improves_by_1pct"].items()))  # type: ignore[attr-defined]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
