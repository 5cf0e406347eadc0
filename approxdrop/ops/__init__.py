"""The ``approxdrop::`` ops: pattern linears registered through ``torch.library``.

Each op is defined by the readable pure-PyTorch implementation below; that implementation is the
CPU path, the fallback on a GPU without built kernels, and the oracle the CUDA kernels are
tested against. Patterns travel as integers; backward rebuilds the kept index sets from them,
so no mask or index tensor is ever saved for backward.

row_linear(x, W, b, in_(dp, offset, keep), out_(dp, offset, keep)):
    x (Tensor[*, k_in]) holds only the kept input units (k_in = kept count of the in pattern on
    n_in = W.shape[1]); returns Tensor[*, k_out], the kept output units of the out pattern:
    ``y = in_scale * x @ W[kept_out][:, kept_in].T + b[kept_out]``. A pattern (1, 0, 1) keeps
    everything: use it for a side without dropout.
tile_linear(x, W, b, dp, offset, keep, tile):
    x (Tensor[*, n_in]) -> Tensor[*, n_out]: ``y = x @ (W * tile_mask * dp/keep).T + b``,
    computed as one batched GEMM over ``dp`` dense blocks that never read a skipped tile.
"""

from __future__ import annotations

import torch

from ..patterns import RowPattern, TilePattern
from . import cuda as cuda  # registers the CUDA implementations of the ops; builds nothing
from .grouped import grouped_row_linear, grouped_row_linear_reference, grouped_row_pattern_linear
from .row import row_linear, row_linear_backward, row_linear_reference
from .tile import tile_linear, tile_linear_backward, tile_linear_reference


def row_pattern_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_pattern: RowPattern,
    out_pattern: RowPattern,
) -> torch.Tensor:
    """``row_linear`` taking RowPattern objects."""
    return row_linear(x, weight, bias, *_ints(in_pattern), *_ints(out_pattern))


def tile_pattern_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pattern: TilePattern
) -> torch.Tensor:
    """``tile_linear`` taking a TilePattern object."""
    return tile_linear(x, weight, bias, pattern.dp, pattern.offset, pattern.keep, pattern.tile)


def _ints(pattern: RowPattern) -> tuple[int, int, int]:
    return pattern.dp, pattern.offset, pattern.keep


FULL = RowPattern(1, 0, 1)  # keeps every unit: the side of a layer without dropout


__all__ = [
    "FULL",
    "cuda",
    "grouped_row_linear",
    "grouped_row_linear_reference",
    "grouped_row_pattern_linear",
    "row_linear",
    "row_linear_backward",
    "row_linear_reference",
    "row_pattern_linear",
    "tile_linear",
    "tile_linear_backward",
    "tile_linear_reference",
    "tile_pattern_linear",
]
