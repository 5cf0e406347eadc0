"""``approxdrop::tile_linear`` and its backward op: tile patterns with one offset per batch group (see
``approxdrop.ops``; one group is the paper's method).

The groups share ``(dp, keep, tile)``; the batch axis of x (the second-to-last) splits into ``G =
len(offsets)`` groups as ``torch.tensor_split`` does, and one pattern runs once per distinct offset, on the
rows of the groups that drew it (``run_forward`` / ``run_backward``, the one loop of the PyTorch and
kernel paths; ``tile_layout`` is the PyTorch executor of one pattern).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._env import check_int
from ..patterns import INT64_MAX, TilePattern
from .common import (
    bias_stand_in,
    check_backward_args,
    check_linear_args,
    check_pattern_ints,
    check_weight,
    concrete,
    custom_op,
    empty_grads,
    owned,
    reference_grads,
    register_autocast,
    register_backward,
)
from .grouped import group_bounds
from .tile_layout import tile_backward, tile_forward


def tile_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    patterns: TilePattern | Sequence[TilePattern],
) -> torch.Tensor:
    """Slow, obviously-correct twin of ``tile_linear``: DropConnect with the full element mask of each group's
    pattern (one TilePattern: one group), on the group's rows of x (Tensor[*, B, n_in]) -> Tensor[*, B, n_out]."""
    if not isinstance(patterns, TilePattern) and len(patterns) == 1:
        patterns = patterns[0]  # one group: any x, with a batch axis or not (a vmapped sample is 1-D)
    if isinstance(patterns, TilePattern):
        mask = patterns.keep_mask(*weight.shape, device=weight.device)
        return torch.nn.functional.linear(x, weight * mask * patterns.scale, bias)
    bounds = group_bounds(x.shape[-2], len(patterns))
    parts = [tile_linear_reference(x[..., a:b, :], weight, bias, q) for (a, b), q in zip(bounds, patterns)]
    return torch.cat(parts, -2)


def reference_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    has_bias: bool,
    dp: int,
    keep: int,
    tile: int,
    offsets: list[int],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(grad_x, grad_w, grad_b) of ``tile_linear`` from ``tile_linear_reference`` with create_graph=True
    (``common.reference_grads``): the backward under create_graph, differentiable itself."""
    patterns = [TilePattern(dp, o, tile, keep) for o in offsets]

    def reference(x, w, b):
        return tile_linear_reference(x, w, b, patterns)

    grad_x, grad_w, grad_b = reference_grads(reference, [x, weight, bias_stand_in(weight, has_bias)], grad_y)
    return grad_x, grad_w, grad_b


def check_tile(name: str, x, weight, dp: int, keep: int, tile: int, offsets: list[int]) -> None:
    """The tile op's integers and operands; x (Tensor[*, B, n_in]) needs a batch axis for several groups."""
    if not offsets or (len(offsets) > 1 and x.dim() < 2):
        raise ValueError(
            f"{name}: x must be [*, B, n_in] and offsets one per group, got x of shape {tuple(x.shape)} and "
            f"{len(offsets)} offsets"
        )
    if concrete(dp, keep, tile, *offsets):
        check_pattern_ints(name, dp, keep, offsets)
        check_int(f"{name}: tile", tile, 1, INT64_MAX)
    check_weight(name, weight)


def _segments(batch: int, dp: int, keep: int, offsets: list[int]) -> dict[int, list[tuple[int, int]]]:
    """offset -> the batch segments ``(start, stop)`` of the groups that drew it, adjacent groups merged (every
    offset is one pattern when keep == dp), empty groups left out."""
    by_offset: dict[int, list[tuple[int, int]]] = {}
    for (start, stop), o in zip(group_bounds(batch, len(offsets)), offsets):
        segments = by_offset.setdefault(0 if keep == dp else o, [])
        if stop > start and segments and segments[-1][1] == start:
            segments[-1] = (segments[-1][0], stop)
        elif stop > start:
            segments.append((start, stop))
    return {o: segments for o, segments in by_offset.items() if segments}


def _rows(t: torch.Tensor, segments: list[tuple[int, int]]) -> torch.Tensor:
    """t's rows of the segments along the batch axis: Tensor[*, m, n] (a view for one segment)."""
    parts = [t[..., start:stop, :] for start, stop in segments]
    return parts[0] if len(parts) == 1 else torch.cat(parts, -2)


def _place(rows: dict[int, torch.Tensor], segments: list[tuple[int, int]], value: torch.Tensor) -> None:
    """rows[start] = value's rows of each segment (value: Tensor[*, m, n], the segments stacked)."""
    parts = value.split([stop - start for start, stop in segments], -2) if len(segments) > 1 else (value,)
    for (start, _), part in zip(segments, parts):
        rows[start] = part


def _in_order(rows: dict[int, torch.Tensor]) -> torch.Tensor:
    """The segments' rows in batch order: Tensor[*, B, n]."""
    return torch.cat([rows[start] for start in sorted(rows)], -2)


def run_forward(x, weight, bias, dp: int, keep: int, tile: int, offsets: list[int], one=tile_forward) -> torch.Tensor:
    """``tile_linear`` on checked operands: ``one(x, weight, bias, dp, offset, keep, tile)`` (one pattern; default
    PyTorch's) once per distinct offset on its groups' rows -> Tensor[*, B, n_out], not a view (``owned``)."""
    segments = _segments(x.shape[-2], dp, keep, offsets) if len(offsets) > 1 else {}
    if len(segments) <= 1:  # one pattern for every row (or no rows)
        return owned(one(x, weight, bias, dp, next(iter(segments), offsets[0]), keep, tile))
    ys: dict[int, torch.Tensor] = {}
    for offset, where in segments.items():
        _place(ys, where, one(_rows(x, where), weight, bias, dp, offset, keep, tile))  # [*, B_q, n_out]
    return _in_order(ys)


def run_backward(
    grad_y, x, weight, dp: int, keep: int, tile: int, offsets: list[int], need_grad_x: bool, one=tile_backward
):
    """``tile_linear_backward`` on checked operands, ``one(grad_y, x, weight, dp, offset, keep, tile, need_grad_x)``
    per distinct offset (default PyTorch's): each offset's grad_x rows, and the weight and bias gradients summed."""
    segments = _segments(x.shape[-2], dp, keep, offsets) if len(offsets) > 1 else {}
    if len(segments) <= 1:
        return one(grad_y, x, weight, dp, next(iter(segments), offsets[0]), keep, tile, need_grad_x)
    grad_xs: dict[int, torch.Tensor] = {}
    grad_w = grad_b = None
    for offset, where in segments.items():
        gx, gw, gb = one(_rows(grad_y, where), _rows(x, where), weight, dp, offset, keep, tile, need_grad_x)
        grad_w, grad_b = (gw, gb) if grad_w is None else (grad_w.add_(gw), grad_b.add_(gb))  # fresh: ours to add to
        if need_grad_x:
            _place(grad_xs, where, gx)  # [*, B_q, n_in]
    return _in_order(grad_xs) if need_grad_x else x.new_empty(0), grad_w, grad_b


def tile_linear_torch(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dp: int, keep: int, tile: int, offsets: list[int]
) -> torch.Tensor:
    """The PyTorch implementation of ``approxdrop::tile_linear``: the CPU path, the fallback on a GPU
    without kernels, and the oracle the CUDA kernels are tested against."""
    check_tile("tile_linear", x, weight, dp, keep, tile, offsets)
    check_linear_args("tile_linear", x, weight, bias, weight.shape[1])
    return run_forward(x, weight, bias, dp, keep, tile, offsets)


@custom_op("approxdrop::tile_linear")
def tile_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dp: int, keep: int, tile: int, offsets: list[int]
) -> torch.Tensor:
    """DropConnect on T x T tiles with one offset per batch group: x (Tensor[*, B, n_in]; any x with one group)
    -> ``x @ (W * tile_mask(g) * dp/keep).T + b`` on group g's rows, Tensor[*, B, n_out]."""
    return tile_linear_torch(x, weight, bias, dp, keep, tile, offsets)


@tile_linear.register_fake
def _(x, weight, bias, dp, keep, tile, offsets):
    # also the Meta kernel: a CPU x with meta weights lands here, so check like the real op
    check_tile("tile_linear", x, weight, dp, keep, tile, offsets)
    check_linear_args("tile_linear", x, weight, bias, weight.shape[1])
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def check_tile_backward(grad_y, x, weight, dp: int, keep: int, tile: int, offsets: list[int]) -> None:
    check_tile("tile_linear_backward", x, weight, dp, keep, tile, offsets)
    check_backward_args("tile_linear_backward", grad_y, x, weight, weight.shape[1], weight.shape[0])


def tile_linear_backward_torch(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    dp: int,
    keep: int,
    tile: int,
    offsets: list[int],
    need_grad_x: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The PyTorch implementation of ``approxdrop::tile_linear_backward``: the CPU path, the fallback on a GPU
    without kernels, and the oracle the CUDA kernels are tested against."""
    check_tile_backward(grad_y, x, weight, dp, keep, tile, offsets)
    return run_backward(grad_y, x, weight, dp, keep, tile, offsets, need_grad_x)


@custom_op("approxdrop::tile_linear_backward")
def tile_linear_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    dp: int,
    keep: int,
    tile: int,
    offsets: list[int],
    need_grad_x: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (x: [*, B, n_in], weight: [n_out, n_in], bias: [n_out]) of ``tile_linear``. Weights in every
    group's skipped tiles get exactly zero. With ``need_grad_x=False`` grad_x is skipped and returned empty."""
    return tile_linear_backward_torch(grad_y, x, weight, dp, keep, tile, offsets, need_grad_x)


@tile_linear_backward.register_fake
def _(grad_y, x, weight, dp, keep, tile, offsets, need_grad_x=True):
    check_tile_backward(grad_y, x, weight, dp, keep, tile, offsets)
    return empty_grads(x, weight, need_grad_x)


register_backward(tile_linear, tile_linear_backward, reference_backward)
register_autocast("tile_linear", tile_linear)
register_autocast("tile_linear_backward", tile_linear_backward)
