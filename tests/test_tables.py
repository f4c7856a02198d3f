"""The comparison table against numbers computed independently from the saved CSVs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from epsl.analysis.folders import Run, load_runs
from epsl.analysis.metrics import mcnemar
from epsl.analysis.paired import paired_tests
from epsl.analysis.synthetic import write_synthetic_run
from epsl.analysis.tables import comparison_table, format_table, to_markdown, write_comparison
from tests.files import snapshot

KINDS = ["natural", "ls+noise", "lsq+noise", "pgd"]


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [write_synthetic_run(root / k, k, n=120, seed=i,
                                tables=("diagnostics", "attack", "audit"))
            for i, k in enumerate(KINDS)]


@pytest.fixture(scope="module")
def runs(run_dirs: list[Path]) -> list[Run]:
    return load_runs(run_dirs)


def truth(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1", "1.0")


def accuracy_from_csv(run_dir: Path, *, attack: str, loss: str, eps: float, transfer: bool,
                      steps: int | None = None, restarts: int | None = None) -> float:
    """Mean of `correct` over the rows of one setting, read straight from the CSV."""
    rows = pd.read_csv(run_dir / "attacks" / "attack.csv", keep_default_na=False)
    hits, total = 0, 0
    for row in rows.to_dict("records"):
        if row["attack"] != attack or row["loss_name"] != loss:
            continue
        if abs(float(row["eps"]) - eps) > 1e-9 or bool(row["source"]) != transfer:
            continue
        if steps is not None and int(row["steps"]) != steps:
            continue
        if restarts is not None and int(row["restarts"]) != restarts:
            continue
        hits += truth(row["correct"])
        total += 1
    assert total > 0
    return hits / total


def test_accuracies_match_the_saved_rows(runs: list[Run], run_dirs: list[Path]) -> None:
    table = comparison_table(runs, eps=0.3).set_index("run")
    for run_dir in run_dirs:
        row = table.loc[run_dir.name]
        assert row["fgsm_xent"] == pytest.approx(accuracy_from_csv(
            run_dir, attack="fgsm", loss="xent", eps=0.3, transfer=False))
        assert row["fgsm_cw"] == pytest.approx(accuracy_from_csv(
            run_dir, attack="fgsm", loss="cw", eps=0.3, transfer=False))
        # PGD: the strongest saved setting, 40 steps then 3 restarts (synthetic sweep)
        assert row["pgd_xent"] == pytest.approx(accuracy_from_csv(
            run_dir, attack="pgd", loss="xent", eps=0.3, transfer=False, steps=40, restarts=3))
        assert row["pgd_cw"] == pytest.approx(accuracy_from_csv(
            run_dir, attack="pgd", loss="cw", eps=0.3, transfer=False, steps=40, restarts=1))
        assert row["transfer_pgd_cw"] == pytest.approx(accuracy_from_csv(
            run_dir, attack="pgd", loss="cw", eps=0.3, transfer=True))
        assert row["pgd_steps"] == 40


def test_eq4_and_clean_accuracy_match_the_diagnostics(runs: list[Run],
                                                      run_dirs: list[Path]) -> None:
    table = comparison_table(runs, eps=0.2).set_index("run")
    for run_dir in run_dirs:
        diag = pd.read_csv(run_dir / "diagnostics.csv")
        eps_l = [float(v) for v in diag["eps_l"]]
        assert table.loc[run_dir.name, "eq4_predicted"] == pytest.approx(
            sum(v > 0.2 for v in eps_l) / len(eps_l))
        assert table.loc[run_dir.name, "clean_accuracy"] == pytest.approx(
            sum(truth(v) for v in diag["correct"]) / len(diag))
        assert table.loc[run_dir.name, "n"] == len(diag)
        assert table.loc[run_dir.name, "eps"] == 0.2


def test_audit_worst_case_is_survival_of_every_attack(runs: list[Run],
                                                      run_dirs: list[Path]) -> None:
    """Robust = clean-correct and correct under every saved attack at eps, per example."""
    table = comparison_table(runs, eps=0.3).set_index("run")
    for run_dir in run_dirs:
        diag = pd.read_csv(run_dir / "diagnostics.csv")
        attack = pd.read_csv(run_dir / "attacks" / "attack.csv")
        attack = attack[(attack["eps"] - 0.3).abs() < 1e-9]
        survived = {int(i): truth(c) for i, c in zip(diag["index"], diag["correct"],
                                                     strict=True)}
        for index, correct in zip(attack["index"], attack["correct"], strict=True):
            survived[int(index)] = survived[int(index)] and truth(correct)
        expected = sum(survived.values()) / len(survived)
        assert table.loc[run_dir.name, "audit_worst"] == pytest.approx(expected)
        assert table.loc[run_dir.name, "audit_worst"] <= table.loc[run_dir.name, "pgd_xent"]


def test_defense_parameters_come_from_metadata(runs: list[Run]) -> None:
    table = comparison_table(runs).set_index("run")
    assert table.loc["ls+noise", ["alpha", "beta", "sigma"]].tolist() == [0.75, 0.0, 0.5]
    assert table.loc["lsq+noise", ["alpha", "beta", "sigma"]].tolist() == [0.0, 0.5, 0.5]
    assert table.loc["pgd", "adv"] == "pgd" and table.loc["pgd", "adv_eps"] == 0.3
    assert math.isnan(table.loc["natural", "adv_eps"])
    assert table.loc["natural", "steps"] == 2000
    assert table.loc["pgd", "model"] == "PGD-7 ε=0.3"
    assert table["eps"].tolist() == [0.3] * 4  # default: the largest attack eps


def test_an_eps_without_attacks_leaves_attack_columns_empty(runs: list[Run]) -> None:
    table = comparison_table(runs, eps=0.25)
    assert not {"fgsm_xent", "pgd_xent", "transfer_pgd_cw"} & set(table.columns)
    assert table["eq4_predicted"].notna().all()
    assert "audit_worst" not in table.columns  # the audit was run at 0.3


def test_markdown_and_csv(runs: list[Run], tmp_path: Path) -> None:
    table = comparison_table(runs)
    paths = write_comparison(tmp_path, table)
    back = pd.read_csv(paths["csv"])
    assert back["pgd_cw"].tolist() == pytest.approx(table["pgd_cw"].tolist())
    lines = [ln for ln in to_markdown(table).splitlines() if ln.startswith("|")]
    assert len(lines) == 2 + len(runs)
    header = lines[0]
    for name in ("α", "β", "σ", "Eq. 4", "FGSM xent", "PGD CW", "black-box PGD CW",
                 "audit worst case"):
        assert f" {name} " in header
    shown = format_table(table).set_index("run")
    pgd = table.set_index("run").loc["pgd"]
    assert shown.loc["pgd", "PGD CW"] == (f"{pgd['pgd_cw']:.1%} [{100 * pgd['pgd_cw_lo']:.1f}, "
                                          f"{100 * pgd['pgd_cw_hi']:.1f}]")
    assert shown.loc["natural", "adv ε"] == "–"
    assert "# Comparison at ε = 0.3" in paths["md"].read_text()


def test_runs_without_attacks_still_tabulate(tmp_path: Path) -> None:
    write_synthetic_run(tmp_path / "only", "natural", n=30, tables=("diagnostics",))
    table = comparison_table(load_runs([tmp_path / "only"]))
    assert table.loc[0, "eps"] == 0.3  # from the diagnostics summary
    assert "fgsm_xent" not in table.columns
    assert not format_table(table).empty


@pytest.mark.slow
def test_compare_against_an_independent_fgsm(digits_checkpoint: Path, digits_model,
                                              digits_test, tmp_path: Path) -> None:
    """`epsl compare` on a real checkpoint: its FGSM column equals a plain autograd FGSM
    written here, its Eq. 4 column the share of rows with eps < eps_L, and a second call
    reuses the saved tables."""
    import torch
    import torch.nn.functional as torch_f
    from click.testing import CliRunner

    from epsl.cli.main import main

    eps, n = 0.1, 40
    out = tmp_path / "cmp"
    args = ["compare", str(digits_checkpoint), "--dataset", "digits", "--eps", "0.1",
            "--limit", str(n), "--pgd-steps", "3", "--source", str(digits_checkpoint),
            "--no-figures", "--device", "cpu", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == 1 and table.loc[0, "model"] == "natural"

    x, y = digits_test.x[:n].clone().requires_grad_(True), digits_test.y[:n]
    torch_f.cross_entropy(digits_model(x), y, reduction="sum").backward()
    with torch.no_grad():
        clean = digits_model(x).argmax(1) == y
        x_adv = (x + eps * x.grad.sign()).clamp(0, 1)
        survived = clean & (digits_model(x_adv).argmax(1) == y)
    assert table.loc[0, "fgsm_xent"] == pytest.approx(survived.float().mean().item())
    assert table.loc[0, "clean_accuracy"] == pytest.approx(clean.float().mean().item())
    diag = pd.read_csv(out / "natural" / "diagnostics.csv")
    assert table.loc[0, "eq4_predicted"] == pytest.approx((diag["eps_l"] > eps).mean())
    for column in ("fgsm_cw", "pgd_xent", "pgd_cw", "transfer_fgsm_cw", "transfer_pgd_cw"):
        assert 0 <= table.loc[0, column] <= table.loc[0, "clean_accuracy"] + 1e-9
    # a transfer attack from the model itself is a white-box attack
    assert table.loc[0, "transfer_pgd_cw"] == pytest.approx(table.loc[0, "pgd_cw"])
    assert (out / "report.html").is_file() and (out / "comparison.md").is_file()

    before = snapshot(out)
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    assert snapshot(out) == before
    again = CliRunner().invoke(main, [*args, "--overwrite"])
    assert again.exit_code == 0, again.output
    record = json.loads((out / "compare.json").read_text())
    assert record["reused"] == {"natural": ["diagnostics", "eps_star", "attacks"]}


# ------------------------------------------------------------------ uncertainty


def _exact(k: int, n: int) -> tuple[float, float]:
    """Clopper–Pearson from scipy, called here independently of epsl."""
    interval = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return interval.low, interval.high


def test_every_accuracy_carries_its_clopper_pearson_interval(runs: list[Run],
                                                             run_dirs: list[Path]) -> None:
    table = comparison_table(runs, eps=0.3).set_index("run")
    for run_dir in run_dirs:
        row = table.loc[run_dir.name]
        diag = pd.read_csv(run_dir / "diagnostics.csv")
        checks = {"clean_accuracy": (int(diag["correct"].map(truth).sum()), len(diag)),
                  "eq4_predicted": (int((diag["eps_l"] > 0.3).sum()), len(diag))}
        attack = pd.read_csv(run_dir / "attacks" / "attack.csv", keep_default_na=False)
        fgsm = attack[(attack.attack == "fgsm") & (attack.loss_name == "xent")
                      & (attack.eps == 0.3) & (attack.source == "")]
        checks["fgsm_xent"] = (int(fgsm["correct"].map(truth).sum()), len(fgsm))
        audit = pd.read_csv(run_dir / "audit" / "audit.csv")
        checks["audit_worst"] = (int(audit["robust"].map(truth).sum()), len(audit))
        for column, (k, n) in checks.items():
            lo, hi = _exact(k, n)
            assert row[column] == pytest.approx(k / n)
            assert (row[f"{column}_lo"], row[f"{column}_hi"]) == pytest.approx((lo, hi)), column
            assert lo <= row[column] <= hi
        # every accuracy column has its bounds, and only those
        bounds = {c[:-3] for c in table.columns if c.endswith(("_lo", "_hi"))}
        assert bounds == {c for c in table.columns if c in bounds}
        assert {"clean_accuracy", "eq4_predicted", "fgsm_xent", "pgd_cw", "transfer_pgd_cw",
                "audit_worst"} <= bounds


def _mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value by hand: 2 P(X <= min(b, c)), X ~ Bin(b + c, 1/2)."""
    d = b + c
    if d == 0:
        return 1.0
    tail = sum(math.comb(d, i) for i in range(min(b, c) + 1)) / 2 ** d
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("a, b", [
    ([1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1], [1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]),
    ([1, 0, 1, 0, 1], [1, 0, 1, 0, 1]),        # no discordant pair
    ([1] * 7, [0] * 7),                        # every example discordant
    ([0, 1] * 30, [1, 1] * 30),
], ids=["mixed", "no-discordant", "all-discordant", "one-way"])
def test_mcnemar_against_a_hand_computation(a: list[int], b: list[int]) -> None:
    test = mcnemar(a, b)
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    assert (test.only_a, test.only_b, test.n) == (only_a, only_b, len(a))
    assert test.p_value == pytest.approx(_mcnemar_p(only_a, only_b), rel=1e-12)
    assert test.difference == pytest.approx((sum(b) - sum(a)) / len(a))
    assert -1 <= test.difference_lo <= test.difference <= test.difference_hi <= 1
    swapped = mcnemar(b, a)  # the same comparison the other way round
    assert (swapped.difference_lo, swapped.difference_hi) == pytest.approx(
        (-test.difference_hi, -test.difference_lo))
    assert swapped.p_value == pytest.approx(test.p_value)


def test_paired_interval_covers_the_truth_about_95_percent_of_the_time() -> None:
    """Newcombe's interval, checked by simulation: correlated pairs with a known difference."""
    rng = np.random.default_rng(0)
    n, trials, covered = 150, 600, 0
    for _ in range(trials):
        shared = rng.random(n)
        a = shared < 0.70
        b = (shared < 0.62) | (rng.random(n) < 0.12)  # P(b) = 0.62 + 0.38 * 0.12
        test = mcnemar(a, b)
        covered += test.difference_lo <= (0.62 + 0.38 * 0.12) - 0.70 <= test.difference_hi
    assert 0.92 <= covered / trials <= 0.98


def test_paired_tests_pair_the_examples(runs: list[Run], run_dirs: list[Path]) -> None:
    paired = paired_tests(runs, eps=0.3)
    against = paired.groupby("against")["run"].apply(list).to_dict()
    assert against["natural"] == ["ls+noise", "lsq+noise", "pgd"]
    assert against["adversarial training"] == ["natural", "ls+noise", "lsq+noise"]
    assert against["Eq. 4"] == KINDS
    row = paired[(paired.against == "natural") & (paired.run == "pgd")].iloc[0]
    robust = {d.name: pd.read_csv(d / "audit" / "audit.csv").set_index("index")["robust"]
              .map(truth) for d in run_dirs}
    ref, mine = robust["natural"].align(robust["pgd"], join="inner")
    assert row["only_model"] == int((mine & ~ref).sum())
    assert row["only_reference"] == int((ref & ~mine).sum())
    assert row["p_value"] == pytest.approx(_mcnemar_p(int(row["only_model"]),
                                                      int(row["only_reference"])))
    assert row["difference"] == pytest.approx(mine.mean() - ref.mean())


def test_report_card_columns_come_from_the_eps_star_tables(tmp_path: Path) -> None:
    """With an eps* table, the comparison gains the accuracy by eps* (the share with
    eps* > eps, with its interval) and the report card (from the record, equal to one computed
    from the table's columns); the headline and the HTML report show it; without, none of it."""
    from epsl.analysis.cards import report_card
    from epsl.analysis.report import render_report
    from epsl.analysis.tables import card_markdown, headline

    folder = write_synthetic_run(tmp_path / "cal", "lsq+noise", n=80, seed=3,
                                 tables=("diagnostics", "attack", "eps_star"))
    plain = write_synthetic_run(tmp_path / "plain", "natural", n=80, seed=4,
                                tables=("diagnostics", "attack"))
    runs = load_runs([folder, plain])
    table = comparison_table(runs, eps=0.3)
    row, other = table.iloc[0], table.iloc[1]
    eps_star = runs[0].eps_star
    assert eps_star is not None
    star = eps_star["eps_star"].to_numpy()
    k = int((star > 0.3).sum())
    assert row["eps_star_accuracy"] == pytest.approx(k / len(star))
    lo, hi = binomtest(k, len(star)).proportion_ci(method="exact")
    assert (row["eps_star_accuracy_lo"], row["eps_star_accuracy_hi"]) == pytest.approx((lo, hi))
    card = report_card(eps_star["eps_l"], eps_star["eps_star"])
    assert row["eq4_spearman"] == pytest.approx(card["spearman"])
    assert row["eq4_spearman_lo"] <= row["eq4_spearman"] <= row["eq4_spearman_hi"]
    assert row["eq4_ratio_median"] == pytest.approx(card["ratio_median"])
    assert row["eq4_optimistic"] == pytest.approx(card["optimistic_share"])
    assert all(pd.isna(other[c]) for c in ("eps_star_accuracy", "eq4_spearman", "eq4_optimistic"))
    text = card_markdown(table)
    assert "| model | accuracy by ε* | Spearman ρ(ε_L, ε*) |" in text
    assert f"{card['spearman']:.3f} [" in text and runs[0].label in text
    assert text in headline(table)
    html = render_report(table, [])
    assert "Can ε_L be trusted?" in html and f"{card['spearman']:.3f}" in html
    assert card_markdown(comparison_table([runs[1]], eps=0.3)) == ""
    assert "Can ε_L be trusted?" not in render_report(comparison_table([runs[1]], eps=0.3), [])


# --------------------------------------------------------------------------- threat models

#: a small hand table in ℓ2: radii beyond 1 (the ℓ∞ box) on purpose
HAND_EPS_L = [0.5, 1.2, 2.0, 3.1, -0.2]
HAND_EPS_STAR = [0.4, 1.9, 1.5, 2.5, 0.0]


def _hand_run(norm: str) -> Run:
    from epsl.norms import parse_norm

    eps_star = pd.DataFrame({"index": range(5), "eps_l": HAND_EPS_L, "eps_star": HAND_EPS_STAR})
    return Run(name=f"hand-{norm}", path=Path(f"hand-{norm}"), eps_star=eps_star,
               label=f"hand {norm}", norm=parse_norm(norm))


def test_the_report_card_of_an_l2_hand_table() -> None:
    """Numbers worked out by hand on 4 correctly classified examples (the fifth has
    ε_L < 0, ε* = 0): ranks of ε_L 1 2 3 4 and of ε* 1 3 2 4, so ρ = 1 - 6·2 / (4·15) = 0.8;
    ratios 1.25, 0.632, 1.333, 1.24, so 3 of 4 optimistic and the median (1.24 + 1.25) / 2."""
    from scipy.stats import spearmanr

    from epsl.analysis.cards import accuracy_curves, report_card
    from epsl.stats import clopper_pearson

    card = report_card(HAND_EPS_L, HAND_EPS_STAR, norm="l2")
    assert card["n"] == 5 and card["n_correct"] == 4 and card["n_unbroken"] == 0
    assert card["spearman"] == pytest.approx(0.8)
    assert card["spearman"] == pytest.approx(spearmanr(HAND_EPS_L[:4], HAND_EPS_STAR[:4])[0])
    assert card["ratio_median"] == pytest.approx((1.24 + 1.25) / 2)
    assert card["optimistic"] == 3 and card["optimistic_share"] == pytest.approx(0.75)
    assert (card["optimistic_lo"], card["optimistic_hi"]) == pytest.approx(clopper_pearson(3, 4))
    # the curves by hand: Eq. 4 above the ε* curve by one example (0.2) first at ε = 0.4
    assert card["max_gap"] == pytest.approx(0.2) and card["max_gap_eps"] == pytest.approx(0.4)
    assert card["optimistic_from_eps"] == pytest.approx(0.4)
    # in ℓ2 the curves go on past 1 (ε = 2.5: Eq. 4 keeps 1 of 5, ε* none); in ℓ∞ they stop at 1
    l2 = accuracy_curves(HAND_EPS_L, HAND_EPS_STAR, norm="l2").set_index("eps")
    assert l2.loc[2.5, "gap"] == pytest.approx(0.2) and l2.index.max() == pytest.approx(3.1)
    assert accuracy_curves(HAND_EPS_L, HAND_EPS_STAR).eps.max() <= 1
    # every number but the curves' is the same in every norm
    linf = report_card(HAND_EPS_L, HAND_EPS_STAR)
    assert {k: v for k, v in linf.items() if "gap" not in k and "from" not in k} == pytest.approx(
        {k: v for k, v in card.items() if "gap" not in k and "from" not in k}, nan_ok=True)


def test_an_l2_comparison_carries_its_norm(tmp_path: Path) -> None:
    from epsl.analysis.tables import headline

    table = comparison_table([_hand_run("l2")], eps=1.0)
    row = table.iloc[0]
    assert row["norm"] == "l2"
    assert row["eps_star_accuracy"] == pytest.approx(3 / 5)  # ε* > 1: 1.9, 1.5, 2.5
    assert row["eq4_spearman"] == pytest.approx(0.8)
    assert row["eq4_optimistic"] == pytest.approx(0.75)
    assert row["eq4_ratio_median"] == pytest.approx(1.245)
    assert row["eq4_optimistic_from"] == pytest.approx(0.4)
    assert "norm" not in format_table(table).columns  # said once, above the table
    text = write_comparison(tmp_path, table)["md"].read_text()
    assert text.startswith("# Comparison at ε = 1 (ℓ2)\n\nThreat model: ℓ2 (l2). Every ε, ε_L "
                           "and ε* is an ℓ2 distance")
    assert pd.read_csv(tmp_path / "comparison.csv")["norm"].tolist() == ["l2"]
    assert headline(table).startswith("Threat model: ℓ2 (l2).")
    # an ℓ∞ table says its norm too, and keeps its title
    linf = comparison_table([_hand_run("linf")], eps=0.3)
    text = write_comparison(tmp_path / "linf", linf)["md"].read_text()
    assert text.startswith("# Comparison at ε = 0.3\n\nThreat model: ℓ∞ (linf).")
    assert "dual norm ℓ1" in text
    assert not headline(linf).startswith("Threat model")


def test_a_table_of_two_norms_is_refused_in_one_line(tmp_path: Path) -> None:
    from epsl.errors import EpslError

    with pytest.raises(EpslError, match="runs of two norms cannot share a table") as error:
        comparison_table([_hand_run("linf"), _hand_run("l2")])
    assert "hand linf (hand-linf) is linf, hand l2 (hand-l2) is l2" in str(error.value)
    # nor are two tables glued together afterwards
    glued = pd.concat([comparison_table([_hand_run("linf")], eps=0.3),
                       comparison_table([_hand_run("l2")], eps=0.3)], ignore_index=True)
    with pytest.raises(EpslError, match="hand linf is linf, hand l2 is l2") as error:
        write_comparison(tmp_path, glued)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "comparison.csv").exists()


def test_the_one_step_attack_is_fgm_outside_linf_and_a_section_joins_the_headline() -> None:
    from epsl.analysis.tables import headline

    def table(norm: str) -> pd.DataFrame:
        return pd.DataFrame({"model": ["m"], "run": ["m"], "norm": [norm],
                             "fgsm_xent": [0.5], "transfer_fgsm_cw": [0.25]})

    assert list(format_table(table("linf")).columns) == ["model", "run", "FGSM xent",
                                                         "black-box FGSM CW"]
    assert list(format_table(table("l2")).columns) == ["model", "run", "FGM xent",
                                                       "black-box FGM CW"]
    # a study's section in another norm: its report card under the main one, named by norm
    main = comparison_table([_hand_run("linf")], eps=0.3)
    l2 = comparison_table([_hand_run("l2")], eps=1.0)
    text = headline(main, sections={"l2": l2})
    assert "In ℓ2 (l2/comparison.md), Eq. 4 against ε* in the same norm (accuracy by ε* at "\
           "ε = 1):" in text
    assert text.count("| hand l2 | 60.0% [") == 1  # 3 / 5 by ε* at 1, with its interval
    assert "In ℓ2" not in headline(main)


def test_the_three_way_card_by_hand() -> None:
    from dataclasses import replace

    from epsl.analysis.cards import proof_card, proof_groups
    from epsl.analysis.tables import headline
    from epsl.stats import clopper_pearson

    eps_l = [0.05, 0.20, 0.12, 0.30, 0.0, 0.08]
    cert = [0.06, 0.10, 0.05, 0.10, 0.0, 0.08]
    star = [0.09, 0.15, 0.13, 0.35, 0.0, 0.10]
    exact = [0.08, 0.14, np.nan, 0.31, np.nan, 0.07]
    # ε_L ≤ ε_cert: 0 and 5 (equal counts); ε_L > ε*: 1; undecided: 2, 3; 4 misclassified
    assert list(proof_groups(eps_l, cert, star)) == [
        "conservative", "optimistic", "undecided", "undecided", "misclassified", "conservative"]
    card = proof_card(eps_l, cert, star, exact, grid=[0.07])
    assert card["n_correct"] == 5
    assert card["conservative"]["count"] == 2 and card["optimistic"]["count"] == 1
    assert card["undecided"]["share"] == pytest.approx(2 / 5)
    assert card["conservative"]["interval"] == pytest.approx(list(clopper_pearson(2, 5)))
    # solved: 0, 1, 3, 5 (the card only counts; ε_cert ≤ ε_exact is certify's to hold); ε_L
    # exceeds ε_exact at 1 (0.20 > 0.14) and 5 (0.08 > 0.07)
    assert card["exact"]["solved"] == 4 and card["exact"]["optimistic"] == 2
    assert card["accuracy"]["0.07"] == {"certified": pytest.approx(3 / 6),
                                        "eq4": pytest.approx(4 / 6),
                                        "empirical": pytest.approx(5 / 6)}
    # into the comparison table and the headline
    certify = pd.DataFrame({"index": range(6), "eps_cert": cert, "eps_l": eps_l,
                            "eps_star": star, "group": proof_groups(eps_l, cert, star)})
    run = replace(_hand_run("linf"), certify=certify)
    table = comparison_table([run], eps=0.07)
    row = table.iloc[0]
    assert row["certify_n"] == 6
    assert row["certified_accuracy"] == pytest.approx(3 / 6)
    assert row["eq4_conservative"] == pytest.approx(2 / 5)
    assert row["eq4_proven_optimistic"] == pytest.approx(1 / 5)
    assert row["eq4_undecided_hi"] == pytest.approx(clopper_pearson(2, 5)[1])
    text = headline(table)
    assert "With proofs, on the first 6 test images" in text
    assert "| hand linf | 50.0% [" in text and "| 40.0% [" in text
