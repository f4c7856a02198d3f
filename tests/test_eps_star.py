"""ε* (epsl.attacks.eps_star): the ensemble against the libraries it wraps called directly, verification
of every point, an affine model where Eq. 4 is exact, Foolbox's DeepFool as an outside reference
for ε_L, PGD at the study ε, bad configs, batching, and the ``eps_star`` record's round trip."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torchattacks
from torch import nn

from epsl.analysis.cards import report_card
from epsl.attacks import pgd
from epsl.attacks.eps_star import EpsStarConfig, EpsStarResult, find_eps_star
from epsl.diagnostics import diagnose
from epsl.errors import EpslError
from epsl.results.records import load, reusable
from epsl.runs.context import DataConfig, provenance
from epsl.runs.eps_star import EpsStarRunConfig, run_eps_star

with warnings.catch_warnings():  # foolbox 3.3 imports a deprecated scipy namespace
    warnings.simplefilter("ignore", DeprecationWarning)
    import foolbox as fb

#: Small budgets for the digits tests (the defaults are timed in benchmarks/eps_star.py); one
#: chunk, so that the libraries called directly see the batch epsl gives them.
SMALL = EpsStarConfig(fmn_steps=30, fab_steps=10, batch_size=None)


def linf(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_adv - x).abs().flatten(1).amax(1).double()


def verified_distance(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      x_adv: torch.Tensor) -> torch.Tensor:
    """||x_adv - x||_inf where the model misclassifies x_adv, +inf elsewhere (written here,
    independently of epsl.attacks.eps_star.verify)."""
    with torch.no_grad():
        wrong = model(x_adv).argmax(1) != y
    return torch.where(wrong, linf(x_adv, x), torch.full((len(y),), math.inf, dtype=torch.float64))


@pytest.fixture(scope="module")
def digits_batch(digits_test):
    return digits_test.x[:120], digits_test.y[:120]


@pytest.fixture(scope="module")
def clean_correct(digits_model, digits_batch):
    x, y = digits_batch
    with torch.no_grad():
        return digits_model(x).argmax(1) == y


@pytest.fixture(scope="module")
def found(digits_model, digits_batch) -> EpsStarResult:
    x, y = digits_batch
    return find_eps_star(digits_model, x, y, config=SMALL)


# --------------------------------------------------------------------------- the libraries


def test_eps_star_is_at_most_each_library_attack_called_directly(digits_model, digits_batch,
                                                                clean_correct, found):
    """Foolbox's LInfFMNAttack and torchattacks' FAB called here on the examples the model gets
    right (the batch epsl gives them: one chunk) with the same steps and seed.
    Both are deterministic on one batch (FMN has no randomness; FAB with one restart starts at
    x and draws nothing), so epsl's per-attack ε equal them exactly."""
    x, y = digits_batch[0][clean_correct], digits_batch[1][clean_correct]
    fmodel = fb.PyTorchModel(digits_model, bounds=(0.0, 1.0))
    _raw, fmn_points, _ = fb.attacks.LInfFMNAttack(steps=SMALL.fmn_steps)(
        fmodel, x, y, epsilons=None)
    fab_points = torchattacks.FAB(digits_model, norm="Linf", eps=1.0, steps=SMALL.fab_steps,
                                  n_restarts=1, seed=SMALL.seed, n_classes=10)(x, y)
    direct = {"fmn": verified_distance(digits_model, x, y, fmn_points),
              "fab": verified_distance(digits_model, x, y, fab_points)}
    for name, eps in direct.items():
        assert torch.isfinite(eps).float().mean() > 0.9  # each attack really flips examples
        assert torch.equal(found.per_attack[name][clean_correct], eps), name
        assert torch.equal(found.per_attack[name][~clean_correct],
                           torch.zeros(int((~clean_correct).sum()), dtype=torch.float64))
        assert bool((found.eps_star[clean_correct] <= eps + 1e-6).all()), name
    # the ensemble is the per-example minimum of its members, no more and no less
    assert torch.equal(found.eps_star[clean_correct], torch.minimum(direct["fmn"], direct["fab"]))
    assert {"fmn", "fab"} <= set(found.attack)  # neither attack alone suffices


def test_every_finite_point_is_verified(digits_model, digits_batch, clean_correct, found):
    x, y = digits_batch
    finite = torch.isfinite(found.eps_star)
    assert finite.all()  # on this natural model every example breaks within the box
    with torch.no_grad():
        pred_adv = digits_model(found.x_adv).argmax(1)
    assert torch.equal(found.pred, pred_adv)
    assert bool((pred_adv[finite] != y[finite]).all())
    assert float(found.x_adv.min()) >= 0.0 and float(found.x_adv.max()) <= 1.0
    assert torch.allclose(linf(found.x_adv, x)[finite], found.eps_star[finite], rtol=0, atol=1e-6)
    assert (~clean_correct).any()  # the batch holds misclassified examples to check
    assert bool((found.eps_star[~clean_correct] == 0).all())
    assert bool((found.eps_star[clean_correct] > 0).all())
    assert [found.attack[i] for i in range(len(y)) if not clean_correct[i]] ==\
        ["clean"] * int((~clean_correct).sum())
    assert {found.attack[i] for i in range(len(y)) if clean_correct[i]} <= {"fmn", "fab"}
    assert torch.equal(found.x_adv[~clean_correct], x[~clean_correct])
    assert torch.equal(found.label, y)
    frame = found.to_frame()
    assert list(frame.columns) == ["index", "label", "eps_star", "eps_star_attack", "pred_adv",
                                   "eps_fmn", "eps_fab"]
    assert np.array_equal(frame["eps_star"].to_numpy(), found.eps_star.numpy())


# --------------------------------------------------------------------------- where Eq. 4 is exact


class Affine(nn.Module):
    """logits = W (x - 1/2): Eq. 4's linearisation is the model itself."""

    def __init__(self, classes: int = 10, pixels: int = 64, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(classes, pixels, generator=gen))
        self.bias = nn.Parameter(-0.5 * self.weight.detach().sum(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def test_affine_model_eps_star_equals_eps_l():
    """For logits W x + b the smallest ℓ∞ flip is exactly Eq. 4's ε_L. The inputs lie in
    [0.35, 0.65] and the logits are W (x - 1/2), so every gap (z_y - z_k) is at most
    0.15 ||w_y - w_k||_1: ε_L ≤ 0.15 and the ε_L-ball stays inside [0.2, 0.8], away from the
    box. Each x leans toward one class's template (sign of its weights), so ε_L is not tiny
    (for ε_L ~ 1e-5 float32 rounding of x itself, ~3e-8, is no longer small beside it).

    Measured (default EpsStarConfig, 48 examples, ε_L in [0.020, 0.055], points in
    [0.30, 0.70]): ε*/ε_L - 1 in [1.3e-6, 5.2e-3], median 4.3e-5. FMN alone is that close at
    the median but stalls on a few examples (up to +22%); FAB stops 0.52% past the boundary on
    every example (its steps extrapolate by η = 1.05 and back off by β = 0.9, so it ends just
    beyond the boundary, not on it). The ensemble's worst case is FAB's 0.52%: tolerance 0.6%."""
    model = Affine().eval()
    gen = torch.Generator().manual_seed(1)
    n = 48
    template = torch.randint(0, 10, (n,), generator=gen)
    lean = model.weight.detach()[template].sign() * torch.rand(n, 64, generator=gen)
    x = (0.5 + 0.15 * lean).view(n, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps_l = diagnose(model, x, y).eps_l.double()
    assert bool((eps_l > 0.01).all()) and bool((eps_l < 0.3).all())
    found = find_eps_star(model, x, y, config=EpsStarConfig())
    assert torch.isfinite(found.eps_star).all()
    assert float(found.x_adv.min()) > 0.1 and float(found.x_adv.max()) < 0.9  # box inactive
    assert bool((found.eps_star >= eps_l * (1 - 1e-5)).all())  # nothing beats the minimum
    assert bool((found.eps_star <= eps_l * (1 + 6e-3)).all())
    assert float((found.eps_star / eps_l - 1).median()) < 1e-3  # FMN converges on most


# --------------------------------------------------------------------------- DeepFool and ε_L


def test_foolbox_deepfool_step_is_eps_l_toward_the_rival(digits_model, digits_test):
    """Foolbox's one-step ℓ∞ DeepFool on the logits computes, per candidate class k,
    |z_k - z_y| / (||∇z_k - ∇z_y||_1 + 1e-8), takes the class with the smallest, adds 1e-4 and
    steps by that times sign(∇z_k - ∇z_y): its step length must be ε_L + 1e-4 and its
    direction must be that of epsl's rival. Bounds (-10, 11) keep Foolbox's clip inactive.
    Measured: the lengths agree within 7e-8, the steps within 9e-8 per pixel."""
    with torch.no_grad():
        correct = digits_model(digits_test.x).argmax(1) == digits_test.y
    x, y = digits_test.x[correct], digits_test.y[correct]
    diag = diagnose(digits_model, x, y)
    fmodel = fb.PyTorchModel(digits_model, bounds=(-10.0, 11.0))
    attack = fb.attacks.LinfDeepFoolAttack(steps=1, candidates=None, overshoot=0.0,
                                           loss="logits")
    _raw, x_df, _ = attack(fmodel, x, y, epsilons=None)
    delta = (x_df - x).flatten(1)
    step = diag.eps_l + 1e-4
    print("DeepFool length error:", float((delta.abs().amax(1) - step).abs().max()))
    assert torch.allclose(delta.abs().amax(1), step, rtol=0, atol=1e-6)

    inputs = x.clone().requires_grad_(True)
    logits = digits_model(inputs)
    rows = torch.arange(len(y))
    grad_y, = torch.autograd.grad(logits[rows, y].sum(), inputs, retain_graph=True)
    grad_rival, = torch.autograd.grad(logits[rows, diag.rival].sum(), inputs)
    direction = (grad_rival - grad_y).flatten(1)
    moving = direction != 0
    assert moving.float().mean() > 0.9
    expected = step[:, None] * direction.sign()
    print("DeepFool step error per pixel:", float((delta - expected)[moving].abs().max()))
    assert float((delta - expected)[moving].abs().max()) <= 1e-6
    assert torch.equal(delta[~moving], torch.zeros_like(delta[~moving]))  # sign(0) = 0


# --------------------------------------------------------------------------- against PGD


@pytest.mark.parametrize("loss", ["cw", "xent"])
def test_eps_star_accuracy_is_at_most_pgd_accuracy_at_the_study_eps(digits_model, digits_batch,
                                                                   clean_correct, found, loss):
    """acc(ε) = share(ε* > ε) is an attack too: at ε = 0.1 it must be at least as strong as PGD-20
    (step 2.5 ε / 20, seeded random start). Measured on these 120 examples: ε* 63.3%, PGD 67.5%
    with either loss (gap -4.2 points)."""
    x, y = digits_batch
    eps, steps = 0.1, 20
    attacked = pgd(digits_model, x, y, eps=eps, steps=steps, step_size=2.5 * eps / steps,
                   loss=loss, seed=0)
    gap = found.accuracy(eps) - attacked.accuracy
    print(f"eps* accuracy {found.accuracy(eps):.4f}, PGD-{steps} {loss} {attacked.accuracy:.4f}, "
          f"gap {gap:+.4f}")
    assert attacked.accuracy < 0.9  # PGD does something on this natural model
    assert gap <= 0.01
    # per example: what PGD breaks at eps has eps* <= eps (measured: 37 of 37), one miss allowed
    broken = ~attacked.correct & clean_correct
    assert broken.sum() > 20
    assert int((found.eps_star[broken] > eps + 1e-6).sum()) <= 1
    assert found.accuracy(0.0) == float(clean_correct.double().mean())


# --------------------------------------------------------------------------- config and batching


@pytest.mark.parametrize("bad", [
    {"attacks": ("fmn", "nope")}, {"attacks": ("fab", "fab")}, {"attacks": ()},
    {"fmn_steps": 0}, {"fab_steps": 0}, {"fab_restarts": 0}, {"bisect_steps": 0},
    {"bisect_pgd_steps": 0}, {"batch_size": 0},
], ids=["unknown", "duplicate", "none", "fmn-steps", "fab-steps", "fab-restarts",
        "bisect-steps", "bisect-pgd-steps", "batch-size"])
def test_bad_eps_star_config_is_a_one_line_error(bad):
    with pytest.raises(EpslError) as info:
        EpsStarConfig(**bad)
    assert "\n" not in str(info.value)
    if "attacks" in bad and bad["attacks"]:
        assert ("nope" if "nope" in bad["attacks"] else "twice") in str(info.value)


BISECT = dataclasses.replace(SMALL, attacks=("fmn", "fab", "pgd-bisect"), bisect_steps=6,
                             bisect_pgd_steps=10)


@pytest.fixture(scope="module")
def bisected(digits_model, digits_batch) -> EpsStarResult:
    return find_eps_star(digits_model, *digits_batch, config=BISECT)


def test_pgd_bisect_only_adds_candidates(digits_model, digits_batch, found, bisected):
    """With pgd-bisect after the same FMN and FAB, those two give the same numbers and ε* can
    only go down; the bisection's own points lie strictly below the best ε so far (it starts
    there) and are verified like the others. Measured: 6 halvings of 10-step PGD improve 4 of
    the 120 examples (8 of 20 steps: 18)."""
    x, y = digits_batch
    more = bisected
    for name in ("fmn", "fab"):
        assert torch.equal(more.per_attack[name], found.per_attack[name])
    assert bool((more.eps_star <= found.eps_star).all())
    bisect = more.per_attack["pgd-bisect"]
    hit = torch.isfinite(bisect) & (bisect > 0)
    assert hit.any()  # the bisection is not a no-op here
    assert bool((bisect[hit] < found.eps_star[hit]).all())
    assert torch.equal(more.eps_star[hit], bisect[hit])
    assert torch.equal(more.eps_star[~hit], found.eps_star[~hit])
    assert all(more.attack[i] == "pgd-bisect" for i in hit.nonzero().flatten().tolist())
    with torch.no_grad():
        assert bool((digits_model(more.x_adv[hit]).argmax(1) != y[hit]).all())
    assert torch.allclose(linf(more.x_adv[hit], x[hit]), bisect[hit], rtol=0, atol=1e-6)
    print(f"pgd-bisect improved {int(hit.sum())} of {len(y)} examples")


def test_pgd_bisect_does_not_depend_on_batching(digits_model, digits_batch, bisected):
    """pgd-bisect draws its random starts per example (keyed by seed and position), so another
    batch size changes its ε* by floating-point rounding only, and the batch size rightly
    stays out of the settings that decide reuse. (Before, the starts were drawn per chunk and
    6 of 120 examples moved by up to 5e-3.)"""
    chunked = find_eps_star(digits_model, *digits_batch,
                                   config=dataclasses.replace(BISECT, batch_size=37))
    assert torch.equal(torch.isfinite(chunked.eps_star), torch.isfinite(bisected.eps_star))
    finite = torch.isfinite(bisected.eps_star)
    assert torch.allclose(chunked.eps_star[finite], bisected.eps_star[finite], rtol=0,
                          atol=1e-6)
    assert BISECT.reuse_settings() == dataclasses.replace(BISECT, batch_size=37).reuse_settings()
    assert "batch_size" not in EpsStarConfig().reuse_settings()


def test_batch_size_changes_eps_star_only_by_rounding(digits_model, digits_batch, found):
    """``found`` ran as one chunk (batch_size None). FMN is deterministic and FAB (one restart)
    draws nothing, but a conv over 37 examples sums in another order than one over 118, so the
    points differ in float32 rounding: measured at most 1.2e-7 (with equal finiteness), hence
    the 1e-6 tolerance."""
    x, y = digits_batch
    chunked = find_eps_star(digits_model, x, y,
                                   config=dataclasses.replace(SMALL, batch_size=37))
    assert torch.equal(torch.isinf(chunked.eps_star), torch.isinf(found.eps_star))
    finite = torch.isfinite(found.eps_star)
    assert torch.allclose(chunked.eps_star[finite], found.eps_star[finite], rtol=0, atol=1e-6)
    for name in ("fmn", "fab"):
        ours, ref = chunked.per_attack[name], found.per_attack[name]
        assert torch.equal(torch.isinf(ours), torch.isinf(ref))
        both = torch.isfinite(ours)
        assert torch.allclose(ours[both], ref[both], rtol=0, atol=1e-6)
    print("batch 37 vs one chunk, max |d eps*|:",
          float((chunked.eps_star - found.eps_star)[finite].abs().max()))


def test_progress_counts_every_attacked_example(digits_model, digits_batch, clean_correct):
    x, y = digits_batch[0][:40], digits_batch[1][:40]
    done: list[int] = []
    find_eps_star(digits_model, x, y, progress=done.append,
                         config=EpsStarConfig(fmn_steps=5, fab_steps=2, batch_size=16))
    attacked = int(clean_correct[:40].sum())
    assert sum(done) == 2 * attacked and max(done) <= 16


# --------------------------------------------------------------------------- the record


def same_card(a: dict, b: dict) -> bool:
    def same(u, v) -> bool:
        if isinstance(u, float) and isinstance(v, float) and math.isnan(u) and math.isnan(v):
            return True
        return u == pytest.approx(v, rel=1e-12, abs=0) if isinstance(u, float) else u == v
    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


def test_eps_star_record_round_trip_and_reuse(digits_checkpoint, tmp_path):
    data = DataConfig(str(digits_checkpoint), limit=60, device="cpu")
    config = EpsStarRunConfig(data, eps_star=EpsStarConfig(fab_steps=10, fmn_steps=30))
    result = run_eps_star(config)
    found = result.tensors
    result.save(tmp_path, overwrite=False)
    loaded = load(tmp_path, "eps_star")
    pd.testing.assert_frame_equal(loaded.table, result.table, check_dtype=False)
    assert same_card(loaded.summary["report_card"], result.summary["report_card"])
    # the card is what the saved columns give
    assert same_card(report_card(loaded.table["eps_l"], loaded.table["eps_star"], seed=0),
                     result.summary["report_card"])
    points = EpsStarResult.load(tmp_path)
    for name in ("x_adv", "eps_star", "pred", "label"):
        assert torch.equal(getattr(points, name), getattr(found, name)), name
    assert points.attack == found.attack and points.per_attack.keys() == found.per_attack.keys()
    assert all(torch.equal(points.per_attack[k], v) for k, v in found.per_attack.items())
    table = loaded.table
    assert len(table) == 60 and table["eps_l"].notna().all()
    assert np.array_equal(table["eps_star"].to_numpy(), found.eps_star.numpy())
    kept = (table["eps_l"] > 0) & (table["eps_star"] > 0)
    assert np.allclose(table.loc[kept, "ratio"],
                       table.loc[kept, "eps_l"] / table.loc[kept, "eps_star"])
    assert loaded.summary["eps_star_accuracy"]["0.1"] == pytest.approx(
        float((table["eps_star"] > 0.1).mean()))

    def eps_star_provenance(ev, config):
        return provenance(ev, config.reuse_settings())

    ev = data.prepare()
    same = eps_star_provenance(ev, EpsStarConfig(fab_steps=10, fmn_steps=30))
    assert reusable(tmp_path, "eps_star", same) is not None
    rebatched = eps_star_provenance(ev, EpsStarConfig(fab_steps=10, fmn_steps=30, batch_size=7))
    assert reusable(tmp_path, "eps_star", rebatched) is not None  # batching changes no number
    for other in (EpsStarConfig(fab_steps=11, fmn_steps=30),
                  EpsStarConfig(fab_steps=10, fmn_steps=30, seed=1),
                  EpsStarConfig(attacks=("fmn",), fab_steps=10, fmn_steps=30)):
        assert reusable(tmp_path, "eps_star", eps_star_provenance(ev, other)) is None
    fewer = DataConfig(str(digits_checkpoint), limit=59, device="cpu").prepare()
    assert reusable(tmp_path, "eps_star",
                    eps_star_provenance(fewer, EpsStarConfig(fab_steps=10, fmn_steps=30))) is None


# --------------------------------------------------------------------------- l2 and l1


def lp_numpy(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> np.ndarray:
    """||x_adv - x||_p per example, in numpy float64 (independent of epsl.norms)."""
    delta = x_adv.double().numpy().reshape(len(x), -1) - x.double().numpy().reshape(len(x), -1)
    return np.linalg.norm(delta, ord={"linf": np.inf, "l2": 2, "l1": 1}[norm], axis=1)


L2_SMALL = EpsStarConfig(norm="l2", fmn_steps=30, ddn_steps=30, fab_steps=10, batch_size=None)
L1_SMALL = EpsStarConfig(norm="l1", fmn_steps=30, bisect_steps=6, bisect_pgd_steps=10,
                         batch_size=None)


@pytest.fixture(scope="module")
def found_l2(digits_model, digits_batch) -> EpsStarResult:
    return find_eps_star(digits_model, *digits_batch, config=L2_SMALL)


@pytest.fixture(scope="module")
def found_l1(digits_model, digits_batch) -> EpsStarResult:
    return find_eps_star(digits_model, *digits_batch, config=L1_SMALL)


def test_l2_eps_star_is_at_most_foolbox_fmn_and_ddn_called_directly(digits_model, digits_batch,
                                                                   clean_correct, found_l2):
    """Foolbox's L2FMNAttack and DDNAttack called here on the examples the model gets right
    (one chunk, the same steps): both are deterministic, so epsl's per-attack ε equal their
    points' ℓ2 distances, and ε* is at most each, per example."""
    x, y = digits_batch[0][clean_correct], digits_batch[1][clean_correct]
    fmodel = fb.PyTorchModel(digits_model, bounds=(0.0, 1.0))
    direct = {}
    for name, attack in (("fmn", fb.attacks.L2FMNAttack(steps=L2_SMALL.fmn_steps)),
                         ("ddn", fb.attacks.DDNAttack(init_epsilon=1.0,
                                                      steps=L2_SMALL.ddn_steps))):
        _raw, points, _ = attack(fmodel, x, y, epsilons=None)
        points = points.clamp(0, 1)
        with torch.no_grad():
            wrong = (digits_model(points).argmax(1) != y).numpy()
        direct[name] = np.where(wrong, lp_numpy(points, x, "l2"), np.inf)
        assert np.isfinite(direct[name]).mean() > 0.9, name
        ours = found_l2.per_attack[name][clean_correct].numpy()
        assert np.allclose(ours, direct[name], rtol=1e-6, atol=1e-6), name
        assert bool((found_l2.eps_star[clean_correct].numpy() <= direct[name] + 1e-6).all())
    both = np.minimum(direct["fmn"], direct["ddn"])
    star = found_l2.eps_star[clean_correct].numpy()
    improved = star < both * 0.99  # what FAB adds to FMN + DDN
    print(f"l2: FAB beats FMN and DDN by > 1% on {improved.sum()} of {len(star)}")
    assert found_l2.norm == "l2" and "ddn" in set(found_l2.attack)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_every_lp_point_is_verified_in_its_own_norm(digits_model, digits_batch, clean_correct,
                                                    found_l2, found_l1, norm):
    """Every finite ε* is at a misclassified point in [0, 1] at ℓp distance ε* (recomputed
    here with numpy); misclassified examples have ε* = 0."""
    x, y = digits_batch
    found = {"l2": found_l2, "l1": found_l1}[norm]
    assert found.norm == norm
    finite = torch.isfinite(found.eps_star).numpy()
    assert finite[clean_correct.numpy()].mean() > 0.95
    with torch.no_grad():
        pred = digits_model(found.x_adv).argmax(1)
    assert torch.equal(pred, found.pred)
    assert bool((pred[finite] != y[finite]).all())
    assert float(found.x_adv.min()) >= 0.0 and float(found.x_adv.max()) <= 1.0
    assert np.allclose(lp_numpy(found.x_adv, x, norm)[finite], found.eps_star.numpy()[finite],
                       rtol=1e-9, atol=1e-9)
    assert bool((found.eps_star[~clean_correct] == 0).all())
    # an l2 distance is at least the linf one and at most sqrt(D) times it, so the two
    # ensembles' eps* must agree with that on the same examples
    if norm == "l2":
        linf_of_points = lp_numpy(found.x_adv, x, "linf")[finite]
        assert bool((found.eps_star.numpy()[finite] >= linf_of_points - 1e-9).all())


class Hyperplane(nn.Module):
    """Two classes split by the hyperplane w·x + b = 0 through the middle of the box: logits
    ±(w·x + b)/2, so the smallest ℓp flip is |w·x + b| / ||w||_q (q the dual norm)."""

    def __init__(self, pixels: int = 64, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(pixels, generator=gen))
        self.bias = nn.Parameter(torch.tensor(-0.5 * float(self.weight.detach().sum())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1) @ self.weight + self.bias
        return torch.stack([-score / 2, score / 2], 1)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_hyperplane_eps_star_is_the_closed_form_distance(norm):
    """x in [0.4, 0.6]^64 and unit-scale weights: the distance to the hyperplane is at most
    0.13 (ℓ2) / 0.31 (ℓ1, all of it on the largest weight's pixel), so the closest point stays
    well inside the box (measured: every point in [0.22, 0.82]) and the closed form is the
    minimum. Measured with the default ensembles: ℓ2 ε*/distance in [1.0001, 1.0052] (FAB's
    0.52% overshoot, DDN within 0.16% at the median); ℓ1 in [0.99999, 1.00003] where Foolbox's
    L1FMN converges (28 of 40), and 2.2x to 234x on the 12 it leaves unbroken, which only the
    PGD bisection breaks (on a grid from the whole box: ℓ1's weak spot, docs/eps-star.md).
    Nothing beats the closed form beyond float32 rounding."""
    model = Hyperplane().eval()
    gen = torch.Generator().manual_seed(1)
    n = 40
    x = (0.5 + 0.1 * (torch.rand(n, 64, generator=gen) * 2 - 1)).view(n, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    w = model.weight.detach().double().numpy()
    gap = np.abs(x.double().numpy().reshape(n, -1) @ w + float(model.bias.detach()))
    closed = gap / (np.linalg.norm(w, 2) if norm == "l2" else np.abs(w).max())
    found = find_eps_star(model, x, y, config=EpsStarConfig(norm=norm))
    ratio = found.eps_star.numpy() / closed
    print(norm, "eps*/closed form:", ratio.min(), np.median(ratio), ratio.max())
    assert np.isfinite(ratio).all()
    assert float(found.x_adv.min()) > 0.1 and float(found.x_adv.max()) < 0.9  # box inactive
    assert (ratio >= 1 - 1e-4).all()
    if norm == "l2":
        assert (ratio <= 1.006).all()
    else:
        # measured: 28 of 40 within 1e-4; FMN fails on the other 12, which the bisection
        # breaks 2.2x to 234x above the distance
        assert np.median(ratio) < 1 + 1e-4 and (ratio <= 1 + 1e-4).mean() >= 0.65


def test_lp_result_round_trip_keeps_the_norm(found_l2, tmp_path):
    found_l2.save_tensors(tmp_path)
    back = EpsStarResult.load(tmp_path)
    assert back.norm == "l2"
    assert torch.equal(back.eps_star, found_l2.eps_star) and back.attack == found_l2.attack
    assert back.subset(slice(0, 5)).norm == "l2"
    # a file written before other norms existed has no norm: it is linf
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(tmp_path / "eps_star.safetensors"))
    save_file(tensors, str(tmp_path / "eps_star.safetensors"),
              metadata={"format": "epsl.attacks.eps_star/1", "attack": '["fmn"]'})
    assert EpsStarResult.load(tmp_path).norm == "linf"


def test_linf_reuse_settings_are_those_of_before_and_other_norms_differ():
    """The study's ℓ∞ records hash as before (no norm, no DDN budget); every ℓ2/ℓ1 setting
    names its norm, so no ℓ∞ record is ever reused for them."""
    assert EpsStarConfig().reuse_settings() == {
        "attacks": ["fmn", "fab"], "fmn_steps": 100, "fab_steps": 50, "fab_restarts": 1,
        "bisect_steps": 8, "bisect_pgd_steps": 20, "seed": 0}
    assert EpsStarConfig(norm="L2").norm == "l2"
    assert EpsStarConfig(norm="l2").attacks == ("fmn", "ddn", "fab")
    assert EpsStarConfig(norm="l1").attacks == ("fmn", "pgd-bisect")
    l2 = EpsStarConfig(norm="l2").reuse_settings()
    assert l2["norm"] == "l2" and l2["ddn_steps"] == EpsStarConfig().ddn_steps
    same_attacks = EpsStarConfig(norm="l2", attacks=("fmn", "fab")).reuse_settings()
    assert same_attacks != EpsStarConfig().reuse_settings() and "ddn_steps" not in same_attacks


@pytest.mark.parametrize("bad, says", [
    ({"norm": "l1", "attacks": ("fmn", "fab")}, "in l1 choose from fmn, pgd-bisect"),
    ({"attacks": ("ddn",)}, "in linf choose from fab, fmn, pgd-bisect"),
    ({"norm": "l3"}, "norm must be one of linf, l2, l1"),
], ids=["fab-l1", "ddn-linf", "unknown-norm"])
def test_an_attack_outside_its_norm_is_a_one_line_error(bad, says):
    with pytest.raises(EpslError) as info:
        EpsStarConfig(**bad)
    assert "\n" not in str(info.value) and says in str(info.value)


def test_an_linf_result_is_not_reused_for_an_l2_request(digits_checkpoint, tmp_path):
    """ensure_eps_star decides reuse by the provenance's settings, which name the norm: an
    ℓ∞ result in the folder is recomputed for ℓ2 (and then reused for ℓ2), and ε_L beside ε*
    is that of the same norm (epsl.diagnostics.diagnose(norm=...))."""
    from epsl.runs.eps_star import ensure_eps_star

    ev = DataConfig(str(digits_checkpoint), limit=30, device="cpu").prepare()
    linf_config = EpsStarConfig(fmn_steps=10, fab_steps=5)
    l2_config = EpsStarConfig(norm="l2", fmn_steps=10, ddn_steps=10, fab_steps=5)
    diag = {n: diagnose(ev.model, ev.data.x, ev.data.y, norm=n).to_frame() for n in ("linf", "l2")}
    first, computed = ensure_eps_star(ev, tmp_path, linf_config, (0.1,), diag["linf"])
    assert computed and first.summary["norm"] == "linf"
    second, computed = ensure_eps_star(ev, tmp_path, l2_config, (0.5,), diag["l2"])
    assert computed and second.summary["norm"] == "l2"
    assert EpsStarResult.load(tmp_path).norm == "l2"
    assert np.allclose(second.table["eps_l"], diag["l2"]["eps_l"])
    assert not np.allclose(second.table["eps_l"], diag["linf"]["eps_l"])
    again, computed = ensure_eps_star(ev, tmp_path, l2_config, (0.5,), diag["l2"])
    assert not computed and again.summary["norm"] == "l2"
    with pytest.raises(EpslError, match="another norm"):
        ensure_eps_star(ev, tmp_path / "other", l2_config, (0.5,), diag["linf"])


def test_eps_star_run_config_checks_radii_in_its_norm(digits_checkpoint):
    data = DataConfig(str(digits_checkpoint), limit=20, device="cpu")
    EpsStarRunConfig(data, eps_star=EpsStarConfig(norm="l2"), eps=(0.5, 2.0))  # > 1 is fine in l2
    with pytest.raises(EpslError, match="linf"):
        EpsStarRunConfig(data, eps=(2.0,))
    result = run_eps_star(EpsStarRunConfig(
        data, eps_star=EpsStarConfig(norm="l2", fmn_steps=10, ddn_steps=10, fab_steps=5),
        eps=(0.5,)))
    assert result.summary["norm"] == "l2" and result.tensors.norm == "l2"
    eps_l = diagnose(*(lambda ev: (ev.model, ev.data.x, ev.data.y))(data.prepare()),
                     norm="l2").eps_l.double().numpy()
    assert np.allclose(result.table["eps_l"], eps_l)
