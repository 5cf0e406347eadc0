"""The pattern linears that models and users call, taking pattern objects: each runs the eager
``autograd.Function`` (``ops.eager``) where nothing needs the registered op, else the registered
``approxdrop::`` op (torch.compile and export, autocast, CUDA dispatch), and under a torch.func transform
the op's reference twin (``transformed``). A pattern crosses into the ops here, once, as integers.

``check=True`` (the default) validates the operands at the call's entry with the registered ops'
ValueErrors; the models pass ``check=False``: they check their patterns and widths when they are built
and the input at their forward's entry, so a training step validates nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..patterns import RowPattern, TilePattern, periodic_selector
from .common import check_linear_args, check_tensors, check_weight
from .eager import RowLinear, TileLinear, use_eager
from .row import check_forward, row_linear, row_linear_reference
from .tile import check_tile, tile_linear, tile_linear_reference

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
    block it gathered (``approxdrop::row_linear`` with one group)."""
    if check:
        check_tensors("row_linear", x, weight, bias)
        check_patterns("row_linear", RowPattern, [in_pattern, out_pattern])
        check_weight("row_linear", weight)
        check_linear_args("row_linear", x, weight, bias, in_pattern.kept_count(weight.shape[1]))
    if transformed():
        return row_linear_reference(x, weight, bias, in_pattern, out_pattern)
    ints = (in_pattern.dp, in_pattern.keep, [in_pattern.offset], out_pattern.dp, out_pattern.keep, [out_pattern.offset])
    if use_eager(x):
        return RowLinear.apply(weight, bias, ints, x)[0]
    return row_linear([x], weight, bias, *ints)[0][0]


def grouped_row_pattern_linear_compact(
    xs: Sequence[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_patterns: Sequence[RowPattern],
    out_patterns: Sequence[RowPattern],
    *,
    check: bool = True,
) -> list[torch.Tensor]:
    """``approxdrop::row_linear`` with one RowPattern per group and side: xs[g] (Tensor[*, k_in(g)]) -> ys[g]
    (Tensor[*, k_out(g)]), the compact activations of group g."""
    if check:
        if isinstance(xs, torch.Tensor) or not isinstance(xs, Sequence):
            raise ValueError(f"row_linear: xs must be a list of tensors, one per group, got {type(xs).__name__}")
        for x in xs:
            check_tensors("row_linear", x, weight, bias)
        check_patterns("row_linear in", RowPattern, in_patterns)
        check_patterns("row_linear out", RowPattern, out_patterns)
    return _compact(list(xs), weight, bias, in_patterns, out_patterns, check_shapes=check)


def _compact(
    xs: list[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_patterns: Sequence[RowPattern],
    out_patterns: Sequence[RowPattern],
    check_shapes: bool,
) -> list[torch.Tensor]:
    """``grouped_row_pattern_linear_compact`` on patterns already checked."""
    ints = pattern_ints(in_patterns, out_patterns)
    if check_shapes:
        check_forward("row_linear", xs, weight, bias, *ints)
    if transformed():
        return row_linear_reference(list(xs), weight, bias, list(in_patterns), list(out_patterns))
    if use_eager(weight):
        return list(RowLinear.apply(weight, bias, ints, *xs))
    ys, _ = row_linear(list(xs), weight, bias, *ints)
    return ys


def grouped_row_pattern_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_patterns: Sequence[RowPattern],
    out_patterns: Sequence[RowPattern],
    *,
    check: bool = True,
) -> torch.Tensor:
    """Row patterns on full-width activations, one RowPattern per batch group and side (each side shares dp and
    keep): x (Tensor[*, B, n_in], the batch axis split as ``torch.tensor_split`` does) -> Tensor[*, B, n_out],
    zero at each group's dropped outputs. Composed around ``approxdrop::row_linear`` (docs/design.md, "Ops and
    dispatch"): each group's kept columns of x in, its kept outputs widened with zeros."""
    if check:
        check_tensors("row_linear", x, weight, bias)
        check_patterns("row_linear in", RowPattern, in_patterns)
        check_patterns("row_linear out", RowPattern, out_patterns)
        if x.dim() < 2:
            raise ValueError(f"row_linear: x must be [*, B, n_in] (batch axis second-to-last), got {tuple(x.shape)}")
        check_linear_args("row_linear (x full width)", x, weight, bias, weight.shape[1])
    n_out, n_in = weight.shape
    parts = x.tensor_split(len(in_patterns), -2)  # [*, B_g, n_in] views: their backward is one cat
    xs = [part[..., periodic_selector(n_in, q.dp, q.offset, q.keep, x.device)] for part, q in zip(parts, in_patterns)]
    ys = _compact(xs, weight, bias, in_patterns, out_patterns, check_shapes=check)  # [*, B_g, k_out]
    if out_patterns[0].keep != out_patterns[0].dp:  # zero at each group's dropped outputs
        ys = [
            _widen(yg, periodic_selector(n_out, q.dp, q.offset, q.keep, x.device), n_out)
            for q, yg in zip(out_patterns, ys)
        ]
    return torch.cat(ys, -2)  # [*, B, n_out]


def _widen(y: torch.Tensor, kept: slice | torch.Tensor, n: int) -> torch.Tensor:
    """y (Tensor[*, k]) at the ``kept`` units of a zero Tensor[*, n]."""
    full = y.new_zeros(*y.shape[:-1], n)
    full[..., kept] = y
    return full


def tile_pattern_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pattern: TilePattern, *, check: bool = True
) -> torch.Tensor:
    """DropConnect on the T x T tiles of ``weight`` (``approxdrop::tile_linear`` with one group): x
    (Tensor[*, n_in]) -> Tensor[*, n_out]."""
    if check:
        check_tensors("tile_linear", x, weight, bias)
        check_patterns("tile_linear", TilePattern, [pattern])
    return _tile(x, weight, bias, (pattern.dp, pattern.keep, pattern.tile, [pattern.offset]), check)


def grouped_tile_pattern_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    patterns: Sequence[TilePattern],
    *,
    check: bool = True,
) -> torch.Tensor:
    """DropConnect on tiles with one TilePattern per batch group (sharing dp, keep and tile): the batch axis of
    x (Tensor[*, B, n_in], the second-to-last) splits as ``torch.tensor_split`` does; each group's rows get its
    pattern (``approxdrop::tile_linear``) -> Tensor[*, B, n_out]."""
    if check:
        check_tensors("tile_linear", x, weight, bias)
        check_patterns("tile_linear", TilePattern, patterns)
    if len({(q.dp, q.keep, q.tile) for q in patterns}) > 1:
        raise ValueError(f"tile_linear: the groups' patterns must share dp, keep and tile, got {patterns}")
    p0 = patterns[0] if patterns else TilePattern(1, 0)
    return _tile(x, weight, bias, (p0.dp, p0.keep, p0.tile, [q.offset for q in patterns]), check)


def _tile(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ints: tuple, check: bool) -> torch.Tensor:
    """The tile op on ``ints`` = (dp, keep, tile, offsets): the eager Function, or the registered op."""
    if check:
        check_tile("tile_linear", x, weight, *ints)
        check_linear_args("tile_linear", x, weight, bias, weight.shape[1])
    if transformed():
        dp, keep, tile, offsets = ints
        return tile_linear_reference(x, weight, bias, [TilePattern(dp, o, tile, keep) for o in offsets])
    if use_eager(x):
        return TileLinear.apply(x, weight, bias, ints)
    return tile_linear(x, weight, bias, *ints)


def transformed() -> bool:
    """Whether a torch.func transform (grad, vmap, jacrev, functional per-sample gradients, ...) is active. The
    pattern linears then run their plain-PyTorch reference twins, which every transform handles: the eager
    Functions and the registered ops support none of them. Slower (dense masked GEMMs), the same numbers."""
    return torch._C._are_functorch_transforms_active()  # what torch.autograd.Function.apply asks too


def check_patterns(name: str, kind: type, patterns: Sequence[object]) -> None:
    """ValueError unless ``patterns`` is a non-empty sequence of ``kind`` (RowPattern or TilePattern)."""
    if isinstance(patterns, (str, bytes)) or not isinstance(patterns, Sequence) or not patterns:
        raise ValueError(f"{name}: patterns must be a non-empty sequence of {kind.__name__}, got {patterns!r}")
    for q in patterns:
        if not isinstance(q, kind):
            raise ValueError(f"{name}: expected a {kind.__name__}, got {type(q).__name__} {q!r}")


def pattern_ints(in_patterns: Sequence[RowPattern], out_patterns: Sequence[RowPattern]) -> tuple:
    """(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets) of per-group patterns sharing dp and keep."""
    for side, patterns in (("in", in_patterns), ("out", out_patterns)):
        if len({(q.dp, q.keep) for q in patterns}) != 1:
            raise ValueError(f"the groups' {side} patterns must share dp and keep, got {patterns}")
    i0, o0 = in_patterns[0], out_patterns[0]
    return i0.dp, i0.keep, [q.offset for q in in_patterns], o0.dp, o0.keep, [q.offset for q in out_patterns]
