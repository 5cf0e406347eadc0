"""The ``approxdrop::`` ops: pattern linears registered through ``torch.library``, and the functions
that models and users call (``ops.linear``: pattern objects in, the eager autograd path or the
registered op chosen per call, ``ops.eager``).

Each op is defined by the readable pure-PyTorch implementation below; that implementation is the
CPU path, the fallback on a GPU without built kernels, and the oracle the CUDA kernels are
tested against. Patterns travel as integers; backward rebuilds the kept index sets from them,
so no mask or index tensor is ever saved for backward.

row_linear(x, W, b, in_(dp, offset, keep), out_(dp, offset, keep)):
    x (Tensor[*, k_in]) holds only the kept input units (k_in = kept count of the in pattern on
    n_in = W.shape[1]); returns y (Tensor[*, k_out]), the kept output units of the out pattern:
    ``y = in_scale * x @ W[kept_out][:, kept_in].T + b[kept_out]``, and the kept weight block it
    gathered for backward (empty when every input is kept). A pattern (1, 0, 1) keeps everything:
    use it for a side without dropout.
tile_linear(x, W, b, dp, offset, keep, tile):
    x (Tensor[*, n_in]) -> Tensor[*, n_out]: ``y = x @ (W * tile_mask * dp/keep).T + b``,
    computed as one batched GEMM over ``dp`` dense blocks that never read a skipped tile.
"""

from __future__ import annotations

from . import cuda as cuda  # registers the CUDA implementations of the ops; builds nothing
from .grouped import group_bounds, grouped_row_linear, grouped_row_linear_reference
from .linear import (
    FULL,
    grouped_row_pattern_linear,
    grouped_row_pattern_linear_compact,
    grouped_tile_pattern_linear,
    row_pattern_linear,
    tile_pattern_linear,
)
from .row import row_linear, row_linear_backward, row_linear_reference
from .static import StaticSide, static_row_linear, static_side, static_site
from .tile import tile_linear, tile_linear_backward, tile_linear_reference

__all__ = [
    "FULL",
    "StaticSide",
    "cuda",
    "group_bounds",
    "grouped_row_linear",
    "grouped_row_linear_reference",
    "grouped_row_pattern_linear",
    "grouped_row_pattern_linear_compact",
    "grouped_tile_pattern_linear",
    "row_linear",
    "row_linear_backward",
    "row_linear_reference",
    "row_pattern_linear",
    "static_row_linear",
    "static_side",
    "static_site",
    "tile_linear",
    "tile_linear_backward",
    "tile_linear_reference",
    "tile_pattern_linear",
]
