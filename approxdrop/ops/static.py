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

from typing import NamedTuple

import torch


class StaticSide(NamedTuple):
    """One side of a layer in the static form: ``index`` (Long[K], the unit in each slot), ``valid``
    (Bool[K], False at padding; None when ``dp`` divides the width: no padding), ``scale`` (dp/keep)."""

    index: torch.Tensor
    valid: torch.Tensor | None
    scale: float


def static_side(n: int, dp: int, keep: int, offset: torch.Tensor) -> StaticSide:
    """The slots of a width-``n`` site under ``(dp, offset, keep)``, offset a Long[] tensor (0 <= offset < dp)."""
    residues = torch.remainder(offset + torch.arange(keep, device=offset.device), dp)  # [keep]
    starts = torch.arange(0, -(-n // dp) * dp, dp, device=offset.device)  # [ceil(n/dp)]
    index = (starts[:, None] + residues[None, :]).flatten()  # [K]
    if n % dp == 0:
        return StaticSide(index, None, dp / keep)
    valid = index < n  # [K]
    return StaticSide(torch.where(valid, index, 0), valid, dp / keep)


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
    scale = 1.0
    if in_side is not None:
        scale = in_side.scale
        if in_side.valid is not None:
            x = x * in_side.valid  # [*, K_in]: a padding slot may hold a nonzero activation
        weight = weight.index_select(1, in_side.index)  # [n_out, K_in]
    if out_side is not None:
        weight = weight.index_select(0, out_side.index)  # [K_out, K_in]
        bias = None if bias is None else bias.index_select(0, out_side.index)
    y = torch.nn.functional.linear(x, weight)  # [*, K_out]
    if scale != 1.0:
        y = y * scale
    return y if bias is None else y + bias
