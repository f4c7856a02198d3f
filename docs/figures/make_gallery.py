"""Rebuild the gallery in docs/figures/ from real digits runs (see docs/analysis.md).

Expects `epsl compare` to have written runs/analysis/cmp/<model>/ for the models below, then
adds activations, landscapes and a PGD steps/restarts sweep, and renders the curated figures:

    python docs/figures/make_gallery.py [--skip-compute]
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

ROOT = Path("runs/analysis")
CMP = ROOT / "cmp"
OUT = Path("docs/figures")
EPS = 0.1
SWEEP_MODELS = ["lsq2+noise0.3"]
ACTIVATION_MODELS = ["natural", "pgd", "noise0.3", "ls0.5+noise0.3", "lsq2+noise0.3"]
LANDSCAPE_MODEL = "lsq2+noise0.3"


def compute() -> None:
    import torch

    from epsl.attacks import sweep
    from epsl.results.records import Result
    from epsl.runs.context import DataConfig, prepare, provenance

    for name in ACTIVATION_MODELS:
        folder, ckpt = CMP / name, ROOT / f"{name}.safetensors"
        if folder.is_dir() and not (folder / "activations" / "activations.csv").is_file():
            subprocess.run(["epsl", "activations", str(ckpt), "--dataset", "digits",
                            "--out", str(folder / "activations")], check=True)
    for direction in ("random", "adversarial"):
        target = CMP / LANDSCAPE_MODEL / f"landscape_{direction}"
        if not (target / "landscape.csv").is_file():
            subprocess.run(["epsl", "landscape", str(ROOT / f"{LANDSCAPE_MODEL}.safetensors"),
                            "--dataset", "digits", "--images", "8", "--direction", direction,
                            "--range", "0.3", "--steps", "21", "--out", str(target)],
                           check=True)
    for name in SWEEP_MODELS:
        target = CMP / name / "sweep"
        if (target / "attack.csv").is_file():
            continue
        ev = prepare(DataConfig(str(ROOT / f"{name}.safetensors"), dataset="digits", device="cpu"))
        torch.manual_seed(0)
        plan = {"steps": [1, 5, 10, 20, 40, 100], "restarts": [2, 5, 10], "eps": EPS}
        steps = sweep(ev.model, ev.data.x, ev.data.y, attack="pgd", eps=[EPS],
                      steps=plan["steps"], restarts=[1], loss="xent", seed=0)
        restarts = sweep(ev.model, ev.data.x, ev.data.y, attack="pgd", eps=[EPS], steps=[20],
                         restarts=plan["restarts"], loss="xent", seed=0)
        import pandas as pd

        Result("attack", {"n": len(ev.data)}, provenance(ev, {"sweeps": plan, "seed": 0}),
               pd.concat([steps, restarts], ignore_index=True)).save(target)


def render() -> None:
    from epsl.analysis import figures as F
    from epsl.analysis.folders import load_runs

    names = ["natural", "noise0.3", "ls0.5", "ls0.5+noise0.3", "ls0.9+noise0.3", "lsq2",
             "lsq2+noise0.3", "pgd"]
    runs = {r.name: r for r in load_runs([CMP / n for n in names if (CMP / n).is_dir()])}

    def pick(*keys: str) -> list:
        return [runs[k] for k in keys if k in runs]

    every = list(runs.values())
    figures = {
        "fig1_natural_vs_pgd": F.fig_eps_l_panels(pick("natural", "pgd"), eps=EPS),
        "fig2_logits": F.fig_logits(pick("natural", "pgd", "lsq2+noise0.3")),
        "fig3_ls_noise_ablation": F.fig_noise_ablation(every, regulariser="ls", eps=EPS),
        "fig8_lsq_noise_ablation": F.fig_noise_ablation(every, regulariser="lsq", eps=EPS),
        "fig4_ls_gradients": F.fig_gradient_norms(every, parameter="label_smoothing"),
        "fig5_landscape_random": F.fig_landscape(runs[LANDSCAPE_MODEL], direction="random"),
        "fig9_landscape_adversarial": F.fig_landscape(runs[LANDSCAPE_MODEL],
                                                      direction="adversarial"),
        "fig10_penultimate_activity": F.fig_penultimate_activity(
            pick("natural", "pgd", "noise0.3", "ls0.5+noise0.3", "lsq2+noise0.3")),
        "fig11_logit_activity": F.fig_logit_activity(
            pick("natural", "pgd", "noise0.3", "ls0.5+noise0.3", "lsq2+noise0.3")),
        "accuracy_vs_eps": F.fig_accuracy_vs_eps(every, eps=EPS),
        "accuracy_vs_steps": F.fig_accuracy_vs_steps(every, eps=EPS),
        "accuracy_vs_restarts": F.fig_accuracy_vs_restarts(every, eps=EPS),
    }
    for name, fig in figures.items():
        paths = F.save_figure(fig, OUT, name, dpi=80, formats=("png",))  # small gallery
        print(f"{paths['png']}  {paths['png'].stat().st_size // 1024} KB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-compute", action="store_true")
    if not parser.parse_args().skip_compute:
        compute()
    render()
