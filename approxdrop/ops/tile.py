"""``approxdrop::tile_linear`` and its backward op (see ``approxdrop.ops``)."""

from __future__ import annotations

import torch

from ..patterns import TilePattern
from .common import check_linear_args, check_weight, empty_grads, flat, save_inputs


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


def tile_linear_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dp: int,
    offset: int,
    keep: int,
    tile: int,
) -> torch.Tensor:
    """The PyTorch implementation of ``approxdrop::tile_linear``: the CPU path, the fallback on a GPU
    without kernels, and the oracle the CUDA kernels are tested against."""
    check_weight("tile_linear", weight)
    n_out, n_in = weight.shape
    check_linear_args("tile_linear", x, weight, bias, n_in)
    pattern = TilePattern(dp, offset, tile, keep)
    if dp == 1:  # every tile kept: a dense linear, no blocks to gather
        return torch.nn.functional.linear(x, weight, bias)
    layout = _TileLayout(pattern, n_out, n_in, x.device)
    x2 = flat(x)  # [N, n_in]
    w_blocks = layout.weight_blocks(weight)  # [dp, A*T, keep*B*T]
    y_blocks = torch.bmm(layout.input_blocks(x2), w_blocks.transpose(1, 2))  # [dp, N, A*T]
    y = layout.gather_outputs(y_blocks).mul_(layout.scale)  # [N, n_out]
    if bias is not None:
        y.add_(bias)
    return y.reshape(*x.shape[:-1], n_out)  # [*, n_out]


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
    return tile_linear_torch(x, weight, bias, dp, offset, keep, tile)


@tile_linear.register_fake
def _(x, weight, bias, dp, offset, keep, tile):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def tile_linear_backward_torch(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    dp: int,
    offset: int,
    keep: int,
    tile: int,
    need_grad_x: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The PyTorch implementation of ``approxdrop::tile_linear_backward``: the CPU path, the fallback on a GPU
    without kernels, and the oracle the CUDA kernels are tested against."""
    n_out, n_in = weight.shape
    pattern = TilePattern(dp, offset, tile, keep)
    g2 = flat(grad_y)  # [N, n_out]
    if dp == 1:  # every tile kept: dense gradients
        grad_x = torch.mm(g2, weight).reshape(x.shape) if need_grad_x else x.new_empty(0)
        return grad_x, torch.mm(g2.t(), flat(x)), g2.sum(0)
    layout = _TileLayout(pattern, n_out, n_in, x.device)
    g_blocks = layout.output_blocks(g2)  # [dp, N, A*T]
    x_blocks = layout.input_blocks(flat(x))  # [dp, N, keep*B*T]
    gw_blocks = torch.bmm(g_blocks.transpose(1, 2), x_blocks).mul_(layout.scale)  # [dp, A*T, keep*B*T]
    grad_x = x.new_empty(0)
    if need_grad_x:
        gx_blocks = torch.bmm(g_blocks, layout.weight_blocks(weight)).mul_(layout.scale)  # [dp, N, keep*B*T]
        grad_x = layout.scatter_inputs(gx_blocks).reshape(x.shape)
    return grad_x, layout.scatter_weight(gw_blocks), g2.sum(0)


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
    return tile_linear_backward_torch(grad_y, x, weight, dp, offset, keep, tile, need_grad_x)


@tile_linear_backward.register_fake
def _(grad_y, x, weight, dp, offset, keep, tile, need_grad_x=True):
    return empty_grads(x, weight, need_grad_x)


def _tile_backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    grad_x, grad_w, grad_b = tile_linear_backward(grad_y, x, weight, *ctx.ints, need_x)
    return (grad_x if need_x else None, grad_w, grad_b if ctx.has_bias else None) + (None,) * 4


tile_linear.register_autograd(_tile_backward, setup_context=save_inputs)
