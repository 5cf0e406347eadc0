"""Reference solutions of lab 04's exercises (tests/test_exercises_training.py proves they pass)."""

import torch


def expected_rate(pairs, probs):
    return sum(q * (1 - keep / dp) for (dp, keep), q in zip(pairs, probs))


def dropped_counts(dp, keep, n):
    units = torch.arange(n)
    return torch.stack([((units - offset) % dp >= keep).sum() for offset in range(dp)])


def drop_probability(pairs, probs, n, uniform_offset=True):
    units = torch.arange(n)
    prob = torch.zeros(n, dtype=torch.float64)
    for (dp, keep), q in zip(pairs, probs):
        offsets = range(dp) if uniform_offset else [0]
        for offset in offsets:
            prob += q / len(offsets) * ((units - offset) % dp >= keep).double()
    return prob
