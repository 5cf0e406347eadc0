"""Lab 06 exercises: how a kernel finds the j-th kept index from (dp, offset, keep) alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...patterns import RowPattern
from ..checks import CheckResult, WrongAnswer, check, draw_int, fresh_generator

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
    return (j // keep) * dp + int(reference_kept_residues(dp, offset, keep)[j % keep])  # arithmetic, any j


HUGE_J = 10**9  # from here on no mask over the units and no list of kept units fits in memory (see HUGE_CASES)
# (j, dp, offset, keep): the j-th kept unit lies past 2 * 10**14, so a mask or a list of the units up to it
# needs 200 TB or more, beyond any machine's address space (2**47 bytes, 140 TB), and fails at once; every
# answer stays below 2**53, where the float64 comparison is exact
HUGE_CASES = [(10**15, 8, 0, 3), (10**15 + 7, 5, 4, 3), (10**15 - 1, 16, 15, 2), (10**9 + 3, 10**6 + 3, 10**6, 5)]
HUGE_TIMEOUT_S = 2.0  # an arithmetic answer takes microseconds; a loop over the units is stopped before it fills memory


def _arithmetic_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, with an allocation failure on a huge ``j`` reported as what it means: the answer builds the
    units up to j (a mask, a list, an arange) instead of computing the j-th one."""

    def kept_index(j, dp, offset, keep):
        try:
            return fn(j, dp, offset, keep)
        except (MemoryError, RuntimeError) as exc:
            if j < HUGE_J or not (isinstance(exc, MemoryError) or "allocate" in str(exc)):
                raise
            raise WrongAnswer(
                f"it ran out of memory ({type(exc).__name__}): at j = {j:,} no mask over the units and no list of "
                "kept units fits; find the j-th kept unit with integer arithmetic on (j, dp, offset, keep)"
            ) from None

    return kept_index


def check_kept_index(fn: Callable[..., Any]) -> CheckResult:
    """Spec: ``kept_index(j, dp, offset, keep)`` returns the j-th kept unit (j >= 0, increasing
    order) of RowPattern(dp, offset, keep) as an int, with arithmetic only:
    ``(j // keep) * dp + R[j % keep]`` where R are the sorted kept residues.

    The last cases (HUGE_CASES) have j up to 10**15: an answer that builds a mask over the units or a list
    of kept units fails there, out of memory (a FAIL that says so) or past HUGE_TIMEOUT_S seconds."""
    fresh = fresh_generator()
    cases = [(j, *p) for p in PATTERNS for j in (0, 1, 2, 5, 11, 100)]
    cases += [(draw_int(fresh, 0, 10_000), *p) for p in patterns()[len(PATTERNS) :]]
    cases += HUGE_CASES
    return check(
        "j-th kept index",
        _arithmetic_only(fn),
        reference_kept_index,
        cases,
        timeout_s=HUGE_TIMEOUT_S,
        pass_note="j up to 10**15, where no mask or list of units fits",
    )
