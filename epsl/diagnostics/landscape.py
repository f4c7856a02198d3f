"""Input-space cross-entropy landscapes around single images (Figure 5 and Figure 9).

For each image x_i the loss is evaluated at x_i + eps1 * r1 + eps2 * d2 over a square grid,
r1 a Rademacher direction (+-1 per pixel) and d2 either a second Rademacher direction
(``"random"``, Figure 5) or the FGSM direction sign(grad_x xent(x_i)) (``"adversarial"``,
Figure 9). eps1 and eps2 are in pixel units on the [0, 1] scale: the paper's "-10 <= eps <= 10"
on 0..255 images is ``span=10/255``. Perturbed images are *not* clipped to [0, 1], as in the
paper, so the landscape is that of the model, not of the box.

Memory is bounded as for the diagnostics (:func:`epsl.diagnostics.jacobians.memory_budget`):
the grid is evaluated in chunks of points that fit the budget, and a grid whose table (one row
per image and point) would not fit is refused in one line before any work.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from epsl.attacks import input_gradient
from epsl.device import model_device
from epsl.diagnostics.jacobians import activation_bytes, format_bytes, memory_budget, parse_memory
from epsl.errors import EpslError, check_seed
from epsl.modes import eval_mode

DIRECTIONS = ("random", "adversarial")
#: bytes per row of the landscape table (image, index, label, direction, eps1, eps2, loss:
#: seven 8-byte columns), twice over: the per-image frames and their concatenation
TABLE_ROW_BYTES = 2 * 7 * 8


def _rademacher(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).float() * 2 - 1


def check_table_fits(images: int, steps: int, budget: int) -> None:
    """One-line :class:`EpslError` unless the table of ``images`` landscapes on a ``steps`` x
    ``steps`` grid (:data:`TABLE_ROW_BYTES` per row, and the grid itself) fits ``budget``
    bytes, naming the size needed and the most steps that fit."""
    need = images * steps**2 * TABLE_ROW_BYTES + steps**2 * 2 * 8
    if need <= budget:
        return
    fit = int(math.isqrt(max(budget - 1, 0) // (images * TABLE_ROW_BYTES + 16)))
    lower = f"steps={fit} (the most that fit) or fewer images=N" if fit >= 2 else\
        "fewer images=N"
    raise EpslError(f"a landscape of {images} image{'s' if images != 1 else ''} on a {steps} x "
                    f"{steps} grid is a table of "
                    f"{images * steps**2:,} rows, about {format_bytes(need)}, more than the "
                    f"memory budget of {format_bytes(budget)}: pass {lower}, or memory=SIZE "
                    f"of at least {format_bytes(need)}")


def grid_chunk(model: nn.Module, x1: torch.Tensor, batch_size: int, budget: int) -> int:
    """Grid points per forward pass: at most ``batch_size``, as many as fit ``budget`` bytes
    (per point the perturbed image three times over, for its temporaries, and the leaf-module
    outputs of one example, :func:`~epsl.diagnostics.jacobians.activation_bytes`); a budget
    too small for one point is refused in one line naming the size needed."""
    leaf_bytes, _ = activation_bytes(model, x1)
    per_point = leaf_bytes + 3 * x1[0].numel() * x1.element_size()
    if budget < per_point:
        raise EpslError(f"memory budget {format_bytes(budget)} is too small for one grid point "
                        f"of this model (it needs about {format_bytes(per_point)}); raise "
                        f"memory=SIZE to at least {format_bytes(per_point)}")
    return int(max(1, min(batch_size, budget // per_point)))


def loss_landscape(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                   direction: str = "random", span: float = 10 / 255, steps: int = 41,
                   seed: int = 0, batch_size: int = 512, index: torch.Tensor | None = None,
                   memory: int | str | None = None) -> pd.DataFrame:
    """Cross-entropy of ``model`` on a steps x steps grid around each image.

    Args:
        x: N x C x H x W pixels in [0, 1] (the images to plot); y: (N,) labels.
        direction: ``"random"`` (d2 Rademacher) or ``"adversarial"`` (d2 = sign(grad xent)).
        span: the grid covers -span..span on both axes, in pixel units ([0, 1] scale).
        steps: grid points per axis (41 puts 0 in the middle).
        seed: seeds the Rademacher directions (drawn on the CPU, one pair per image, in order).
        batch_size: grid points per forward pass, at most (fewer where ``memory`` needs).
        index: (N,) example indices to report (default ``0..N-1``).
        memory: bytes the forward passes may use (``"2GiB"``, ``"512MB"`` or an int; default
            :func:`~epsl.diagnostics.jacobians.memory_budget` of the model's device); the
            table, held on the CPU, must fit it too (default: the CPU's budget). A grid that
            does not fit is refused in one line (:func:`check_table_fits`) before any work.

    Returns:
        A long DataFrame, ``N * steps**2`` rows: ``image, index, label, direction, eps1, eps2,
        loss`` (image is the position in x; loss is the per-example cross-entropy).
    """
    if direction not in DIRECTIONS:
        raise EpslError(f"unknown direction {direction!r}; choose from {', '.join(DIRECTIONS)}")
    if not span > 0:
        raise EpslError(f"span must be positive (got {span})")
    if steps < 2:
        raise EpslError(f"steps must be at least 2 (got {steps})")
    if len(x) == 0 or len(x) != len(y):
        raise EpslError(f"x ({tuple(x.shape)}) and y ({tuple(y.shape)}) must be N x ... and N")
    check_seed(seed)
    budget = parse_memory(memory)
    check_table_fits(len(x), steps, budget or memory_budget(torch.device("cpu")))
    dev = model_device(model)
    index = torch.arange(len(x)) if index is None else index
    generator = torch.Generator().manual_seed(seed)
    grid = torch.linspace(-span, span, steps, dtype=torch.float64)
    eps1, eps2 = torch.meshgrid(grid, grid, indexing="ij")
    eps1, eps2 = eps1.flatten(), eps2.flatten()
    frames = []
    with eval_mode(model):
        chunk = grid_chunk(model, x[:1].to(dev), batch_size, budget or memory_budget(dev))
        for i in range(len(x)):
            xi, yi = x[i:i + 1].to(dev), y[i:i + 1].to(dev, torch.int64)
            r1 = _rademacher(xi.shape[1:], generator).to(dev, xi.dtype)
            r2 = _rademacher(xi.shape[1:], generator).to(dev, xi.dtype)
            if direction == "adversarial":
                r2 = input_gradient(model, xi, yi).grad[0].sign()
            losses = []
            with torch.no_grad():
                for e1, e2 in zip(eps1.split(chunk), eps2.split(chunk), strict=True):
                    a = e1.to(dev, xi.dtype).view(-1, 1, 1, 1)
                    b = e2.to(dev, xi.dtype).view(-1, 1, 1, 1)
                    points = xi + a * r1 + b * r2
                    logits = model(points)
                    losses.append(F.cross_entropy(logits, yi.expand(len(points)),
                                                  reduction="none").cpu())
            frames.append(pd.DataFrame({
                "image": i, "index": int(index[i]), "label": int(yi), "direction": direction,
                "eps1": eps1.numpy(), "eps2": eps2.numpy(),
                "loss": torch.cat(losses).double().numpy(),
            }))
    return pd.concat(frames, ignore_index=True)


__all__ = ["DIRECTIONS", "TABLE_ROW_BYTES", "check_table_fits", "grid_chunk", "loss_landscape"]
