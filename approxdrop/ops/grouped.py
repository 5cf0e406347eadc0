"""The one per-pair executor of row patterns with one offset per group (``approxdrop::row_linear``; one group
is the paper's method, several are grouped complementary patterns, docs/method.md §9).

Every group shares ``(dp, keep)`` on each side; group ``g`` keeps the input units of
``RowPattern(in_dp, in_offsets[g], in_keep)`` and computes the output units of
``RowPattern(out_dp, out_offsets[g], out_keep)``. Activations are compact, one tensor per group:

    ys[g] = in_scale * xs[g] @ W[kept_out(g)][:, kept_in(g)].T + b[kept_out(g)]

One GEMM runs per distinct (out offset, in offset) pair, on the rows of the groups that carry it. There are
at most ``out_dp * in_dp`` pairs whatever G is, and for keep = 1 their weight blocks cover W at most once:
no [G, k_out, k_in] copy of the weight is ever made. ``run_forward`` / ``run_backward`` are the one per-pair
loop of every path: a :class:`PairPath` says how one pair's GEMMs run (PyTorch's here, the cuBLAS and kernel
pairs of ``cuda_grouped`` on a GPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..patterns import periodic_selector
from .common import (
    as_index,
    block_product,
    flat,
    gather_block,
    kept_weight,
    owned,
    put_block,
    scaled_mm,
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


def _key(dp: int, offset: int, keep: int) -> int:
    """The offset that names a pattern's kept units: every offset keeps them all when keep == dp."""
    return 0 if keep == dp else offset


def pair_groups(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets) -> dict[tuple[int, int], list[int]]:
    """(out offset, in offset) -> the groups carrying that pair, in order of first appearance."""
    pairs: dict[tuple[int, int], list[int]] = {}
    for g, (i, o) in enumerate(zip(in_offsets, out_offsets)):
        pairs.setdefault((_key(out_dp, o, out_keep), _key(in_dp, i, in_keep)), []).append(g)
    return pairs


def _pairs(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets) -> list[tuple[tuple, tuple, list[int]]]:
    """(inp, out, groups) of each distinct pair: its sides' ``(dp, offset, keep)`` and the groups carrying it, in
    ``pair_groups``'s order."""
    pairs = pair_groups(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    return [((in_dp, o_in, in_keep), (out_dp, o_out, out_keep), groups) for (o_out, o_in), groups in pairs.items()]


def pair_keys(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets) -> list[tuple[int, int]]:
    """The distinct (out offset, in offset) pairs, in ``pair_groups``'s order; one group's pair without hashing
    its offsets (SymInts, under torch.compile, are not hashable)."""
    if len(in_offsets) == 1:
        return [(_key(out_dp, out_offsets[0], out_keep), _key(in_dp, in_offsets[0], in_keep))]
    return list(pair_groups(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets))


def _selectors(weight: torch.Tensor, inp: tuple[int, int, int], out: tuple[int, int, int]):
    """(rows, cols): the kept output rows and input columns of ``weight`` for one pair's ``(dp, offset, keep)``s."""
    n_out, n_in = weight.shape
    return periodic_selector(n_out, *out, weight.device), periodic_selector(n_in, *inp, weight.device)


def kept_linear(x2, w_kept, bias, rows, scale: float) -> torch.Tensor:
    """One pair's GEMM: ``scale * x2 @ w_kept.T + bias[rows]`` (Tensor[N, k_out]) for x2 (Tensor[N, k_in]) and
    w_kept (Tensor[k_out, k_in])."""
    if bias is not None:
        return torch.addmm(take(bias, 0, rows), x2, w_kept.t(), alpha=scale)
    y = torch.mm(x2, w_kept.t())
    return y.mul_(scale) if scale != 1.0 else y


@dataclass(frozen=True)
class PairPath:
    """How one (out offset, in offset) pair's GEMMs run; ``inp`` and ``out`` are its sides' ``(dp, offset,
    keep)`` integers.

    forward(x2, weight, bias, inp, out) -> (y2, block): y2 = in_scale * x2 @ W[kept_out][:, kept_in].T
    + bias[kept_out] (Tensor[N, k_out]) for x2 (Tensor[N, k_in]); block: the gathered kept block (Tensor[k_out,
    k_in], a fresh tensor backward reuses) when inputs are dropped, else None.
    backward(g2, x2, weight, block, inp, out, need_grad_x, sums) -> the pair's grad_x (Tensor[N, k_in]) or None
    without need_grad_x; adds the pair's weight and bias gradients to ``sums``. block: forward's, or None.
    sums(weight, sides): new gradient sums over the pairs whose ``(inp, out)`` are ``sides``, whose result() is
    (grad_w, grad_b)."""

    forward: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
    backward: Callable[..., torch.Tensor | None]
    sums: Callable[[torch.Tensor, int], Any]


def _batched(ts: list[torch.Tensor], groups: list[int]) -> bool:
    """Whether the groups' tensors (Tensor[*, B_g, k]) share every leading dimension but the batch axis (-2), so
    they stack along it in one copy (views of one full-width tensor, e.g. [T, B_g, k], flatten only by copying)."""
    first = ts[groups[0]].shape[:-2]
    return len(first) > 0 and all(ts[g].shape[:-2] == first for g in groups)


def _stack(ts: list[torch.Tensor], groups: list[int]) -> torch.Tensor:
    """The groups' tensors as the rows of one Tensor[N, k] (a view for one group), one copy for several."""
    if len(groups) == 1:
        return flat(ts[groups[0]])
    if _batched(ts, groups):
        return flat(torch.cat([ts[g] for g in groups], -2))  # [*, sum B_g, k]
    return torch.cat([flat(ts[g]) for g in groups])


def _unstack(t: torch.Tensor, ts: list[torch.Tensor], groups: list[int], out: list, separate: bool) -> None:
    """Split t (Tensor[N, k], rows as ``_stack`` stacked them) back into out[g] (Tensor[*ts[g].shape[:-1], k]).
    With ``separate``, several groups get copies: a registered op's outputs may not share memory (the
    eager path's may)."""
    if len(groups) == 1:
        out[groups[0]] = _shaped(t, ts[groups[0]])
        return
    if _batched(ts, groups):
        lead, batches = ts[groups[0]].shape[:-2], [ts[g].shape[-2] for g in groups]
        parts = t.view(*lead, sum(batches), t.shape[-1]).split(batches, -2)  # [*, B_g, k] views
    else:
        parts = [
            _shaped(part, ts[g]) for g, part in zip(groups, t.split([math.prod(ts[g].shape[:-1]) for g in groups]))
        ]
    for g, part in zip(groups, parts):
        out[g] = part.clone(memory_format=torch.contiguous_format) if separate else part


def _shaped(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """rows (Tensor[N, k]) with like's leading dimensions: Tensor[*like.shape[:-1], k] (itself for a 2-D like)."""
    return rows if like.dim() == 2 else rows.reshape(*like.shape[:-1], rows.shape[1])


def run_forward(
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
    stacks: list[torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``row_linear`` on checked operands: (ys, blocks), one GEMM per distinct offset pair on ``path`` (default:
    PyTorch's); blocks: the pairs' gathered kept blocks when inputs are dropped (in pair order), else none.
    ``separate``: no two outputs share memory, as a registered op's may not. No output is a view (``owned``).
    ``stacks``: a list that receives each pair's input rows as its GEMM read them (Tensor[N, k_in], in pair
    order; several groups stacked in one copy), for ``run_backward`` to read instead of stacking again."""
    path = path or TORCH_PAIRS
    if len(xs) == 1:  # one group (the paper's method): its own pair, nothing to stack
        x = xs[0]
        y2, block = path.forward(
            flat(x), weight, bias, (in_dp, in_offsets[0], in_keep), (out_dp, out_offsets[0], out_keep)
        )
        return [owned(_shaped(y2, x))], [block] if in_keep != in_dp else []
    ys: list = [None] * len(xs)
    blocks = []
    for inp, out, groups in _pairs(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets):
        x2 = _stack(xs, groups)  # [N, k_in]
        y2, block = path.forward(x2, weight, bias, inp, out)
        if in_keep != in_dp:
            blocks.append(block)
        if stacks is not None:
            stacks.append(x2)
        _unstack(y2, xs, groups, ys, separate)  # [N, k_out] -> ys[g]
    return [owned(y) for y in ys], blocks


def run_backward(
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
    stacks: list[torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """``row_linear_backward`` on checked operands, on ``path`` (default: PyTorch's; ``separate``: as
    ``run_forward``): (grad_xs, empty without ``need_grad_x``; grad_w; grad_b). ``stacks``: the pairs' input
    rows that ``run_forward`` stacked (its ``stacks``), else they are stacked from ``xs`` again."""
    path = path or TORCH_PAIRS
    if len(xs) == 1:  # one group: its own pair
        inp, out = (in_dp, in_offsets[0], in_keep), (out_dp, out_offsets[0], out_keep)
        x, sums = xs[0], path.sums(weight, [(inp, out)])
        grad_x2 = path.backward(
            flat(grads[0]), flat(x), weight, blocks[0] if blocks else None, inp, out, need_grad_x, sums
        )
        return ([_shaped(grad_x2, x)] if need_grad_x else []), *sums.result()
    pairs = _pairs(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    sums = path.sums(weight, [(inp, out) for inp, out, _ in pairs])
    grad_xs: list = [None] * len(xs) if need_grad_x else []
    for j, (inp, out, groups) in enumerate(pairs):
        block = blocks[j] if blocks else None
        x2 = stacks[j] if stacks else _stack(xs, groups)  # [N, k_in]
        grad_x2 = path.backward(_stack(grads, groups), x2, weight, block, inp, out, need_grad_x, sums)
        if need_grad_x:
            _unstack(grad_x2, xs, groups, grad_xs, separate)  # [N, k_in] -> grad_xs[g]
    return (grad_xs, *sums.result())


# --------------------------------------------------------------------------- the PyTorch pairs


def _torch_forward(x2, weight, bias, inp, out):
    rows, cols = _selectors(weight, inp, out)
    scale = inp[0] / inp[2]
    if inp[2] != inp[0]:  # gathered once, returned for backward: a fresh copy (may not alias W)
        block = gather_block(weight, rows, cols)  # [k_out, k_in]
        return kept_linear(x2, block, bias, rows, scale), block
    return kept_linear(x2, take(weight, 0, rows), bias, rows, scale), None  # W's kept rows: a view for a slice


def _disjoint(inp: tuple[int, int, int], out: tuple[int, int, int]) -> bool:
    """True when distinct pairs have disjoint weight blocks (keep = 1, or a side kept whole), so their weight
    gradients can be written, not added."""
    return inp[2] in (1, inp[0]) and out[2] in (1, out[0])


def _blocks_cover_weight(sides: list[tuple[tuple[int, int, int], tuple[int, int, int]]]) -> bool:
    """Whether the weight blocks of pairs with these ``(inp, out)`` sides tile W: each side keeps one unit per
    period (or all), and every combination of the sides' offsets is a pair (G >= 4 groups at p = 0.5 often
    carry all four), so each element of W lies in exactly one block."""
    needed = 1
    for side in (0, 1):
        dp, _, keep = sides[0][side]
        if keep not in (1, dp):
            return False
        needed *= 1 if keep == dp else dp
    return len({(_key(*inp), _key(*out)) for inp, out in sides}) == needed


class _Sums:
    """grad_w (Tensor[n_out, n_in]) and grad_b (Tensor[n_out]) on PyTorch: one pair's block with exact zeros
    around it (``block_product``), or several pairs' blocks written into zeros (disjoint) or added; into an
    uninitialised tensor where the blocks tile W (``_blocks_cover_weight``): a zero fill of W that every
    element's block overwrites would be a pass over W at memory speed. Where every input is kept, each
    GEMM writes its block straight into W's kept rows (benchmarks/cpu_grouped_step.md)."""

    def __init__(self, weight: torch.Tensor, sides: list) -> None:
        self.weight, self.pairs = weight, len(sides)
        self.covered = len(sides) > 1 and _blocks_cover_weight(sides)
        self.grad_w: torch.Tensor | None = None
        self.grad_b: torch.Tensor | None = None

    def add(self, g2, x2, rows, cols, inp, out, block) -> None:
        """A pair's gradients from g2 (Tensor[N, k_out]) and x2 (Tensor[N, k_in]); ``inp``, ``out``: its sides'
        ``(dp, offset, keep)``; block: forward's kept block (Tensor[k_out, k_in]) or None, the product's shape."""
        shape, scale = self.weight.shape, inp[0] / inp[2]
        if self.pairs == 1:
            self.grad_w = block_product(g2.t(), x2, shape, rows, cols, scale, like=block)
            if rows == slice(0, shape[0]):
                self.grad_b = g2.sum(0)
            else:
                self.grad_b = self.weight.new_zeros(shape[0])
                if isinstance(rows, slice):  # summed straight into the kept rows
                    torch.sum(g2, 0, out=self.grad_b[rows])
                else:
                    self.grad_b[rows] = g2.sum(0)
            return
        if self.grad_w is None:
            self.grad_w = self.weight.new_empty(shape) if self.covered else self.weight.new_zeros(shape)
            self.grad_b = self.weight.new_zeros(shape[0])
        if isinstance(rows, slice):  # in place on the view
            self.grad_b[rows].add_(g2.sum(0))
        else:
            self.grad_b.index_add_(0, rows, g2.sum(0))
        if _disjoint(inp, out) and isinstance(rows, slice) and cols == slice(0, shape[1]):
            scaled_mm(g2.t(), x2, scale, out=self.grad_w[rows])  # W's kept rows: a view BLAS writes in place
        elif _disjoint(inp, out):
            put_block(self.grad_w, scaled_mm(g2.t(), x2, scale, like=block), rows, cols)  # [k_out, k_in]
        else:  # blocks of keep > 1 patterns overlap: add
            r, c = as_index(rows, shape[0], x2.device), as_index(cols, shape[1], x2.device)
            grad_block = scaled_mm(g2.t(), x2, scale, like=block)  # [k_out, k_in]
            self.grad_w.index_put_((r[:, None], c[None, :]), grad_block, accumulate=True)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(grad_w, grad_b); zeros where no pair wrote."""
        w = self.weight
        grad_w = w.new_zeros(w.shape) if self.grad_w is None else self.grad_w
        return grad_w, w.new_zeros(w.shape[0]) if self.grad_b is None else self.grad_b


def _torch_backward(g2, x2, weight, block, inp, out, need_grad_x: bool, sums: _Sums):
    """One pair's gradients, the input scale in each GEMM's alpha; grad_x reads forward's block when given."""
    rows, cols = _selectors(weight, inp, out)
    sums.add(g2, x2, rows, cols, inp, out, block)
    if not need_grad_x:
        return None
    w_kept = kept_weight(weight, rows, cols) if block is None else block  # [k_out, k_in]
    return scaled_mm(g2, w_kept, inp[0] / inp[2], like=x2)  # [N, k_in]


TORCH_PAIRS = PairPath(_torch_forward, _torch_backward, _Sums)  # the PyTorch path
