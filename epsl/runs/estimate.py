"""``epsl estimate``: the robust accuracy of a checkpoint's examples at ε_L's cost, with a valid
95% interval (a normal interval, so valid as n grows), and a per-example floor under ε*.

ε_L (Eq. 4) and a cheap attack (PGD-20 with the CW loss) run on every selected image; the full
audit (:func:`epsl.attacks.audit.audit`, ε* included) runs on a seeded uniform random sample of
``labelled`` of them. Prediction-powered inference (:mod:`epsl.ppi`, through
:mod:`epsl.analysis.estimates`) combines the two into an interval for the robust accuracy of
all the images that is valid whatever the predictor's bias (asymptotically: a normal
interval), and narrower than the audited
sample's own interval when the predictor tracks the audit. From ε* on the same sample, the
split-conformal quantile q of ε*/ε_L gives ``eps_floor = q·ε_L`` per image: for a new image of
the same pool, ε* ≥ eps_floor with probability at least 1 − α. ε* is the attacks' best, an
upper estimate of the true minimum, so the floor is a statistical floor under the attacks, not
a certificate. With ``certify`` (ℓ∞), CROWN's ε_cert (:mod:`epsl.runs.certify`) is found on the
labelled images too and set beside the floor: where eps_floor ≤ ε_cert, the floor is proven.

Its folder holds ``estimate.csv`` (one row per image and ε), ``estimate.json``, and the results
it reuses when their provenance matches: ``diagnostics/`` (ε_L of every image),
``labelled/n<n>-seed<seed>/eps_star/``, ``…/audit-<ε>/`` and ``…/certify/`` (each labelled
draw's ε*, audits and certified radii).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from epsl.analysis.estimates import (
    CHEAP_PGD_STEPS,
    DEFAULT_PREDICTOR,
    Estimate,
    attack_outcome,
    check_predictor,
    estimate,
    floor,
    paired_estimates,
    plain_prediction,
)
from epsl.attacks.audit import AuditConfig, check_dependencies, ensemble_in
from epsl.attacks.eps_star import EpsStarResult
from epsl.attacks.projected_gradient import pgd
from epsl.attacks.threat import default_step_size
from epsl.certify.radius import CertifyOptions
from epsl.data import sample_indices
from epsl.distributed import world
from epsl.errors import EpslError, check_seed
from epsl.norms import check_radius, parse_norm
from epsl.results.files import read_json, read_table, write_table
from epsl.results.records import Result, check_replaceable, load
from epsl.runs.audit import AuditRunConfig, ensure_audit
from epsl.runs.certify import CertifyConfig, ensure_certify
from epsl.runs.context import DataConfig, Evaluation, provenance
from epsl.runs.diagnose import ensure_diagnostics
from epsl.runs.eps_star import ensure_eps_star
from epsl.stats import clopper_pearson

Log = Callable[[str], None]


@dataclass(frozen=True)
class CheapAttack:
    """The attack run on every image: white-box PGD from x then ``restarts`` random starts,
    with the CW loss (κ = ``cw_confidence``), as the study's PGD-20 (CW).

    Attributes:
        steps: PGD steps; step_size: None for ``2.5 * eps / steps``; seed: its random starts.
    """

    steps: int = CHEAP_PGD_STEPS
    step_size: float | None = None
    restarts: int = 1
    cw_confidence: float = 50.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.restarts < 1:
            raise EpslError(f"the cheap attack needs steps and restarts >= 1 (got "
                            f"{self.steps}, {self.restarts})")
        check_seed(self.seed)


@dataclass(frozen=True)
class EstimateConfig:
    """``epsl estimate``: which checkpoint and images (``data``), the radii, how many images
    the full audit labels and with which seed, the predictor, the floor's α, the norm, the
    cheap attack and the audit (whose minimum-norm ensemble also gives the floor's ε*).

    Attributes:
        labelled: n, the images the full audit runs on (2 ≤ n < the images selected).
        labelled_seed: seed of their uniform draw (``numpy``'s ``default_rng``).
        predictor: ``eq4``, ``pgd`` or ``combined`` (:mod:`epsl.analysis.estimates`).
        alpha: the floor's miss rate: ε* ≥ eps_floor with probability ≥ 1 − alpha.
        certify: also ε_cert (CROWN, ℓ∞ only) of the labelled images, beside the floor; None:
            not certified.
        source: the checkpoint whose adversarial examples the audit transfers (its black-box
            check, as ``epsl audit --source``); None: none.
    """

    data: DataConfig
    eps: tuple[float, ...]
    labelled: int
    labelled_seed: int = 0
    predictor: str = DEFAULT_PREDICTOR
    alpha: float = 0.05
    norm: str = "linf"
    attack: CheapAttack = field(default_factory=CheapAttack)
    audit: AuditConfig = field(default_factory=AuditConfig)
    certify: CertifyOptions | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        norm = parse_norm(self.norm)
        object.__setattr__(self, "norm", norm.value)
        object.__setattr__(self, "eps", tuple(float(e) for e in self.eps))
        if not self.eps:
            raise EpslError("give at least one eps")
        check_radius(norm, self.eps)
        if self.labelled < 2:
            raise EpslError(f"labelled must be at least 2 (got {self.labelled}): an interval "
                            "needs the spread of the audited images")
        if not 0 < self.alpha < 1:
            raise EpslError(f"alpha must be in (0, 1) (got {self.alpha})")
        check_predictor(self.predictor)
        if self.predictor == "combined" and self.labelled < 3:
            raise EpslError(f"labelled must be at least 3 with predictor='combined' (got "
                            f"{self.labelled}): its model is cross-fitted on the audited images")
        if len(set(self.eps)) != len(self.eps):
            raise EpslError(f"eps holds a radius twice ({list(self.eps)})")
        check_seed(self.labelled_seed, "labelled_seed")
        object.__setattr__(self, "audit", dataclasses.replace(
            self.audit, eps_star=ensemble_in(self.audit.eps_star, norm)))
        if self.certify is not None:
            if not isinstance(self.certify, CertifyOptions):
                raise EpslError(f"certify must be CertifyOptions or None (got {self.certify!r})")
            if norm.value != "linf":
                raise EpslError(f"certify bounds the l_inf ball only (got norm {norm.value})")
            if self.audit.eps_star is None:
                raise EpslError("certify needs eps* (the audit's minimum-norm ensemble): its "
                                "bisection runs on [0, eps*]")

    def reuse_settings(self) -> dict[str, Any]:
        certify = {} if self.certify is None else {"certify": self.certify.settings()}
        source = {} if self.source is None else {"source": self.source}
        return {"eps": list(self.eps), "labelled": self.labelled,
                "labelled_seed": self.labelled_seed, "predictor": self.predictor,
                "alpha": self.alpha, "norm": self.norm,
                "attack": dataclasses.asdict(self.attack), "audit": self.audit.reuse_settings(),
                **certify, **source}


def labelled_rows(images: int, labelled: int, seed: int) -> np.ndarray:
    """The positions of the ``labelled`` images among ``images``: a seeded uniform draw
    without replacement (:func:`epsl.data.sample_indices`), sorted."""
    if labelled >= images:
        raise EpslError(f"labelled={labelled} is not fewer than the {images} images selected: "
                        "label fewer, or run the full audit on all of them (epsl audit)")
    return sample_indices(images, labelled, seed)


def cheap_attack(ev: Evaluation, eps: float, config: EstimateConfig) -> pd.DataFrame:
    """``pgd_robust, pgd_margin`` of every image under the cheap attack at ``eps``."""
    a = config.attack
    found = pgd(ev.model, ev.data.x.to(ev.device), ev.data.y.to(ev.device), eps=eps,
                step_size=a.step_size or default_step_size(eps, a.steps), steps=a.steps,
                loss="cw", cw_confidence=a.cw_confidence, restarts=a.restarts, seed=a.seed,
                batch_size=config.audit.batch_size, norm=config.norm)
    return pd.DataFrame({"pgd_robust": found.correct.cpu().numpy().astype(float),
                         "pgd_margin": found.margin.detach().cpu().double().numpy()})


@dataclass(frozen=True)
class LabelledTruth:
    """What the expensive methods found on the labelled images, in the order of their rows:
    the full audit's ``robust`` per ε; ε* (None without the ensemble); ε_cert (None without
    ``certify``)."""

    robust: dict[float, np.ndarray]
    eps_star: np.ndarray | None = None
    eps_cert: np.ndarray | None = None


def _labelled_truth(ev: Evaluation, rows: np.ndarray, diagnostics: pd.DataFrame,
                    config: EstimateConfig, work: Path, log: Log | None, overwrite: bool
                    ) -> LabelledTruth:
    """The full audit, ε* and (with ``certify``) ε_cert of the labelled images, each reused
    from ``work/labelled/`` when its provenance matches."""
    sample = dataclasses.replace(ev, data=ev.data.take(torch.as_tensor(rows),
                                                       seed=config.labelled_seed))
    # one folder per draw, two levels down: a reader of the estimate's folder never takes the
    # sample's audit for the run's own, and another draw never replaces this one
    drawn = work / "labelled" / f"n{config.labelled}-seed{config.labelled_seed}"
    ensemble, star, points = config.audit.eps_star, None, None
    part = diagnostics.iloc[rows].reset_index(drop=True)
    if ensemble is not None:
        result, _ = ensure_eps_star(sample, drawn / "eps_star", ensemble, config.eps,
                                    part, log, overwrite=overwrite)
        # as saved, so that a reused result gives the same numbers as a fresh one
        star = read_table(drawn / "eps_star" / "eps_star.csv")["eps_star"]\
            .to_numpy(dtype=float)
        points = result.tensors if isinstance(result.tensors, EpsStarResult) else None
        if points is None:
            points = EpsStarResult.load(drawn / "eps_star")
    truth = {}
    for eps in config.eps:
        run = AuditRunConfig(data=config.data, eps=eps, audit=config.audit, norm=config.norm,
                             source=config.source)
        folder = drawn / f"audit-{eps!r}"
        ensure_audit(run, folder, sample, points=lambda: points, log=log, overwrite=overwrite)
        truth[eps] = read_table(folder / "audit.csv")["robust"].to_numpy(dtype=float)
    if config.certify is None or ensemble is None or star is None:
        return LabelledTruth(truth, star)
    certify = CertifyConfig(data=config.data, options=config.certify, eps_star=ensemble,
                            eps=config.eps)
    seconds = read_json(drawn / "eps_star" / "eps_star.json").get("seconds", {})
    ensure_certify(sample, drawn / "certify", certify, eps_l=part["eps_l"].to_numpy(dtype=float),
                   eps_star=star, eps_star_seconds=float(sum(seconds.values())), log=log)
    cert = read_table(drawn / "certify" / "certify.csv")["eps_cert"].to_numpy(dtype=float)
    return LabelledTruth(truth, star, cert)


def _rows(diagnostics: pd.DataFrame, eps: float, pgd_outcome: pd.DataFrame, mask: np.ndarray,
          truth: LabelledTruth) -> pd.DataFrame:
    """The per-image table at ``eps``: ε_L, the predictions, the truth where labelled."""
    eps_l = diagnostics["eps_l"].to_numpy(dtype=float)
    robust = np.full(len(mask), np.nan)
    robust[mask] = truth.robust[eps]
    table = pd.DataFrame({"index": diagnostics["index"].to_numpy(), "eps": eps, "eps_l": eps_l,
                          "eq4_robust": eps_l > eps, **pgd_outcome, "labelled": mask,
                          "robust": robust})
    if truth.eps_star is not None:
        table["eps_star"] = np.nan
        table.loc[mask, "eps_star"] = truth.eps_star
    return table


def _beside_floor(table: pd.DataFrame, truth: LabelledTruth, trivial: bool, method: str
                  ) -> dict[str, Any]:
    """ε_cert beside the floor on the labelled, correctly classified images: how many, on how
    many the certificate is above 0, and on how many it proves the floor (eps_floor ≤
    ε_cert), with the median ratio eps_floor / ε_cert where ε_cert > 0 (None for both where
    the floor is ``trivial``: 0, too few images for one)."""
    assert truth.eps_cert is not None
    labelled = table[table["labelled"]]
    correct = labelled["eps_l"].to_numpy() > 0
    cert = truth.eps_cert[correct]
    floor_values = labelled["eps_floor"].to_numpy(dtype=float)[correct]
    positive = cert > 0
    ratio = floor_values[positive] / cert[positive]
    return {"images": int(correct.sum()), "certified": int(positive.sum()),
            "floor_proven": None if trivial else int(np.sum(floor_values <= cert)),
            "median_floor_over_cert": float(np.median(ratio)) if len(ratio) and not trivial
            else None,
            "median_eps_cert": float(np.median(cert)) if len(cert) else None,
            "method": method}


def _interval(found: Estimate) -> dict[str, Any]:
    i = found.interval
    return {"robust_accuracy": {"estimate": i.estimate, "interval": [i.low, i.high]},
            "classical": {"estimate": i.classical_estimate,
                          "interval": [i.classical_low, i.classical_high]},
            "effective_labelled": i.effective_labelled, "lam": i.lam}


def _exact(truth: np.ndarray) -> dict[str, Any]:
    """Where PPI is refused (every audited image alike): the audited images' share with its
    exact (Clopper-Pearson) interval, which holds at any n."""
    found = _share(truth > 0)
    return {"robust_accuracy": found, "classical": found, "effective_labelled": None,
            "lam": None}


def _share(values: np.ndarray) -> dict[str, Any]:
    k, n = int(np.sum(values)), len(values)
    return {"estimate": k / n, "interval": list(clopper_pearson(k, n))}


#: the cheap attack's outcome at one ε, already computed: ``pgd_robust, pgd_margin`` per image,
#: in row order (None: not computed at that ε, so it runs)
CheapOutcome = Callable[[float], pd.DataFrame | None]


def run_estimate(config: EstimateConfig, *, folder: Path | str | None = None,
                 diagnostics: Path | str | None = None, cheap: CheapOutcome | None = None,
                 evaluation: Evaluation | None = None, log: Log | None = None,
                 overwrite: bool = False) -> Result:
    """The estimate of ``config`` as an ``estimate`` result (its table: one row per image and
    eps). ``folder``: where the diagnostics, the labelled sample's ε* and audits are reused
    from and saved to (a temporary folder when None); ``diagnostics``: another folder for the
    diagnostics (default ``folder/diagnostics``); ``cheap``: the cheap attack's outcome at an
    ε when it was run already (as ``config.attack``, on these images; default: run here);
    ``evaluation``: ``config.data`` already prepared; ``overwrite``: replace results of
    another origin in ``folder`` (else refused).
    Where the audited images are all alike at an eps (no spread), that eps has no
    prediction-powered interval: its entry says why (``refused``) and gives the audited images'
    exact interval."""
    check_dependencies(config.audit)
    if folder is None and world().distributed:  # each rank's temporary folder is its own
        raise EpslError("under torchrun, give run_estimate a folder= that every process "
                        "shares: the writing process saves the results there, the others read "
                        "them back")
    ev = evaluation or config.data.prepare()
    check_radius(config.norm, config.eps, dim=ev.data.x[0].numel())
    rows = labelled_rows(len(ev.data), config.labelled, config.labelled_seed)
    mask = np.zeros(len(ev.data), dtype=bool)
    mask[rows] = True
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(folder) if folder is not None else Path(scratch)
        where = Path(diagnostics) if diagnostics is not None else work / "diagnostics"
        ensure_diagnostics(ev, where, config.eps, log, norm=config.norm, overwrite=overwrite)
        # as saved, so that a reused result gives the same numbers as a fresh one
        table = read_table(where / "diagnostics.csv")
        truth = _labelled_truth(ev, rows, table, config, work, log, overwrite)
    conformal = None if truth.eps_star is None else floor(
        pd.DataFrame({"eps_star": truth.eps_star, "eps_l": table["eps_l"].to_numpy()[rows]}),
        np.ones(len(rows), dtype=bool), config.alpha)
    tables, results = [], {}
    for eps in config.eps:
        outcome = cheap(eps) if cheap is not None else None
        if outcome is None:
            if log is not None:
                log(f"cheap attack: PGD-{config.attack.steps} (CW) at eps={eps:g} on "
                    f"{len(ev.data)} images")
            outcome = cheap_attack(ev, eps, config)
        frame = _rows(table, eps, outcome, mask, truth)
        results[repr(eps)] = _estimate_at(frame, mask, eps, truth.robust[eps], config)
        if conformal is not None:
            frame["eps_floor"] = conformal.floor(frame["eps_l"])
        if truth.eps_cert is not None:
            frame["eps_cert"] = np.nan
            frame.loc[mask, "eps_cert"] = truth.eps_cert
        tables.append(frame)
    summary = {"examples": len(ev.data), "labelled": config.labelled,
               "labelled_seed": config.labelled_seed, "predictor": config.predictor,
               "norm": config.norm, "eps": list(config.eps), "results": results,
               "floor": None if conformal is None else dataclasses.asdict(conformal),
               **({} if truth.eps_cert is None else
                  {"certify": _beside_floor(tables[0], truth, conformal is None
                                            or conformal.trivial,
                                            config.certify.method if config.certify else "")}),
               "config": dataclasses.asdict(config)}
    return Result("estimate", summary, provenance(ev, config.reuse_settings()),
                  pd.concat(tables, ignore_index=True))


def _estimate_at(table: pd.DataFrame, mask: np.ndarray, eps: float, truth: np.ndarray,
                 config: EstimateConfig) -> dict[str, Any]:
    """The summary at ``eps``, and ``prediction`` set in ``table``: the PPI interval, or where
    the audited images are all alike, their exact interval marked ``refused``."""
    shares = {"eq4_accuracy": _share(table["eq4_robust"].to_numpy()),
              "pgd_accuracy": _share(table["pgd_robust"].to_numpy() > 0)}
    try:
        found = estimate(table, mask, eps, predictor=config.predictor, seed=config.labelled_seed)
    except EpslError as refused:  # this eps only: the others keep their estimates
        table["prediction"] = plain_prediction(table, eps, "pgd" if config.predictor
                                               == "combined" else config.predictor)
        return {**_exact(truth), **shares, "refused": f"eps={eps:g}: {refused}"}
    table["prediction"] = found.prediction
    return {**_interval(found), **shares}


def cheap_from_table(folder: Path, attack: CheapAttack, images: int) -> CheapOutcome:
    """The cheap attack's outcome at an ε from the attack table in ``folder``: the
    comparison's own white-box PGD CW rows of ``attack``'s steps and restarts (the table's
    provenance holds its seed, κ and step size, which the comparison made ``attack``'s); None
    where the table has no such row for each of the ``images``."""
    try:
        table = load(folder, "attack").table
    except EpslError:  # no attack table there: the cheap attack runs
        table = None

    def outcome(eps: float) -> pd.DataFrame | None:
        found = None if table is None else attack_outcome(
            table, eps, attack.steps, exact=True, restarts=attack.restarts)
        if found is None or not np.array_equal(found["index"], np.arange(images)):
            return None
        return found.drop(columns="index").reset_index(drop=True)

    return outcome


def estimate_models(runs: Sequence[tuple[str, Evaluation, EstimateConfig]], out: Path, *,
                    log: Log | None, overwrite: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``compare --labelled``: each model's estimate at its first ε (``runs``: its name in
    ``out``, its examples prepared and its config, the same labelled draw for all), saved in
    ``out/<name>/estimate/``, and every pair's difference from the same labelled images;
    written to ``estimates.csv`` and ``estimate_pairs.csv``. ε_L comes from
    ``out/<name>``'s diagnostics and the cheap attack from its attack table
    (:func:`cheap_from_table`) where the comparison wrote them."""
    tables, rows = {}, []
    for name, ev, run in runs:
        folder = out / name / "estimate"
        result = run_estimate(run, folder=folder, diagnostics=out / name,
                              cheap=cheap_from_table(out / name / "attacks", run.attack,
                                                     len(ev.data)),
                              evaluation=ev, log=log, overwrite=overwrite)
        assert result.provenance is not None and result.table is not None
        check_replaceable(folder, "estimate", result.provenance, overwrite)
        result.save(folder, overwrite=True)
        tables[name] = result.table
        found = result.summary["results"][repr(run.eps[0])]
        rows.append({"model": name, "estimate": found["robust_accuracy"]["estimate"],
                     "low": found["robust_accuracy"]["interval"][0],
                     "high": found["robust_accuracy"]["interval"][1],
                     "classical_low": found["classical"]["interval"][0],
                     "classical_high": found["classical"]["interval"][1],
                     "effective_labelled": found["effective_labelled"],
                     "refused": found.get("refused")})
    per_model = pd.DataFrame(rows)
    try:
        pairs = paired_estimates(tables)
    except EpslError as refused:  # e.g. two models alike on every audited image
        if log is not None:
            log(f"no paired estimates: {refused}")
        pairs = paired_estimates({})
    write_table(per_model, out / "estimates.csv")
    write_table(pairs, out / "estimate_pairs.csv")
    return per_model, pairs


def _clipped(low: float, high: float) -> tuple[float, float]:
    return max(low, 0.0), min(high, 1.0)


def summary_lines(summary: dict[str, Any]) -> Sequence[str]:
    """What ``epsl estimate`` prints: per eps, the estimate and intervals (a normal interval
    shown within [0, 1]; ``estimate.json`` keeps it as computed)."""
    n, labelled = summary["examples"], summary["labelled"]
    lines = [f"{labelled} of {n} images audited (seed {summary['labelled_seed']}); predictor "
             f"{summary['predictor']} on all {n}"]
    for eps, r in summary["results"].items():
        if r.get("refused"):
            share = r["robust_accuracy"]
            lines += [f"eps={float(eps):g} ({summary['norm']}): no prediction-powered interval "
                      f"({r['refused']})",
                      f"  audited images alone (exact)   {share['estimate']:.1%} "
                      f"[{share['interval'][0]:.1%}, {share['interval'][1]:.1%}]"]
            continue
        est, (lo, hi) = r["robust_accuracy"]["estimate"], _clipped(*r["robust_accuracy"]["interval"])
        c_est, (c_lo, c_hi) = r["classical"]["estimate"], _clipped(*r["classical"]["interval"])
        e4 = r["eq4_accuracy"]
        lines += [f"eps={float(eps):g} ({summary['norm']})",
                  f"  robust accuracy (PPI)          {est:.1%} [{lo:.1%}, {hi:.1%}]",
                  f"  audited images alone           {c_est:.1%} [{c_lo:.1%}, {c_hi:.1%}]",
                  f"  as many labelled images as     {r['effective_labelled']:.0f} "
                  f"({r['effective_labelled'] / labelled:.1f}x the {labelled} audited)",
                  f"  Eq. 4 predicted                {e4['estimate']:.1%} "
                  f"[{e4['interval'][0]:.1%}, {e4['interval'][1]:.1%}]"]
    if summary.get("floor"):
        f = summary["floor"]
        lines.append(f"floor: eps* >= {f['q']:.3f} x eps_L for a new image with probability "
                     f">= {1 - f['alpha']:.0%} (split-conformal on {f['calibration']} audited, "
                     "correctly classified images; a floor under the attacks, not a certificate)"
                     + (" -- too few images for a floor above 0" if f["trivial"] else ""))
    if summary.get("certify"):
        c = summary["certify"]
        ratio = c["median_floor_over_cert"]
        proven = ("no floor to prove" if c["floor_proven"] is None
                  else f"eps_floor <= eps_cert on {c['floor_proven']}")
        lines.append(f"beside eps_cert ({c['method'] or 'crown'}, proven): on the "
                     f"{c['images']} audited, correctly classified images, eps_cert > 0 on "
                     f"{c['certified']}; {proven}"
                     + ("" if ratio is None else
                        f"; median eps_floor / eps_cert {ratio:.2f}"))
    return lines


__all__ = ["CheapAttack", "CheapOutcome", "EstimateConfig", "LabelledTruth", "cheap_attack",
           "cheap_from_table", "estimate_models", "labelled_rows", "run_estimate",
           "summary_lines"]
