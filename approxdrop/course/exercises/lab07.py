"""Lab 07 exercises (the LSTM language model): one dropout site's input projection written as a dense
masked GEMM, and the GEMM work a row-pattern LSTM has left. Each ``check_*`` takes the learner's
function, runs it on fixed cases against the library and prints one PASS / FAIL / TODO line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...models import lstm_gemm_work
from ...models.lstm import row_projection
from ...patterns import RowPattern
from ..checks import CheckResult, check, draw_float, draw_int, fresh_generator

model_projection = row_projection  # what ApproxDropoutLSTM computes at a row site: the checker's reference


def projection_case(
    steps: int,
    batch: int,
    n: int,
    m: int,
    dp: int,
    offset: int,
    keep: int,
    seed: int,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, RowPattern]:
    """(u [T, B, n], W [m, n], b [m], RowPattern), the tensors in ``dtype``: one case of the projection check."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(steps, batch, n, generator=gen, dtype=dtype)  # [T, B, n]
    weight = torch.randn(m, n, generator=gen, dtype=dtype)  # [m, n]
    bias = torch.randn(m, generator=gen, dtype=dtype)  # [m]
    return u, weight, bias, RowPattern(dp, offset, keep)


PROJECTION_CASES = [  # (T, B, n, m, dp, offset, keep, seed)
    (5, 3, 12, 16, 2, 1, 1, 0),
    (7, 2, 10, 8, 3, 2, 1, 1),
    (4, 4, 13, 20, 4, 3, 1, 2),  # dp does not divide n
    (6, 1, 15, 12, 5, 1, 3, 3),  # extended family: keep > 1
    (3, 2, 9, 4, 1, 0, 1, 4),  # dp = 1: nothing dropped
]
FLOAT32_CASE = (4, 3, 11, 6, 3, 1, 1, 5)  # the answer keeps u's dtype
FLOAT32_ATOL = 1e-4  # float32 keeps about 7 digits; the float32 case's outputs stay below 20


def check_masked_projection(candidate: Callable[..., Any]) -> CheckResult:
    """``candidate(u, weight, bias, pattern) -> Float[T, B, m]``: the dense masked reference of one
    site's input projection, against the model's compact GEMM: fixed cases in float64 (to 1e-10) and one in
    float32 (to FLOAT32_ATOL, in u's dtype), then one drawn anew."""
    fresh = fresh_generator()
    cases = [projection_case(*case) for case in PROJECTION_CASES]
    cases.append(projection_case(*FLOAT32_CASE, dtype=torch.float32))
    dp = draw_int(fresh, 1, 8)
    drawn = (draw_int(fresh, 1, 6), draw_int(fresh, 1, 4), draw_int(fresh, 1, 20), draw_int(fresh, 1, 20))
    cases.append(
        projection_case(*drawn, dp, draw_int(fresh, 0, dp - 1), draw_int(fresh, 1, dp), draw_int(fresh, 0, 9999))
    )
    return check("masked input projection", candidate, model_projection, cases, atol=1e-10, atol_float32=FLOAT32_ATOL)


def reference_gemm_work_left(hidden: int, layers: int, vocab: int, p: float) -> float:
    """GEMM work left by row patterns relative to dense (``models.lstm_gemm_work``)."""
    return lstm_gemm_work(hidden, layers, vocab, p, "row")


def check_gemm_work_left(candidate: Callable[..., Any]) -> CheckResult:
    """``candidate(hidden, layers, vocab, p) -> float``: the share of the dense GEMM work left, in float64
    to 1e-9 (a share in [0, 1]), on fixed cases and two drawn anew."""
    cases = [
        (650, 2, 10_000, 0.5),
        (200, 2, 10_000, 0.3),
        (650, 3, 10_000, 0.7),
        (32, 1, 3199, 0.5),
        (1500, 2, 10_000, 0.65),
        (650, 2, 10_000, 0.0),
    ]
    fresh = fresh_generator()
    for _ in range(2):
        cases.append(
            (draw_int(fresh, 1, 2048), draw_int(fresh, 1, 4), draw_int(fresh, 2, 50_000), draw_float(fresh, 0, 0.9))
        )
    return check("GEMM work left", candidate, reference_gemm_work_left, cases, atol=1e-9)
