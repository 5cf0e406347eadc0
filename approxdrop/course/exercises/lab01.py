"""Lab 01 exercises: inverted dropout, and the GEMM work that row dropout leaves (docs/method.md §6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...models import mlp_gemm_work as _work
from ..checks import CheckResult, check, draw_float, draw_int, fresh_generator


def reference_inverted_dropout(x: torch.Tensor, keep_mask: torch.Tensor, p: float) -> torch.Tensor:
    return x * keep_mask / (1.0 - p)


def check_inverted_dropout(fn: Callable[..., Any]) -> CheckResult:
    """Spec: ``inverted_dropout(x, keep_mask, p)`` with x (Tensor[*]) and keep_mask (Bool, same
    shape or broadcastable) returns x where the mask is True, scaled by ``1 / (1 - p)``, and 0
    elsewhere, so that the expected output equals x, in x's dtype. Fixed cases in float64 (to 1e-6) and
    float32 (to FLOAT32_ATOL), then two drawn anew."""
    gen = torch.Generator().manual_seed(1)
    cases = []
    for shape, p in [((4, 6), 0.5), ((3, 5), 0.3), ((2, 8), 0.7)]:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        cases.append((x, torch.rand(shape, generator=gen) >= p, p))
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    cases.append((x, torch.rand(4, generator=gen) >= 0.5, 0.5))  # one mask row shared by the batch
    for shape, p in [((3, 7), 0.4), ((6, 2), 0.8)]:  # float32: the answer keeps x's dtype
        x = torch.randn(shape, generator=gen, dtype=torch.float32)
        cases.append((x, torch.rand(shape, generator=gen) >= p, p))
    fresh = fresh_generator()
    for _ in range(2):
        shape, p = (draw_int(fresh, 1, 6), draw_int(fresh, 1, 9)), draw_float(fresh, 0.05, 0.9)
        cases.append(
            (torch.randn(shape, generator=fresh, dtype=torch.float64), torch.rand(shape, generator=fresh) >= p, p)
        )
    return check("inverted dropout", fn, reference_inverted_dropout, cases, atol_float32=FLOAT32_ATOL)


FLOAT32_ATOL = 1e-5  # float32 keeps about 7 digits; the float32 cases' outputs stay below 10


def reference_gemm_work(sizes: tuple[int, ...], p: float) -> float:
    return _work(sizes, p, "row")


def check_gemm_work(fn: Callable[..., Any]) -> CheckResult:
    """Spec: ``gemm_work(sizes, p)`` returns the GEMM work (multiply-adds) of an MLP with layer widths
    ``sizes`` and row dropout of rate p after every hidden layer, as a fraction of the dense MLP's:
    layer i has ``sizes[i] * sizes[i+1]`` multiply-adds, times (1-p) for each of its two sides
    (input, output) that is a hidden layer. The batch size cancels out.

    Checked in float64 to 1e-9 (a share in [0, 1]: float64 arithmetic is exact to about 1e-15, and a
    slip in the formula is far larger), on fixed cases and three drawn anew."""
    cases = [((784, 2048, 2048, 10), p) for p in (0.3, 0.5, 0.7)]
    cases += [((100, 10), 0.5), ((8, 16, 4), 0.25), ((32, 64, 64, 64, 8), 0.6)]
    fresh = fresh_generator()
    for _ in range(3):
        sizes = tuple(draw_int(fresh, 1, 4096) for _ in range(draw_int(fresh, 2, 6)))
        cases.append((sizes, draw_float(fresh, 0.0, 0.95)))
    return check("GEMM work left", fn, reference_gemm_work, cases, atol=1e-9)
