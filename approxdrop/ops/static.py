"""Row-pattern linears whose shapes are set by ``(dp, keep)``, never by the offset: the form a CUDA graph
or a ``torch.compile(fullgraph=True)`` graph needs to serve every offset of a pattern class.

A pattern ``(dp, offset, keep)`` keeps ``keep * ceil(n / dp)`` units of a width ``n`` when ``dp``
divides ``n``, and one fewer for some offsets when it does not. The static form always carries
``keep * ceil(n / dp)`` slots: slot ``j * keep + t`` holds unit
``(offset + t) mod dp + j * dp``, and a slot past the width is padding. The offset arrives as a tensor,
so the index is computed inside the graph; padding reads a real unit and is multiplied by zero where it
enters a GEMM, so it adds nothing to any output or gradient. The slots are in a different order from
``RowPattern.kept_indices`` (by period, then by residue), the same order at every layer that reads the
site, so a model's outputs are those of the compact path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from .._env import check_int, holds_values
from .common import check_pattern_ints


class StaticSide(NamedTuple):
    """One side of a layer in the static form: ``index`` (Long[K], the unit in each slot), ``valid``
    (Bool[K], False at padding; None when ``dp`` divides the width: no padding), ``scale`` (dp/keep),
    ``dp`` and ``residues`` (Long[keep], the kept units' residues mod dp: slot ``j * keep + t`` holds unit
    ``j * dp + residues[t]``)."""

    index: torch.Tensor
    valid: torch.Tensor | None
    scale: float
    dp: int
    residues: torch.Tensor


def static_side(n: int, dp: int, keep: int, offset: torch.Tensor, *, check: bool = True) -> StaticSide:
    """The slots of a width-``n`` site under ``(dp, offset, keep)``, offset a Long[] tensor (0 <= offset < dp).

    ``check`` (the default): a ValueError naming a bad argument, by RowPattern's rules; the offset's value is
    read where it has one (not under torch.compile; on a GPU, a sync). A caller whose integers come from checked
    patterns (a model's stored draws, every step) passes ``check=False``."""
    if check:
        _check_side(n, dp, keep, offset)
    residues = torch.remainder(offset + torch.arange(keep, device=offset.device), dp)  # [keep]
    starts = torch.arange(0, -(-n // dp) * dp, dp, device=offset.device)  # [ceil(n/dp)]
    index = (starts[:, None] + residues[None, :]).flatten()  # [K]
    if n % dp == 0:
        return StaticSide(index, None, dp / keep, dp, residues)
    valid = index < n  # [K]
    return StaticSide(torch.where(valid, index, 0), valid, dp / keep, dp, residues)


def _check_side(n: int, dp: int, keep: int, offset: torch.Tensor) -> None:
    """ValueError unless n >= 0, dp >= 1, 1 <= keep <= dp and offset is an integer tensor of one value in
    ``[0, dp)`` (its value checked where it holds one; traced SymInts are the tracer's)."""
    traced = any(isinstance(v, torch.SymInt) for v in (n, dp, keep))
    if not traced:
        check_int("static_side: n", n, 0)
        check_pattern_ints("static_side", dp, keep, [])  # the offset, a tensor, below
    integral = isinstance(offset, torch.Tensor) and not (offset.is_floating_point() or offset.is_complex())
    if not integral or offset.dtype == torch.bool or offset.numel() != 1:
        raise ValueError(f"static_side: offset must be an integer tensor of one value, got {offset!r}")
    if not traced and not torch.compiler.is_compiling() and holds_values(offset):
        check_int("static_side: offset", int(offset), 0, dp - 1)


def static_groups(x: torch.Tensor, groups: int, dim: int) -> list[torch.Tensor]:
    """x split into ``groups`` parts along ``dim`` as ``torch.tensor_split`` does, less the empty parts at the end
    (a batch of fewer rows than groups: those groups get nothing; the first part is kept, so an empty batch has
    one). Callers pass the first ``len(parts)`` groups' sides. Compiled with a dynamic batch, an empty group's
    GEMMs and reductions would be loops whose size bounds to 0, which Inductor refuses (ValueRangeError)."""
    parts = x.tensor_split(groups, dim)  # views, [..., B_g, ...]
    return [parts[0], *(part for part in parts[1:] if part.shape[dim] > 0)]


def static_site(x: torch.Tensor, side: StaticSide) -> torch.Tensor:
    """x (Tensor[*, n]) -> its slots (Tensor[*, K]), zero at padding."""
    kept = x.index_select(-1, side.index)  # [*, K]
    return kept if side.valid is None else kept * side.valid


def static_row_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_side: StaticSide | None,
    out_side: StaticSide | None,
) -> torch.Tensor:
    """x (Tensor[*, K_in], or [*, n_in] without an in side) -> Tensor[*, K_out] (or [*, n_out]):
    ``in_scale * x @ W[out slots][:, in slots].T + b[out slots]``, padding of x zeroed first (the output's
    padding slots hold values the next reader zeroes, and get no gradient from it). Plain
    differentiable PyTorch: autograd gives the backward, and a compiler traces it whole."""
    return _slot_linear(x, _block(weight, in_side, out_side), bias, in_side, out_side)


def static_grouped_linear(
    xs: Sequence[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_sides: Sequence[StaticSide | None],
    out_sides: Sequence[StaticSide | None],
) -> list[torch.Tensor]:
    """``static_row_linear`` for every batch group g: xs[g] with in_sides[g] and out_sides[g] -> ys[g], the
    blocks from ``static_group_blocks``."""
    blocks = static_group_blocks(weight, in_sides, out_sides)
    return [_slot_linear(x, block, bias, a, b) for x, block, a, b in zip(xs, blocks, in_sides, out_sides)]


def static_group_blocks(
    weight: torch.Tensor, in_sides: Sequence[StaticSide | None], out_sides: Sequence[StaticSide | None]
) -> list[torch.Tensor]:
    """Each group's block of ``weight`` (Tensor[K_out, K_in]: its out slots' rows, its in slots' columns).

    Under torch.compile they come from one gather, and its backward writes every group's block gradient
    into one zero buffer: one full-size weight gradient per layer instead of one per group plus their sum.
    Where no side pads (dp divides both widths) the gather picks residues on W viewed as
    [n_out / dp, dp, n_in / dp, dp] (``_ResidueBlocks``), strided reads; else it indexes every element
    (``_IndexBlocks``). One 2048 x 2048 layer at G = 4, compiled on this CPU: 19 ms, 24-33 ms and 44 ms for
    the per-group gathers. Eagerly each group gathers its own block, the faster form there (43 ms against
    71-75 ms: an eager advanced-indexing gather and scatter walk the block element by element)."""
    if len(in_sides) == 1 or not torch.compiler.is_compiling():
        return [_block(weight, a, b) for a, b in zip(in_sides, out_sides)]
    n_out, n_in = weight.shape
    if all(side is None or side.valid is None for side in (*in_sides, *out_sides)):
        ro, dp_out = _residues(out_sides, weight.device)  # [G, keep_out]
        ri, dp_in = _residues(in_sides, weight.device)  # [G, keep_in]
        blocks = _ResidueBlocks.apply(weight, ro, ri, dp_out, dp_in)  # [G, K_out, K_in]
    else:
        rows = _slots(out_sides, n_out, weight.device)  # [G, K_out]
        cols = _slots(in_sides, n_in, weight.device)  # [G, K_in]
        blocks = _IndexBlocks.apply(weight, rows, cols)  # [G, K_out, K_in]
    return list(blocks.unbind(0))  # unbind: the blocks' gradients come back as one stack


def _block(weight: torch.Tensor, in_side: StaticSide | None, out_side: StaticSide | None) -> torch.Tensor:
    """One group's block (Tensor[K_out, K_in]) by two index_selects."""
    if in_side is not None:
        weight = weight.index_select(1, in_side.index)  # [n_out, K_in]
    if out_side is not None:
        weight = weight.index_select(0, out_side.index)  # [K_out, K_in]
    return weight


def _slot_linear(
    x: torch.Tensor,
    block: torch.Tensor,
    bias: torch.Tensor | None,
    in_side: StaticSide | None,
    out_side: StaticSide | None,
) -> torch.Tensor:
    """x (Tensor[*, K_in]) -> Tensor[*, K_out] for the gathered block (Tensor[K_out, K_in]): x's padding zeroed,
    the in side's scale, the out slots' bias."""
    if in_side is not None and in_side.valid is not None:
        x = x * in_side.valid  # [*, K_in]: a padding slot may hold a nonzero activation
    y = torch.nn.functional.linear(x, block)  # [*, K_out]
    if in_side is not None and in_side.scale != 1.0:
        y = y * in_side.scale
    if bias is None:
        return y
    slots = bias if out_side is None else bias.index_select(0, out_side.index)  # [K_out]
    return y + slots.to(y.dtype)  # y's dtype under autocast too, as nn.Linear's


def _slots(sides: Sequence[StaticSide | None], n: int, device: torch.device) -> torch.Tensor:
    """Long[G, K]: each group's slots on a width-``n`` side (every unit, K = n, where the side has no site)."""
    if sides[0] is None:
        return torch.arange(n, device=device).expand(len(sides), n)
    return torch.stack([side.index for side in sides])


def _residues(sides: Sequence[StaticSide | None], device: torch.device) -> tuple[torch.Tensor, int]:
    """(Long[G, keep]: each group's residues, dp) of one side; a side without a site is dp 1, residue 0."""
    if sides[0] is None:
        return torch.zeros(len(sides), 1, dtype=torch.long, device=device), 1
    return torch.stack([side.residues for side in sides]), sides[0].dp


class _ResidueBlocks(torch.autograd.Function):
    """weight (Tensor[n_out, n_in]), ro (Long[G, keep_out]), ri (Long[G, keep_in]), dp_out, dp_in (dividing
    n_out and n_in) -> Tensor[G, K_out, K_in]: block g holds W's units ``j * dp + ro[g, t]`` (rows) and
    ``j * dp + ri[g, t]`` (columns) in slot order; backward adds every block's gradient into one zero
    Tensor[n_out, n_in] (groups with equal residues read the same block: accumulated)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ro: torch.Tensor, ri: torch.Tensor, dp_out: int, dp_in: int):
        ctx.save_for_backward(ro, ri)
        ctx.dps = dp_out, dp_in
        n_out, n_in = weight.shape
        w4 = weight.reshape(n_out // dp_out, dp_out, n_in // dp_in, dp_in)
        picked = w4[:, ro[:, :, None], :, ri[:, None, :]]  # [G, keep_out, keep_in, n_out/dp, n_in/dp]
        k_out, k_in = (n_out // dp_out) * ro.shape[1], (n_in // dp_in) * ri.shape[1]
        return picked.permute(0, 3, 1, 4, 2).reshape(ro.shape[0], k_out, k_in)  # [G, K_out, K_in], slot order

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ro, ri = ctx.saved_tensors
        dp_out, dp_in = ctx.dps
        g, keep_out, keep_in = grad.shape[0], ro.shape[1], ri.shape[1]
        rows, cols = grad.shape[1] // keep_out, grad.shape[2] // keep_in  # n_out / dp, n_in / dp
        parts = grad.view(g, rows, keep_out, cols, keep_in).permute(0, 2, 4, 1, 3)  # [G, keep_o, keep_i, rows, cols]
        grad_w = grad.new_zeros(rows, dp_out, cols, dp_in)
        grad_w.permute(1, 3, 0, 2).index_put_((ro[:, :, None], ri[:, None, :]), parts, accumulate=True)
        return grad_w.view(rows * dp_out, cols * dp_in), None, None, None, None


class _IndexBlocks(torch.autograd.Function):
    """weight (Tensor[n_out, n_in]), rows (Long[G, K_out]), cols (Long[G, K_in]) -> Tensor[G, K_out, K_in], block g
    ``weight[rows[g]][:, cols[g]]``; backward adds every block's gradient into one zero Tensor[n_out, n_in]
    (blocks of groups with equal slots overlap: accumulated)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows, cols)
        ctx.shape = weight.shape
        return weight[rows[:, :, None], cols[:, None, :]]  # [G, K_out, K_in]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, cols = ctx.saved_tensors
        index = (rows[:, :, None].expand_as(grad), cols[:, None, :].expand_as(grad))
        grad_w = grad.new_zeros(ctx.shape).index_put_(index, grad, accumulate=True)  # [n_out, n_in]
        return grad_w, None, None
