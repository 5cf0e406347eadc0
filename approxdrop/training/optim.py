"""The SGD every training loop and benchmark of the library builds: torch's fused kernel, one call per step
for all parameters instead of a Python loop over them."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def sgd(params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0) -> torch.optim.SGD:
    """``torch.optim.SGD(params, lr, momentum, fused=True)``. The same numbers as the per-parameter loop (bit for
    bit on this project's CPU, tests/test_train.py), at less host cost: 5.4 -> 3.2 ms per step for the
    paper-size MLP's parameters and 56 -> 28 us for the tiny one's, one CPU thread (benchmarks/overhead.md).
    Every method of a race or benchmark pays the same step, so ratios keep comparing like with like."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, fused=True)
