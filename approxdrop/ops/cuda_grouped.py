"""The grouped row ops (``approxdrop.ops.grouped``) on a GPU path other than the PyTorch one: one
(out offset, in offset) pair at a time, each pair's GEMMs through a :class:`PairPath` (the cuBLAS path,
or the pattern-GEMM kernel), and the weight and bias gradients summed over the pairs by :class:`GradSum`.

Pairs follow ``approxdrop.ops.grouped`` (same grouping, same order, same checks), so the outputs match
its PyTorch implementations, the dispatch's reference. On the cuBLAS path the first pair's weight
gradient block is scattered into a new full-size gradient (every element written once), and every
other pair's block is added into its kept positions; the blocks of distinct pairs are disjoint when
keep = 1, and add up where keep > 1 makes them overlap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..patterns import RowPattern
from . import cuda_cublas as cublas
from .common import check_backward_args, check_weight, flat
from .grouped import (
    _check,
    _check_compact,
    _check_compact_backward,
    _compact_pairs,
    _pairs,
    _read,
    _stack,
    _unstack,
    _write,
)


class GradSum:
    """grad_w (Tensor[n_out, n_in]) and grad_b (Tensor[n_out]) of a grouped op, summed over its pairs."""

    def __init__(self, weight: torch.Tensor, kernels: cublas.BlockKernels | None = None) -> None:
        self.weight, self.kernels = weight, kernels
        self.grad_w: torch.Tensor | None = None
        self.grad_b: torch.Tensor | None = None

    def add_block(self, block: torch.Tensor, out: RowPattern, inp: RowPattern) -> None:
        """Adds a pair's compact weight gradient (Tensor[k_out, k_in]) at its kept rows and columns: the first
        one by the scatter kernel (a new gradient), the others by the scatter-add kernel."""
        if self.grad_w is None:
            self.grad_w = self.kernels.scatter(block, tuple(self.weight.shape), out, inp)
        else:
            self.kernels.scatter_add(self.grad_w, block, out, inp)

    def add_full(self, grad_w: torch.Tensor) -> None:
        """Adds a pair's full-size weight gradient (Tensor[n_out, n_in], zero outside its block)."""
        self.grad_w = grad_w if self.grad_w is None else self.grad_w.add_(grad_w)

    def add_bias(self, grad_b: torch.Tensor) -> None:
        """Adds a pair's full-size bias gradient (Tensor[n_out], zero outside its kept rows)."""
        self.grad_b = grad_b if self.grad_b is None else self.grad_b.add_(grad_b)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(grad_w, grad_b); zeros when no pair had a sample."""
        w = self.weight
        grad_w = w.new_zeros(w.shape) if self.grad_w is None else self.grad_w
        return grad_w, w.new_zeros(w.shape[0]) if self.grad_b is None else self.grad_b


@dataclass(frozen=True)
class PairPath:
    """How one pair's GEMMs run.

    forward(x2, weight, bias, in, out, want_block) -> (y2, block): y2 = in.scale * x2 @ W[kept_out][:, kept_in].T
    + bias[kept_out] (Tensor[N, k_out]) for x2 (Tensor[N, k_in]); block: the gathered kept block
    (Tensor[k_out, k_in]) when inputs are dropped and the path gathered it or ``want_block``, else None.
    backward(g2, x2, weight, block, in, out, need_grad_x, sums) -> the pair's grad_x (Tensor[N, k_in]) or None
    without need_grad_x; adds the pair's weight and bias gradients to ``sums``. block: forward's, or None."""

    forward: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
    backward: Callable[..., torch.Tensor | None]
    kernels: cublas.BlockKernels | None = None  # what GradSum scatters with (the cuBLAS path)


def cublas_path(kernels: cublas.BlockKernels) -> PairPath:
    """The cuBLAS path: one GEMM per pair on W's kept rows in place or on the one gathered block; the pair's
    weight gradient is a compact GEMM scattered into the sum; its bias gradient the column-sum kernel."""

    def forward(x2, weight, bias, inp, out, want_block):
        block = None if cublas.kept_everything(inp) else cublas.gather_block(weight, out, inp)
        w_kept = cublas.kept_weight_for(weight, block, out, inp)  # [k_out, k_in]
        return cublas.pair_forward(x2, w_kept, bias, out, weight.shape[0], inp.scale), block

    def backward(g2, x2, weight, block, inp, out, need_grad_x, sums):
        sums.add_bias(kernels.column_sum(g2, weight.shape[0], out))
        sums.add_block(cublas.weight_grad_block(g2, x2, inp.scale), out, inp)
        if not need_grad_x:
            return None
        return cublas.scaled_mm(g2, cublas.kept_weight_for(weight, block, out, inp), inp.scale)  # [N, k_in]

    return PairPath(forward, backward, kernels)


def kernel_path(row_linear: Callable, row_linear_backward: Callable) -> PairPath:
    """The pattern-GEMM kernel per pair: ``row_linear(x2, weight, bias, *ints)`` and
    ``row_linear_backward(g2, x2, weight, *ints, need_grad_x)`` (the extension's, with the stream bound);
    its full-size weight and bias gradients are added up."""

    def forward(x2, weight, bias, inp, out, want_block):
        block = cublas.gather_block(weight, out, inp) if want_block and not cublas.kept_everything(inp) else None
        return row_linear(x2, weight, bias, *_ints(inp), *_ints(out)), block

    def backward(g2, x2, weight, block, inp, out, need_grad_x, sums):
        grad_x, grad_w, grad_b = row_linear_backward(g2, x2, weight, *_ints(inp), *_ints(out), need_grad_x)
        sums.add_full(grad_w)
        sums.add_bias(grad_b)
        return grad_x if need_grad_x else None

    return PairPath(forward, backward)


def _ints(p: RowPattern) -> tuple[int, int, int]:
    return p.dp, p.offset, p.keep


def _patterns(in_dp, in_keep, o_in, out_dp, out_keep, o_out) -> tuple[RowPattern, RowPattern]:
    return RowPattern(in_dp, o_in, in_keep), RowPattern(out_dp, o_out, out_keep)


# --------------------------------------------------------------------------- compact activations


def compact_forward(
    path: PairPath, xs, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``grouped_row_linear_compact`` on ``path``: (ys, blocks), as its PyTorch implementation returns them."""
    _check_compact(xs, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    ys: list = [None] * len(xs)
    blocks = []
    for (o_out, o_in), groups in _compact_pairs(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets).items():
        inp, out = _patterns(in_dp, in_keep, o_in, out_dp, out_keep, o_out)
        y2, block = path.forward(_stack(xs, groups), weight, bias, inp, out, True)  # [N, k_out]
        if in_keep != in_dp:
            blocks.append(block)
        _unstack(y2, xs, groups, ys)
    return ys, blocks


def compact_backward(
    path: PairPath, grads, xs, weight, blocks, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets, need_grad_x
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """``grouped_row_linear_compact_backward`` on ``path``: (grad_xs, grad_w, grad_b)."""
    _check_compact_backward(grads, xs, weight, blocks, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    sums = GradSum(weight, path.kernels)
    grad_xs: list = [None] * len(xs) if need_grad_x else []
    pairs = _compact_pairs(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    for j, ((o_out, o_in), groups) in enumerate(pairs.items()):
        inp, out = _patterns(in_dp, in_keep, o_in, out_dp, out_keep, o_out)
        block = blocks[j] if blocks else None
        g2, x2 = _stack(grads, groups), _stack(xs, groups)  # [N, k_out], [N, k_in]
        grad_x2 = path.backward(g2, x2, weight, block, inp, out, need_grad_x, sums)
        if need_grad_x:
            _unstack(grad_x2, xs, groups, grad_xs)
    return (grad_xs, *sums.result())


# --------------------------------------------------------------------------- full-width activations


def full_forward(path: PairPath, x, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets):
    """``grouped_row_linear`` on ``path``: y (Tensor[*, B, n_out]), zero at each group's dropped outputs."""
    _check(x, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    n_out, n_in = weight.shape
    y = x.new_zeros(*x.shape[:-1], n_out)  # [*, B, n_out]
    for (o_out, o_in), segments in _pairs(
        x.shape[-2], in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets
    ).items():
        inp, out = _patterns(in_dp, in_keep, o_in, out_dp, out_keep, o_out)
        x_kept = _read(x, segments, inp.selector(n_in, x.device))  # [*, m, k_in]
        y2, _ = path.forward(flat(x_kept), weight, bias, inp, out, False)  # [N, k_out]
        _write(y, segments, out.selector(n_out, x.device), y2.reshape(*x_kept.shape[:-1], -1))
    return y


def full_backward(
    path: PairPath, grad_y, x, weight, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets, need_grad_x
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``grouped_row_linear_backward`` on ``path``: (grad_x, grad_w, grad_b); grad_x (Tensor[*, B, n_in]) is zero
    at each group's dropped inputs, empty without need_grad_x."""
    check_weight("grouped_row_linear_backward", weight)
    check_backward_args("grouped_row_linear_backward", grad_y, x, weight, weight.shape[1], weight.shape[0])
    n_out, n_in = weight.shape
    grad_x = x.new_zeros(x.shape) if need_grad_x else x.new_empty(0)  # [*, B, n_in]
    sums = GradSum(weight, path.kernels)
    for (o_out, o_in), segments in _pairs(
        x.shape[-2], in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets
    ).items():
        inp, out = _patterns(in_dp, in_keep, o_in, out_dp, out_keep, o_out)
        cols = inp.selector(n_in, x.device)
        g_kept = _read(grad_y, segments, out.selector(n_out, x.device))  # [*, m, k_out]
        x2 = flat(_read(x, segments, cols))  # [N, k_in]
        grad_x2 = path.backward(flat(g_kept), x2, weight, None, inp, out, need_grad_x, sums)
        if need_grad_x:
            _write(grad_x, segments, cols, grad_x2.reshape(*g_kept.shape[:-1], -1))  # [*, m, k_in]
    return (grad_x, *sums.result())
