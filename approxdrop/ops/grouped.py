"""``approxdrop::grouped_row_linear`` and its backward op: row patterns with one offset per batch group
(grouped complementary patterns, METHOD.md §9).

The batch axis of x (the second-to-last) is split into ``G`` groups as ``torch.tensor_split`` does
(any batch size, also smaller than G). Group ``g`` keeps the input units of
``RowPattern(in_dp, in_offsets[g], in_keep)`` and computes the output units of
``RowPattern(out_dp, out_offsets[g], out_keep)``; every group shares ``(dp, keep)`` on each side.
Activations stay full width: x (Tensor[*, B, n_in]) is read only at each group's kept input units,
and y (Tensor[*, B, n_out]) is zero at each group's dropped output units:

    y[g] = (in_scale * x[g][:, kept_in(g)] @ W[kept_out(g)][:, kept_in(g)].T + b[kept_out(g)]) at kept_out(g)

Executor: one GEMM per distinct (out offset, in offset) pair, on the samples of the groups that
carry it. There are at most ``out_dp * in_dp`` pairs whatever G is, and for keep = 1 their weight
blocks cover W at most once: no [G, k_out, k_in] copy of the weight is ever made.
"""

from __future__ import annotations

import torch

from ..patterns import RowPattern
from .common import (
    as_index,
    check_backward_args,
    check_linear_args,
    check_weight,
    flat,
    kept_weight,
    put_block,
    register_autocast,
    register_backward,
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


def _pairs(batch: int, in_offsets: list[int], out_offsets: list[int]) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """(out offset, in offset) -> the batch segments ``(start, stop)`` of the groups carrying that pair."""
    segments: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for (start, stop), i, o in zip(group_bounds(batch, len(in_offsets)), in_offsets, out_offsets):
        if stop > start:
            segments.setdefault((o, i), []).append((start, stop))
    return segments


def _read(t: torch.Tensor, segments: list[tuple[int, int]], cols) -> torch.Tensor:
    """t[..., segments, cols] (Tensor[*, m, k]): a view of one segment, else the segments stacked."""
    parts = [take(t[..., start:stop, :], t.dim() - 1, cols) for start, stop in segments]
    return parts[0] if len(parts) == 1 else torch.cat(parts, -2)


def _write(dst: torch.Tensor, segments: list[tuple[int, int]], cols, value: torch.Tensor) -> None:
    """dst[..., segments, cols] = value (Tensor[*, m, k], the segments stacked), in place."""
    first = 0
    for start, stop in segments:
        dst[..., start:stop, cols] = value[..., first : first + stop - start, :]
        first += stop - start


def _disjoint(in_keep: int, in_dp: int, out_keep: int, out_dp: int) -> bool:
    """True when distinct (out offset, in offset) pairs have disjoint weight blocks (keep = 1, or a
    side kept whole), so their weight gradients can be written, not added."""
    return (in_keep == 1 or in_keep == in_dp) and (out_keep == 1 or out_keep == out_dp)


def _check(x, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets) -> None:
    check_weight("grouped_row_linear", weight)
    if len(in_offsets) != len(out_offsets) or not in_offsets:
        raise ValueError(
            "grouped_row_linear: need one in and one out offset per group, "
            f"got {len(in_offsets)} and {len(out_offsets)}"
        )
    for o in in_offsets:
        RowPattern(in_dp, o, in_keep)  # ValueError on bad integers
    for o in out_offsets:
        RowPattern(out_dp, o, out_keep)
    if x.dim() < 2:
        raise ValueError(
            f"grouped_row_linear: x must be [*, B, n_in] (batch axis second-to-last), got {tuple(x.shape)}"
        )
    check_linear_args("grouped_row_linear (x full width)", x, weight, bias, weight.shape[1])


def grouped_row_linear_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
) -> torch.Tensor:
    """The PyTorch implementation of ``approxdrop::grouped_row_linear`` (see the module docstring)."""
    _check(x, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    n_out, n_in = weight.shape
    scale = in_dp / in_keep
    y = x.new_zeros(*x.shape[:-1], n_out)  # [*, B, n_out]: zero at every group's dropped outputs
    for (o_out, o_in), segments in _pairs(x.shape[-2], in_offsets, out_offsets).items():
        rows = RowPattern(out_dp, o_out, out_keep).selector(n_out, x.device)
        cols = RowPattern(in_dp, o_in, in_keep).selector(n_in, x.device)
        xs = _read(x, segments, cols)  # [*, m, k_in]
        w_kept = kept_weight(weight, rows, cols)  # [k_out, k_in]
        b_kept = None if bias is None else take(bias, 0, rows)
        x2 = flat(xs)  # [N, k_in]
        if b_kept is None:
            ys = torch.mm(x2, w_kept.t()).mul_(scale)  # [N, k_out]
        else:
            ys = torch.addmm(b_kept, x2, w_kept.t(), alpha=scale)
        _write(y, segments, rows, ys.reshape(*xs.shape[:-1], -1))  # [*, m, k_out] into the kept outputs
    return y


@torch.library.custom_op("approxdrop::grouped_row_linear", mutates_args=())
def grouped_row_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
) -> torch.Tensor:
    """Row patterns with one (in, out) offset per batch group (see the module docstring)."""
    return grouped_row_linear_torch(x, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)


@grouped_row_linear.register_fake
def _(x, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets):
    # also the Meta kernel: a CPU x with meta weights lands here, so check like the real op
    _check(x, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def grouped_row_linear_backward_torch(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
    need_grad_x: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The PyTorch implementation of ``approxdrop::grouped_row_linear_backward``: per pair, the kept
    block of grad_x, and the weight and bias gradient blocks added into zeroed full-size gradients."""
    check_weight("grouped_row_linear_backward", weight)
    check_backward_args("grouped_row_linear_backward", grad_y, x, weight, weight.shape[1], weight.shape[0])
    n_out, n_in = weight.shape
    scale = in_dp / in_keep
    grad_x = x.new_zeros(x.shape) if need_grad_x else x.new_empty(0)  # [*, B, n_in]
    grad_w = weight.new_zeros(weight.shape)  # [n_out, n_in]
    grad_b = weight.new_zeros(n_out)
    disjoint = _disjoint(in_keep, in_dp, out_keep, out_dp)
    for (o_out, o_in), segments in _pairs(x.shape[-2], in_offsets, out_offsets).items():
        rows = RowPattern(out_dp, o_out, out_keep).selector(n_out, x.device)
        cols = RowPattern(in_dp, o_in, in_keep).selector(n_in, x.device)
        g_kept = _read(grad_y, segments, rows)  # [*, m, k_out]
        lead = g_kept.shape[:-1]
        g_kept = flat(g_kept)  # [N, k_out]
        grad_b[rows] += g_kept.sum(0)
        g = g_kept * scale  # scale the small operand once, not the two products
        block_w = g.t() @ flat(_read(x, segments, cols))  # [k_out, k_in]
        if disjoint:
            put_block(grad_w, block_w, rows, cols)
        else:  # blocks of keep > 1 patterns overlap: add
            r, c = as_index(rows, n_out, x.device), as_index(cols, n_in, x.device)
            grad_w.index_put_((r[:, None], c[None, :]), block_w, accumulate=True)
        if need_grad_x:
            gx = (g @ kept_weight(weight, rows, cols)).reshape(*lead, -1)  # [*, m, k_in]
            _write(grad_x, segments, cols, gx)
    return grad_x, grad_w, grad_b


@torch.library.custom_op("approxdrop::grouped_row_linear_backward", mutates_args=())
def grouped_row_linear_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
    need_grad_x: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (x: [*, B, n_in], weight: [n_out, n_in], bias: [n_out]) of ``grouped_row_linear``;
    weights outside every group's kept block get exactly zero."""
    return grouped_row_linear_backward_torch(
        grad_y, x, weight, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets, need_grad_x
    )


@grouped_row_linear_backward.register_fake
def _(grad_y, x, weight, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets, need_grad_x=True):
    check_weight("grouped_row_linear_backward", weight)
    check_backward_args("grouped_row_linear_backward", grad_y, x, weight, weight.shape[1], weight.shape[0])
    grad_x = x.new_empty(x.shape) if need_grad_x else x.new_empty(0)  # real outputs are contiguous
    return grad_x, weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])


register_backward(grouped_row_linear, grouped_row_linear_backward)
register_autocast("grouped_row_linear", grouped_row_linear)
register_autocast("grouped_row_linear_backward", grouped_row_linear_backward)


def grouped_row_pattern_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_patterns: list[RowPattern],
    out_patterns: list[RowPattern],
) -> torch.Tensor:
    """``grouped_row_linear`` taking one RowPattern per group and side (each side shares dp and keep)."""
    for side, patterns in (("in", in_patterns), ("out", out_patterns)):
        if len({(q.dp, q.keep) for q in patterns}) != 1:
            raise ValueError(f"the groups' {side} patterns must share dp and keep, got {patterns}")
    i0, o0 = in_patterns[0], out_patterns[0]
    in_offsets, out_offsets = [q.offset for q in in_patterns], [q.offset for q in out_patterns]
    return grouped_row_linear(x, weight, bias, i0.dp, i0.keep, in_offsets, o0.dp, o0.keep, out_offsets)


def grouped_row_linear_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, in_patterns: list, out_patterns: list
) -> torch.Tensor:
    """Slow, obviously-correct twin: a dense GEMM with one input mask per group (scaled), broadcast within
    the group, and the output zeroed at each group's dropped units."""
    n_out, n_in = weight.shape
    bounds = group_bounds(x.shape[-2], len(in_patterns))
    in_mask = x.new_zeros(x.shape[-2], n_in)  # [B, n_in]
    out_mask = x.new_zeros(x.shape[-2], n_out)  # [B, n_out]
    for (start, stop), pin, pout in zip(bounds, in_patterns, out_patterns):
        in_mask[start:stop] = pin.keep_mask(n_in, x.device).to(x.dtype) * pin.scale
        out_mask[start:stop] = pout.keep_mask(n_out, x.device).to(x.dtype)
    return torch.nn.functional.linear(x * in_mask, weight, bias) * out_mask
