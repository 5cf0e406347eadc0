"""The cuBLAS path of the row op, one (out offset, in offset) pair at a time (``cuda_grouped.cublas_path``): the
``"cublas"`` candidate of the GPU dispatch (``approxdrop.ops.dispatch``).

Dense GEMMs through ``torch.mm`` / ``addmm`` (cuBLAS on CUDA tensors) on the kept rows and columns:

- every input kept: the kept rows of W are read in place, a strided view with leading dimension
  ``dp * n_in`` for a keep = 1 out side (W itself when every output is kept too): no copy;
- some inputs dropped: the kept block ``W[kept_out][:, kept_in]`` is gathered once (one copy kernel), and
  the row op returns it so that backward's grad-input GEMM reuses it instead of gathering again.
  The saved block costs ``k_out * k_in`` elements per layer, at most the weight's size: ``(1 - p)^2`` of it
  for a layer dropping a fraction p on both sides, ``1 - p`` for one side;
- the weight gradient is one compact GEMM ``[k_out, k_in]``, written into the full-size gradient by one
  scatter kernel (``kernels/scatter.cu``: every element once, the block at the kept positions, zero
  elsewhere); the bias gradient is the column-sum kernel (``kernels/column_sum.cu``);
- grad-input is skipped when not needed (a first layer).

The small kernels come in as :class:`BlockKernels` callables: on a GPU the built extension's
(``approxdrop.ops.cuda``), in the CPU tests their PyTorch definitions :data:`TORCH_BLOCK_KERNELS`, so
this module's logic runs and is tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..patterns import RowPattern
from . import common
from .common import as_index, take


@dataclass(frozen=True)
class BlockKernels:
    """The non-GEMM kernels of the cuBLAS path.

    scatter(block, (n_out, n_in), out, in): a new Tensor[n_out, n_in] holding block (Tensor[k_out, k_in]) at
    the kept (out row, in column) pairs and zero elsewhere. scatter_add(full, block, out, in): adds block
    into full's kept pairs in place, nothing else touched. column_sum(g, n, pattern): Tensor[n], the column
    sums of g (Tensor[N, k], k kept of n) at the pattern's kept entries, zero elsewhere."""

    scatter: Callable[[torch.Tensor, tuple[int, int], RowPattern, RowPattern], torch.Tensor]
    scatter_add: Callable[[torch.Tensor, torch.Tensor, RowPattern, RowPattern], None]
    column_sum: Callable[[torch.Tensor, int, RowPattern], torch.Tensor]


def _scatter_torch(block: torch.Tensor, shape: tuple[int, int], out: RowPattern, inp: RowPattern) -> torch.Tensor:
    full = block.new_zeros(shape)  # [n_out, n_in]
    full[out.keep_mask(shape[0], block.device)[:, None] & inp.keep_mask(shape[1], block.device)[None, :]] = (
        block.flatten()
    )
    return full


def _scatter_add_torch(full: torch.Tensor, block: torch.Tensor, out: RowPattern, inp: RowPattern) -> None:
    r = as_index(out.selector(full.shape[0], full.device), full.shape[0], full.device)
    c = as_index(inp.selector(full.shape[1], full.device), full.shape[1], full.device)
    full.index_put_((r[:, None], c[None, :]), block, accumulate=True)


def _column_sum_torch(g: torch.Tensor, n: int, pattern: RowPattern) -> torch.Tensor:
    out = g.new_zeros(n)
    out[pattern.keep_mask(n, g.device)] = g.sum(0)
    return out


# What kernels/scatter.cu and column_sum.cu compute, in PyTorch (their tests' oracle, and the CPU tests' kernels).
TORCH_BLOCK_KERNELS = BlockKernels(_scatter_torch, _scatter_add_torch, _column_sum_torch)


def kept_everything(p: RowPattern) -> bool:
    """Whether a side keeps every unit (dp = 1 or keep = dp): no selection, no scale."""
    return p.keep == p.dp


def gather_block(weight: torch.Tensor, out: RowPattern, inp: RowPattern) -> torch.Tensor:
    """``W[kept_out][:, kept_in]`` (Tensor[k_out, k_in]): a fresh contiguous copy made in one pass (a strided
    copy for keep = 1 sides, else one two-index gather); it never aliases W."""
    return common.gather_block(
        weight, out.selector(weight.shape[0], weight.device), inp.selector(weight.shape[1], weight.device)
    )


def kept_weight_for(weight: torch.Tensor, block: torch.Tensor | None, out: RowPattern, inp: RowPattern) -> torch.Tensor:
    """The kept block the GEMMs read (Tensor[k_out, k_in]): W's kept rows in place when every input is kept (a
    view for a keep = 1 out side), else ``block`` when given (what forward gathered), else a fresh gather."""
    if kept_everything(inp):
        return take(weight, 0, out.selector(weight.shape[0], weight.device))
    return block if block is not None else gather_block(weight, out, inp)


def pair_forward(
    x2: torch.Tensor, w_kept: torch.Tensor, bias: torch.Tensor | None, out: RowPattern, n_out: int, scale: float
) -> torch.Tensor:
    """x2 (Tensor[N, k_in]) -> ``scale * x2 @ w_kept.T + bias[kept_out]`` (Tensor[N, k_out]), one GEMM."""
    if bias is None:
        return common.scaled_mm(x2, w_kept.t(), scale)
    return torch.addmm(take(bias, 0, out.selector(n_out, bias.device)), x2, w_kept.t(), alpha=scale)


def weight_grad_block(
    g2: torch.Tensor, x2: torch.Tensor, scale: float, like: torch.Tensor | None = None
) -> torch.Tensor:
    """The compact weight gradient ``scale * g2.T @ x2`` (Tensor[k_out, k_in]) of g2 (Tensor[N, k_out]) and
    x2 (Tensor[N, k_in]); like: as ``common.scaled_mm``'s (forward's kept block has the shape)."""
    return common.scaled_mm(g2.t(), x2, scale, like)
