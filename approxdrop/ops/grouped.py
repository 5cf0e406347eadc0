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
from .common import check_weight, flat, kept_weight, take


def group_bounds(batch: int, groups: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each group along a batch of ``batch``, as ``torch.tensor_split`` splits."""
    base, extra = divmod(batch, groups)
    bounds, start = [], 0
    for g in range(groups):
        stop = start + base + (1 if g < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _pairs(x: torch.Tensor, in_offsets: list[int], out_offsets: list[int]) -> dict[tuple[int, int], torch.Tensor]:
    """(out offset, in offset) -> Long[m]: the batch positions of the groups carrying that pair."""
    batch = x.shape[-2]
    positions: dict[tuple[int, int], list[torch.Tensor]] = {}
    for (start, stop), i, o in zip(group_bounds(batch, len(in_offsets)), in_offsets, out_offsets):
        if stop > start:
            positions.setdefault((o, i), []).append(torch.arange(start, stop, device=x.device))
    return {pair: torch.cat(parts) for pair, parts in positions.items()}


def _check(x, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets) -> None:
    check_weight("grouped_row_linear", weight)
    if len(in_offsets) != len(out_offsets) or not in_offsets:
        raise ValueError(
            f"grouped_row_linear: need one in and one out offset per group, got {len(in_offsets)} and {len(out_offsets)}"
        )
    for o in in_offsets:
        RowPattern(in_dp, o, in_keep)  # ValueError on bad integers
    for o in out_offsets:
        RowPattern(out_dp, o, out_keep)
    if x.dim() < 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"grouped_row_linear: x must be [*, B, {weight.shape[1]}] (full width, batch axis second-to-last), "
            f"got shape {tuple(x.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"grouped_row_linear: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if x.device != weight.device or (bias is not None and bias.device != weight.device):
        raise ValueError(f"grouped_row_linear: x, weight and bias must be on one device, got {x.device}, {weight.device}")


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
    for (o_out, o_in), where in _pairs(x, in_offsets, out_offsets).items():
        rows = RowPattern(out_dp, o_out, out_keep).selector(n_out, x.device)
        cols = RowPattern(in_dp, o_in, in_keep).selector(n_in, x.device)
        xs = take(x.index_select(-2, where), x.dim() - 1, cols)  # [*, m, k_in]
        w_kept = kept_weight(weight, rows, cols)  # [k_out, k_in]
        b_kept = None if bias is None else take(bias, 0, rows)
        ys = torch.nn.functional.linear(xs * scale, w_kept, b_kept)  # [*, m, k_out]
        block = x.new_zeros(*ys.shape[:-1], n_out)  # [*, m, n_out]
        block[..., rows] = ys
        y.index_copy_(-2, where, block)
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
    if grad_y.shape != (*x.shape[:-1], weight.shape[0]):
        raise ValueError(
            f"grouped_row_linear_backward: grad_y must have shape {(*x.shape[:-1], weight.shape[0])}, "
            f"got {tuple(grad_y.shape)}"
        )
    n_out, n_in = weight.shape
    scale = in_dp / in_keep
    grad_x = x.new_zeros(x.shape) if need_grad_x else x.new_empty(0)  # [*, B, n_in]
    grad_w = weight.new_zeros(weight.shape)  # [n_out, n_in]
    grad_b = weight.new_zeros(n_out)
    for (o_out, o_in), where in _pairs(x, in_offsets, out_offsets).items():
        rows = RowPattern(out_dp, o_out, out_keep).selector(n_out, x.device)
        cols = RowPattern(in_dp, o_in, in_keep).selector(n_in, x.device)
        g_kept = flat(take(grad_y.index_select(-2, where), x.dim() - 1, rows))  # [N, k_out]
        grad_b[rows] += g_kept.sum(0)
        g = g_kept * scale  # scale the small operand once, not the two products
        xs = flat(take(x.index_select(-2, where), x.dim() - 1, cols))  # [N, k_in]
        block_w = g.t() @ xs  # [k_out, k_in]
        if isinstance(rows, slice) and isinstance(cols, slice):
            grad_w[rows, cols] += block_w
        else:
            r = torch.arange(n_out, device=x.device)[rows] if isinstance(rows, slice) else rows
            c = torch.arange(n_in, device=x.device)[cols] if isinstance(cols, slice) else cols
            grad_w.index_put_((r[:, None], c[None, :]), block_w, accumulate=True)
        if need_grad_x:
            gx = (g @ kept_weight(weight, rows, cols)).reshape(*x.shape[:-2], len(where), -1)  # [*, m, k_in]
            block = torch.zeros_like(x.index_select(-2, where))  # [*, m, n_in]
            block[..., cols] = gx
            grad_x.index_copy_(-2, where, block)
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
    grad_x = x.new_empty(x.shape) if need_grad_x else x.new_empty(0)  # real outputs are contiguous
    return grad_x, weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])


def _setup(ctx, inputs, output):
    x, weight, bias, *ints = inputs
    ctx.save_for_backward(x, weight)
    ctx.ints = ints
    ctx.has_bias = bias is not None


def _backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    grad_x, grad_w, grad_b = grouped_row_linear_backward(grad_y, x, weight, *ctx.ints, need_x)
    return (grad_x if need_x else None, grad_w, grad_b if ctx.has_bias else None) + (None,) * 6


grouped_row_linear.register_autograd(_backward, setup_context=_setup)


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
    return grouped_row_linear(
        x, weight, bias, i0.dp, i0.keep, [q.offset for q in in_patterns], o0.dp, o0.keep, [q.offset for q in out_patterns]
    )


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
