"""The columns of the comparison table (:func:`epsl.analysis.tables.comparison_table`): their
order, which hold accuracies (shown as percentages with their 95% interval) and which do not,
and the header each is shown under.
"""

from __future__ import annotations

from epsl.norms import Norm

__all__ = ["BASE_COLUMNS", "CARD_STATS", "FIRST_ATTACKS", "HEADERS", "NOT_FRACTIONS",
           "TAIL_COLUMNS", "TEXT_HEADERS", "attack_column", "column_header",
           "is_interval_bound"]

#: Columns always present, in order; attack columns follow (see :func:`attack_column`).
BASE_COLUMNS = ["model", "run", "dataset", "arch", "norm", "alpha", "beta", "sigma", "adv", "adv_eps",
                "kappa", "steps", "train_accuracy", "test_accuracy", "n", "clean_accuracy",
                "eps", "eq4_predicted"]
#: The attack columns shown first, in order; the others follow sorted, the transfer ones last.
FIRST_ATTACKS = ["fgsm_xent", "fgsm_cw", "pgd_xent", "pgd_cw"]
_FRACTIONS = {"train_accuracy", "test_accuracy", "clean_accuracy", "eq4_predicted",
              "attacks_worst", "audit_worst"}
#: The report card of Eq. 4 (numbers that are not accuracies, shown with 3 decimals).
CARD_STATS = {"eq4_spearman", "eq4_ratio_median"}
#: Columns after the attacks, in order.
TAIL_COLUMNS = ("pgd_steps", "eps_star_accuracy", "attacks_worst", "audit_worst", "audit_n",
                "audit_verdict", "eq4_spearman", "eq4_ratio_median", "eq4_optimistic",
                "eq4_optimistic_from", "certified_accuracy", "eq4_conservative",
                "eq4_proven_optimistic", "eq4_undecided", "certify_n", "reported_clean",
                "reported_robust", "reported_attack", "reported_against", "reported_verdict",
                "reported_source")
#: The columns that are not accuracies (not shown as percentages).
NOT_FRACTIONS = (set(BASE_COLUMNS) - _FRACTIONS) | {"pgd_steps", "audit_n", "audit_verdict",
                                                    "eq4_optimistic_from", "certify_n",
                                                    "reported_attack", "reported_against",
                                                    "reported_verdict", "reported_source"}\
    | CARD_STATS
#: The header each column is shown under (an attack column's is made by :func:`column_header`).
HEADERS = {"model": "model", "run": "run", "dataset": "data", "arch": "arch", "norm": "norm",
           "alpha": "α",
           "beta": "β", "sigma": "σ", "adv": "adv", "adv_eps": "adv ε", "kappa": "κ",
           "steps": "k (steps)", "train_accuracy": "train", "test_accuracy": "test", "n": "n",
           "clean_accuracy": "clean", "eps": "ε", "eq4_predicted": "Eq. 4",
           "pgd_steps": "PGD steps", "attacks_worst": "worst of these attacks",
           "audit_worst": "audit worst case", "audit_n": "audit n",
           "audit_verdict": "audit verdict", "eps_star_accuracy": "ε* (min-norm)",
           "eq4_spearman": "ρ(ε_L, ε*)", "eq4_ratio_median": "median ε_L/ε*",
           "eq4_optimistic": "Eq. 4 optimistic", "eq4_optimistic_from": "Eq. 4 overstates from ε",
           "certified_accuracy": "certified (CROWN)",
           "eq4_conservative": "Eq. 4 provably conservative",
           "eq4_proven_optimistic": "Eq. 4 provably optimistic",
           "eq4_undecided": "undecided", "certify_n": "certify n",
           "reported_clean": "reported clean", "reported_robust": "reported robust",
           "reported_attack": "reported attack", "reported_against": "epsl's column",
           "reported_verdict": "against reported", "reported_source": "reported by"}


def attack_column(attack: str, loss: str, transfer: bool) -> str:
    """``fgsm_xent``, ``pgd_cw``, ``transfer_pgd_cw``, ``apgd_dlr``..."""
    return f"{'transfer_' if transfer else ''}{attack}_{loss}".replace("-", "_")


#: Headers of text columns, left-aligned in Markdown (the others, numbers, right-aligned).
TEXT_HEADERS = {"model", "run", "data", "arch", "norm", "adv", "audit verdict",
                "reported attack", "epsl's column", "against reported", "reported by",
                "verdict"}


def column_header(column: str, norm: Norm = Norm.LINF) -> str:
    """The header ``column`` is shown under: :data:`HEADERS`', else the attack's and loss's
    names (``PGD CW``, ``black-box FGSM xent``; the one-step attack is FGM outside ℓ∞)."""
    if column in HEADERS:
        return HEADERS[column]
    transfer = column.startswith("transfer_")
    name = column.removeprefix("transfer_")
    attack, _, loss = name.rpartition("_")
    # the one-step attack is FGSM (the sign of the gradient) only in l_inf; FGM elsewhere
    attack = "fgm" if attack == "fgsm" and norm is not Norm.LINF else attack
    text = f"{attack.upper()} {loss.upper() if loss == 'cw' else loss}"
    return f"black-box {text}" if transfer else text


def is_interval_bound(column: str) -> bool:
    """Whether ``column`` is the lower or upper bound of another's 95% interval."""
    return column.endswith(("_lo", "_hi"))
