"""The pattern linears that models and users call, taking pattern objects: each runs the eager
``autograd.Function`` (``ops.eager``) where nothing needs the registered op, else the registered
``approxdrop::`` op (torch.compile and export, autocast, CUDA dispatch). A pattern crosses into the ops
here, once.

``check=True`` (the default) validates the operands at the call's entry with the registered ops'
ValueErrors; the models pass ``check=False``: they check their patterns and widths when they are built
and the input at their forward's entry, so a training step validates nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..patterns import RowPattern, TilePattern
from .common import check_linear_args, check_weight
from .eager import GroupedRowLinear, GroupedRowLinearCompact, RowLinear, TileLinear, use_eager
from .grouped import _check, _check_compact, group_bounds, grouped_row_linear, grouped_row_linear_compact
from .row import row_linear
from .tile import tile_linear

FULL = RowPattern(1, 0, 1)  # keeps every unit: the side of a layer without dropout


def row_pattern_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_pattern: RowPattern,
    out_pattern: RowPattern,
    *,
    check: bool = True,
) -> torch.Tensor:
    """Kept outputs (Tensor[*, k_out]) of a layer from its kept inputs x (Tensor[*, k_in]):
    ``in_pattern.scale * x @ W[kept_out][:, kept_in].T + b[kept_out]``; backward reuses the kept weight
    block it gathered (``approxdrop::row_linear``)."""
    if check:
        check_weight("row_linear", weight)
        check_linear_args("row_linear", x, weight, bias, in_pattern.kept_count(weight.shape[1]))
    if use_eager(x):
        return RowLinear.apply(x, weight, bias, in_pattern, out_pattern)
    ints = (in_pattern.dp, in_pattern.offset, in_pattern.keep, out_pattern.dp, out_pattern.offset, out_pattern.keep)
    return row_linear(x, weight, bias, *ints)[0]


def tile_pattern_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pattern: TilePattern, *, check: bool = True
) -> torch.Tensor:
    """DropConnect on the T x T tiles of ``weight`` (``approxdrop::tile_linear``): x (Tensor[*, n_in]) ->
    Tensor[*, n_out]."""
    if check:
        check_weight("tile_linear", weight)
        check_linear_args("tile_linear", x, weight, bias, weight.shape[1])
    if use_eager(x):
        return TileLinear.apply(x, weight, bias, pattern)
    return tile_linear(x, weight, bias, pattern.dp, pattern.offset, pattern.keep, pattern.tile)


def grouped_tile_pattern_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    patterns: Sequence[TilePattern],
    *,
    check: bool = True,
) -> torch.Tensor:
    """DropConnect on tiles with one TilePattern per batch group: the batch axis of x (Tensor[*, B, n_in],
    the second-to-last) splits as ``torch.tensor_split`` does, and the tile op runs once per distinct
    pattern, on the samples of the groups that drew it -> Tensor[*, B, n_out]."""
    if check:
        if x.dim() < 2 or not patterns:
            raise ValueError(
                f"grouped_tile_linear: x must be [*, B, n_in] and patterns one per group, got x of shape "
                f"{tuple(x.shape)} and {len(patterns)} patterns"
            )
        check_weight("tile_linear", weight)
        check_linear_args("tile_linear", x, weight, bias, weight.shape[1])
    bounds = group_bounds(x.shape[-2], len(patterns))
    ys: list = [None] * len(patterns)
    for q in dict.fromkeys(patterns):  # distinct patterns, in group order
        members = [g for g, pg in enumerate(patterns) if pg == q]
        xq = torch.cat([x[..., slice(*bounds[g]), :] for g in members], -2)  # [*, B_q, n_in]
        yq = tile_pattern_linear(xq, weight, bias, q, check=False)  # [*, B_q, n_out]
        sizes = [bounds[g][1] - bounds[g][0] for g in members]
        for g, y in zip(members, yq.split(sizes, -2)):
            ys[g] = y
    return torch.cat(ys, -2)  # [*, B, n_out]


def grouped_row_pattern_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_patterns: Sequence[RowPattern],
    out_patterns: Sequence[RowPattern],
    *,
    check: bool = True,
) -> torch.Tensor:
    """``approxdrop::grouped_row_linear`` with one RowPattern per batch group and side (each side shares dp
    and keep): x (Tensor[*, B, n_in]) -> Tensor[*, B, n_out], zero at each group's dropped outputs."""
    ints = pattern_ints(in_patterns, out_patterns)
    if check:
        _check(x, weight, bias, *ints)
    if use_eager(x):
        return GroupedRowLinear.apply(x, weight, bias, ints)
    return grouped_row_linear(x, weight, bias, *ints)


def grouped_row_pattern_linear_compact(
    xs: Sequence[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_patterns: Sequence[RowPattern],
    out_patterns: Sequence[RowPattern],
    *,
    check: bool = True,
) -> list[torch.Tensor]:
    """``approxdrop::grouped_row_linear_compact`` with one RowPattern per group and side: xs[g]
    (Tensor[*, k_in(g)]) -> ys[g] (Tensor[*, k_out(g)]), the compact activations of group g."""
    ints = pattern_ints(in_patterns, out_patterns)
    if check:
        _check_compact(list(xs), weight, bias, *ints)
    if use_eager(weight):
        return list(GroupedRowLinearCompact.apply(weight, bias, ints, *xs))
    ys, _ = grouped_row_linear_compact(list(xs), weight, bias, *ints)
    return ys


def pattern_ints(in_patterns: Sequence[RowPattern], out_patterns: Sequence[RowPattern]) -> tuple:
    """(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets) of per-group patterns sharing dp and keep."""
    for side, patterns in (("in", in_patterns), ("out", out_patterns)):
        if len({(q.dp, q.keep) for q in patterns}) != 1:
            raise ValueError(f"the groups' {side} patterns must share dp and keep, got {patterns}")
    i0, o0 = in_patterns[0], out_patterns[0]
    return i0.dp, i0.keep, [q.offset for q in in_patterns], o0.dp, o0.keep, [q.offset for q in out_patterns]
