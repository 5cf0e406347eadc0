"""Row patterns with one offset per batch group (grouped complementary patterns, docs/method.md §9): two ops
that share one executor.

Every group shares ``(dp, keep)`` on each side; group ``g`` keeps the input units of
``RowPattern(in_dp, in_offsets[g], in_keep)`` and computes the output units of
``RowPattern(out_dp, out_offsets[g], out_keep)``:

    y[g] = in_scale * x[g] @ W[kept_out(g)][:, kept_in(g)].T + b[kept_out(g)]

``approxdrop::grouped_row_linear_compact`` (what a chain of layers uses, e.g. the MLP): each group's
activations are compact, a list ``xs`` with xs[g] (Tensor[*, k_in(g)]) holding only its kept inputs;
returns ys[g] (Tensor[*, k_out(g)]), only its kept outputs. No full-width tensor is ever made.

``approxdrop::grouped_row_linear`` (full-width activations, for a layer whose input is full width
anyway, e.g. the LSTM's decoder): the batch axis of x (the second-to-last) is split into ``G`` groups
as ``torch.tensor_split`` does (any batch size, also smaller than G); x (Tensor[*, B, n_in]) is read
only at each group's kept input units, and y (Tensor[*, B, n_out]) is zero at each group's dropped
output units.

Executor: one GEMM per distinct (out offset, in offset) pair, on the samples of the groups that
carry it. There are at most ``out_dp * in_dp`` pairs whatever G is, and for keep = 1 their weight
blocks cover W at most once: no [G, k_out, k_in] copy of the weight is ever made, and backward
writes each pair's weight gradient block into one shared gradient. The executor (``run_*``) is the one
per-pair loop of every path: a :class:`PairPath` says how one pair's GEMMs run (PyTorch's here, the
cuBLAS and kernel pairs of ``cuda_grouped`` on a GPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..patterns import RowPattern, periodic_count, periodic_selector
from .common import (
    as_index,
    check_backward_args,
    check_linear_args,
    check_operands,
    check_weight,
    flat,
    gather_block,
    kept_weight,
    put_block,
    register_autocast,
    register_backward,
    take,
)


def group_bounds(batch: int, groups: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each group along a batch of ``batch``, as ``torch.tensor_split`` splits."""
    base, extra = divmod(batch, groups)
    bounds, start = [], 0
    for g in range(groups):
        stop = start + base + (1 if g < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _check_offsets(name: str, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets) -> None:
    if len(in_offsets) != len(out_offsets) or not in_offsets:
        raise ValueError(
            f"{name}: need one in and one out offset per group, got {len(in_offsets)} and {len(out_offsets)}"
        )
    for o in in_offsets:
        RowPattern(in_dp, o, in_keep)  # ValueError on bad integers
    for o in out_offsets:
        RowPattern(out_dp, o, out_keep)


def _disjoint(in_keep: int, in_dp: int, out_keep: int, out_dp: int) -> bool:
    """True when distinct (out offset, in offset) pairs have disjoint weight blocks (keep = 1, or a
    side kept whole), so their weight gradients can be written, not added."""
    return (in_keep == 1 or in_keep == in_dp) and (out_keep == 1 or out_keep == out_dp)


def _selectors(weight: torch.Tensor, in_dp, in_keep, o_in, out_dp, out_keep, o_out):
    """(rows, cols): the kept output rows and input columns of ``weight`` for one pair."""
    n_out, n_in = weight.shape
    rows = periodic_selector(n_out, out_dp, o_out, out_keep, weight.device)
    cols = periodic_selector(n_in, in_dp, o_in, in_keep, weight.device)
    return rows, cols


def _pair_forward(x2, w_kept, bias, rows, scale: float) -> torch.Tensor:
    """One pair's GEMM: x2 (Tensor[N, k_in]) @ w_kept (Tensor[k_out, k_in]).T -> Tensor[N, k_out]."""
    if bias is None:
        return torch.mm(x2, w_kept.t()).mul_(scale)
    return torch.addmm(take(bias, 0, rows), x2, w_kept.t(), alpha=scale)


@dataclass(frozen=True)
class PairPath:
    """How one (out offset, in offset) pair's GEMMs run; ``inp`` and ``out`` are its sides' ``(dp, offset,
    keep)`` integers.

    forward(x2, weight, bias, inp, out, want_block) -> (y2, block): y2 = in_scale * x2 @ W[kept_out][:, kept_in].T
    + bias[kept_out] (Tensor[N, k_out]) for x2 (Tensor[N, k_in]); block: the gathered kept block (Tensor[k_out,
    k_in]) when inputs are dropped and the path gathered it or ``want_block``, else None.
    backward(g2, x2, weight, block, inp, out, need_grad_x, sums) -> the pair's grad_x (Tensor[N, k_in]) or None
    without need_grad_x; adds the pair's weight and bias gradients to ``sums``. block: forward's, or None.
    sums(weight): new gradient sums, whose result() is (grad_w, grad_b). None for a path whose compact weight
    gradients come at once, from compact_grads(grads, xs, weight, *ints) -> (grad_w, grad_b) (then x2 is None)."""

    forward: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
    backward: Callable[..., torch.Tensor | None]
    sums: Callable[[torch.Tensor], Any] | None
    compact_grads: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None


def _torch_forward(x2, weight, bias, inp, out, want_block):
    (in_dp, o_in, in_keep), (out_dp, o_out, out_keep) = inp, out
    rows, cols = _selectors(weight, in_dp, in_keep, o_in, out_dp, out_keep, o_out)
    if want_block and in_keep != in_dp:  # gathered once, returned for backward: a fresh copy (may not alias W)
        block = gather_block(weight, rows, cols)  # [k_out, k_in]
        return _pair_forward(x2, block, bias, rows, in_dp / in_keep), block
    return _pair_forward(x2, kept_weight(weight, rows, cols), bias, rows, in_dp / in_keep), None


class _Sums:
    """grad_w (Tensor[n_out, n_in]) and grad_b (Tensor[n_out]) of a grouped op, zeroed, the pairs' blocks
    written in (disjoint blocks) or added."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.grad_w, self.grad_b = weight.new_zeros(weight.shape), weight.new_zeros(weight.shape[0])

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.grad_w, self.grad_b


def _torch_backward(g2, x2, weight, block, inp, out, need_grad_x: bool, sums: _Sums):
    """One pair's gradients on full-width activations: its weight and bias blocks go into ``sums`` in place."""
    (in_dp, o_in, in_keep), (out_dp, o_out, out_keep) = inp, out
    rows, cols = _selectors(weight, in_dp, in_keep, o_in, out_dp, out_keep, o_out)
    grad_w, grad_b = sums.grad_w, sums.grad_b
    grad_b[rows] += g2.sum(0)
    g = g2 * (in_dp / in_keep)  # scale the small operand once, not the two products
    block_w = g.t() @ x2  # [k_out, k_in]
    if _disjoint(in_keep, in_dp, out_keep, out_dp):
        put_block(grad_w, block_w, rows, cols)
    else:  # blocks of keep > 1 patterns overlap: add
        r, c = as_index(rows, grad_w.shape[0], grad_w.device), as_index(cols, grad_w.shape[1], grad_w.device)
        grad_w.index_put_((r[:, None], c[None, :]), block_w, accumulate=True)
    return g @ kept_weight(weight, rows, cols) if need_grad_x else None  # [N, k_in]


def _torch_compact_grad_x(g2, x2, weight, block, inp, out, need_grad_x: bool, sums):
    """One pair's grad_x on compact activations, from forward's block when given (the weight gradients
    come at once, ``_compact_grads``)."""
    if not need_grad_x:
        return None
    (in_dp, o_in, in_keep), (out_dp, o_out, out_keep) = inp, out
    if block is None:
        block = kept_weight(weight, *_selectors(weight, in_dp, in_keep, o_in, out_dp, out_keep, o_out))
    return torch.mm(g2, block).mul_(in_dp / in_keep)  # [N, k_in]


# --------------------------------------------------------------------------- compact activations


def _key(dp: int, offset: int, keep: int) -> int:
    """The offset that names a pattern's kept units: every offset keeps them all when keep == dp."""
    return 0 if keep == dp else offset


def _compact_pairs(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets) -> dict[tuple[int, int], list[int]]:
    """(out offset, in offset) -> the groups carrying that pair."""
    pairs: dict[tuple[int, int], list[int]] = {}
    for g, (i, o) in enumerate(zip(in_offsets, out_offsets)):
        pairs.setdefault((_key(out_dp, o, out_keep), _key(in_dp, i, in_keep)), []).append(g)
    return pairs


def _stack(ts: list[torch.Tensor], groups: list[int]) -> torch.Tensor:
    """The groups' tensors flattened to rows and stacked: Tensor[N, k] (a view for one group)."""
    parts = [flat(ts[g]) for g in groups]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _unstack(t: torch.Tensor, ts: list[torch.Tensor], groups: list[int], out: list, separate: bool = True) -> None:
    """Split t (Tensor[N, k], the groups' rows stacked) back into out[g] (Tensor[*ts[g].shape[:-1], k]).
    With ``separate``, several groups get copies: a registered op's outputs may not share memory (the
    eager path's may)."""
    if len(groups) == 1:
        out[groups[0]] = _shaped(t, ts[groups[0]])
        return
    sizes = [math.prod(ts[g].shape[:-1]) for g in groups]
    for g, part in zip(groups, t.split(sizes)):
        out[g] = _shaped(part, ts[g]).clone() if separate else _shaped(part, ts[g])


def _shaped(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """rows (Tensor[N, k]) with like's leading dimensions: Tensor[*like.shape[:-1], k] (itself for a 2-D like)."""
    return rows if like.dim() == 2 else rows.reshape(*like.shape[:-1], rows.shape[1])


def _widen(xs: list[torch.Tensor], groups: list[int], in_dp: int, in_keep: int, in_offsets: list[int], n_in: int):
    """The groups' compact inputs stacked at full width: Tensor[N, n_in], zero at each group's dropped inputs."""
    if in_keep == in_dp:
        return _stack(xs, groups)
    parts = [flat(xs[g]) for g in groups]
    full = parts[0].new_zeros(sum(part.shape[0] for part in parts), n_in)
    start = 0
    for g, part in zip(groups, parts):
        cols = periodic_selector(n_in, in_dp, in_offsets[g], in_keep, part.device)
        full[start : start + part.shape[0], cols] = part
        start += part.shape[0]
    return full


def _check_compact(xs, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets) -> None:
    name = "grouped_row_linear_compact"
    check_weight(name, weight)
    _check_offsets(name, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    if len(xs) != len(in_offsets):
        raise ValueError(f"{name}: need one x per group ({len(in_offsets)}), got {len(xs)}")
    check_operands(name, weight=weight, bias=bias, **{f"xs[{g}]": x for g, x in enumerate(xs)})
    for g, (x, o) in enumerate(zip(xs, in_offsets)):
        check_linear_args(f"{name} (xs[{g}])", x, weight, bias, periodic_count(weight.shape[1], in_dp, o, in_keep))


def grouped_row_linear_compact_torch(
    xs: list[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The PyTorch implementation of ``approxdrop::grouped_row_linear_compact``: ``(ys, blocks)``, where
    blocks are the pairs' kept weight blocks W[kept_out][:, kept_in] (Tensor[k_out, k_in], in pair order)
    when kept columns had to be gathered (in_keep < in_dp), else empty; backward reuses them."""
    _check_compact(xs, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    return run_compact(xs, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)


def run_compact(
    xs: list[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
    separate: bool = True,
    path: PairPath | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``grouped_row_linear_compact_torch`` on checked operands: one GEMM per distinct offset pair on ``path``
    (default: PyTorch's); ``separate``: no two outputs share memory, as a registered op's may not."""
    path = path or TORCH_COMPACT
    ys: list = [None] * len(xs)
    blocks = []
    for (o_out, o_in), groups in _compact_pairs(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets).items():
        inp, out = (in_dp, o_in, in_keep), (out_dp, o_out, out_keep)
        y2, block = path.forward(_stack(xs, groups), weight, bias, inp, out, True)  # [N, k_out]
        if in_keep != in_dp:
            blocks.append(block)
        _unstack(y2, xs, groups, ys, separate)
    return ys, blocks


@torch.library.custom_op("approxdrop::grouped_row_linear_compact", mutates_args=())
def grouped_row_linear_compact(
    xs: list[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Row patterns with one (in, out) offset per group on compact activations (see the module docstring):
    ``(ys, blocks)``; blocks (the gathered kept weight blocks, not differentiable) are for backward."""
    return grouped_row_linear_compact_torch(xs, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)


@grouped_row_linear_compact.register_fake
def _(xs, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets):
    _check_compact(xs, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    n_out, n_in = weight.shape
    ys = [x.new_empty(*x.shape[:-1], periodic_count(n_out, out_dp, o, out_keep)) for x, o in zip(xs, out_offsets)]
    pairs = _compact_pairs(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets) if in_keep != in_dp else {}
    blocks = [
        weight.new_empty(periodic_count(n_out, out_dp, o_out, out_keep), periodic_count(n_in, in_dp, o_in, in_keep))
        for o_out, o_in in pairs
    ]
    return ys, blocks


def grouped_row_linear_compact_backward_torch(
    grads: list[torch.Tensor],
    xs: list[torch.Tensor],
    weight: torch.Tensor,
    blocks: list[torch.Tensor],
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
    need_grad_x: bool = True,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The PyTorch implementation of ``approxdrop::grouped_row_linear_compact_backward``: per pair, the
    groups' grad_x from the forward's kept weight block; per out offset, the weight gradient rows of its
    groups in one GEMM (their inputs at full width, zero where dropped), written into the shared gradient."""
    _check_compact_backward(grads, xs, weight, blocks, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    args = (in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    return run_compact_backward(grads, xs, weight, blocks, *args, need_grad_x)


def run_compact_backward(
    grads: list[torch.Tensor],
    xs: list[torch.Tensor],
    weight: torch.Tensor,
    blocks: list[torch.Tensor],
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
    need_grad_x: bool,
    separate: bool = True,
    path: PairPath | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """``grouped_row_linear_compact_backward_torch`` on checked operands, on ``path`` (default: PyTorch's;
    ``separate``: as ``run_compact``)."""
    path = path or TORCH_COMPACT
    args = (in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    sums = None if path.sums is None else path.sums(weight)
    grad_xs: list = [None] * len(xs) if need_grad_x else []
    if need_grad_x or sums is not None:
        for j, ((o_out, o_in), groups) in enumerate(_compact_pairs(*args).items()):
            inp, out = (in_dp, o_in, in_keep), (out_dp, o_out, out_keep)
            x2 = None if sums is None else _stack(xs, groups)  # [N, k_in]
            block = blocks[j] if blocks else None
            grad_x2 = path.backward(_stack(grads, groups), x2, weight, block, inp, out, need_grad_x, sums)
            if need_grad_x:
                _unstack(grad_x2, xs, groups, grad_xs, separate)
    grad_w, grad_b = path.compact_grads(grads, xs, weight, *args) if sums is None else sums.result()
    return grad_xs, grad_w, grad_b


def _compact_grads(grads, xs, weight, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets):
    """The compact op's (grad_w, grad_b) on PyTorch: per out offset, the weight gradient rows of its groups in
    one GEMM (their inputs at full width, zero where dropped), written into the shared gradient."""
    n_out, n_in = weight.shape
    scale = in_dp / in_keep
    by_out: dict[int, list[int]] = {}
    for g, o in enumerate(out_offsets):
        by_out.setdefault(_key(out_dp, o, out_keep), []).append(g)
    # keep = 1 (or all): the out offsets' rows are disjoint slices; every row is written when all offsets occur
    covered = out_keep == out_dp or (out_keep == 1 and len(by_out) == out_dp)
    grad_w = weight.new_empty(weight.shape) if covered else weight.new_zeros(weight.shape)  # [n_out, n_in]
    grad_b = weight.new_zeros(n_out)
    for o, groups in by_out.items():
        rows = periodic_selector(n_out, out_dp, o, out_keep, weight.device)
        g2 = _stack(grads, groups)  # [N, k_out]
        grad_b[rows] += g2.sum(0)
        g2 = g2 * scale  # scale the small operand
        x_full = _widen(xs, groups, in_dp, in_keep, in_offsets, n_in)  # [N, n_in]
        if isinstance(rows, slice):  # rows of distinct out offsets are disjoint: write in place
            torch.mm(g2.t(), x_full, out=grad_w[rows])
        else:  # keep > 1: rows overlap, add
            grad_w.index_add_(0, rows, torch.mm(g2.t(), x_full))
    return grad_w, grad_b


TORCH_COMPACT = PairPath(_torch_forward, _torch_compact_grad_x, None, _compact_grads)  # the PyTorch path


def _check_compact_backward(grads, xs, weight, blocks, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets):
    name = "grouped_row_linear_compact_backward"
    check_weight(name, weight)
    _check_offsets(name, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    if not len(grads) == len(xs) == len(in_offsets):
        raise ValueError(f"{name}: need one grad and one x per group ({len(in_offsets)}), got {len(grads)}, {len(xs)}")
    n_out, n_in = weight.shape
    for g, (grad, x) in enumerate(zip(grads, xs)):
        k_in = periodic_count(n_in, in_dp, in_offsets[g], in_keep)
        k_out = periodic_count(n_out, out_dp, out_offsets[g], out_keep)
        check_backward_args(f"{name} (group {g})", grad, x, weight, k_in, k_out)
    pairs = _compact_pairs(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    if blocks and len(blocks) != len(pairs):
        raise ValueError(f"{name}: need no blocks or one per (out, in) offset pair ({len(pairs)}), got {len(blocks)}")


@torch.library.custom_op("approxdrop::grouped_row_linear_compact_backward", mutates_args=())
def grouped_row_linear_compact_backward(
    grads: list[torch.Tensor],
    xs: list[torch.Tensor],
    weight: torch.Tensor,
    blocks: list[torch.Tensor],
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
    need_grad_x: bool = True,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Gradients (xs: like xs, empty without need_grad_x; weight: [n_out, n_in]; bias: [n_out]) of
    ``grouped_row_linear_compact``; blocks: its forward's blocks, or empty (then gathered again).
    Weights outside every group's kept block get exactly zero."""
    return grouped_row_linear_compact_backward_torch(
        grads, xs, weight, blocks, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets, need_grad_x
    )


@grouped_row_linear_compact_backward.register_fake
def _(grads, xs, weight, blocks, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets, need_grad_x=True):
    _check_compact_backward(grads, xs, weight, blocks, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    grad_xs = [x.new_empty(x.shape) for x in xs] if need_grad_x else []  # real outputs are contiguous
    return grad_xs, weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])


def _compact_setup(ctx, inputs, output) -> None:
    xs, weight, bias, *ints = inputs
    ys, blocks = output
    ctx.mark_non_differentiable(*blocks)
    ctx.set_materialize_grads(False)  # no zero gradients for the blocks
    ctx.save_for_backward(weight, *xs, *blocks)
    ctx.y_shapes = [y.shape for y in ys]
    ctx.groups, ctx.ints, ctx.has_bias = len(xs), ints, bias is not None


def _compact_backward(ctx, grads, _block_grads):
    weight, *rest = ctx.saved_tensors
    xs, blocks = rest[: ctx.groups], rest[ctx.groups :]
    need_x = any(ctx.needs_input_grad[0])
    grads = [weight.new_zeros(shape) if g is None else g for g, shape in zip(grads, ctx.y_shapes)]  # an unused y
    grad_xs, grad_w, grad_b = grouped_row_linear_compact_backward(grads, xs, weight, blocks, *ctx.ints, need_x)
    grad_xs = list(grad_xs) if need_x else [None] * len(xs)  # the structure of xs
    return (grad_xs, grad_w, grad_b if ctx.has_bias else None) + (None,) * len(ctx.ints)


grouped_row_linear_compact.register_autograd(_compact_backward, setup_context=_compact_setup)
register_autocast("grouped_row_linear_compact", grouped_row_linear_compact)
register_autocast("grouped_row_linear_compact_backward", grouped_row_linear_compact_backward)


# --------------------------------------------------------------------------- full-width activations


def _pairs(
    batch: int, in_dp: int, in_keep: int, in_offsets: list[int], out_dp: int, out_keep: int, out_offsets: list[int]
) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """(out offset, in offset) -> the batch segments ``(start, stop)`` of the groups carrying that pair (offsets
    named by ``_key``: a side kept whole is one pair whatever its offsets, so pairs never share a block)."""
    segments: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for (start, stop), i, o in zip(group_bounds(batch, len(in_offsets)), in_offsets, out_offsets):
        if stop > start:
            segments.setdefault((_key(out_dp, o, out_keep), _key(in_dp, i, in_keep)), []).append((start, stop))
    return segments


def _read(t: torch.Tensor, segments: list[tuple[int, int]], cols) -> torch.Tensor:
    """t[..., segments, cols] (Tensor[*, m, k]): a view of one segment, else the segments stacked."""
    parts = [take(t[..., start:stop, :], t.dim() - 1, cols) for start, stop in segments]
    return parts[0] if len(parts) == 1 else torch.cat(parts, -2)


def _write(dst: torch.Tensor, segments: list[tuple[int, int]], cols, value: torch.Tensor) -> None:
    """dst[..., segments, cols] = value (Tensor[*, m, k], the segments stacked), in place."""
    first = 0
    for start, stop in segments:
        dst[..., start:stop, cols] = value[..., first : first + stop - start, :]
        first += stop - start


def _check(x, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets) -> None:
    check_weight("grouped_row_linear", weight)
    _check_offsets("grouped_row_linear", in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    if x.dim() < 2:
        raise ValueError(
            f"grouped_row_linear: x must be [*, B, n_in] (batch axis second-to-last), got {tuple(x.shape)}"
        )
    check_linear_args("grouped_row_linear (x full width)", x, weight, bias, weight.shape[1])


def grouped_row_linear_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
) -> torch.Tensor:
    """The PyTorch implementation of ``approxdrop::grouped_row_linear`` (see the module docstring)."""
    _check(x, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    return run_full_width(x, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)


def run_full_width(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
    path: PairPath | None = None,
) -> torch.Tensor:
    """``grouped_row_linear_torch`` on checked operands: one GEMM per distinct offset pair on ``path``
    (default: PyTorch's)."""
    path = path or TORCH_FULL
    n_out, n_in = weight.shape
    y = x.new_zeros(*x.shape[:-1], n_out)  # [*, B, n_out]: zero at every group's dropped outputs
    for (o_out, o_in), segments in _pairs(
        x.shape[-2], in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets
    ).items():
        x_kept = _read(x, segments, periodic_selector(n_in, in_dp, o_in, in_keep, x.device))  # [*, m, k_in]
        y2, _ = path.forward(flat(x_kept), weight, bias, (in_dp, o_in, in_keep), (out_dp, o_out, out_keep), False)
        rows = periodic_selector(n_out, out_dp, o_out, out_keep, x.device)
        _write(y, segments, rows, y2.reshape(*x_kept.shape[:-1], -1))  # [*, m, k_out] into the kept outputs
    return y


@torch.library.custom_op("approxdrop::grouped_row_linear", mutates_args=())
def grouped_row_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
) -> torch.Tensor:
    """Row patterns with one (in, out) offset per batch group (see the module docstring)."""
    return grouped_row_linear_torch(x, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)


@grouped_row_linear.register_fake
def _(x, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets):
    # also the Meta kernel: a CPU x with meta weights lands here, so check like the real op
    _check(x, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def grouped_row_linear_backward_torch(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
    need_grad_x: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The PyTorch implementation of ``approxdrop::grouped_row_linear_backward``: per pair, the kept
    block of grad_x, and the weight and bias gradient blocks written into zeroed full-size gradients."""
    check_weight("grouped_row_linear_backward", weight)
    check_backward_args("grouped_row_linear_backward", grad_y, x, weight, weight.shape[1], weight.shape[0])
    args = (in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    return run_full_width_backward(grad_y, x, weight, *args, need_grad_x)


def run_full_width_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
    need_grad_x: bool,
    path: PairPath | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``grouped_row_linear_backward_torch`` on checked operands, on ``path`` (default: PyTorch's)."""
    path = path or TORCH_FULL
    n_out, n_in = weight.shape
    grad_x = x.new_zeros(x.shape) if need_grad_x else x.new_empty(0)  # [*, B, n_in]
    sums = path.sums(weight)
    for (o_out, o_in), segments in _pairs(
        x.shape[-2], in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets
    ).items():
        cols = periodic_selector(n_in, in_dp, o_in, in_keep, x.device)
        g_kept = _read(grad_y, segments, periodic_selector(n_out, out_dp, o_out, out_keep, x.device))  # [*, m, k_out]
        x2 = flat(_read(x, segments, cols))  # [N, k_in]
        inp, out = (in_dp, o_in, in_keep), (out_dp, o_out, out_keep)
        grad_x2 = path.backward(flat(g_kept), x2, weight, None, inp, out, need_grad_x, sums)
        if need_grad_x:
            _write(grad_x, segments, cols, grad_x2.reshape(*g_kept.shape[:-1], -1))  # [*, m, k_in]
    return (grad_x, *sums.result())


TORCH_FULL = PairPath(_torch_forward, _torch_backward, _Sums)  # the PyTorch path on full-width activations


@torch.library.custom_op("approxdrop::grouped_row_linear_backward", mutates_args=())
def grouped_row_linear_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
    need_grad_x: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (x: [*, B, n_in], weight: [n_out, n_in], bias: [n_out]) of ``grouped_row_linear``;
    weights outside every group's kept block get exactly zero."""
    return grouped_row_linear_backward_torch(
        grad_y, x, weight, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets, need_grad_x
    )


@grouped_row_linear_backward.register_fake
def _(grad_y, x, weight, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets, need_grad_x=True):
    check_weight("grouped_row_linear_backward", weight)
    check_backward_args("grouped_row_linear_backward", grad_y, x, weight, weight.shape[1], weight.shape[0])
    grad_x = x.new_empty(x.shape) if need_grad_x else x.new_empty(0)  # real outputs are contiguous
    return grad_x, weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])


register_backward(grouped_row_linear, grouped_row_linear_backward)
register_autocast("grouped_row_linear", grouped_row_linear)
register_autocast("grouped_row_linear_backward", grouped_row_linear_backward)


def grouped_row_linear_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, in_patterns: list, out_patterns: list
) -> torch.Tensor:
    """Slow, obviously-correct twin: a dense GEMM with one input mask per group (scaled), broadcast within
    the group, and the output zeroed at each group's dropped units."""
    n_out, n_in = weight.shape
    bounds = group_bounds(x.shape[-2], len(in_patterns))
    in_mask = x.new_zeros(x.shape[-2], n_in)  # [B, n_in]
    out_mask = x.new_zeros(x.shape[-2], n_out)  # [B, n_out]
    for (start, stop), pin, pout in zip(bounds, in_patterns, out_patterns):
        in_mask[start:stop] = pin.keep_mask(n_in, x.device).to(x.dtype) * pin.scale
        out_mask[start:stop] = pout.keep_mask(n_out, x.device).to(x.dtype)
    return torch.nn.functional.linear(x * in_mask, weight, bias) * out_mask
