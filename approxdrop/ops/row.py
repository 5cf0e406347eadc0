"""``approxdrop::row_linear`` and its backward op (see ``approxdrop.ops``)."""

from __future__ import annotations

import torch

from ..patterns import RowPattern, periodic_count
from .common import (
    check_backward_args,
    check_linear_args,
    check_weight,
    empty_grads,
    flat,
    kept_weight,
    put_block,
    register_autocast,
    register_backward,
    take,
)


def row_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_pattern: RowPattern,
    out_pattern: RowPattern,
) -> torch.Tensor:
    """Slow, obviously-correct twin: dense masked GEMM on full-size tensors, then compaction."""
    n_out, n_in = weight.shape
    full_x = x.new_zeros(*x.shape[:-1], n_in)
    full_x[..., in_pattern.keep_mask(n_in, x.device)] = x
    y = torch.nn.functional.linear(full_x * in_pattern.scale, weight, bias)
    return y[..., out_pattern.keep_mask(n_out, y.device)]


def row_linear_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_dp: int,
    in_offset: int,
    in_keep: int,
    out_dp: int,
    out_offset: int,
    out_keep: int,
) -> torch.Tensor:
    """The PyTorch implementation of ``approxdrop::row_linear``: the CPU path, the fallback on a GPU
    without kernels, and the oracle the CUDA kernels are tested against."""
    in_p, out_p = RowPattern(in_dp, in_offset, in_keep), RowPattern(out_dp, out_offset, out_keep)
    check_weight("row_linear", weight)
    n_out, n_in = weight.shape
    check_linear_args("row_linear", x, weight, bias, in_p.kept_count(n_in))
    rows, cols = out_p.selector(n_out, x.device), in_p.selector(n_in, x.device)
    w_kept = kept_weight(weight, rows, cols)  # [k_out, k_in]
    x2 = flat(x)  # [N, k_in]
    if bias is None:
        y = torch.mm(x2, w_kept.t()).mul_(in_p.scale)
    else:
        y = torch.addmm(take(bias, 0, rows), x2, w_kept.t(), alpha=in_p.scale)
    return y.reshape(*x.shape[:-1], y.shape[-1])  # [*, k_out]


@torch.library.custom_op("approxdrop::row_linear", mutates_args=())
def row_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_dp: int,
    in_offset: int,
    in_keep: int,
    out_dp: int,
    out_offset: int,
    out_keep: int,
) -> torch.Tensor:
    """Kept outputs of a layer from its kept inputs (see module docstring)."""
    return row_linear_torch(x, weight, bias, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep)


@row_linear.register_fake
def _(x, weight, bias, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep):
    # also the Meta kernel: a CPU x with meta weights lands here, so check like the real op
    check_weight("row_linear", weight)
    check_linear_args("row_linear", x, weight, bias, periodic_count(weight.shape[1], in_dp, in_offset, in_keep))
    k_out = periodic_count(weight.shape[0], out_dp, out_offset, out_keep)  # SymInt-safe
    return x.new_empty(*x.shape[:-1], k_out)


def row_linear_backward_torch(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    in_dp: int,
    in_offset: int,
    in_keep: int,
    out_dp: int,
    out_offset: int,
    out_keep: int,
    need_grad_x: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The PyTorch implementation of ``approxdrop::row_linear_backward``: the CPU path, the fallback on a GPU
    without kernels, and the oracle the CUDA kernels are tested against."""
    in_p, out_p = RowPattern(in_dp, in_offset, in_keep), RowPattern(out_dp, out_offset, out_keep)
    check_weight("row_linear_backward", weight)
    n_out, n_in = weight.shape
    check_backward_args("row_linear_backward", grad_y, x, weight, in_p.kept_count(n_in), out_p.kept_count(n_out))
    rows, cols = out_p.selector(n_out, x.device), in_p.selector(n_in, x.device)
    w_kept = kept_weight(weight, rows, cols)  # [k_out, k_in]
    g2 = flat(grad_y)  # [N, k_out]
    g_scaled = g2 * in_p.scale  # scale the small operand once, not the two products
    grad_x = torch.mm(g_scaled, w_kept).reshape(x.shape) if need_grad_x else x.new_empty(0)
    grad_w = weight.new_zeros(weight.shape)  # contiguous, as the fake says
    put_block(grad_w, torch.mm(g_scaled.t(), flat(x)), rows, cols)
    grad_b = weight.new_zeros(n_out)
    grad_b[rows] = g2.sum(0)
    return grad_x, grad_w, grad_b


@torch.library.custom_op("approxdrop::row_linear_backward", mutates_args=())
def row_linear_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    in_dp: int,
    in_offset: int,
    in_keep: int,
    out_dp: int,
    out_offset: int,
    out_keep: int,
    need_grad_x: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (x: [*, k_in], weight: [n_out, n_in], bias: [n_out]) of ``row_linear``.
    Weights and biases outside the kept rows and columns get exactly zero. With
    ``need_grad_x=False`` (a first layer) grad_x is skipped and returned empty."""
    return row_linear_backward_torch(
        grad_y, x, weight, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep, need_grad_x
    )


@row_linear_backward.register_fake
def _(grad_y, x, weight, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep, need_grad_x=True):
    check_weight("row_linear_backward", weight)
    k_in = periodic_count(weight.shape[1], in_dp, in_offset, in_keep)
    k_out = periodic_count(weight.shape[0], out_dp, out_offset, out_keep)
    check_backward_args("row_linear_backward", grad_y, x, weight, k_in, k_out)
    return empty_grads(x, weight, need_grad_x)


register_backward(row_linear, row_linear_backward)
register_autocast("row_linear", row_linear)
register_autocast("row_linear_backward", row_linear_backward)
