"""Batched logit Jacobians in pixel space, chunked so that memory stays bounded.

The Jacobian of the logits with respect to the pixels, ``J[i, k] = d z_k(x_i) / d x_i``
(N x K x C x H x W), is the raw material of every quantity in Equation 4 of Shafahi et al.
Three interchangeable methods compute it; all are checked against a per-example, per-class
autograd loop in ``tests/test_diagnostics.py``:

- ``"backward"`` (what ``"auto"``, the default, picks): one forward pass on the whole chunk,
  then K reverse passes, pass k differentiating ``sum_i z_k(x_i)``. Because a model in eval
  mode treats every example independently (BatchNorm uses its running statistics), ``d/dx_i sum_j z_k(x_j) =
  d z_k(x_i)/dx_i``, so this *is* the per-example Jacobian, at the cost of the floor: one
  forward plus one backward per class.
- ``"vjp"``: ``torch.func.vjp`` of the batched model, then ``vmap`` of the pullback over the K
  one-hot cotangents: the same K backward passes, batched into one (K times the memory).
- ``"jacrev"``: ``functional_call`` + ``jacrev`` on one example, ``vmap``-ed over examples.

Measured on the 2-core CPU this project runs on (``benchmarks/diagnostics.py``,
``docs/benchmarks.md``), ``"backward"`` costs 1.03-1.11x the floor and needs the least memory;
the vmapped methods were slower on madry-mnist (1.2-1.6x the floor) and mixed on a
PreAct-ResNet-18 (faster under heavy load, slower in a quieter run) with ~4x the memory, so
``"backward"`` is what ``method="auto"`` (the default) picks on the CPU. On CUDA ``"auto"``
picks ``"backward"`` too until a measurement says otherwise: ``benchmarks/gpu_check.py``
measures every method against the floor on the GPU and prints the fastest (not measured yet;
docs/benchmarks.md).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, jacrev, vjp, vmap

from epsl.errors import EpslError
from epsl.modes import eval_mode

METHODS = ("auto", "backward", "vjp", "jacrev")
DEFAULT_METHOD = "auto"
#: What ``method="auto"`` picks per device type: the fastest method measured there
#: (``benchmarks/diagnostics.py`` on the CPU; ``benchmarks/gpu_check.py`` on CUDA).
AUTO_METHOD = {"cpu": "backward", "cuda": "backward"}
CPU_BUDGET_BYTES = 1024**3  # upper bound of the automatic chunk budget on the CPU
Progress = Callable[[int], None]


def _available_cpu_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return CPU_BUDGET_BYTES


def resolve_method(method: str, device: torch.device) -> str:
    """The Jacobian method to run: ``method`` itself, or for ``"auto"`` the one measured
    fastest on ``device``'s type (:data:`AUTO_METHOD`; ``"backward"`` elsewhere)."""
    if method not in METHODS:
        raise EpslError(f"unknown Jacobian method {method!r}; choose from {', '.join(METHODS)}")
    return AUTO_METHOD.get(device.type, "backward") if method == "auto" else method


def memory_budget(device: torch.device) -> int:
    """Bytes one Jacobian chunk may use: half the free CUDA memory, or on the CPU a quarter of
    ``MemAvailable`` capped at :data:`CPU_BUDGET_BYTES`."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 2)
    return int(min(_available_cpu_bytes() // 4, CPU_BUDGET_BYTES))


_PER_EXAMPLE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], tuple[int, int]]]
_PER_EXAMPLE = weakref.WeakKeyDictionary()


def activation_bytes(model: nn.Module, x1: torch.Tensor) -> tuple[int, int]:
    """``(bytes output by every leaf module for one example, number of classes)``: a proxy for
    what backward keeps, memoised per model and input shape (one extra forward, once)."""
    key = (tuple(x1.shape[1:]), x1.dtype, x1.device)
    cache = _PER_EXAMPLE.setdefault(model, {})
    if key in cache:
        return cache[key]
    total = 0

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            logits = model(x1[:1])
    finally:
        for handle in handles:
            handle.remove()
    cache[key] = (total + logits.numel() * logits.element_size(), int(logits.shape[1]))
    return cache[key]


def auto_chunk_size(model: nn.Module, x: torch.Tensor, num_classes: int | None = None, *,
                    method: str = DEFAULT_METHOD, budget: int | None = None) -> int:
    """Examples per Jacobian chunk that fit :func:`memory_budget` (at least 1, at most N).

    Per example the estimate counts the Jacobian itself (K x pixels) and the leaf-module
    activations, twice over for the functional ops between them, and K times over for the
    vmapped methods, which run the K backward passes at once.
    """
    method = resolve_method(method, x.device)
    budget = memory_budget(x.device) if budget is None else budget
    leaf_bytes, classes = activation_bytes(model, x[:1])
    num_classes = classes if num_classes is None else num_classes
    activations = 2 * leaf_bytes
    copies = 2 if method == "backward" else num_classes + 1
    per_example = num_classes * x[0].numel() * x.element_size() + copies * activations
    return int(max(1, min(len(x), budget // max(per_example, 1))))


def format_bytes(count: float) -> str:
    """``1.5 GiB``, ``300 MiB``: a byte count as people write it."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{int(count)} B"


def parse_memory(text: str | int | None) -> int | None:
    """``"2GiB"``, ``"512MB"``, ``"1.5G"``, ``1073741824`` -> bytes (None stays None: the
    default budget, :func:`memory_budget`). Binary and decimal prefixes both mean powers of
    1024, as free memory is reported."""
    if text is None or isinstance(text, int):
        if isinstance(text, int) and text < 1:
            raise EpslError(f"memory must be a positive number of bytes (got {text})")
        return text
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text), re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise EpslError(f"memory={text!r}: expected a size such as 2GiB, 512MB or 1.5G")
    scale = 1024 ** " kmgt".index(match.group(2).lower() or " ")
    return max(1, int(float(match.group(1)) * scale))


def plan_chunks(model: nn.Module, x: torch.Tensor, *, top_k: int | None = None,
                method: str = DEFAULT_METHOD, budget: int | None = None,
                chunk_size: int | None = None, n: int | None = None) -> tuple[int, int]:
    """``(examples, columns)``: how many examples one chunk of :func:`linearise` takes and how
    many class columns each of its Jacobian blocks holds, so that both fit ``budget`` bytes
    (default :func:`memory_budget`) when every class (``top_k`` None) or the true class and
    ``top_k`` rivals are searched.

    Per example the estimate counts the autograd graph (twice the leaf-module activations),
    the input, its gradient and the true class's gradient; per example and column the block
    itself and the temporaries of its reduction (four copies of the pixels), plus for the
    vmapped methods the activations of the batched backward passes. Every column in one
    block (no extra pass for the true class) when that fits; else as many examples as leave
    room for 16 columns (the vmapped methods' batch), at least one; ``"backward"`` then reduces
    one column at a time, as its passes run anyway. ``chunk_size`` fixes the
    examples; a budget too small for one example and one column is refused in one line.
    ``n``: the examples there are (default ``len(x)``; ``x`` may be the first of them only).
    """
    method = resolve_method(method, x.device)
    budget = memory_budget(x.device) if budget is None else budget
    leaf_bytes, classes = activation_bytes(model, x[:1])
    candidates = classes if top_k is None or top_k >= classes - 1 else top_k + 1
    pixels = x[0].numel() * x.element_size()
    fixed = 2 * leaf_bytes + 3 * pixels
    column = 4 * pixels + (0 if method == "backward" else 2 * leaf_bytes)
    if budget < fixed + column:
        raise EpslError(f"memory budget {format_bytes(budget)} is too small for one example "
                        f"of this model (it needs about {format_bytes(fixed + column)}); "
                        "raise memory")
    if chunk_size is not None:
        examples = int(chunk_size)
    elif fixed + column * candidates <= budget:
        examples = budget // (fixed + column * candidates)
    else:
        examples = max(1, budget // (fixed + column * min(candidates, 16)))
    examples = int(max(1, min(len(x) if n is None else n, examples)))
    columns = int(max(1, min(candidates, (budget - examples * fixed) // max(examples * column, 1))))
    if method == "backward" and columns < candidates:
        # its passes run one class at a time anyway: reducing each gradient while it is in
        # the cache beats stacking a block (1000 classes, 224 x 224: 1.7x the floor -> see
        # docs/benchmarks.md), at the price of one extra pass for the true class
        columns = 1
    return examples, columns


Block = Callable[[torch.Tensor], torch.Tensor]


def _linearise_backward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Block]:
    x = x.detach().requires_grad_(True)
    logits = model(x)

    def block(classes: torch.Tensor) -> torch.Tensor:
        rows = []
        for j in range(classes.shape[1]):  # one reverse pass per column: sum_i z_{c_ij}(x_i)
            picked = logits.gather(1, classes[:, j:j + 1]).sum()
            (grad,) = torch.autograd.grad(picked, x, retain_graph=True)
            rows.append(grad)
        return torch.stack(rows, dim=1)

    return logits.detach(), block


def _params(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    return params, buffers


def _linearise_vjp(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Block]:
    params, buffers = _params(model)

    def logits_of(inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (params, buffers), (inputs,))  # type: ignore[no-any-return]

    logits, pullback = vjp(logits_of, x.detach())[:2]

    def block(classes: torch.Tensor) -> torch.Tensor:
        # the columns' one-hot cotangents, m x N x K, pulled back at once
        cotangents = torch.nn.functional.one_hot(classes.T, logits.shape[1]).to(logits.dtype)
        (grads,) = vmap(pullback)(cotangents)  # m x N x C x H x W
        return grads.transpose(0, 1)

    return logits.detach(), block


def _linearise_jacrev(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Block]:
    params, buffers = _params(model)
    with torch.no_grad():
        logits = model(x)

    def picked_logits(example: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        z = functional_call(model, (params, buffers), (example.unsqueeze(0),)).squeeze(0)
        return z.gather(0, classes)  # type: ignore[no-any-return]

    def block(classes: torch.Tensor) -> torch.Tensor:
        return vmap(jacrev(picked_logits), in_dims=(0, 0))(x.detach(), classes)

    return logits.detach(), block


_METHOD_FUNCTIONS = {"backward": _linearise_backward, "vjp": _linearise_vjp,
                     "jacrev": _linearise_jacrev}


def linearise(model: nn.Module, x: torch.Tensor, *, method: str = DEFAULT_METHOD
              ) -> tuple[torch.Tensor, Block]:
    """``(logits, block)`` of a chunk x (n x C x H x W): the logits (n x K) and a function that
    maps class indices (n x m, one class per example and column) to the rows of the Jacobian
    they pick, ``block(c)[i, j] = d z_{c[i, j]}(x_i) / d x_i`` (n x m x C x H x W). Columns are
    computed only when asked for, so a caller that reduces each block at once never holds the
    n x K x C x H x W Jacobian (:func:`epsl.diagnostics.diagnose` at 1000 classes)."""
    return _METHOD_FUNCTIONS[resolve_method(method, x.device)](model, x)


def jacobian_and_logits(model: nn.Module, x: torch.Tensor, *, chunk_size: int | None = None,
                        method: str = DEFAULT_METHOD, progress: Progress | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(J, logits)``: J is N x K x C x H x W as in :func:`jacobian`, logits N x K."""
    method = resolve_method(method, x.device)
    if x.ndim < 2 or len(x) == 0:
        raise EpslError(f"expected a non-empty batch N x C x H x W, got shape {tuple(x.shape)}")
    if chunk_size is not None and chunk_size < 1:
        raise EpslError(f"chunk_size must be at least 1 (got {chunk_size})")
    with eval_mode(model):
        if chunk_size is None:
            chunk_size = auto_chunk_size(model, x, method=method)
        grads, logits = [], []
        for chunk in x.split(chunk_size):
            logit, block = linearise(model, chunk, method=method)
            every = torch.arange(logit.shape[1], device=chunk.device).expand(len(chunk), -1)
            grads.append(block(every))
            logits.append(logit)
            if progress is not None:
                progress(len(chunk))
    return torch.cat(grads), torch.cat(logits)


def jacobian(model: nn.Module, x: torch.Tensor, *, chunk_size: int | None = None,
             method: str = DEFAULT_METHOD) -> torch.Tensor:
    """The logit Jacobian in pixel space, N x K x C x H x W: ``J[i, k] = d z_k(x_i) / d x_i``.

    Args:
        model: a classifier taking pixels ``x`` in [0, 1]; computed in eval mode (with a
            warning if it was training; its mode is restored afterwards).
        x: N x C x H x W pixels, on the model's device.
        chunk_size: examples per chunk; ``None`` picks it from free memory
            (:func:`auto_chunk_size`).
        method: ``"backward"`` (default, K reverse passes of the summed logit k, at the
            floor's cost), ``"vjp"`` (``vmap`` of a ``torch.func.vjp`` pullback over one-hot
            cotangents) or ``"jacrev"`` (``vmap`` of ``jacrev`` over examples).

    Example:
        >>> from epsl.models import create_model
        >>> net = create_model("small-cnn", in_channels=1, num_classes=10, input_size=8,
        ...                    mean=[0.3], std=[0.4]).eval()
        >>> jacobian(net, torch.rand(4, 1, 8, 8)).shape
        torch.Size([4, 10, 1, 8, 8])
    """
    return jacobian_and_logits(model, x, chunk_size=chunk_size, method=method)[0]


__all__ = ["AUTO_METHOD", "Block", "CPU_BUDGET_BYTES", "DEFAULT_METHOD", "METHODS", "Progress",
           "activation_bytes", "auto_chunk_size", "format_bytes", "jacobian",
           "jacobian_and_logits", "linearise", "memory_budget", "parse_memory", "plan_chunks",
           "resolve_method"]
