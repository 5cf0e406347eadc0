"""Lab 03 exercises: the tile mask of a TilePattern, and its expansion to weight entries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...patterns import TilePattern
from ..checks import CheckResult, check, draw_int, fresh_generator

TILE_CASES = [
    (8, 8, 2, 0, 2, 1),
    (12, 20, 3, 1, 4, 1),
    (10, 7, 4, 3, 3, 2),  # partial tiles on both sides
    (16, 16, 5, 2, 2, 4),
    (6, 9, 1, 0, 4, 1),
]


def tile_cases() -> list[tuple[int, int, int, int, int, int]]:
    """TILE_CASES and three (n_out, n_in, dp, offset, tile, keep) drawn anew at every call."""
    fresh, drawn = fresh_generator(), []
    for _ in range(3):
        dp = draw_int(fresh, 1, 8)
        sizes = (draw_int(fresh, 1, 40), draw_int(fresh, 1, 40))
        drawn.append((*sizes, dp, draw_int(fresh, 0, dp - 1), draw_int(fresh, 1, 8), draw_int(fresh, 1, dp)))
    return TILE_CASES + drawn


def reference_tile_mask(n_out: int, n_in: int, dp: int, offset: int, tile: int, keep: int) -> torch.Tensor:
    return TilePattern(dp, offset, tile, keep).tile_mask(n_out, n_in)


def check_tile_mask(fn: Callable[..., Any]) -> CheckResult:
    """Spec: ``tile_mask(n_out, n_in, dp, offset, tile, keep)`` returns Bool[ceil(n_out/tile),
    ceil(n_in/tile)]: tile (a, b) is True (kept) iff ``(b - a - offset) mod dp < keep``."""
    return check("tile mask", fn, reference_tile_mask, tile_cases())


def reference_weight_mask(n_out: int, n_in: int, dp: int, offset: int, tile: int, keep: int) -> torch.Tensor:
    return TilePattern(dp, offset, tile, keep).keep_mask(n_out, n_in)


def check_weight_mask(fn: Callable[..., Any]) -> CheckResult:
    """Spec: ``weight_mask(n_out, n_in, dp, offset, tile, keep)`` returns Bool[n_out, n_in]: entry
    (i, j) is True iff its tile (i // tile, j // tile) is kept. Edge tiles may be partial."""
    return check("weight mask", fn, reference_weight_mask, tile_cases())
