"""The PyTorch executor of one tile pattern (``approxdrop::tile_linear`` runs it once per distinct offset of
its groups): the kept tiles laid out as equal dense blocks for one batched GEMM that never reads a skipped
tile."""

from __future__ import annotations

import torch

from .._env import tensor_cache
from ..patterns import TilePattern
from .common import flat


class _TileLayout:
    """The kept tiles of a TilePattern as equal dense blocks, one per class of tile rows, for one
    batched GEMM that never reads a skipped tile. Only the executor is laid out here: which weights
    are kept is the TilePattern's.

    Class ``r`` holds the tile rows ``a = r (mod dp)``; only the ``min(dp, R)`` classes that have one
    exist (R x C tile grid). It computes those rows from exactly the tile columns ``b`` with
    ``(b - r - offset) mod dp < keep`` (``TilePattern.row_classes``). Each class lists its tile rows
    ``r + dp*j`` and its tile columns ``(r + offset + t) mod dp + dp*j`` (t-major), padded to the
    longest class with a sentinel tile (index R / C, a zero tile), so the blocks are
    ``[classes, A*T, K*T]``: at most one tile row per class and the classes' difference in kept tile
    columns are padding, never a full period ``dp * T``. A grid of one tile row (column) is viewed
    at the weight's height (width), so a 10-row output layer computes 10 rows whatever T is.
    Gathered weights are zeroed at a sentinel, x and grad_y read a zero tile there, and what is
    computed for a sentinel is never written back. When dp divides both grid sides there is no
    sentinel and the weight blocks are strided views of one period grid (``periodic``).
    """

    def __init__(self, pattern: TilePattern, n_out: int, n_in: int, device) -> None:
        dp, keep = pattern.dp, pattern.keep
        self.n_out, self.n_in, self.scale = n_out, n_in, pattern.scale
        self.grid_rows, self.grid_cols = pattern.grid(n_out, n_in)  # R, C
        # tile height / width of the views: a one-tile grid side is the whole side (same tiles, no padding)
        self.th = pattern.tile if self.grid_rows > 1 else n_out
        self.tw = pattern.tile if self.grid_cols > 1 else n_in
        classes = min(dp, self.grid_rows)
        r = torch.arange(classes)
        rows = r[:, None] + dp * torch.arange(-(-self.grid_rows // dp))  # [classes, ceil(R/dp)]
        s = torch.remainder(r[:, None] + pattern.offset + torch.arange(keep), dp)  # [classes, keep]
        cols = (s[:, :, None] + dp * torch.arange(-(-self.grid_cols // dp))).reshape(classes, -1)  # [classes, keep*B]
        rows, cols = _members(rows, self.grid_rows), _members(cols, self.grid_cols)  # [classes, A], [classes, K]
        row_gap, col_gap = rows == self.grid_rows, cols == self.grid_cols  # the sentinels
        self.row_pad, self.col_pad = bool(row_gap.any()), bool(col_gap.any())
        self.classes, self.a, self.k = classes, rows.shape[1], cols.shape[1]
        self.periodic = self.grid_rows % dp == 0 and self.grid_cols % dp == 0  # every class: A rows, keep*B cols
        self.r_idx, self.s_idx = r[:, None].to(device), s.to(device)  # [classes, 1], [classes, keep]
        out_pos = torch.empty(self.grid_rows, dtype=torch.long)  # [R]: each tile row's place in [classes * A]
        out_pos[rows[~row_gap]] = torch.arange(rows.numel()).view_as(rows)[~row_gap]
        self.rows, self.cols, self.out_pos = rows.to(device), cols.to(device), out_pos.to(device)
        self.row_gap, self.col_gap = row_gap.to(device), col_gap.to(device)
        # the weight gather reads a real tile at a sentinel, then zeroes it: no padded copy of W for it
        self.w_rows = self.rows.clamp(max=self.grid_rows - 1)
        self.w_cols = self.cols.clamp(max=self.grid_cols - 1)

    def weight_blocks(self, weight: torch.Tensor) -> torch.Tensor:
        """W [n_out, n_in] -> kept blocks [classes, A*th, K*tw], zero at the sentinels."""
        rows, cols = self.grid_rows * self.th, self.grid_cols * self.tw
        w = _pad(weight, rows - self.n_out, cols - self.n_in)  # a copy only for partial tiles
        if self.periodic:  # advanced indices on the class dims only: already in block order
            w6 = w.view(self.a, self.classes, self.th, self.grid_cols // self.classes, self.classes, self.tw)
            blocks = w6[:, self.r_idx, :, :, self.s_idx, :]  # [dp, keep, A, th, B, tw]
            return blocks.permute(0, 2, 3, 1, 4, 5).reshape(self.classes, self.a * self.th, self.k * self.tw)
        w4 = w.view(self.grid_rows, self.th, self.grid_cols, self.tw)
        blocks = w4[self.w_rows[:, :, None], :, self.w_cols[:, None, :], :]  # [classes, A, K, th, tw]
        if self.row_pad:
            blocks.masked_fill_(self.row_gap[:, :, None, None, None], 0)
        if self.col_pad:
            blocks.masked_fill_(self.col_gap[:, None, :, None, None], 0)
        return blocks.permute(0, 1, 3, 2, 4).reshape(self.classes, self.a * self.th, self.k * self.tw)

    def input_blocks(self, x2: torch.Tensor) -> torch.Tensor:
        """x [N, n_in] -> the columns each class reads, [classes, N, K*tw]."""
        n = x2.shape[0]
        x3 = _tiles(x2, self.grid_cols + self.col_pad, self.tw)  # [N, C (+ sentinel), tw]
        cols = x3[:, self.cols]  # [N, classes, K, tw]
        return cols.permute(1, 0, 2, 3).reshape(self.classes, n, self.k * self.tw)

    def output_blocks(self, g2: torch.Tensor) -> torch.Tensor:
        """grad_y [N, n_out] -> each class's rows, [classes, N, A*th]."""
        n = g2.shape[0]
        g3 = _tiles(g2, self.grid_rows + self.row_pad, self.th)  # [N, R (+ sentinel), th]
        if self.periodic:  # tile row a = j*dp + r: a view
            rows = g3.view(n, self.a, self.classes, self.th).transpose(1, 2)  # [N, dp, A, th]
        else:
            rows = g3[:, self.rows]  # [N, classes, A, th]
        return rows.permute(1, 0, 2, 3).reshape(self.classes, n, self.a * self.th)

    def gather_outputs(self, y_blocks: torch.Tensor) -> torch.Tensor:
        """[classes, N, A*th] -> y [N, n_out], inverse of ``output_blocks``."""
        n = y_blocks.shape[1]
        y4 = y_blocks.view(self.classes, n, self.a, self.th)
        if self.periodic:  # tile row a = j*dp + r
            y = y4.permute(1, 2, 0, 3).reshape(n, self.grid_rows * self.th)  # [N, R*th]
        else:
            y3 = y4.transpose(0, 1).reshape(n, self.classes * self.a, self.th)  # [N, classes*A, th]
            y = y3.index_select(1, self.out_pos).view(n, self.grid_rows * self.th)  # [N, R*th]
        return y[:, : self.n_out].contiguous() if y.shape[1] != self.n_out else y

    def scatter_inputs(self, gx_blocks: torch.Tensor) -> torch.Tensor:
        """[classes, N, K*tw] -> grad_x [N, n_in]: sum over the classes that read each column."""
        n = gx_blocks.shape[1]
        src = (
            gx_blocks.view(self.classes, n, self.k, self.tw).transpose(0, 1).reshape(n, self.classes * self.k, self.tw)
        )
        gx = gx_blocks.new_zeros(n, self.grid_cols + self.col_pad, self.tw)  # [N, C (+ sentinel), tw]
        gx.index_add_(1, self.cols.flatten(), src)
        gx = gx.view(n, gx.shape[1] * self.tw)
        return gx[:, : self.n_in].contiguous() if gx.shape[1] != self.n_in else gx

    def scatter_weight(self, gw_blocks: torch.Tensor) -> torch.Tensor:
        """[classes, A*th, K*tw] -> grad_w [n_out, n_in], zero in skipped tiles."""
        src = gw_blocks.view(self.classes, self.a, self.th, self.k, self.tw).permute(0, 1, 3, 2, 4)
        rows, cols = self.grid_rows + self.row_pad, self.grid_cols + self.col_pad  # (+ sentinels)
        gw = gw_blocks.new_zeros(rows, self.th, cols, self.tw)
        gw[self.rows[:, :, None], :, self.cols[:, None, :], :] = src  # [classes, A, K, th, tw] into the grid
        gw = gw.view(rows * self.th, cols * self.tw)
        return gw[: self.n_out, : self.n_in].contiguous() if gw.shape != (self.n_out, self.n_in) else gw


@tensor_cache(maxsize=256)
def _layout(dp: int, offset: int, keep: int, tile: int, n_out: int, n_in: int, device: torch.device) -> _TileLayout:
    """The layout of a pattern on a weight shape, built once (a few small index tensors)."""
    return _TileLayout(TilePattern(dp, offset, tile, keep), n_out, n_in, device)


def _members(index: torch.Tensor, n: int) -> torch.Tensor:
    """Long[c, L] -> Long[c, width]: each row's entries below ``n`` in their order, then the
    sentinel ``n``, cut to the longest row's count."""
    inside = index < n
    width = int(inside.sum(1).max()) if index.numel() else 0
    order = torch.argsort((~inside).to(torch.uint8), dim=1, stable=True)[:, :width]  # members first
    return torch.where(inside, index, n).gather(1, order)


def _pad(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Tensor[m, n] -> Tensor[m + rows, n + cols], zero-padded at the end (a view when nothing is added)."""
    return torch.nn.functional.pad(t, (0, cols, 0, rows)) if rows or cols else t


def _tiles(t: torch.Tensor, tiles: int, size: int) -> torch.Tensor:
    """Tensor[N, n] -> Tensor[N, tiles, size]: zero-padded to ``tiles * size`` columns, viewed as tiles."""
    return _pad(t, 0, tiles * size - t.shape[1]).view(t.shape[0], tiles, size)


def tile_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dp: int, offset: int, keep: int, tile: int
) -> torch.Tensor:
    """One tile pattern ``(dp, offset, keep, tile)`` on checked operands: x (Tensor[*, n_in]) -> Tensor[*, n_out]."""
    n_out, n_in = weight.shape
    if keep == dp or weight.numel() == 0:  # every tile kept, scale 1 (or none exists): a dense linear, no blocks
        return torch.nn.functional.linear(x, weight, bias)
    layout = _layout(dp, offset, keep, tile, n_out, n_in, x.device)
    x2 = flat(x)  # [N, n_in]
    w_blocks = layout.weight_blocks(weight)  # [classes, A*th, K*tw]
    y_blocks = torch.bmm(layout.input_blocks(x2), w_blocks.transpose(1, 2))  # [classes, N, A*th]
    y = layout.gather_outputs(y_blocks).mul_(layout.scale)  # [N, n_out]
    if bias is not None:
        y.add_(bias)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], n_out)  # [*, n_out]


def tile_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    dp: int,
    offset: int,
    keep: int,
    tile: int,
    need_grad_x: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``tile_forward`` on checked operands: (grad_x, empty without ``need_grad_x``; grad_w; grad_b)."""
    n_out, n_in = weight.shape
    g2 = flat(grad_y)  # [N, n_out]
    if keep == dp or weight.numel() == 0:  # every tile kept, scale 1 (or none exists): dense gradients
        grad_x = torch.mm(g2, weight).reshape(x.shape) if need_grad_x else x.new_empty(0)
        return grad_x, torch.mm(g2.t(), flat(x)), g2.sum(0)
    layout = _layout(dp, offset, keep, tile, n_out, n_in, x.device)
    g_blocks = layout.output_blocks(g2)  # [classes, N, A*th]
    x_blocks = layout.input_blocks(flat(x))  # [classes, N, K*tw]
    gw_blocks = torch.bmm(g_blocks.transpose(1, 2), x_blocks).mul_(layout.scale)  # [classes, A*th, K*tw]
    grad_x = x.new_empty(0)
    if need_grad_x:
        gx_blocks = torch.bmm(g_blocks, layout.weight_blocks(weight)).mul_(layout.scale)  # [classes, N, K*tw]
        grad_x = layout.scatter_inputs(gx_blocks).reshape(x.shape)
    return grad_x, layout.scatter_weight(gw_blocks), g2.sum(0)
