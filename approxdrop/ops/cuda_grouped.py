"""The row op's pair paths (``approxdrop.ops.grouped.PairPath``) on the GPU: the cuBLAS path and the
pattern-GEMM kernel, run by the per-pair executor of ``approxdrop.ops.grouped`` one (out offset, in offset)
pair at a time, the weight and bias gradients summed over the pairs by :class:`GradSum`. On the cuBLAS
path the first pair's weight gradient block is scattered into a new full-size gradient (every element
written once), and every other pair's block is added into its kept positions; the blocks of distinct
pairs are disjoint when keep = 1, and add up where keep > 1 makes them overlap.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..patterns import RowPattern
from . import cuda_cublas as cublas
from .common import scaled_mm
from .grouped import PairPath


class GradSum:
    """grad_w (Tensor[n_out, n_in]) and grad_b (Tensor[n_out]) of the row op, summed over its pairs."""

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


def cublas_path(kernels: cublas.BlockKernels) -> PairPath:
    """The cuBLAS path: one GEMM per pair on W's kept rows in place or on the one gathered block; the pair's
    weight gradient is a compact GEMM scattered into the sum (nothing dropped: added as it is); its bias
    gradient the column-sum kernel."""

    def forward(x2, weight, bias, inp, out):
        inp, out = RowPattern(*inp), RowPattern(*out)
        block = None if cublas.kept_everything(inp) else cublas.gather_block(weight, out, inp)
        w_kept = cublas.kept_weight_for(weight, block, out, inp)  # [k_out, k_in]
        return cublas.pair_forward(x2, w_kept, bias, out, weight.shape[0], inp.scale), block

    def backward(g2, x2, weight, block, inp, out, need_grad_x, sums):
        inp, out = RowPattern(*inp), RowPattern(*out)
        sums.add_bias(kernels.column_sum(g2, weight.shape[0], out))
        if cublas.kept_everything(inp) and cublas.kept_everything(out):  # F.linear's weight gradient, no scatter
            sums.add_full(torch.mm(g2.t(), x2))
        else:
            sums.add_block(cublas.weight_grad_block(g2, x2, inp.scale, like=block), out, inp)
        if not need_grad_x:
            return None
        w_kept = cublas.kept_weight_for(weight, block, out, inp)  # [k_out, k_in]
        return scaled_mm(g2, w_kept, inp.scale, like=x2)  # [N, k_in]

    return PairPath(forward, backward, lambda weight, pairs: GradSum(weight, kernels))


def kernel_path(row_linear: Callable, row_linear_backward: Callable) -> PairPath:
    """The pattern-GEMM kernel per pair: ``row_linear(x2, weight, bias, *ints)`` and
    ``row_linear_backward(g2, x2, weight, *ints, need_grad_x)`` (the extension's, with the stream bound);
    its full-size weight and bias gradients are added up."""

    def forward(x2, weight, bias, inp, out):
        gathers = inp[2] != inp[0]  # some inputs dropped: the op returns the block (its backward reads W)
        block = cublas.gather_block(weight, RowPattern(*out), RowPattern(*inp)) if gathers else None
        return row_linear(x2, weight, bias, *inp, *out), block

    def backward(g2, x2, weight, block, inp, out, need_grad_x, sums):
        grad_x, grad_w, grad_b = row_linear_backward(g2, x2, weight, *inp, *out, need_grad_x)
        sums.add_full(grad_w)
        sums.add_bias(grad_b)
        return grad_x if need_grad_x else None

    return PairPath(forward, backward, lambda weight, pairs: GradSum(weight))
