"""Lab 02 exercises: the kept units of a RowPattern, and the compact forward of a layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...ops import row_pattern_linear
from ...patterns import RowPattern
from ..checks import CheckResult, check

ROW_CASES = [(12, 3, 1, 1), (10, 4, 3, 1), (10, 4, 3, 2), (7, 5, 4, 3), (9, 1, 0, 1), (6, 6, 2, 6), (5, 8, 6, 1)]


def reference_kept_indices(n: int, dp: int, offset: int, keep: int) -> torch.Tensor:
    return RowPattern(dp, offset, keep).kept_indices(n)


def check_kept_indices(fn: Callable[..., Any]) -> CheckResult:
    """Spec: ``kept_indices(n, dp, offset, keep)`` returns Long[k], the units i in [0, n) with
    ``(i - offset) mod dp < keep``, in increasing order."""
    return check("kept indices", fn, reference_kept_indices, ROW_CASES)


def reference_compact_forward(
    x_kept: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_pattern: RowPattern,
    out_pattern: RowPattern,
) -> torch.Tensor:
    return row_pattern_linear(x_kept, weight, bias, in_pattern, out_pattern)


def check_compact_forward(fn: Callable[..., Any]) -> CheckResult:
    """Spec: ``compact_forward(x_kept, weight, bias, in_pattern, out_pattern)`` with x_kept
    (Tensor[B, k_in], only the kept inputs), weight (Tensor[n_out, n_in]) and bias (Tensor[n_out])
    returns Tensor[B, k_out], the kept outputs: ``in_pattern.scale * x_kept @ W[kept_out][:, kept_in].T
    + b[kept_out]``, with a GEMM of the kept size (never the full weight)."""
    gen = torch.Generator().manual_seed(2)
    cases = []
    for n_out, n_in, in_p, out_p in [
        (12, 10, RowPattern(2, 1), RowPattern(3, 0)),
        (9, 8, RowPattern(1, 0), RowPattern(4, 2, 3)),
        (7, 11, RowPattern(5, 3, 2), RowPattern(1, 0)),
    ]:
        x = torch.randn(4, in_p.kept_count(n_in), generator=gen, dtype=torch.float64)
        weight = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64)
        cases.append((x, weight, torch.randn(n_out, generator=gen, dtype=torch.float64), in_p, out_p))
    return check("compact forward", fn, reference_compact_forward, cases, atol=1e-9)
