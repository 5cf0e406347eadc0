"""Reference solutions of lab 01 (approxdrop.course.exercises.lab01)."""

import torch


def inverted_dropout(x: torch.Tensor, keep_mask: torch.Tensor, p: float) -> torch.Tensor:
    return torch.where(keep_mask, x / (1 - p), torch.zeros_like(x))


def gemm_work(sizes, p):
    hidden = [False] + [True] * (len(sizes) - 2) + [False]  # which widths carry a dropout site
    dense = kept = 0.0
    for i in range(len(sizes) - 1):
        work = sizes[i] * sizes[i + 1]
        dense += work
        kept += work * (1 - p if hidden[i] else 1) * (1 - p if hidden[i + 1] else 1)
    return kept / dense
