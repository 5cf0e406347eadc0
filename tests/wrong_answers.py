"""Answers every exercise checker must FAIL (tests/test_exercises_*.py): NaN in a right answer, and
values of the wrong type; plausible wrong grouped offset draws for lab 02's statistical checker; and
plausible wrong chain matchers for lab 08."""

import torch

from approxdrop.models.sites import is_elementwise

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


def _shifted_runs(dp, groups, generator):
    """The first permutation, then copies of it each shifted by a random amount (mod dp): every single
    offset and neighbouring pair stays uniform, but the later runs are not fresh."""
    first = torch.randperm(dp, generator=generator)
    runs = [first] + [(first + torch.randint(dp, (1,), generator=generator)) % dp for _ in range(_runs(dp, groups) - 1)]
    return torch.cat(runs)[:groups]


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
    "later runs shift the first (not fresh)": (
        lambda dp, groups, generator: _shifted_runs(dp, groups, generator),
        "groups 0..5 are not two fresh, independent permutations",
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


def chains_where(seq, accept):
    """Start indices i where ``accept(seq[i], seq[i + 1], seq[i + 2], seq[i + 3])`` holds, a Linear never in
    two chains: the skeleton of lab 08's wrong ``find_chains`` answers."""
    mods, starts = list(seq), []
    for i in range(len(mods) - 3):
        if (not starts or i > starts[-1] + 3) and accept(*mods[i : i + 4]):
            starts.append(i)
    return starts


def _linear(m):
    return type(m) is torch.nn.Linear


def _sizes(a, d):
    return a.out_features == d.in_features


def _gemm_linear(m):  # what convert takes as a Linear: nn.Linear's forward, subclasses included
    return isinstance(m, torch.nn.Linear) and type(m).forward is torch.nn.Linear.forward


def _dropout(m):
    return type(m) is torch.nn.Dropout


# lab 08's find_chains answers that lab08.check_find_chains must FAIL: name -> (answer, what the FAIL says)
FIND_CHAINS = {
    "any activation (Softmax too)": (
        lambda seq: chains_where(
            seq, lambda a, b, c, d: _linear(a) and type(c) is torch.nn.Dropout and _linear(d) and _sizes(a, d)
        ),
        "seq[1] is Softmax: not an elementwise activation",
    ),
    "any dropout class (Dropout1d too)": (
        lambda seq: chains_where(
            seq,
            lambda a, b, c, d: (
                _linear(a)
                and is_elementwise(b)
                and isinstance(c, torch.nn.modules.dropout._DropoutNd)
                and _linear(d)
                and _sizes(a, d)
            ),
        ),
        "seq[2] is Dropout1d, not nn.Dropout",
    ),
    "no size check": (
        lambda seq: chains_where(
            seq, lambda a, b, c, d: _linear(a) and is_elementwise(b) and type(c) is torch.nn.Dropout and _linear(d)
        ),
        "the sizes do not chain: seq[0] gives 16 features, seq[3] takes 12",
    ),
    "overlapping chains both kept": (
        lambda seq: [
            i
            for i in range(len(seq) - 3)
            if _linear(seq[i])
            and is_elementwise(seq[i + 1])
            and type(seq[i + 2]) is torch.nn.Dropout
            and _linear(seq[i + 3])
            and _sizes(seq[i], seq[i + 3])
        ],
        "3 is not the start of a chain: its first Linear is the last one of the chain at 0",
    ),
    "indices of the Dropouts": (
        lambda seq: [
            i + 2
            for i in chains_where(
                seq,
                lambda a, b, c, d: (
                    _linear(a) and is_elementwise(b) and type(c) is torch.nn.Dropout and _linear(d) and _sizes(a, d)
                ),
            )
        ],
        "it returned [2], expected [0]: 2 is not the start of a chain: seq[2] is Dropout(0.1), not nn.Linear",
    ),
    "misses a chain at the very end": (
        lambda seq: [
            i
            for i in chains_where(
                seq,
                lambda a, b, c, d: (
                    _linear(a) and is_elementwise(b) and type(c) is torch.nn.Dropout and _linear(d) and _sizes(a, d)
                ),
            )
            if i + 4 < len(seq)
        ],
        "it misses the chain that starts at 0",
    ),
    "exactly nn.Linear (a subclass that keeps its forward missed)": (
        lambda seq: chains_where(
            seq,
            lambda a, b, c, d: (
                _linear(a) and is_elementwise(b) and _dropout(c) and c.p < 1 and _linear(d) and _sizes(a, d)
            ),
        ),
        "it misses the chain that starts at 0. The case (a subclass of nn.Linear that keeps its forward counts",
    ),
    "any subclass of nn.Linear (its own forward too)": (
        lambda seq: chains_where(
            seq,
            lambda a, b, c, d: (
                isinstance(a, torch.nn.Linear)
                and is_elementwise(b)
                and _dropout(c)
                and c.p < 1
                and isinstance(d, torch.nn.Linear)
                and _sizes(a, d)
            ),
        ),
        "seq[3] is ClampedLinear(16->8), an nn.Linear with a forward of its own",
    ),
    "p = 1 too": (
        lambda seq: chains_where(
            seq,
            lambda a, b, c, d: (
                _gemm_linear(a) and is_elementwise(b) and _dropout(c) and _gemm_linear(d) and _sizes(a, d)
            ),
        ),
        "seq[2] is Dropout(1): p = 1 drops every unit",
    ),
    "any activation but Softmax (LayerNorm, Linear too)": (
        lambda seq: chains_where(
            seq,
            lambda a, b, c, d: (
                _gemm_linear(a)
                and not isinstance(b, torch.nn.Softmax)
                and _dropout(c)
                and c.p < 1
                and _gemm_linear(d)
                and _sizes(a, d)
            ),
        ),
        "seq[1] is LayerNorm: not an elementwise activation",
    ),
    "every PReLU (one slope per unit too)": (
        lambda seq: chains_where(
            seq,
            lambda a, b, c, d: (
                _gemm_linear(a)
                and (is_elementwise(b) or type(b) is torch.nn.PReLU)
                and _dropout(c)
                and c.p < 1
                and _gemm_linear(d)
                and _sizes(a, d)
            ),
        ),
        "seq[1] is PReLU(16): not an elementwise activation",
    ),
    "0 < p < 1 (p = 0 missed)": (
        lambda seq: chains_where(
            seq,
            lambda a, b, c, d: (
                _gemm_linear(a)
                and is_elementwise(b)
                and _dropout(c)
                and 0 < c.p < 1
                and _gemm_linear(d)
                and _sizes(a, d)
            ),
        ),
        "it misses the chain that starts at 0. The case (nn.Dropout with p = 0 is still a chain",
    ),
}
