"""Answers every exercise checker must FAIL (tests/test_exercises_*.py): NaN in a right answer, and
values of the wrong type; and plausible wrong grouped offset draws for lab 02's statistical checker."""

import torch

WRONG_TYPES = [None, "abc", {"a": 1}]


def with_nan(fn):
    """``fn`` whose answer has its last element NaN (a number answer becomes NaN)."""

    def answer(*args):
        out = torch.as_tensor(fn(*args), dtype=torch.float64).clone()
        out.view(-1)[-1] = float("nan")
        return out if out.dim() else float(out)

    return answer


def _runs(dp, groups):
    return -(-groups // dp)  # ceil(groups / dp): permutations needed for ``groups`` offsets


# Grouped offset draws (lab 02) that lab02.check_grouped_offsets must FAIL: name -> (answer, what the FAIL says)
GROUPED_OFFSETS = {
    "independent with replacement": (
        lambda dp, groups, generator: torch.randint(dp, (groups,), generator=generator),
        "repeat an offset",
    ),
    "always 0..G-1": (lambda dp, groups, generator: torch.arange(groups), "group 0's offset is not uniform"),
    "off by one (1..dp)": (
        lambda dp, groups, generator: 1 + torch.randperm(dp, generator=generator).repeat(_runs(dp, groups))[:groups],
        "expected an offset in [0, 4]",
    ),
    "one permutation repeated": (
        lambda dp, groups, generator: torch.randperm(dp, generator=generator).repeat(_runs(dp, groups))[:groups],
        "group 3 starts a fresh permutation",
    ),
    "random cyclic shift": (
        lambda dp, groups, generator: (torch.randint(dp, (1,), generator=generator) + torch.arange(groups)) % dp,
        "not a uniformly random pair of distinct offsets",
    ),
    "global RNG, not the generator": (
        lambda dp, groups, generator: torch.cat([torch.randperm(dp) for _ in range(_runs(dp, groups))])[:groups],
        "two generators with the same seed gave different offsets",
    ),
    "int32": (
        lambda dp, groups, generator: torch.randperm(dp, generator=generator, dtype=torch.int32)[:groups],
        "expected a Long tensor (torch.int64)",
    ),
    "one offset too few": (
        lambda dp, groups, generator: torch.randperm(dp, generator=generator)[: groups - 1],
        "expected (3,): one offset per group",
    ),
}
