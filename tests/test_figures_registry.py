"""The figure registry: ``@figure(name, caption, needs=...)`` refuses duplicates and bad
entries, keeps paper order, and plans exactly the figures each set of tables allows (as the
``figure_specs`` switch it replaced did; nothing is rendered here)."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest

from epsl.analysis import figures as F
from epsl.analysis.figures import registry
from epsl.analysis.folders import RUN_KINDS, Run, load_run
from epsl.analysis.synthetic import write_synthetic_run

PAPER_ORDER = ["fig1_eps_l_panels", "fig2_logits", "fig3_ls_noise_ablation",
               "fig8_lsq_noise_ablation", "fig4_ls_gradients", "fig4_lsq_gradients",
               "fig5_landscape", "fig9_landscape", "fig10_penultimate_activity",
               "fig11_logit_activity", "accuracy_vs_eps", "eps_l_vs_eps_star",
               "certified_accuracy", "accuracy_vs_steps", "accuracy_vs_restarts", "estimates"]
FIGURES_DIR = Path(F.__file__).parent


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    layout = {"natural": ("diagnostics", "activations", "attack"),
              "noise": ("diagnostics", "activations", "attack", "eps_star"),
              "ls": ("diagnostics",), "ls+noise": ("diagnostics", "landscape"),
              "lsq": ("diagnostics",), "pgd": ("landscape", "attack"), "calibrated": ("eps_star",)}
    for seed, (name, tables) in enumerate(layout.items()):
        kind = "ls+noise" if name == "calibrated" else name
        write_synthetic_run(root / name, kind, n=24, seed=seed, tables=tables)
    return root


def _runs(root: Path, *names: str) -> list[Run]:
    return [load_run(root / n) for n in names]


def _names(runs: list[Run], eps: float | None = None) -> list[str]:
    return [s.name for s in F.figure_specs(runs, eps=eps)]


def test_registry_is_in_paper_order_with_captions_and_known_tables() -> None:
    assert list(F.FIGURES) == PAPER_ORDER
    for name, entry in F.FIGURES.items():
        assert entry.name == name and entry.caption.strip() and entry.caption.endswith(".")
        assert entry.needs and set(entry.needs) <= set(RUN_KINDS), name
    assert [n for n, e in F.FIGURES.items() if e.per_run] == ["fig5_landscape", "fig9_landscape"]


def test_registry_refuses_a_duplicate_name() -> None:
    before = dict(F.FIGURES)
    with pytest.raises(ValueError, match="'fig2_logits' is already registered"):
        F.figure("fig2_logits", "Another caption.", needs=("diagnostics",))(lambda runs, eps: None)
    assert F.FIGURES == before


@pytest.mark.parametrize(("caption", "needs", "message"), [
    ("", ("diagnostics",), "no caption"),
    ("A caption.", (), "needs must name tables"),
    ("A caption.", ("diagnostic",), r"not diagnostic"),
])
def test_registry_refuses_a_bad_entry(caption: str, needs: tuple[str, ...], message: str) -> None:
    before = dict(F.FIGURES)
    with pytest.raises(ValueError, match=message):
        F.figure("new_figure", caption, needs=needs)
    assert F.FIGURES == before


def test_a_planner_sees_only_the_runs_holding_its_tables(root: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "FIGURES", {})
    seen: list[list[str]] = []

    @F.figure("probe", "Probe.", needs=("eps_star", "landscape"))
    def _probe(runs: list[Run], eps: float | None) -> F.Plan:
        seen.append([r.name for r in runs])
        return F.Plan(lambda: None, runs[:1])  # type: ignore[arg-type,return-value]

    specs = F.figure_specs(_runs(root, "natural", "noise", "ls", "pgd"))
    assert seen == [["noise", "pgd"]]
    # a figure that is not norm-free says the runs' threat model after its caption
    assert [(s.name, s.caption, s.runs) for s in specs] == [
        ("probe", "Probe. Threat model: ℓ∞ (gradient gap in the dual ℓ1).", ("noise σ=0.5",))]
    assert F.figure_specs(_runs(root, "natural", "ls")) == [] and len(seen) == 1


@pytest.mark.parametrize(("names", "eps", "expected"), [
    (("ls",), None, ["fig1_eps_l_panels", "fig2_logits", "fig4_ls_gradients"]),
    (("natural", "lsq", "noise"), None,
     ["fig1_eps_l_panels", "fig2_logits", "fig8_lsq_noise_ablation", "fig4_lsq_gradients",
      "fig10_penultimate_activity", "fig11_logit_activity", "accuracy_vs_eps",
      "eps_l_vs_eps_star", "accuracy_vs_steps", "accuracy_vs_restarts"]),
    (("natural", "noise", "ls"), 0.2,  # no PGD sweep at ε = 0.2 in the synthetic attacks
     ["fig1_eps_l_panels", "fig2_logits", "fig3_ls_noise_ablation", "fig4_ls_gradients",
      "fig10_penultimate_activity", "fig11_logit_activity", "accuracy_vs_eps",
      "eps_l_vs_eps_star"]),
    (("calibrated",), None, ["accuracy_vs_eps", "eps_l_vs_eps_star"]),
    (("pgd",), None, ["fig5_landscape", "fig9_landscape", "accuracy_vs_eps",
                      "accuracy_vs_steps", "accuracy_vs_restarts"]),
])
def test_figure_specs_plans_what_the_tables_allow(root: Path, names: tuple[str, ...],
                                                  eps: float | None, expected: list[str]) -> None:
    assert _names(_runs(root, *names), eps) == expected


def test_diagnostics_alone_draw_no_accuracy_curves(root: Path) -> None:
    assert "accuracy_vs_eps" not in _names(_runs(root, "ls", "lsq"))


def test_per_run_figures_are_listed_run_by_run(root: Path) -> None:
    runs = _runs(root, "ls+noise", "natural", "pgd")
    specs = [s for s in F.figure_specs(runs) if "landscape" in s.name]
    assert [s.name for s in specs] == ["fig5_landscape_ls-noise", "fig9_landscape_ls-noise",
                                       "fig5_landscape_pgd", "fig9_landscape_pgd"]
    for spec, run in zip(specs, [runs[0], runs[0], runs[2], runs[2]], strict=True):
        stem = spec.name.split("_landscape")[0] + "_landscape"
        assert spec.caption == F.FIGURES[stem].caption + f" Model: {run.label}."
        assert spec.runs == (run.label,)
    # a run whose landscape has one direction only gets that figure only
    pgd = runs[2]
    assert pgd.landscape is not None
    random_only = replace(pgd, landscape=pgd.landscape[pgd.landscape["direction"] == "random"])
    assert _names([random_only])[:2] == ["fig5_landscape", "accuracy_vs_eps"]
    alone = [s for s in F.figure_specs([pgd]) if "landscape" in s.name]
    assert [s.name for s in alone] == ["fig5_landscape", "fig9_landscape"]


def test_no_figure_function_is_longer_than_80_lines() -> None:
    for path in sorted(FIGURES_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                assert node.end_lineno is not None
                assert node.end_lineno - start + 1 <= 80, f"{path.name}: {node.name}"
