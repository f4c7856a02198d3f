"""What the attack tests share: a tiny seeded model and data, the clean predictions, and the
reference libraries' PGD (torchattacks and Foolbox) with the spread allowed against them."""

from __future__ import annotations

import warnings

import torch
import torchattacks
from torch import nn

with warnings.catch_warnings():  # foolbox 3.3 imports a deprecated scipy namespace
    warnings.simplefilter("ignore", DeprecationWarning)
    import foolbox as fb

#: How much a reference library's robust accuracy on one seed may lie below epsl's without
#: epsl being the weaker attack. Over seeds 0-4, the robust accuracy of PGD-20 from a random
#: start has a standard deviation of at most 0.9 points for torchattacks (PGD, PGDL2) and
#: Foolbox (LinfPGD, L2PGD) on two digits models, l_inf and l2
#: (``python benchmarks/attack_strength.py``, docs/attacks.md); rounded up to one point. From x
#: both attacks are deterministic and measured equal; the same point absorbs the few examples
#: whose margin lies within float rounding of 0, which differs from one CPU to another.
SEED_SPREAD = 0.01

#: the reference libraries' PGD per norm
_TORCHATTACKS_PGD = {"linf": torchattacks.PGD, "l2": torchattacks.PGDL2}
_FOOLBOX_PGD = {"linf": fb.attacks.LinfPGD, "l2": fb.attacks.L2PGD}


def tiny_model(seed: int = 0, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, classes)).eval()


def tiny_data(seed: int, n: int, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=gen), torch.randint(0, classes, (n,), generator=gen)


def clean_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def reference_pgd(library: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                  norm: str, eps: float, step_size: float, steps: int,
                  random_start: bool) -> torch.Tensor:
    """torchattacks' PGD (linf) or PGDL2 (l2), or Foolbox's LinfPGD or L2PGD, each with its
    own random start: the adversarial examples."""
    if library == "torchattacks":
        return _TORCHATTACKS_PGD[norm](model, eps=eps, alpha=step_size, steps=steps,
                                       random_start=random_start)(x, y)
    attack = _FOOLBOX_PGD[norm](abs_stepsize=step_size, steps=steps, random_start=random_start)
    return attack(fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=eps)[1]
