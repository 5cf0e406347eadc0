"""The ``approxdrop::`` ops: pattern linears registered through ``torch.library``, and the functions
that models and users call (``ops.linear``: pattern objects in, the eager autograd path or the
registered op chosen per call, ``ops.eager``).

Each op is defined by the readable pure-PyTorch implementation below; that implementation is the
CPU path, the fallback on a GPU without built kernels, and the oracle the CUDA kernels are
tested against. Patterns travel as integers; backward rebuilds the kept index sets from them,
so no mask or index tensor is ever saved for backward.

Two ops, each with one offset per group (G = 1 is the paper's method; groups share dp and keep):

row_linear(Tensor[] xs, Tensor weight, Tensor? bias, SymInt in_dp, SymInt in_keep, SymInt[] in_offsets,
           SymInt out_dp, SymInt out_keep, SymInt[] out_offsets) -> (Tensor[] ys, Tensor[] blocks):
    xs[g] (Tensor[*, k_in(g)]) holds only group g's kept input units; ys[g] (Tensor[*, k_out(g)]) only its
    kept outputs: ``ys[g] = in_scale * xs[g] @ W[kept_out(g)][:, kept_in(g)].T + b[kept_out(g)]``, one GEMM
    per distinct (out, in) offset pair. blocks: the kept weight blocks it gathered for backward, one per
    pair when inputs are dropped, else none. A side (1, 1, [0]) keeps everything: a side without dropout.
    Full-width activations (x [*, B, n_in], zero at dropped outputs) compose around it:
    ``ops.grouped_row_pattern_linear``.
tile_linear(Tensor x, Tensor weight, Tensor? bias, SymInt dp, SymInt keep, SymInt tile, SymInt[] offsets) -> Tensor:
    x (Tensor[*, B, n_in], the batch axis split into len(offsets) groups as torch.tensor_split does; any
    x with one group) -> Tensor[*, B, n_out]: ``x @ (W * tile_mask(g) * dp/keep).T + b`` on group g's rows,
    one batched GEMM per distinct offset over ``dp`` dense blocks that never read a skipped tile.
"""

from __future__ import annotations

from . import cuda as cuda  # registers the CUDA implementations of the ops; builds nothing
from .candidates import Candidate
from .dispatch import Choice, Dispatcher, outputs_agree
from .grouped import group_bounds
from .linear import (
    FULL,
    grouped_row_pattern_linear,
    grouped_row_pattern_linear_compact,
    grouped_tile_pattern_linear,
    row_pattern_linear,
    tile_pattern_linear,
)
from .row import row_linear, row_linear_backward, row_linear_reference
from .static import StaticSide, static_group_blocks, static_grouped_linear, static_row_linear, static_side, static_site
from .tile import tile_linear, tile_linear_backward, tile_linear_reference

__all__ = [
    "FULL",
    "Candidate",
    "Choice",
    "Dispatcher",
    "StaticSide",
    "cuda",
    "group_bounds",
    "grouped_row_pattern_linear",
    "grouped_row_pattern_linear_compact",
    "grouped_tile_pattern_linear",
    "outputs_agree",
    "row_linear",
    "row_linear_backward",
    "row_linear_reference",
    "row_pattern_linear",
    "static_group_blocks",
    "static_grouped_linear",
    "static_row_linear",
    "static_side",
    "static_site",
    "tile_linear",
    "tile_linear_backward",
    "tile_linear_reference",
    "tile_pattern_linear",
]
