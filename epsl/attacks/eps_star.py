"""ε*: the smallest ℓp perturbation (ℓ∞, ℓ2 or ℓ1) that really flips each example, found by an
ensemble of minimum-norm attacks, to check Eq. 4's ε_L example by example.

Eq. 4 predicts, per example, the smallest perturbation that flips it *if the logits were
linear*. The truth is the smallest perturbation that flips it in the network; no attack finds it
exactly, so epsl takes, per example, the smallest verified perturbation found by several
minimum-norm attacks, each in the norm of :attr:`EpsStarConfig.norm`:

============== =================================== ================================ ===========
name           ℓ∞                                  ℓ2                               ℓ1
============== =================================== ================================ ===========
``fmn``        Foolbox ``LInfFMNAttack``           Foolbox ``L2FMNAttack``          ``L1FMNAttack``
``fab``        torchattacks ``FAB(norm="Linf")``   ``FAB(norm="L2")``               (refused¹)
``ddn``        --                                  Foolbox ``DDNAttack``            --
``pgd-bisect`` epsl's PGD bisection (optional)     the same, ℓ2 steps               ℓ1 steps
============== =================================== ================================ ===========

- ``fmn``: fast minimum-norm (Pintor et al. 2021, https://arxiv.org/abs/2102.12827);
- ``fab``: FAB (Croce & Hein 2020, https://arxiv.org/abs/1907.02044), run with ``eps`` = the
  whole box (:func:`epsl.norms.max_radius`) so that it returns its best point;
- ``ddn``: decoupled direction and norm (Rony et al. 2019, https://arxiv.org/abs/1811.09600),
  Foolbox's defaults (``init_epsilon=1``, ``gamma=0.05``);
- ``pgd-bisect`` (optional): epsl's own per-example bisection over ε with PGD on the CW loss
  in the norm (:func:`epsl.attacks.sign_steps`), started below the ensemble's best ε.

¹ torchattacks 3.5.1's ``FAB(norm="L1")`` fails on every call (``perturb`` measures its result
only for ℓ∞ and ℓ2: ``UnboundLocalError: res``), so ``fab`` is refused for ℓ1.

Every returned point is re-scored here, never taken from an attack's report: it is clipped to
[0, 1]^d (which never moves it further from x in any ℓp norm), the model is run on it, and it
counts only if the model misclassifies it; ε* is then ``||x_adv - x||_p`` of that point
(:func:`epsl.norms.distance`). An example that is
already misclassified has ε* = 0 (attack ``clean``); one that no attack flips within the box has
ε* = +inf (attack ``""``). ε* is therefore an upper bound of the true minimal perturbation,
and the robust accuracy ``acc(ε) = share(ε* > ε)`` it gives at every ε at once is an upper
bound of the true robust accuracy. The result, :class:`EpsStarResult` with its tensors file,
is defined in :mod:`epsl.attacks.eps_star_result` and importable from here.

Example::

    >>> from epsl.attacks.eps_star import find_eps_star
    >>> found = find_eps_star(model, x, y)          # x: N x C x H x W in [0, 1]
    >>> found.eps_star, found.accuracy(0.1), found.to_frame().head()
    >>> in_l2 = find_eps_star(model, x, y, config=EpsStarConfig(norm="l2"))
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from epsl.attacks.eps_star_result import EpsStarResult
from epsl.attacks.library import require_torchattacks
from epsl.attacks.projected_gradient import sign_steps
from epsl.attacks.threat import batch_slices, check_attack_inputs, project
from epsl.distributed import agree, shard_map
from epsl.errors import EpslError, check_seed
from epsl.modes import eval_mode
from epsl.norms import Norm, distance, max_radius, parse_norm
from epsl.registry import Registry

__all__ = ["DEFAULT_ATTACKS", "MIN_NORM_ATTACKS", "EpsStarAttackSpec", "EpsStarConfig",
           "EpsStarResult", "find_eps_star", "check_eps_star_dependencies",
           "require_foolbox", "verify"]

Progress = Callable[[int], None]


#: The ensemble run when ``EpsStarConfig.attacks`` is not given, per norm (docs/eps-star.md).
DEFAULT_ATTACKS: dict[Norm, tuple[str, ...]] = {
    Norm.LINF: ("fmn", "fab"),
    Norm.L2: ("fmn", "ddn", "fab"),
    Norm.L1: ("fmn", "pgd-bisect"),  # FMN alone leaves 4-24% unbroken in l1 (eps-star.md)
}


@dataclass(frozen=True)
class EpsStarConfig:
    """Which minimum-norm attacks make the ensemble, in which norm, and their budgets.

    The defaults were chosen by measurement on the digits study (docs/eps-star.md): in ℓ∞,
    FMN at 100 steps and FAB at 50 steps each find the ensemble's best point on about 75-85% of
    the examples, so neither alone suffices; more steps changed the ensemble's ε* by less than
    1%. In ℓ2, FMN + DDN 100 + FAB 50 is within 1% of a large reference on 99-100% of the
    examples; in ℓ1, FMN + the PGD bisection on 76-89% (docs/eps-star.md).

    Attributes:
        attacks: names in :data:`MIN_NORM_ATTACKS`, run in this order; None (the default) is
            :data:`DEFAULT_ATTACKS` of ``norm``, resolved here, so ``config.attacks`` is always
            the tuple that runs. (``dataclasses.replace(config, norm=...)`` keeps the attacks
            already resolved: pass ``attacks=None`` too for the other norm's default.)
        norm: ``linf``, ``l2`` or ``l1`` (:func:`epsl.norms.parse_norm`; stored canonical).
        fmn_steps: steps of Foolbox's FMN attack of the norm.
        fab_steps, fab_restarts: FAB's steps and restarts (torchattacks).
        fab_targets: None (the default): untargeted FAB, which linearises every class at every
            step (one backward pass per class, and a K x N x D Jacobian in memory: see
            :data:`FAB_JACOBIAN_FLOATS`). k: targeted FAB, run once toward each of the k
            wrong classes with the highest clean logits (fewer if the model has fewer), the
            per-example smallest verified point kept: k backward passes per step instead of
            K, the remedy at 100 or 1000 classes (measured in docs/benchmarks.md, Many classes).
            Not with ``fab_restarts`` > 1 (torchattacks 3.5.1's targeted FAB gives the
            targets to the wrong examples after the first restart).
        ddn_steps: steps of Foolbox's DDNAttack (ℓ2 only).
        bisect_steps: halvings of the interval of ``pgd-bisect``.
        bisect_pgd_steps: PGD steps (CW loss, random start) at each ε of the bisection.
        seed: seeds FAB's and PGD's random draws (FMN and DDN are deterministic).
        batch_size: examples per attack call (None: all at once).
    """

    attacks: tuple[str, ...] | None = None
    fmn_steps: int = 100
    fab_steps: int = 50
    fab_restarts: int = 1
    bisect_steps: int = 8
    bisect_pgd_steps: int = 20
    seed: int = 0
    batch_size: int | None = 256
    norm: str = "linf"
    ddn_steps: int = 100
    fab_targets: int | None = None

    def __post_init__(self) -> None:
        norm = parse_norm(self.norm)
        object.__setattr__(self, "norm", norm.value)
        if self.attacks is None:
            object.__setattr__(self, "attacks", DEFAULT_ATTACKS[norm])
        assert self.attacks is not None
        object.__setattr__(self, "attacks", tuple(self.attacks))
        if not self.attacks:
            raise EpslError("the minimum-norm ensemble needs at least one attack")
        for name in self.attacks:
            spec = MIN_NORM_ATTACKS[name]  # an unknown name fails here, with the known ones
            if norm not in spec.norms:
                able = ", ".join(n for n in MIN_NORM_ATTACKS if norm in MIN_NORM_ATTACKS[n].norms)
                raise EpslError(f"the minimum-norm attack {name} does not run in {norm.value} "
                                f"({spec.why_not or 'not implemented'}); in {norm.value} "
                                f"choose from {able}")
        if len(set(self.attacks)) != len(self.attacks):
            raise EpslError(f"an attack is named twice in {', '.join(self.attacks)}")
        for name in ("fmn_steps", "fab_steps", "fab_restarts", "ddn_steps", "bisect_steps",
                     "bisect_pgd_steps"):
            if getattr(self, name) < 1:
                raise EpslError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.batch_size is not None and self.batch_size < 1:
            raise EpslError(f"batch_size must be at least 1 (got {self.batch_size})")
        check_seed(self.seed)
        if self.fab_targets is not None:
            if self.fab_targets < 1:
                raise EpslError(f"fab_targets must be at least 1, or None for untargeted FAB "
                                f"(got {self.fab_targets})")
            if self.fab_restarts > 1:
                raise EpslError(f"fab_targets ({self.fab_targets}) needs fab_restarts=1 "
                                f"(got {self.fab_restarts}): torchattacks 3.5.1's targeted FAB "
                                "gives the targets to the wrong examples after the first "
                                "restart")

    def reuse_settings(self) -> dict[str, Any]:
        """What decides whether a saved ε* can be reused: not the batch size, which changes the
        numbers by floating-point order only (the bisection's random starts are drawn per
        example, not per chunk), unless FAB runs restarts, whose random starts are drawn per
        batch. ``norm`` is named only when it is not ``linf`` and ``ddn_steps`` only when DDN
        runs, so that ℓ∞ settings, and the records made before other norms existed (all
        ℓ∞), hash exactly as they did; an ℓ2 or ℓ1 setting always differs from every ℓ∞ one.
        ``fab_targets`` is named only when it is set and FAB runs, so untargeted settings hash
        as before and a targeted result is never reused for an untargeted request."""
        keep_batch = self.fab_restarts > 1 and "fab" in (self.attacks or ())  # FAB's restarts
        drop = {"batch_size"} - ({"batch_size"} if keep_batch else set())      # draw per batch
        if self.norm == Norm.LINF.value:
            drop.add("norm")
        if "ddn" not in (self.attacks or ()):
            drop.add("ddn_steps")
        if self.fab_targets is None or "fab" not in (self.attacks or ()):
            drop.add("fab_targets")
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items() if k not in drop}


# --------------------------------------------------------------------------- verification


def verify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, *,
           batch_size: int | None = None, norm: str | Norm = "linf"
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-score points an attack returned: clip them to [0, 1] (never further from x, which is
    in the box, in any ℓp norm), run the model, and measure ``||x_adv - x||_p`` in ``norm``
    from the point (:func:`epsl.norms.distance`, float64).

    Returns ``(x_adv, eps, pred)``: the clipped points, their distance per example (+inf where
    the model still classifies the point right) and the prediction there.
    """
    x_adv = x_adv.detach().to(x.device, x.dtype).clamp(0.0, 1.0)
    preds = []
    with eval_mode(model), torch.no_grad():
        for part in batch_slices(len(y), batch_size):
            preds.append(model(x_adv[part]).argmax(1))
    pred = torch.cat(preds) if preds else y.clone()
    dist = distance(x_adv, x, norm)
    eps = torch.where(pred != y, dist, torch.full_like(dist, math.inf))
    return x_adv, eps, pred


# --------------------------------------------------------------------------- the attacks

#: ``fn(model, x, y, config, best, index) -> x_adv`` on examples the model classifies right,
#: in ``config.norm``; ``best`` is the ensemble's verified ε so far (+inf where nothing was
#: found yet) and ``index`` the examples' positions in the whole batch (for per-example random
#: draws).
EpsStarAttack = Callable[[nn.Module, torch.Tensor, torch.Tensor, EpsStarConfig, torch.Tensor,
                          torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EpsStarAttackSpec:
    """A member of the ensemble: how it runs, the norms it runs in, why not in the others (for
    the one-line error) and the library it needs (``foolbox``, ``torchattacks`` or None)."""

    run: EpsStarAttack
    norms: tuple[Norm, ...]
    library: str | None = None
    why_not: str = ""


MIN_NORM_ATTACKS: Registry[EpsStarAttackSpec] = Registry("minimum-norm attack")


def _member(name: str, *, norms: tuple[Norm, ...], library: str | None = None,
            why_not: str = "") -> Callable[[EpsStarAttack], EpsStarAttack]:
    """Register ``fn`` in :data:`MIN_NORM_ATTACKS` as ``name``, running in ``norms``."""
    def decorator(fn: EpsStarAttack) -> EpsStarAttack:
        MIN_NORM_ATTACKS.register(name)(EpsStarAttackSpec(fn, norms, library, why_not))
        return fn
    return decorator


def require_foolbox(what: str = "the minimum-norm attack FMN needs") -> Any:
    """The foolbox module, or a one-line :class:`EpslError` naming the install command."""
    try:
        with warnings.catch_warnings():  # foolbox 3.3 imports a deprecated scipy namespace
            warnings.simplefilter("ignore", DeprecationWarning)
            import foolbox
    except ImportError:
        raise EpslError(f"{what} foolbox, which is missing from this environment: "
                        "pip install foolbox (or reinstall epsl)") from None
    return foolbox


#: Foolbox's FMN class per norm
_FMN_CLASS = {Norm.LINF: "LInfFMNAttack", Norm.L2: "L2FMNAttack", Norm.L1: "L1FMNAttack"}


@_member("fmn", norms=(Norm.LINF, Norm.L2, Norm.L1), library="foolbox")
def _fmn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: EpsStarConfig,
         best: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    fb = require_foolbox()
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
    attack = getattr(fb.attacks, _FMN_CLASS[parse_norm(config.norm)])(steps=config.fmn_steps)
    _raw, clipped, _success = attack(fmodel, x, y, epsilons=None)
    return clipped


@_member("ddn", norms=(Norm.L2,), library="foolbox",
         why_not="DDN is an l2 attack")
def _ddn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: EpsStarConfig,
         best: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    fb = require_foolbox("the minimum-norm attack DDN needs")
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
    attack = fb.attacks.DDNAttack(init_epsilon=1.0, steps=config.ddn_steps)
    _raw, clipped, _success = attack(fmodel, x, y, epsilons=None)
    return clipped


#: torchattacks' name of each norm FAB runs in (its L1 fails in 3.5.1: module docstring)
_FAB_NORM = {Norm.LINF: "Linf", Norm.L2: "L2"}

#: Floats of one copy of untargeted FAB's Jacobian (classes x examples x D) per call:
#: torchattacks holds about three such copies at once, so 2^25 floats (128 MiB) bound a call
#: to about 0.4 GiB. Chunks are cut to fit (at least one example each); the study's 10-class
#: models never reach it at 256 examples, CIFAR-100 runs about 100 examples per call and a
#: 1000-class ImageNet model one (0.6 GiB a copy, ~1.8 GiB at peak).
FAB_JACOBIAN_FLOATS = 2**25


@_member("fab", norms=(Norm.LINF, Norm.L2), library="torchattacks",
         why_not="torchattacks 3.5.1's FAB fails in l1")
def _fab(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: EpsStarConfig,
         best: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    ta = require_torchattacks("the minimum-norm attack FAB needs")
    norm = parse_norm(config.norm)
    with torch.no_grad():
        logits = model(x)
    classes, dim = int(logits.shape[1]), int(x[0].numel())
    # eps is the whole box (1 in linf, as before), so that FAB returns its best point
    settings = {"norm": _FAB_NORM[norm], "eps": max_radius(norm, dim),
                "steps": config.fab_steps, "n_restarts": config.fab_restarts,
                "seed": config.seed, "n_classes": classes}
    if config.fab_targets is None:
        per_call = max(1, FAB_JACOBIAN_FLOATS // (classes * dim))
        attack = ta.FAB(model, **settings)
        return torch.cat([attack(x[part], y[part]) for part in batch_slices(len(y), per_call)])
    return _fab_targeted(ta, model, x, y, logits, settings, config)


def _fab_targeted(ta: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  logits: torch.Tensor, settings: dict[str, Any],
                  config: EpsStarConfig) -> torch.Tensor:
    """Targeted FAB toward each of the ``config.fab_targets`` wrong classes with the highest
    clean logits, one torchattacks call per rank; per example, the smallest verified point.

    Not torchattacks' ``multi_targeted=True``: with ``eps`` the whole box it stops at the first
    target that succeeds (an example leaves its loop once broken within eps), which is the
    runner-up class only, not the minimum over the k targets."""
    assert config.fab_targets is not None
    norm = parse_norm(config.norm)
    rivals = logits.detach().clone()
    rivals[torch.arange(len(y)), y] = -math.inf
    ranked = rivals.argsort(1, descending=True)[:, :min(config.fab_targets, rivals.shape[1] - 1)]
    found, found_eps = x.clone(), torch.full((len(y),), math.inf, dtype=torch.float64,
                                             device=x.device)
    for rank in range(ranked.shape[1]):
        target = ranked[:, rank]

        def targets(inputs: torch.Tensor, labels: torch.Tensor,
                    target: torch.Tensor = target) -> torch.Tensor:
            # torchattacks indexes these by position among the examples it attacks (those it
            # classifies right), not among its inputs: put those first, so each keeps its own
            with torch.no_grad():
                right = model(inputs).argmax(1) == labels
            return torch.cat([target[right], target[~right]])

        attack = ta.FAB(model, **settings)
        attack.set_mode_targeted_by_function(targets, quiet=True)
        point, eps, _pred = verify(model, x, y, attack(x, y), batch_size=config.batch_size,
                                   norm=norm)
        better = eps < found_eps
        found[better], found_eps[better] = point[better], eps[better]
    return found


def _example_noise(index: torch.Tensor, shape: tuple[int, ...], draws: int, seed: int
                   ) -> torch.Tensor:
    """Uniform noise in [-1, 1], ``draws`` per example (len(index) x draws x shape), drawn from a
    generator keyed by (seed, the example's position): the same whatever the batching."""
    noise = torch.empty((len(index), draws, *shape))
    for row, position in enumerate(index.tolist()):
        key = int(np.random.SeedSequence([seed, position]).generate_state(1, np.uint64)[0])
        generator = torch.Generator(device="cpu").manual_seed(key)
        noise[row] = torch.rand((draws, *shape), generator=generator)
    return noise * 2 - 1


@_member("pgd-bisect", norms=(Norm.LINF, Norm.L2, Norm.L1))
def _pgd_bisect(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: EpsStarConfig,
                best: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per-example bisection of ε in [0, min(best, the whole box)] with PGD in ``config.norm``
    (CW loss, random start keyed by seed and example, projected onto the ε-ball): the interval
    halves ``bisect_steps`` times, moving down where PGD breaks the example."""
    norm = parse_norm(config.norm)
    n = len(y)
    shape = (n,) + (1,) * (x.ndim - 1)
    low = torch.zeros(n, device=x.device, dtype=x.dtype)
    high = best.to(x.device, x.dtype).clamp(max=max_radius(norm, int(x[0].numel())))
    found = x.clone()
    draws = _example_noise(index, tuple(x.shape[1:]), config.bisect_steps, config.seed)
    k = config.bisect_pgd_steps
    for step in range(config.bisect_steps):
        mid = ((low + high) / 2).view(shape)
        noise = draws[:, step].to(x.device, x.dtype)
        if norm is Norm.LINF:  # as it always was, bit for bit
            start = torch.minimum(torch.maximum(x + noise * mid, x - mid), x + mid).clamp(0, 1)
        else:  # the cube's noise projected onto the ball (then the box)
            start = project(x + noise * mid, x, mid, norm)
        x_adv = sign_steps(model, x, y, start=start, eps=mid, step_size=2.5 * mid / k, steps=k,
                           loss="cw", norm=norm)
        with torch.no_grad():
            broken = model(x_adv).argmax(1) != y
        found = torch.where(broken.view(shape), x_adv, found)
        high = torch.where(broken, mid.view(n), high)
        low = torch.where(broken, low, mid.view(n))
    return found


# --------------------------------------------------------------------------- the ensemble


def check_eps_star_dependencies(config: EpsStarConfig) -> None:
    """Fail in one line, before any work, when a library an attack of ``config`` needs is
    missing (FMN, DDN: foolbox; FAB: torchattacks)."""
    assert config.attacks is not None
    for name in config.attacks:
        library = MIN_NORM_ATTACKS[name].library
        if library == "foolbox":
            require_foolbox(f"the minimum-norm attack {name.upper()} needs")
        elif library == "torchattacks":
            require_torchattacks(f"the minimum-norm attack {name.upper()} needs")


def find_eps_star(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                         config: EpsStarConfig | None = None,
                         progress: Progress | None = None) -> EpsStarResult:
    """ε* per example: the smallest verified perturbation in ``config.norm`` (ℓ∞ by default)
    within [0, 1]^d that any attack of ``config.attacks`` finds (module docstring).

    Args:
        model: classifier on N x C x H x W pixels in [0, 1] returning logits (run in eval mode
            with its parameters frozen).
        x: N x C x H x W inputs in [0, 1]; y: (N,) labels.
        config: the ensemble, its norm and its budgets (default :class:`EpsStarConfig`: ℓ∞).
        progress: called with the number of examples finished after each chunk of each attack.

    Returns:
        :class:`EpsStarResult` on x's examples, on the model's device.
    """
    config = config or EpsStarConfig()
    check_eps_star_dependencies(config)
    x, y = check_attack_inputs(model, x, y, 1.0)
    n = len(y)
    with eval_mode(model):
        x_best, _, pred = verify(model, x, y, x, batch_size=config.batch_size, norm=config.norm)
        correct = pred == y
        eps_star = torch.where(correct, torch.full((n,), math.inf, dtype=torch.float64,
                                                   device=x.device),
                               torch.zeros(n, dtype=torch.float64, device=x.device))
        attack = ["" if ok else "clean" for ok in correct.tolist()]
        todo = agree(correct.nonzero().squeeze(1))  # one decision for every process
        per_attack: dict[str, torch.Tensor] = {}
        seconds: dict[str, float] = {}
        devices = [x.device] if x.device.type == "cuda" else []
        assert config.attacks is not None  # resolved by EpsStarConfig
        for name in config.attacks:
            run = MIN_NORM_ATTACKS[name].run
            own = torch.where(correct, torch.full_like(eps_star, math.inf),
                              torch.zeros_like(eps_star))
            start = time.perf_counter()

            def one_chunk(part: slice, run: EpsStarAttack = run) -> tuple[torch.Tensor, ...]:
                idx = todo[part]
                # torchattacks and Foolbox draw from (and reseed) torch's global generators:
                # seeded per chunk, a chunk's result does not depend on the chunks before it,
                # nor on the process that runs it under torchrun (epsl.distributed)
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(config.seed)
                    made = run(model, x[idx], y[idx], config, eps_star[idx], idx)
                return verify(model, x[idx], y[idx], made, batch_size=config.batch_size,
                              norm=config.norm)

            chunks = batch_slices(todo.numel(), config.batch_size)
            results = shard_map(one_chunk, chunks, progress=progress,
                                sizes=[len(range(n)[part]) for part in chunks])
            for part, (point, dist, at) in zip(chunks, results, strict=True):
                point, dist, at = point.to(x.device), dist.to(x.device), at.to(x.device)
                idx = todo[part]
                own[idx] = dist
                better = dist < eps_star[idx]
                take = idx[better]
                eps_star[take] = dist[better]
                x_best[take] = point[better]
                pred[take] = at[better]
                for i in take.tolist():
                    attack[i] = name
            seconds[name] = round(time.perf_counter() - start, 3)
            per_attack[name] = own
    return EpsStarResult(x_best, eps_star, tuple(attack), pred, y, per_attack, seconds,
                         norm=config.norm)
