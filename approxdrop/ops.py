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
    computed as one batched GEMM over ``dp`` dense blocks that never read a skipped tile.
"""

from __future__ import annotations

import math

import torch

from .patterns import RowPattern, TilePattern, periodic_count

# --------------------------------------------------------------------------- index helpers


def _take(t: torch.Tensor, dim: int, sel: slice | torch.Tensor) -> torch.Tensor:
    """``t`` restricted to ``sel`` along ``dim``: a view for a slice, a gather for indices."""
    if isinstance(sel, slice):
        return t[(slice(None),) * dim + (sel,)]
    return t.index_select(dim, sel)


def _kept_weight(weight: torch.Tensor, rows, cols) -> torch.Tensor:
    """``weight[rows][:, cols]`` (Tensor[k_out, k_in]) for the GEMMs.

    Kept rows of a row-major weight are a strided view that BLAS reads in place. Kept columns
    are strided in the last dimension, which BLAS cannot read: gather them once, explicitly
    (measured 4-5x cheaper on CPU than the copy a GEMM makes of such a view by itself).
    """
    w = _take(weight, 0, rows)  # [k_out, n_in] view
    if isinstance(cols, slice) and cols == slice(0, weight.shape[1]):
        return w
    return _take(w, 1, cols).contiguous()  # [k_out, k_in]


def _flat(t: torch.Tensor) -> torch.Tensor:
    """Tensor[*, k] -> Tensor[N, k] (explicit N, so k = 0 works)."""
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


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


def _check_weight(name: str, weight: torch.Tensor) -> None:
    if weight.dim() != 2:
        raise ValueError(f"{name}: weight must be 2-D [n_out, n_in], got shape {tuple(weight.shape)}")


def _check_linear_args(name: str, x: torch.Tensor, weight: torch.Tensor, bias, k_in: int) -> None:
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
    _check_weight("row_linear", weight)
    n_out, n_in = weight.shape
    _check_linear_args("row_linear", x, weight, bias, in_p.kept_count(n_in))
    rows, cols = out_p.selector(n_out, x.device), in_p.selector(n_in, x.device)
    w_kept = _kept_weight(weight, rows, cols)  # [k_out, k_in]
    x2 = _flat(x)  # [N, k_in]
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
    need_grad_x: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (x: [*, k_in], weight: [n_out, n_in], bias: [n_out]) of ``row_linear``.
    Weights and biases outside the kept rows and columns get exactly zero. With
    ``need_grad_x=False`` (a first layer) grad_x is skipped and returned empty."""
    in_p, out_p = RowPattern(in_dp, in_offset, in_keep), RowPattern(out_dp, out_offset, out_keep)
    n_out, n_in = weight.shape
    rows, cols = out_p.selector(n_out, x.device), in_p.selector(n_in, x.device)
    w_kept = _kept_weight(weight, rows, cols)  # [k_out, k_in]
    g2 = _flat(grad_y)  # [N, k_out]
    g_scaled = g2 * in_p.scale  # scale the small operand once, not the two products
    grad_x = torch.mm(g_scaled, w_kept).reshape(x.shape) if need_grad_x else x.new_empty(0)
    grad_w = torch.zeros_like(weight)
    _put_block(grad_w, torch.mm(g_scaled.t(), _flat(x)), rows, cols)
    grad_b = weight.new_zeros(n_out)
    grad_b[rows] = g2.sum(0)
    return grad_x, grad_w, grad_b


@row_linear_backward.register_fake
def _(grad_y, x, weight, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep, need_grad_x=True):
    return _empty_grads(x, weight, need_grad_x)


def _empty_grads(x, weight, need_grad_x: bool):
    """Fake outputs of both backward ops: grad_x (empty when not needed), grad_w, grad_b."""
    grad_x = torch.empty_like(x) if need_grad_x else x.new_empty(0)
    return grad_x, torch.empty_like(weight), weight.new_empty(weight.shape[0])


def _save_inputs(ctx, inputs, output):
    """Autograd setup shared by both ops: keep x and W, and the pattern as integers."""
    x, weight, bias, *ints = inputs
    ctx.save_for_backward(x, weight)
    ctx.ints = ints
    ctx.has_bias = bias is not None


def _row_backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    grad_x, grad_w, grad_b = row_linear_backward(grad_y, x, weight, *ctx.ints, need_x)
    return (grad_x if need_x else None, grad_w, grad_b if ctx.has_bias else None) + (None,) * 6


row_linear.register_autograd(_row_backward, setup_context=_save_inputs)


# --------------------------------------------------------------------------- tile_linear


def tile_linear_reference(x, weight, bias, pattern: TilePattern):
    """Slow, obviously-correct twin: DropConnect with the full element mask."""
    mask = pattern.keep_mask(*weight.shape, device=weight.device)
    return torch.nn.functional.linear(x, weight * mask * pattern.scale, bias)


class _TileLayout:
    """The kept tiles of a TilePattern as ``dp`` equal dense blocks, for one batched GEMM.

    Pad W to a multiple of ``P = dp * T`` on both sides and view it as
    ``W6[A, r, i, B, s, j]`` (tile row ``a = A*dp + r``, tile column ``b = B*dp + s``, element
    ``i``/``j`` inside the tile). Tile ``(a, b)`` is kept iff ``s = (r + offset + t) mod dp`` for
    some ``t < keep``, so row class ``r`` needs exactly the column classes ``s_idx[r]`` and the
    kept work is ``dp`` blocks of shape ``[A*T, keep*B*T]``: strided views whose inner runs of
    ``T`` elements are contiguous. Padding is zero and is cropped from every (contiguous) result.
    """

    def __init__(self, pattern: TilePattern, n_out: int, n_in: int, device) -> None:
        self.dp, self.t, self.keep, self.scale = pattern.dp, pattern.tile, pattern.keep, pattern.scale
        period = self.dp * self.t
        self.n_out, self.n_in = n_out, n_in
        self.a, self.b = -(-n_out // period), -(-n_in // period)
        self.r_idx = torch.arange(self.dp, device=device)[:, None]  # [dp, 1]
        t_idx = torch.arange(self.keep, device=device)[None, :]
        self.s_idx = torch.remainder(self.r_idx + pattern.offset + t_idx, self.dp)  # [dp, keep]

    def _pad(self, t: torch.Tensor, rows: int | None, cols: int) -> torch.Tensor:
        pad_c = cols - t.shape[-1]
        pad_r = 0 if rows is None else rows - t.shape[0]
        return torch.nn.functional.pad(t, (0, pad_c, 0, pad_r)) if pad_c or pad_r else t

    def weight_blocks(self, weight: torch.Tensor) -> torch.Tensor:
        """W [n_out, n_in] -> kept blocks [dp, A*T, keep*B*T]."""
        dp, t, a, b = self.dp, self.t, self.a, self.b
        w6 = self._pad(weight, a * dp * t, b * dp * t).view(a, dp, t, b, dp, t)
        blocks = w6[:, self.r_idx, :, :, self.s_idx, :]  # [dp, keep, A, T, B, T]
        return blocks.permute(0, 2, 3, 1, 4, 5).reshape(dp, a * t, self.keep * b * t)

    def input_blocks(self, x2: torch.Tensor) -> torch.Tensor:
        """x [N, n_in] -> the columns each class reads, [dp, N, keep*B*T]."""
        n = x2.shape[0]
        x4 = self._pad(x2, None, self.b * self.dp * self.t).view(n, self.b, self.dp, self.t)
        cols = x4[:, :, self.s_idx, :]  # [N, B, dp, keep, T]
        return cols.permute(2, 0, 3, 1, 4).reshape(self.dp, n, self.keep * self.b * self.t)

    def output_blocks(self, g2: torch.Tensor) -> torch.Tensor:
        """grad_y [N, n_out] -> per-class rows [dp, N, A*T]."""
        n = g2.shape[0]
        g4 = self._pad(g2, None, self.a * self.dp * self.t).view(n, self.a, self.dp, self.t)
        return g4.permute(2, 0, 1, 3).reshape(self.dp, n, self.a * self.t)

    def gather_outputs(self, y_blocks: torch.Tensor) -> torch.Tensor:
        """[dp, N, A*T] -> y [N, n_out], inverse of ``output_blocks``."""
        n = y_blocks.shape[1]
        y4 = y_blocks.view(self.dp, n, self.a, self.t).permute(1, 2, 0, 3)  # [N, A, dp, T]
        return y4.reshape(n, self.a * self.dp * self.t)[:, : self.n_out].contiguous()

    def scatter_inputs(self, gx_blocks: torch.Tensor) -> torch.Tensor:
        """[dp, N, keep*B*T] -> grad_x [N, n_in]: sum over the classes that read each column."""
        n = gx_blocks.shape[1]
        src = gx_blocks.view(self.dp, n, self.keep, self.b, self.t).permute(1, 3, 0, 2, 4)  # [N, B, dp, keep, T]
        gx = gx_blocks.new_zeros(n, self.b, self.dp, self.t)
        gx.index_add_(2, self.s_idx.flatten(), src.reshape(n, self.b, self.dp * self.keep, self.t))
        return gx.view(n, self.b * self.dp * self.t)[:, : self.n_in].contiguous()

    def scatter_weight(self, gw_blocks: torch.Tensor) -> torch.Tensor:
        """[dp, A*T, keep*B*T] -> grad_w [n_out, n_in], zero in skipped tiles."""
        dp, t, a, b = self.dp, self.t, self.a, self.b
        gw6 = gw_blocks.new_zeros(a, dp, t, b, dp, t)
        src = gw_blocks.view(dp, a, t, self.keep, b, t).permute(0, 3, 1, 2, 4, 5)  # [dp, keep, A, T, B, T]
        gw6[:, self.r_idx, :, :, self.s_idx, :] = src
        return gw6.view(a * dp * t, b * dp * t)[: self.n_out, : self.n_in].contiguous()


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
    _check_weight("tile_linear", weight)
    n_out, n_in = weight.shape
    _check_linear_args("tile_linear", x, weight, bias, n_in)
    pattern = TilePattern(dp, offset, tile, keep)
    if dp == 1:  # every tile kept: a dense linear, no blocks to gather
        return torch.nn.functional.linear(x, weight, bias)
    layout = _TileLayout(pattern, n_out, n_in, x.device)
    x2 = _flat(x)  # [N, n_in]
    w_blocks = layout.weight_blocks(weight)  # [dp, A*T, keep*B*T]
    y_blocks = torch.bmm(layout.input_blocks(x2), w_blocks.transpose(1, 2))  # [dp, N, A*T]
    y = layout.gather_outputs(y_blocks).mul_(layout.scale)  # [N, n_out]
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
    need_grad_x: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (x: [*, n_in], weight: [n_out, n_in], bias: [n_out]) of ``tile_linear``.
    Weights in skipped tiles get exactly zero. With ``need_grad_x=False`` grad_x is skipped and
    returned empty."""
    n_out, n_in = weight.shape
    pattern = TilePattern(dp, offset, tile, keep)
    g2 = _flat(grad_y)  # [N, n_out]
    if dp == 1:  # every tile kept: dense gradients
        grad_x = torch.mm(g2, weight).reshape(x.shape) if need_grad_x else x.new_empty(0)
        return grad_x, torch.mm(g2.t(), _flat(x)), g2.sum(0)
    layout = _TileLayout(pattern, n_out, n_in, x.device)
    g_blocks = layout.output_blocks(g2)  # [dp, N, A*T]
    x_blocks = layout.input_blocks(_flat(x))  # [dp, N, keep*B*T]
    gw_blocks = torch.bmm(g_blocks.transpose(1, 2), x_blocks).mul_(layout.scale)  # [dp, A*T, keep*B*T]
    grad_x = x.new_empty(0)
    if need_grad_x:
        gx_blocks = torch.bmm(g_blocks, layout.weight_blocks(weight)).mul_(layout.scale)  # [dp, N, keep*B*T]
        grad_x = layout.scatter_inputs(gx_blocks).reshape(x.shape)
    return grad_x, layout.scatter_weight(gw_blocks), g2.sum(0)


@tile_linear_backward.register_fake
def _(grad_y, x, weight, dp, offset, keep, tile, need_grad_x=True):
    return _empty_grads(x, weight, need_grad_x)


def _tile_backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    grad_x, grad_w, grad_b = tile_linear_backward(grad_y, x, weight, *ctx.ints, need_x)
    return (grad_x if need_x else None, grad_w, grad_b if ctx.has_bias else None) + (None,) * 4


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
