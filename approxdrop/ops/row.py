"""``approxdrop::row_linear`` and its backward op (see ``approxdrop.ops``).

Where BLAS needs the kept block ``W[kept_out][:, kept_in]`` gathered (some inputs dropped: on a CPU, and
on the cuBLAS path of a GPU), forward gathers it once and returns it, autograd saves it, and backward
reuses it; when every input is kept the GEMMs read W's kept rows in place and the block is empty.
"""

from __future__ import annotations

import torch

from ..patterns import RowPattern, periodic_count
from .common import (
    block_product,
    check_backward_args,
    check_linear_args,
    check_weight,
    empty_grads,
    flat,
    gather_block,
    register_autocast,
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


def _gathers(in_dp: int, in_keep: int) -> bool:
    """Whether the kept block is gathered (some input columns dropped); else it is a view of W's kept rows."""
    return in_keep < in_dp


def check_block(block: torch.Tensor, in_dp: int, in_keep: int, k_out: int, k_in: int) -> bool:
    """ValueError unless ``block`` has the shape ``row_linear`` returns: [k_out, k_in] when the kept block was
    gathered, (0,) when every input is kept. Returns whether it holds a gathered block."""
    gathered = _gathers(in_dp, in_keep)
    want = (k_out, k_in) if gathered else (0,)
    if tuple(block.shape) != want:
        raise ValueError(
            f"row_linear_backward: block must have shape {want} (what row_linear returned), got {tuple(block.shape)}"
        )
    return gathered


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch implementation of ``approxdrop::row_linear``: the CPU path, the fallback on a GPU
    without kernels, and the oracle the CUDA paths are tested against."""
    in_p, out_p = RowPattern(in_dp, in_offset, in_keep), RowPattern(out_dp, out_offset, out_keep)
    check_weight("row_linear", weight)
    check_linear_args("row_linear", x, weight, bias, in_p.kept_count(weight.shape[1]))
    rows, cols = out_p.selector(weight.shape[0], x.device), in_p.selector(weight.shape[1], x.device)
    if not _gathers(in_dp, in_keep):  # W's kept rows: a view for a slice
        return _kept_linear(x, take(weight, 0, rows), bias, rows, in_p.scale), weight.new_empty(0)
    block = gather_block(weight, rows, cols)  # [k_out, k_in], fresh: an output may not alias W
    return _kept_linear(x, block, bias, rows, in_p.scale), block


def _kept_linear(
    x: torch.Tensor, w_kept: torch.Tensor, bias: torch.Tensor | None, rows: slice | torch.Tensor, scale: float
) -> torch.Tensor:
    """x (Tensor[*, k_in]), w_kept (Tensor[k_out, k_in]) -> ``scale * x @ w_kept.T + bias[rows]`` (Tensor[*, k_out])."""
    x2 = flat(x)  # [N, k_in]
    if bias is None:
        y = torch.mm(x2, w_kept.t())
        if scale != 1.0:
            y.mul_(scale)
    else:
        y = torch.addmm(take(bias, 0, rows), x2, w_kept.t(), alpha=scale)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], y.shape[-1])  # [*, k_out]


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept outputs (Tensor[*, k_out]) of a layer from its kept inputs (see ``approxdrop.ops``), and the kept
    block ``W[kept_out][:, kept_in]`` it gathered (Tensor[k_out, k_in]; empty, shape (0,), when every input
    is kept). The block is not differentiable; autograd saves it, and backward reuses it."""
    return row_linear_torch(x, weight, bias, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep)


@row_linear.register_fake
def _(x, weight, bias, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep):
    # also the Meta kernel: a CPU x with meta weights lands here, so check like the real op
    check_weight("row_linear", weight)
    k_in = periodic_count(weight.shape[1], in_dp, in_offset, in_keep)
    check_linear_args("row_linear", x, weight, bias, k_in)
    k_out = periodic_count(weight.shape[0], out_dp, out_offset, out_keep)  # SymInt-safe
    block = weight.new_empty(k_out, k_in) if _gathers(in_dp, in_keep) else weight.new_empty(0)
    return x.new_empty(*x.shape[:-1], k_out), block


def row_linear_backward_torch(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    block: torch.Tensor,
    in_dp: int,
    in_offset: int,
    in_keep: int,
    out_dp: int,
    out_offset: int,
    out_keep: int,
    need_grad_x: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The PyTorch implementation of ``approxdrop::row_linear_backward``: the CPU path, the fallback on a GPU
    without kernels, and the oracle the CUDA paths are tested against."""
    in_p, out_p = RowPattern(in_dp, in_offset, in_keep), RowPattern(out_dp, out_offset, out_keep)
    check_weight("row_linear_backward", weight)
    n_out, n_in = weight.shape
    k_in, k_out = in_p.kept_count(n_in), out_p.kept_count(n_out)
    check_backward_args("row_linear_backward", grad_y, x, weight, k_in, k_out)
    check_block(block, in_dp, in_keep, k_out, k_in)
    rows, cols = out_p.selector(n_out, x.device), in_p.selector(n_in, x.device)
    w_kept = block if _gathers(in_dp, in_keep) else take(weight, 0, rows)  # [k_out, k_in]
    return _kept_backward(grad_y, x, weight, w_kept, rows, cols, in_p.scale, need_grad_x)


def _kept_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    w_kept: torch.Tensor,
    rows: slice | torch.Tensor,
    cols: slice | torch.Tensor,
    scale: float,
    need_grad_x: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``_kept_linear`` given the kept block w_kept (Tensor[k_out, k_in]) of weight: grad_x
    (Tensor[*, k_in], empty unless ``need_grad_x``), grad_w (Tensor[n_out, n_in], contiguous, zero outside
    the block) and grad_b (Tensor[n_out], zero outside the kept rows)."""
    g2 = flat(grad_y)  # [N, k_out]
    g_scaled = g2 * scale if scale != 1.0 else g2  # scale the small operand once, not the two products
    grad_x = x.new_empty(0)
    if need_grad_x:
        grad_x = torch.mm(g_scaled, w_kept)
        grad_x = grad_x if x.dim() == 2 else grad_x.reshape(x.shape)  # [*, k_in]
    grad_w = block_product(g_scaled.t(), flat(x), weight.shape, rows, cols)
    if rows == slice(0, weight.shape[0]):
        return grad_x, grad_w, g2.sum(0)
    grad_b = weight.new_zeros(weight.shape[0])
    grad_b[rows] = g2.sum(0)
    return grad_x, grad_w, grad_b


@torch.library.custom_op("approxdrop::row_linear_backward", mutates_args=())
def row_linear_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    block: torch.Tensor,
    in_dp: int,
    in_offset: int,
    in_keep: int,
    out_dp: int,
    out_offset: int,
    out_keep: int,
    need_grad_x: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (x: [*, k_in], weight: [n_out, n_in], bias: [n_out]) of ``row_linear``, reading the kept
    block it returned (W gives the shapes, and the kept rows when the block is empty). Weights and biases
    outside the kept rows and columns get exactly zero. With ``need_grad_x=False`` (a first layer) grad_x
    is skipped and returned empty."""
    return row_linear_backward_torch(
        grad_y, x, weight, block, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep, need_grad_x
    )


@row_linear_backward.register_fake
def _(grad_y, x, weight, block, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep, need_grad_x=True):
    check_weight("row_linear_backward", weight)
    k_in = periodic_count(weight.shape[1], in_dp, in_offset, in_keep)
    k_out = periodic_count(weight.shape[0], out_dp, out_offset, out_keep)
    check_backward_args("row_linear_backward", grad_y, x, weight, k_in, k_out)
    return empty_grads(x, weight, need_grad_x)


def _save_block(ctx, inputs, output) -> None:
    x, weight, bias, *ints = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the block
    ctx.ints, ctx.has_bias = ints, bias is not None


def _backward(ctx, grad_y, _grad_block):
    x, weight, block = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    if grad_y is None:  # the output was not used
        return (None,) * (3 + len(ctx.ints))
    grad_x, grad_w, grad_b = row_linear_backward(grad_y, x, weight, block, *ctx.ints, need_x)
    return (grad_x if need_x else None, grad_w, grad_b if ctx.has_bias else None) + (None,) * len(ctx.ints)


row_linear.register_autograd(_backward, setup_context=_save_block)
register_autocast("row_linear", row_linear)
register_autocast("row_linear_backward", row_linear_backward)
