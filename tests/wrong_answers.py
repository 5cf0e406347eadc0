"""Answers every exercise checker must FAIL (tests/test_exercises_*.py): NaN in a right answer, and
values of the wrong type."""

import torch

WRONG_TYPES = [None, "abc", {"a": 1}]


def with_nan(fn):
    """``fn`` whose answer has its last element NaN (a number answer becomes NaN)."""

    def answer(*args):
        out = torch.as_tensor(fn(*args), dtype=torch.float64).clone()
        out.view(-1)[-1] = float("nan")
        return out if out.dim() else float(out)

    return answer
