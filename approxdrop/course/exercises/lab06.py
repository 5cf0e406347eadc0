"""Lab 06 exercises: how a kernel finds the j-th kept index from (dp, offset, keep) alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...patterns import RowPattern
from ..checks import CheckResult, check, draw_int, fresh_generator

PATTERNS = [(1, 0, 1), (3, 1, 1), (4, 3, 2), (5, 4, 3), (6, 2, 6), (7, 5, 4), (8, 0, 3)]


def patterns() -> list[tuple[int, int, int]]:
    """PATTERNS and three (dp, offset, keep) drawn anew at every call."""
    fresh, drawn = fresh_generator(), []
    for _ in range(3):
        dp = draw_int(fresh, 1, 32)
        drawn.append((dp, draw_int(fresh, 0, dp - 1), draw_int(fresh, 1, dp)))
    return PATTERNS + drawn


def reference_kept_residues(dp: int, offset: int, keep: int) -> torch.Tensor:
    return RowPattern(dp, offset, keep).kept_indices(dp)  # the kept units of one period


def check_kept_residues(fn: Callable[..., Any]) -> CheckResult:
    """Spec: ``kept_residues(dp, offset, keep)`` returns Long[keep], the residues r in [0, dp) with
    ``(r - offset) mod dp < keep``, sorted. They are ``offset, ..., offset + keep - 1`` taken mod dp:
    the ones that wrap past dp come first."""
    return check("kept residues", fn, reference_kept_residues, patterns())


def reference_kept_index(j: int, dp: int, offset: int, keep: int) -> int:
    return int(RowPattern(dp, offset, keep).kept_indices((j // keep + 1) * dp)[j])


def check_kept_index(fn: Callable[..., Any]) -> CheckResult:
    """Spec: ``kept_index(j, dp, offset, keep)`` returns the j-th kept unit (j >= 0, increasing
    order) of RowPattern(dp, offset, keep) as an int, with arithmetic only:
    ``(j // keep) * dp + R[j % keep]`` where R are the sorted kept residues."""
    fresh = fresh_generator()
    cases = [(j, *p) for p in PATTERNS for j in (0, 1, 2, 5, 11, 100)]
    cases += [(draw_int(fresh, 0, 10_000), *p) for p in patterns()[len(PATTERNS) :]]
    return check("j-th kept index", fn, reference_kept_index, cases)
