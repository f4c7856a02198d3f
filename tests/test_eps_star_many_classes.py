"""ε* at many classes (issue 23): targeted FAB over the top-k classes (``fab_targets``) against
torchattacks' FAB called directly per target, every point re-scored, a 100-class model through
the whole ensemble, untargeted FAB's memory chunks, and reuse keyed on ``fab_targets``."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torchattacks

import epsl.attacks.eps_star
from epsl.attacks.eps_star import EpsStarConfig, find_eps_star
from epsl.diagnostics import diagnose
from epsl.errors import EpslError
from epsl.models import create_model
from epsl.runs.context import DataConfig

CLASSES = 100


@pytest.fixture(scope="module")
def hundred():
    """A 100-class small-cnn on 3x8x8 (random weights, seeded) and 4 images labelled with its
    own prediction, so every example is attacked."""
    torch.manual_seed(0)
    model = create_model("small-cnn", in_channels=3, num_classes=CLASSES, input_size=8,
                         mean=(0.5,) * 3, std=(0.25,) * 3, width=8, hidden=32).eval()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def linf_if_wrong(model, x, y, x_adv):
    """||x_adv - x||_inf where the model misclassifies x_adv, +inf elsewhere (independent of
    epsl.attacks.eps_star.verify)."""
    x_adv = x_adv.clamp(0, 1)
    with torch.no_grad():
        wrong = model(x_adv).argmax(1) != y
    dist = (x_adv - x).abs().flatten(1).amax(1).double()
    return torch.where(wrong, dist, torch.full_like(dist, math.inf))


def test_targeted_fab_is_torchattacks_fab_per_target_and_every_point_is_real(hundred):
    """fab_targets=k is, per example, the smallest verified point of torchattacks' targeted
    FAB run toward each of the k wrong classes with the highest clean logits; the point kept is
    misclassified and its distance is ε*."""
    model, x, y = hundred
    k, steps = 3, 5
    found = find_eps_star(model, x, y, config=EpsStarConfig(
        attacks=("fab",), fab_steps=steps, fab_targets=k, batch_size=None))
    with torch.no_grad():
        logits = model(x)
    logits[torch.arange(len(y)), y] = -math.inf
    ranked = logits.argsort(1, descending=True)
    reference = torch.full((len(y),), math.inf, dtype=torch.float64)
    for rank in range(k):
        attack = torchattacks.FAB(model, norm="Linf", eps=1.0, steps=steps, n_restarts=1,
                                  seed=0, n_classes=CLASSES)
        attack.set_mode_targeted_by_function(lambda inputs, labels, r=rank: ranked[:, r],
                                             quiet=True)
        torch.manual_seed(0)
        reference = torch.minimum(reference, linf_if_wrong(model, x, y, attack(x, y)))
    assert torch.isfinite(reference).all()
    assert torch.allclose(found.eps_star, reference, rtol=1e-5, atol=1e-7)
    assert torch.equal(linf_if_wrong(model, x, y, found.x_adv), found.eps_star)
    assert (found.pred != y).all()


def test_hundred_classes_run_the_whole_ensemble(hundred):
    """The default ℓ∞ ensemble (FMN + FAB over the top 3) at 100 classes: every ε* is a real
    misclassified point at that distance and the smallest of the members' (untargeted FAB at
    100 classes: the next test)."""
    model, x, y = hundred
    found = find_eps_star(model, x, y, config=EpsStarConfig(
        fmn_steps=10, fab_steps=5, fab_targets=3))
    assert set(found.per_attack) == {"fmn", "fab"}
    assert torch.isfinite(found.eps_star).all() and (found.eps_star > 0).all()
    assert torch.equal(linf_if_wrong(model, x, y, found.x_adv), found.eps_star)
    members = torch.stack(list(found.per_attack.values()))
    assert torch.equal(found.eps_star, members.min(0).values)


def test_untargeted_fab_in_memory_chunks_equals_one_call(hundred, monkeypatch):
    """Untargeted FAB cut into calls of one example (a tiny FAB_JACOBIAN_FLOATS) gives what
    one torchattacks call on the whole batch gives."""
    model, x, y = hundred
    x, y = x[:2], y[:2]
    config = EpsStarConfig(attacks=("fab",), fab_steps=3, batch_size=None)
    monkeypatch.setattr(epsl.attacks.eps_star, "FAB_JACOBIAN_FLOATS", 1)
    chunked = find_eps_star(model, x, y, config=config)
    attack = torchattacks.FAB(model, norm="Linf", eps=1.0, steps=3, n_restarts=1, seed=0,
                              n_classes=CLASSES)
    whole = linf_if_wrong(model, x, y, attack(x, y))
    assert torch.allclose(chunked.eps_star, whole, rtol=1e-5, atol=1e-7)


def test_reuse_settings_name_fab_targets_only_when_set():
    plain = EpsStarConfig().reuse_settings()
    assert "fab_targets" not in plain
    top3 = EpsStarConfig(fab_targets=3).reuse_settings()
    assert top3["fab_targets"] == 3 and top3 != plain
    assert top3 != EpsStarConfig(fab_targets=9).reuse_settings()
    assert "fab_targets" not in EpsStarConfig(attacks=("fmn",), fab_targets=3).reuse_settings()


@pytest.mark.parametrize("bad, says", [
    ({"fab_targets": 0}, "fab_targets must be at least 1"),
    ({"fab_targets": 3, "fab_restarts": 2}, "needs fab_restarts=1"),
], ids=["zero", "restarts"])
def test_bad_fab_targets_is_a_one_line_error(bad, says):
    with pytest.raises(EpslError) as info:
        EpsStarConfig(**bad)
    assert "\n" not in str(info.value) and says in str(info.value)


def test_a_targeted_result_is_not_reused_for_an_untargeted_request(digits_checkpoint, tmp_path):
    """ensure_eps_star decides reuse by the provenance's settings: an untargeted ε* in the
    folder is recomputed for fab_targets=2, which is then reused for fab_targets=2 only."""
    from epsl.runs.eps_star import ensure_eps_star

    ev = DataConfig(str(digits_checkpoint), limit=20, device="cpu").prepare()
    diag = diagnose(ev.model, ev.data.x, ev.data.y).to_frame()
    untargeted = EpsStarConfig(fmn_steps=5, fab_steps=3)
    targeted = EpsStarConfig(fmn_steps=5, fab_steps=3, fab_targets=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        _, computed = ensure_eps_star(ev, tmp_path, untargeted, (0.1,), diag)
        assert computed
        _, computed = ensure_eps_star(ev, tmp_path, targeted, (0.1,), diag)
        assert computed
        _, computed = ensure_eps_star(ev, tmp_path, targeted, (0.1,), diag)
        assert not computed
        _, computed = ensure_eps_star(ev, tmp_path, untargeted, (0.1,), diag)
        assert computed


def test_the_audit_keeps_fab_targets_in_another_norm():
    from epsl.attacks.audit import ensemble_in

    assert ensemble_in(EpsStarConfig(fab_targets=9), "l2") == EpsStarConfig(norm="l2",
                                                                            fab_targets=9)
    assert ensemble_in(EpsStarConfig(), "l2") == EpsStarConfig(norm="l2")
