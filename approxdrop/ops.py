"""The ``approxdrop::`` ops: pattern linears registered through ``torch.library``.

Each op is defined by the readable pure-PyTorch implementation below; that implementation is the
CPU path, the fallback on a GPU without built kernels, and the oracle the CUDA kernels are
tested against. Patterns travel as integers; backward rebuilds the kept index sets from them,
so no mask or index tensor is ever saved for backward.

row_linear(x, W, b, in_(dp, offset, keep), out_(dp, offset, keep)):
    x (Tensor[*, k_in]) holds only the kept input units (k_in = kept count of the in pattern on
    n_in = W.shape[1]); returns Tensor[*, k_out], the kept output units of the out pattern:
    ``y = in_scale * x @ W[kept_out][:, kept_in].T + b[kept_out]``. A pattern (1, 0, 1) keeps
    everything: use it for a side without dropout.
tile_linear(x, W, b, dp, offset, keep, tile):
    x (Tensor[*, n_in]) -> Tensor[*, n_out]: ``y = x @ (W * tile_mask * dp/keep).T + b``,
    computed as ``dp`` dense blocks that never read a skipped tile.
"""

from __future__ import annotations

import torch

from .patterns import RowPattern, TilePattern, periodic_count

# --------------------------------------------------------------------------- index helpers


def _take(t: torch.Tensor, dim: int, sel: slice | torch.Tensor) -> torch.Tensor:
    """``t`` restricted to ``sel`` along ``dim``: a view for a slice, a gather for indices."""
    if isinstance(sel, slice):
        return t[(slice(None),) * dim + (sel,)]
    return t.index_select(dim, sel)


def _as_index(sel: slice | torch.Tensor, n: int, device) -> torch.Tensor:
    return torch.arange(n, device=device)[sel] if isinstance(sel, slice) else sel


def _put_block(full: torch.Tensor, block: torch.Tensor, rows, cols) -> None:
    """Write ``block`` (Tensor[k_r, k_c]) into ``full[rows][:, cols]`` in place."""
    if isinstance(rows, slice) and isinstance(cols, slice):
        full[rows, cols].copy_(block)
        return
    r = _as_index(rows, full.shape[0], full.device)
    c = _as_index(cols, full.shape[1], full.device)
    full.index_put_((r[:, None], c[None, :]), block)


def _check_linear_args(name: str, x: torch.Tensor, weight: torch.Tensor, bias, k_in: int) -> None:
    if weight.dim() != 2:
        raise ValueError(f"{name}: weight must be 2-D [n_out, n_in], got shape {tuple(weight.shape)}")
    if x.dim() < 1 or x.shape[-1] != k_in:
        raise ValueError(
            f"{name}: x must have last dimension {k_in} (the kept inputs of weight "
            f"{tuple(weight.shape)}), got shape {tuple(x.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{name}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")


# --------------------------------------------------------------------------- row_linear


def row_linear_reference(x, weight, bias, in_pattern: RowPattern, out_pattern: RowPattern):
    """Slow, obviously-correct twin: dense masked GEMM on full-size tensors, then compaction."""
    n_out, n_in = weight.shape
    full_x = x.new_zeros(*x.shape[:-1], n_in)
    full_x[..., in_pattern.keep_mask(n_in, x.device)] = x
    y = torch.nn.functional.linear(full_x * in_pattern.scale, weight, bias)
    return y[..., out_pattern.keep_mask(n_out, y.device)]


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
    in_p, out_p = RowPattern(in_dp, in_offset, in_keep), RowPattern(out_dp, out_offset, out_keep)
    n_out, n_in = weight.shape
    _check_linear_args("row_linear", x, weight, bias, in_p.kept_count(n_in))
    rows, cols = out_p.selector(n_out, x.device), in_p.selector(n_in, x.device)
    w_kept = _take(_take(weight, 0, rows), 1, cols)  # [k_out, k_in]; rows are a strided view
    x2 = x.reshape(-1, x.shape[-1])  # [N, k_in]
    if bias is None:
        y = torch.mm(x2, w_kept.t()).mul_(in_p.scale)
    else:
        y = torch.addmm(_take(bias, 0, rows), x2, w_kept.t(), alpha=in_p.scale)
    return y.reshape(*x.shape[:-1], y.shape[-1])  # [*, k_out]


@row_linear.register_fake
def _(x, weight, bias, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep):
    k_out = periodic_count(weight.shape[0], out_dp, out_offset, out_keep)  # SymInt-safe
    return x.new_empty(*x.shape[:-1], k_out)


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (x: [*, k_in], weight: [n_out, n_in], bias: [n_out]) of ``row_linear``.
    Weights and biases outside the kept rows and columns get exactly zero."""
    in_p, out_p = RowPattern(in_dp, in_offset, in_keep), RowPattern(out_dp, out_offset, out_keep)
    n_out, n_in = weight.shape
    rows, cols = out_p.selector(n_out, x.device), in_p.selector(n_in, x.device)
    w_kept = _take(_take(weight, 0, rows), 1, cols)  # [k_out, k_in]
    g2 = grad_y.reshape(-1, grad_y.shape[-1])  # [N, k_out]
    x2 = x.reshape(-1, x.shape[-1])  # [N, k_in]
    grad_x = torch.mm(g2, w_kept).mul_(in_p.scale).reshape(x.shape)
    grad_w = torch.zeros_like(weight)
    _put_block(grad_w, torch.mm(g2.t(), x2).mul_(in_p.scale), rows, cols)
    grad_b = weight.new_zeros(n_out)
    grad_b[rows] = g2.sum(0)
    return grad_x, grad_w, grad_b


@row_linear_backward.register_fake
def _(grad_y, x, weight, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep):
    return torch.empty_like(x), torch.empty_like(weight), weight.new_empty(weight.shape[0])


def _save_inputs(ctx, inputs, output):
    """Autograd setup shared by both ops: keep x and W, and the pattern as integers."""
    x, weight, bias, *ints = inputs
    ctx.save_for_backward(x, weight)
    ctx.ints = ints
    ctx.has_bias = bias is not None


def _row_backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    grad_x, grad_w, grad_b = row_linear_backward(grad_y, x, weight, *ctx.ints)
    return (grad_x, grad_w, grad_b if ctx.has_bias else None) + (None,) * 6


row_linear.register_autograd(_row_backward, setup_context=_save_inputs)


# --------------------------------------------------------------------------- tile_linear


def tile_linear_reference(x, weight, bias, pattern: TilePattern):
    """Slow, obviously-correct twin: DropConnect with the full element mask."""
    mask = pattern.keep_mask(*weight.shape, device=weight.device)
    return torch.nn.functional.linear(x, weight * mask * pattern.scale, bias)


def _tile_blocks(pattern: TilePattern, n_out: int, n_in: int, device):
    """Yield ``(rows, cols)`` index selections of the dense kept blocks, skipping empty ones."""
    for row_p, col_p in pattern.row_classes():
        if row_p.kept_count(n_out) and col_p.kept_count(n_in):
            yield row_p.kept_indices(n_out, device), col_p.kept_indices(n_in, device)


@torch.library.custom_op("approxdrop::tile_linear", mutates_args=())
def tile_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dp: int,
    offset: int,
    keep: int,
    tile: int,
) -> torch.Tensor:
    """DropConnect on T x T tiles (see module docstring)."""
    pattern = TilePattern(dp, offset, tile, keep)
    n_out, n_in = weight.shape
    _check_linear_args("tile_linear", x, weight, bias, n_in)
    x2 = x.reshape(-1, n_in)  # [N, n_in]
    y = x2.new_zeros(x2.shape[0], n_out)  # rows whose tile row keeps nothing stay 0
    for rows, cols in _tile_blocks(pattern, n_out, n_in, x.device):
        w_block = weight.index_select(0, rows).index_select(1, cols)  # [k_r, k_c]
        y.index_copy_(1, rows, torch.mm(x2.index_select(1, cols), w_block.t()))
    y.mul_(pattern.scale)
    if bias is not None:
        y.add_(bias)
    return y.reshape(*x.shape[:-1], n_out)  # [*, n_out]


@tile_linear.register_fake
def _(x, weight, bias, dp, offset, keep, tile):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("approxdrop::tile_linear_backward", mutates_args=())
def tile_linear_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    dp: int,
    offset: int,
    keep: int,
    tile: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (x: [*, n_in], weight: [n_out, n_in], bias: [n_out]) of ``tile_linear``.
    Weights in skipped tiles get exactly zero."""
    pattern = TilePattern(dp, offset, tile, keep)
    n_out, n_in = weight.shape
    g2 = grad_y.reshape(-1, n_out)  # [N, n_out]
    x2 = x.reshape(-1, n_in)  # [N, n_in]
    grad_x = torch.zeros_like(x2)
    grad_w = torch.zeros_like(weight)
    for rows, cols in _tile_blocks(pattern, n_out, n_in, x.device):
        w_block = weight.index_select(0, rows).index_select(1, cols)  # [k_r, k_c]
        g_block = g2.index_select(1, rows)  # [N, k_r]
        grad_x.index_add_(1, cols, torch.mm(g_block, w_block))
        _put_block(grad_w, torch.mm(g_block.t(), x2.index_select(1, cols)), rows, cols)
    grad_x.mul_(pattern.scale)
    grad_w.mul_(pattern.scale)
    return grad_x.reshape(x.shape), grad_w, g2.sum(0)


@tile_linear_backward.register_fake
def _(grad_y, x, weight, dp, offset, keep, tile):
    return torch.empty_like(x), torch.empty_like(weight), weight.new_empty(weight.shape[0])


def _tile_backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    grad_x, grad_w, grad_b = tile_linear_backward(grad_y, x, weight, *ctx.ints)
    return (grad_x, grad_w, grad_b if ctx.has_bias else None) + (None,) * 4


tile_linear.register_autograd(_tile_backward, setup_context=_save_inputs)


# --------------------------------------------------------------------------- pattern front-ends


def row_pattern_linear(x, weight, bias, in_pattern: RowPattern, out_pattern: RowPattern):
    """``row_linear`` taking RowPattern objects."""
    return row_linear(x, weight, bias, *_ints(in_pattern), *_ints(out_pattern))


def tile_pattern_linear(x, weight, bias, pattern: TilePattern):
    """``tile_linear`` taking a TilePattern object."""
    return tile_linear(x, weight, bias, pattern.dp, pattern.offset, pattern.keep, pattern.tile)


def _ints(pattern: RowPattern) -> tuple[int, int, int]:
    return pattern.dp, pattern.offset, pattern.keep


FULL = RowPattern(1, 0, 1)  # keeps every unit: the side of a layer without dropout
