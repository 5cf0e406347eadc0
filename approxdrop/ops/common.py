"""What the row and tile ops share: index selection, operand checks, and the autograd setup."""

from __future__ import annotations

import math

import torch


def take(t: torch.Tensor, dim: int, sel: slice | torch.Tensor) -> torch.Tensor:
    """``t`` restricted to ``sel`` along ``dim``: a view for a slice, a gather for indices."""
    if isinstance(sel, slice):
        return t[(slice(None),) * dim + (sel,)]
    return t.index_select(dim, sel)


def kept_weight(weight: torch.Tensor, rows, cols) -> torch.Tensor:
    """``weight[rows][:, cols]`` (Tensor[k_out, k_in]) for the GEMMs.

    Kept rows of a row-major weight are a strided view that BLAS reads in place. Kept columns
    are strided in the last dimension, which BLAS cannot read: gather them once, explicitly
    (measured 4-5x cheaper on CPU than the copy a GEMM makes of such a view by itself).
    """
    w = take(weight, 0, rows)  # [k_out, n_in] view
    if isinstance(cols, slice) and cols == slice(0, weight.shape[1]):
        return w
    return take(w, 1, cols).contiguous()  # [k_out, k_in]


def flat(t: torch.Tensor) -> torch.Tensor:
    """Tensor[*, k] -> Tensor[N, k] (explicit N, so k = 0 works)."""
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


def as_index(sel: slice | torch.Tensor, n: int, device) -> torch.Tensor:
    return torch.arange(n, device=device)[sel] if isinstance(sel, slice) else sel


def put_block(full: torch.Tensor, block: torch.Tensor, rows, cols) -> None:
    """Write ``block`` (Tensor[k_r, k_c]) into ``full[rows][:, cols]`` in place."""
    if isinstance(rows, slice) and isinstance(cols, slice):
        full[rows, cols].copy_(block)
        return
    r = as_index(rows, full.shape[0], full.device)
    c = as_index(cols, full.shape[1], full.device)
    full.index_put_((r[:, None], c[None, :]), block)


def check_weight(name: str, weight: torch.Tensor) -> None:
    if weight.dim() != 2:
        raise ValueError(f"{name}: weight must be 2-D [n_out, n_in], got shape {tuple(weight.shape)}")


def check_linear_args(name: str, x: torch.Tensor, weight: torch.Tensor, bias, k_in: int) -> None:
    if x.dim() < 1 or x.shape[-1] != k_in:
        raise ValueError(
            f"{name}: x must have last dimension {k_in} (the kept inputs of weight "
            f"{tuple(weight.shape)}), got shape {tuple(x.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{name}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def empty_grads(x, weight, need_grad_x: bool):
    """Fake outputs of both backward ops: grad_x (empty when not needed), grad_w, grad_b."""
    grad_x = torch.empty_like(x) if need_grad_x else x.new_empty(0)
    return grad_x, torch.empty_like(weight), weight.new_empty(weight.shape[0])


def save_inputs(ctx, inputs, output):
    """Autograd setup shared by both ops: keep x and W, and the pattern as integers."""
    x, weight, bias, *ints = inputs
    ctx.save_for_backward(x, weight)
    ctx.ints = ints
    ctx.has_bias = bias is not None
