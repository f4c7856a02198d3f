"""Sound bounds on a network's outputs over the ℓ∞ ball intersected with the [0, 1] box:
interval bound propagation (IBP) and backward linear bound propagation (CROWN, Zhang et al.
2018, https://arxiv.org/abs/1811.00866), on the layers epsl's models and the zoo's use.

:func:`trace_network` turns the network into a :class:`Network` of ops
(:func:`epsl.certify.trace.trace_ops`: affine ops, the add of two ops, ReLU and max pooling;
anything else is refused in one line that names the layer).

CROWN bounds every margin ``z_y - z_c`` from below by a linear function of the input, carried
backwards from the output: through an affine op by its transpose (``torch.func.vjp``, since the
op is affine its vector-Jacobian product is its transposed linear part), through a ReLU by its
linear relaxation (upper line ``u (z - l) / (u - l)``, lower line ``z`` or ``0``, whichever is
closer), through a max pool by the lower line ``z_j*`` (j* the input with the largest lower
bound) and the upper bound ``max_j u_j`` (or ``z_j*`` when j* dominates the window), and at the
input by its minimum over the box. Every pre-activation bound it needs is computed the same
way, layer by layer, and intersected with the interval bound (both are sound, so their
intersection is); an op whose interval bound is already exact (one mixing affine map away from
the input) skips CROWN.

Everything runs in float64 on a float64 copy of the network. What is certified is that copy; the
float32 network it came from differs from it by rounding (up to ~1e-5 in a logit), so
:func:`margin_threshold` demands that every margin bound clear a threshold that covers it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from epsl.certify.ops import Op, cannot_bound
from epsl.certify.trace import trace_ops

__all__ = ["Network", "ball", "crown_margins", "ibp_margins", "margin_threshold", "trace_network"]

#: Relative rounding allowance: a margin counts as certified only above
#: ``THRESHOLD_REL * (1 + max |logit|)`` (:func:`margin_threshold`).
THRESHOLD_REL = 1e-5
#: the largest dense Jacobian of one affine op kept for CROWN's first step (floats)
JACOBIAN_FLOATS = 2 ** 24


def trace_network(model: nn.Module, example: torch.Tensor) -> Network:
    """The float64, eval-mode graph of ``model`` (:class:`Network`), checked op by op
    (:func:`epsl.certify.trace.trace_ops`); ``example`` (1 x C x H x W) fixes the shapes. An
    unsupported layer is a one-line :class:`EpslError` naming it."""
    network = Network(trace_ops(model))
    network.set_shapes(example.detach().cpu().double())
    return network


@dataclass
class Network:
    """A traced float64 network: its ops in topological order, the last being the logits."""

    ops: list[Op]
    _jacobians: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def set_shapes(self, example: torch.Tensor) -> None:
        """Each op's per-example output shape, and each affine op's ``constant`` fn(0), from a
        batch of two copies of ``example`` (1 x C x H x W). An op that fails on it, or whose
        output does not keep the batch dimension first (a reshape or a reduction across
        examples), is refused in one line."""
        batch = example[:1].repeat(2, *([1] * (example.dim() - 1)))
        values: list[torch.Tensor] = []
        with torch.no_grad():
            for op in self.ops:
                if op.kind == "input":
                    values.append(batch)
                else:
                    values.append(_checked_value(op, values))
                op.shape = tuple(values[-1].shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of the float64 network on ``x`` (for checks)."""
        values: list[torch.Tensor] = []
        for op in self.ops:
            values.append(x.double() if op.kind == "input" else _value(op, values))
        return values[-1]

    # ------------------------------------------------------------------ interval bounds

    def intervals(self, lower: torch.Tensor, upper: torch.Tensor
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """IBP bounds of every op's output for inputs in the box [lower, upper] (N x ...)."""
        bounds: list[tuple[torch.Tensor, torch.Tensor]] = []
        for op in self.ops:
            bounds.append((lower, upper) if op.kind == "input" else _interval(op, bounds))
        return bounds

    def exact_interval(self) -> list[bool]:
        """Per op: whether its interval bound is exact (one mixing affine map at most between
        it and the input, no add, ReLU or pool)."""
        mixing: list[float] = []
        for op in self.ops:
            if op.kind == "input":
                mixing.append(0)
            elif op.kind == "affine":
                mixing.append(mixing[op.inputs[0]] + (1 if op.mixing else 0))
            else:
                mixing.append(float("inf"))
        return [m <= 1 for m in mixing]

    # ------------------------------------------------------------------ CROWN

    def backward(self, target: int, lam: torch.Tensor, bounds: Sequence[tuple[torch.Tensor,
                 torch.Tensor]], lower: torch.Tensor, upper: torch.Tensor,
                 total: torch.Tensor | None = None) -> torch.Tensor:
        """The CROWN lower bound of ``lam · op_target + total`` over the box (N x S): ``lam``
        is N x S x *shape of op ``target``; ``bounds`` are sound bounds of every op before it."""
        n, s = lam.shape[:2]
        lams: dict[int, torch.Tensor] = {target: lam}
        total = lam.new_zeros(n, s) if total is None else total
        for i in range(target, -1, -1):
            if i not in lams:
                continue
            coef = lams.pop(i)
            op = self.ops[i]
            if op.kind == "input":
                flat = coef.flatten(2)
                total = total + (flat.clamp_min(0) * lower.flatten(1)[:, None]).sum(-1) \
                    + (flat.clamp_max(0) * upper.flatten(1)[:, None]).sum(-1)
                continue
            j = op.inputs[0]
            if op.kind == "affine":
                assert op.constant is not None
                if op.biased:  # a sum of zeros adds nothing
                    total = total + (coef * op.constant).flatten(2).sum(-1)
                in_shape = self.ops[j].shape
                back = _transposed(op, coef.reshape(n * s, *op.shape), (n * s, *in_shape))
                _accumulate(lams, j, back.reshape(n, s, *in_shape))
            elif op.kind == "add":
                _accumulate(lams, op.inputs[0], coef)
                _accumulate(lams, op.inputs[1], coef)
            elif op.kind == "relu":
                lo, hi = bounds[j]
                lo, hi = lo[:, None], hi[:, None]
                unstable = (lo < 0) & (hi > 0)
                width = (hi - lo).clamp_min(torch.finfo(lo.dtype).tiny)
                up_slope = torch.where(unstable, hi / width, (lo >= 0).to(lo.dtype))
                up_bias = torch.where(unstable, -hi * lo / width, torch.zeros_like(lo))
                low_slope = torch.where(unstable, (hi >= -lo).to(lo.dtype),
                                        (lo >= 0).to(lo.dtype))
                neg = coef.clamp_max(0)
                total = total + (neg * up_bias).flatten(2).sum(-1)
                # pos * low_slope + neg * up_slope, in one product (one of pos, neg is zero)
                _accumulate(lams, j, coef * torch.where(coef >= 0, low_slope, up_slope))
            else:  # maxpool
                total, back = self._maxpool_back(op, coef, bounds[j], total)
                _accumulate(lams, j, back)
        return total

    def _maxpool_back(self, op: Op, coef: torch.Tensor,
                      bound: tuple[torch.Tensor, torch.Tensor], total: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        k, stride = op.pool
        lo, hi = bound  # N x C x H x W
        n, s = coef.shape[:2]
        c, h, w = lo.shape[1:]
        windows_hi, best, best_lo, others = _windows(op, lo, hi)
        decided = best_lo >= others  # z_j* is the max everywhere in the ball
        top = windows_hi.amax(dim=2)  # N x C x L: the constant upper bound
        flat = coef.reshape(n, s, c, -1)  # N x S x C x L
        pos, neg = flat.clamp_min(0), flat.clamp_max(0)
        dec = decided.squeeze(2)[:, None]  # N x 1 x C x L
        # lower bound of coef . max: pos -> z_j*; neg -> z_j* if decided else the constant top
        linear = pos + torch.where(dec, neg, torch.zeros_like(neg))
        total = total + torch.where(dec, torch.zeros_like(neg), neg * top[:, None]).sum((2, 3))
        # scatter each window's coefficient onto its j*'s position in the input plane (adding
        # where windows overlap)
        wo = (w - k) // stride + 1
        window = torch.arange(flat.shape[-1], device=coef.device)
        row = (window // wo) * stride + best.squeeze(2) // k  # N x C x L
        col = (window % wo) * stride + best.squeeze(2) % k
        where = (row * w + col)[:, None].expand(n, s, c, flat.shape[-1])
        back = coef.new_zeros(n, s, c, h * w).scatter_add_(3, where, linear)
        return total, back.view(n, s, c, h, w)

    def bounds(self, lower: torch.Tensor, upper: torch.Tensor, *, method: str = "crown",
               budget: int = 2 ** 20) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Sound bounds of every op for inputs in [lower, upper]: IBP everywhere, refined by
        CROWN (``method="crown"``) for every op whose output a ReLU or a max pool reads and
        whose interval is not exact. ``budget``: floats per chunk of the backward pass."""
        bounds = self.intervals(lower, upper)
        if method == "ibp":
            return bounds
        exact = self.exact_interval()
        readers: dict[int, list[Op]] = {}
        for op in self.ops:
            for j in op.inputs:
                readers.setdefault(j, []).append(op)
        for i, op in enumerate(self.ops):
            if op.kind not in ("affine", "add") or exact[i]:
                continue
            kinds = {r.kind for r in readers.get(i, [])}
            if not kinds & {"relu", "maxpool"}:
                continue
            lo, hi = bounds[i]
            # the coordinates whose bounds change a relaxation: a ReLU's unstable inputs, and
            # the coordinates that may be the max of an undecided max-pool window (read
            # directly, or through a ReLU)
            need = torch.zeros_like(lo, dtype=torch.bool)
            for reader in readers.get(i, []):
                if reader.kind == "relu":
                    need |= (lo < 0) & (hi > 0)
                    index = self.ops.index(reader)
                    for pool in readers.get(index, []):
                        if pool.kind == "maxpool":
                            need |= _pool_candidates(pool, lo.clamp_min(0), hi.clamp_min(0))
                elif reader.kind == "maxpool":
                    need |= _pool_candidates(reader, lo, hi)
            if not bool(need.any()):
                continue
            new_lo, new_hi = self._crown_op(i, need.flatten(1), bounds, lower, upper, budget)
            bounds[i] = (torch.maximum(lo, new_lo), torch.minimum(hi, new_hi))
            bounds = self._propagate_from(i + 1, bounds)
        return bounds

    def _propagate_from(self, start: int, bounds: list[tuple[torch.Tensor, torch.Tensor]]
                        ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Recompute the interval bounds of ops from ``start`` on from the ones before,
        intersected with the ones already known (both sound)."""
        for i in range(start, len(self.ops)):
            new = _interval(self.ops[i], bounds)
            bounds[i] = (torch.maximum(new[0], bounds[i][0]), torch.minimum(new[1], bounds[i][1]))
        return bounds

    def _crown_op(self, i: int, need: torch.Tensor,
                  bounds: Sequence[tuple[torch.Tensor, torch.Tensor]],
                  lower: torch.Tensor, upper: torch.Tensor, budget: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """CROWN bounds of op ``i`` at the coordinates ``need`` (N x size, its own per example;
        the others are returned as -inf/+inf): one identity row each, lower and upper, chunked
        so that a chunk's largest coefficient tensor holds about ``budget`` floats."""
        n = len(lower)
        shape = self.ops[i].shape
        size = need.shape[1]
        largest = max(int(torch.Size(op.shape).numel()) for op in self.ops[: i + 1])
        rows = max(1, budget // max(1, n * largest * 2))
        # per example, the indices it needs, padded (with a repeat of its first) to one length
        counts = need.sum(1)
        width = int(counts.max())
        order = torch.argsort((~need).to(torch.int8), dim=1, stable=True)[:, :width]  # needed first
        valid = torch.arange(width, device=need.device)[None] < counts[:, None]
        new_lo = torch.full((n, size), float("-inf"), dtype=lower.dtype, device=lower.device)
        new_hi = torch.full((n, size), float("inf"), dtype=lower.dtype, device=lower.device)
        jacobian = self.jacobian(i)
        for start in range(0, width, rows):
            idx = order[:, start:start + rows]  # N x r
            r = idx.shape[1]
            if jacobian is not None:  # rows of an affine op: its Jacobian's rows, gathered
                op = self.ops[i]
                rows_in = jacobian[idx]  # N x r x in
                bias = op.constant.flatten()[idx]  # type: ignore[union-attr]
                lam = torch.cat([rows_in, -rows_in], 1)
                out = self.backward(op.inputs[0], lam.view(n, 2 * r, *self.ops[op.inputs[0]].shape),
                                    bounds, lower, upper, total=torch.cat([bias, -bias], 1))
            else:
                spec = torch.zeros(n, 2 * r, size, dtype=lower.dtype, device=lower.device)
                spec[:, :r].scatter_(2, idx[:, :, None], 1.0)
                spec[:, r:].scatter_(2, idx[:, :, None], -1.0)
                out = self.backward(i, spec.view(n, 2 * r, *shape), bounds, lower, upper)
            ok = valid[:, start:start + rows]
            new_lo.scatter_(1, idx, torch.where(ok, out[:, :r], new_lo.gather(1, idx)))
            new_hi.scatter_(1, idx, torch.where(ok, -out[:, r:], new_hi.gather(1, idx)))
        return new_lo.view(n, *shape), new_hi.view(n, *shape)

    def jacobian(self, i: int) -> torch.Tensor | None:
        """The dense Jacobian (out x in) of affine op ``i``, cached; None for other ops or
        where it would exceed :data:`JACOBIAN_FLOATS`."""
        op = self.ops[i]
        if op.kind != "affine":
            return None
        if i in self._jacobians:
            return self._jacobians[i]
        size_in = int(torch.Size(self.ops[op.inputs[0]].shape).numel())
        size_out = int(torch.Size(op.shape).numel())
        if size_in * size_out > JACOBIAN_FLOATS:
            return None
        assert op.fn is not None
        zero = torch.zeros(size_out, *self.ops[op.inputs[0]].shape, dtype=torch.float64,
                           device=op.constant.device if op.constant is not None else None)
        _, vjp = torch.func.vjp(op.fn, zero)  # type: ignore[misc]
        rows = vjp(torch.eye(size_out, dtype=torch.float64, device=zero.device)
                   .view(size_out, *op.shape))[0]
        self._jacobians[i] = rows.reshape(size_out, size_in)
        return self._jacobians[i]


def _transposed(op: Op, coef: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
    """The adjoint of affine ``op``'s linear part on ``coef`` (M x *out -> ``in_shape``, M x
    *in): its ``transpose``, or else the vector-Jacobian product of ``fn``."""
    if op.transpose is not None:
        return op.transpose(coef, in_shape)
    assert op.fn is not None
    _, vjp = torch.func.vjp(op.fn, coef.new_zeros(in_shape))  # type: ignore[misc]
    return vjp(coef)[0]  # type: ignore[no-any-return]


def _checked_value(op: Op, values: Sequence[torch.Tensor]) -> torch.Tensor:
    """:func:`_value` on a batch of two, with the affine op's ``constant`` set (from one zero
    example), refusing an op that fails or mixes the batch dimension in one line."""
    first = values[op.inputs[0]]
    try:
        if op.kind == "affine":
            assert op.fn is not None
            op.constant = op.fn(first.new_zeros(1, *first.shape[1:]))[0]
            op.biased = bool(op.constant.any())
        out = _value(op, values)
    except RuntimeError as exc:
        raise cannot_bound(f"{op.name} on a {tuple(first.shape[1:])} input ("
                           f"{str(exc).splitlines()[0] if str(exc) else 'RuntimeError'})"
                           ) from None
    if out.dim() == 0 or out.shape[0] != len(first) or op.constant is not None \
            and op.constant.shape != out.shape[1:]:
        raise cannot_bound(f"{op.name}: its output does not keep the batch dimension first")
    return out


def _value(op: Op, values: Sequence[torch.Tensor]) -> torch.Tensor:
    """The output of a non-input op from the outputs of the ops before it."""
    first = values[op.inputs[0]]
    if op.kind == "affine":
        return op.fn(first)  # type: ignore[misc]
    if op.kind == "add":
        return first + values[op.inputs[1]]
    if op.kind == "relu":
        return first.clamp_min(0)
    return F.max_pool2d(first, *op.pool)


def _interval(op: Op, bounds: Sequence[tuple[torch.Tensor, torch.Tensor]]
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The interval bound of a non-input op from the bounds of the ops before it."""
    lo, hi = bounds[op.inputs[0]]
    if op.kind == "affine":
        centre, radius = op.fn((lo + hi) / 2), op.abs_linear((hi - lo) / 2)  # type: ignore[misc]
        return centre - radius, centre + radius
    if op.kind == "add":
        lo2, hi2 = bounds[op.inputs[1]]
        return lo + lo2, hi + hi2
    if op.kind == "relu":
        return lo.clamp_min(0), hi.clamp_min(0)
    return F.max_pool2d(lo, *op.pool), F.max_pool2d(hi, *op.pool)


def _windows(pool: Op, lo: torch.Tensor, hi: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A max pool's windows of the bounds of its input (N x C x H x W): the upper bounds
    (N x C x k² x L), j* (the index of the largest lower bound in each window), that lower
    bound, and the largest upper bound of the window's other inputs (each N x C x 1 x L)."""
    k, stride = pool.pool
    n, c = lo.shape[:2]
    windows_lo = F.unfold(lo, k, stride=stride).view(n, c, k * k, -1)
    windows_hi = F.unfold(hi, k, stride=stride).view(n, c, k * k, -1)
    best_lo, best = windows_lo.max(dim=2, keepdim=True)
    others = windows_hi.scatter(2, best, float("-inf")).amax(dim=2, keepdim=True)
    return windows_hi, best, best_lo, others


def _pool_candidates(pool: Op, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """N x C x H x W: the inputs that may be the max of a window that the bounds leave
    undecided (their upper bound reaches the window's largest lower bound). Tighter bounds of
    the others change nothing: they can never be the max."""
    k, stride = pool.pool
    n, c, h, w = lo.shape
    windows_hi, _, best_lo, others = _windows(pool, lo, hi)
    undecided = best_lo < others
    candidate = (windows_hi >= best_lo) & undecided
    mask = F.fold(candidate.to(lo.dtype).view(n, c * k * k, -1), (h, w), k, stride=stride)
    return mask.view(n, c, h, w) > 0


def _accumulate(lams: dict[int, torch.Tensor], j: int, value: torch.Tensor) -> None:
    lams[j] = lams[j] + value if j in lams else value


def _margin_spec(y: torch.Tensor, classes: int) -> torch.Tensor:
    """N x (K-1) x K: the rows e_y - e_c for every c != y."""
    eye = torch.eye(classes, dtype=torch.float64, device=y.device)
    rows = eye[y][:, None, :] - eye[None, :, :]  # N x K x K
    keep = ~torch.eye(classes, dtype=torch.bool, device=y.device)[y]  # N x K
    return rows[keep].view(len(y), classes - 1, classes)


def ball(x: torch.Tensor, eps: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """The ℓ∞ ball of radius ``eps`` (a float or one per example) around ``x``, intersected
    with the [0, 1] box, as float64 (lower, upper)."""
    x = x.double()
    radius = torch.as_tensor(eps, dtype=torch.float64, device=x.device)
    radius = radius.view(-1, *([1] * (x.dim() - 1))) if radius.dim() else radius
    return (x - radius).clamp_min(0.0), (x + radius).clamp_max(1.0)


def crown_margins(network: Network, x: torch.Tensor, y: torch.Tensor,
                  eps: torch.Tensor | float, *, budget: int = 2 ** 20,
                  with_intervals: bool = True) -> torch.Tensor:
    """N x (K-1): CROWN lower bounds of ``z_y - z_c`` (c != y, in class order) over the ball
    of radius ``eps`` around each ``x`` in the box, intersected with the interval bounds of the
    logits unless ``with_intervals`` is False (CROWN's own, to compare the two)."""
    lower, upper = ball(x, eps)
    bounds = network.bounds(lower, upper, method="crown", budget=budget)
    last = len(network.ops) - 1
    spec = _margin_spec(y, network.ops[-1].shape[0])
    crown = network.backward(last, spec, bounds, lower, upper)
    return torch.maximum(crown, _interval_margins(bounds[last], y)) if with_intervals else crown


def ibp_margins(network: Network, x: torch.Tensor, y: torch.Tensor,
                eps: torch.Tensor | float) -> torch.Tensor:
    """N x (K-1): interval lower bounds of ``z_y - z_c`` (c != y)."""
    lower, upper = ball(x, eps)
    return _interval_margins(network.intervals(lower, upper)[-1], y)


def _interval_margins(bound: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor
                      ) -> torch.Tensor:
    lo, hi = bound
    classes = lo.shape[1]
    keep = ~torch.eye(classes, dtype=torch.bool, device=y.device)[y]
    own = lo.gather(1, y[:, None])
    return (own - hi)[keep].view(len(y), classes - 1)


def margin_threshold(logits: torch.Tensor) -> torch.Tensor:
    """Per example, the margin a bound must clear to certify: ``THRESHOLD_REL * (1 +
    max |logit|)``. It covers the float32 network's rounding against its float64 copy (up to
    ~7e-6 measured on a digits CNN) with room; float64's own rounding is ~1e-13."""
    return THRESHOLD_REL * (1.0 + logits.double().abs().amax(dim=1))
