"""Lab 04 exercises (the search): the expected rate of a distribution, the dropped count of one
pattern at every offset, and the exact per-unit drop probability (with the offset drawn uniformly, as the
library does, or fixed at 0, where units differ and only enumeration gets every one right). Each ``check_*`` takes the
learner's function, runs it on fixed cases against the library and prints one PASS / FAIL / TODO line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...distribution import PatternDistribution
from ...patterns import RowPattern
from ..checks import CheckResult, check, draw_int, fresh_generator

DISTRIBUTIONS = [
    (((2, 1),), (1.0,)),
    (((1, 1), (2, 1), (3, 1)), (0.2, 0.5, 0.3)),
    (((3, 2), (5, 2), (8, 3)), (0.6, 0.3, 0.1)),
    (((4, 1), (7, 5), (16, 9)), (0.25, 0.25, 0.5)),
]


def random_distribution(generator: torch.Generator) -> tuple[tuple[tuple[int, int], ...], tuple[float, ...]]:
    """(pairs, probs) drawn with ``generator``: one to four distinct (dp, keep) pairs, dp <= 16, and
    probabilities proportional to whole numbers 1..9."""
    pairs = []
    for _ in range(draw_int(generator, 1, 4)):
        dp = draw_int(generator, 1, 16)
        if (pair := (dp, draw_int(generator, 1, dp))) not in pairs:
            pairs.append(pair)
    weights = [draw_int(generator, 1, 9) for _ in pairs]
    return tuple(pairs), tuple(w / sum(weights) for w in weights)


def distributions() -> list[tuple[tuple[tuple[int, int], ...], tuple[float, ...]]]:
    """DISTRIBUTIONS and two drawn anew at every call."""
    fresh = fresh_generator()
    return DISTRIBUTIONS + [random_distribution(fresh) for _ in range(2)]


def reference_expected_rate(pairs: tuple[tuple[int, int], ...], probs: tuple[float, ...]) -> float:
    """``sum q (1 - keep/dp)``."""
    return PatternDistribution(pairs, probs).expected_rate


def check_expected_rate(candidate: Callable[..., Any]) -> CheckResult:
    """``candidate(pairs, probs) -> float``: the expected drop rate of a distribution, in float64 to 1e-9
    (a rate in [0, 1]: float64 sums are exact to about 1e-15, a slip in the formula is far larger)."""
    return check("expected rate", candidate, reference_expected_rate, distributions(), atol=1e-9)


def reference_dropped_counts(dp: int, keep: int, n: int) -> torch.Tensor:
    """Long[dp]: units of ``n`` dropped by RowPattern(dp, offset, keep) for offset = 0..dp-1."""
    return torch.tensor([n - RowPattern(dp, offset, keep).kept_count(n) for offset in range(dp)])


def check_dropped_counts(candidate: Callable[..., Any]) -> CheckResult:
    """``candidate(dp, keep, n) -> Long[dp]``: the dropped count at every offset."""
    cases = [(2, 1, 8), (3, 1, 10), (4, 3, 10), (5, 2, 13), (16, 9, 100), (7, 1, 3)]
    fresh = fresh_generator()
    for _ in range(2):
        dp = draw_int(fresh, 1, 16)
        cases.append((dp, draw_int(fresh, 1, dp), draw_int(fresh, 1, 200)))
    return check("dropped count per offset", candidate, reference_dropped_counts, cases)


def reference_drop_probability(
    pairs: tuple[tuple[int, int], ...], probs: tuple[float, ...], n: int, uniform_offset: bool = True
) -> torch.Tensor:
    """Float64[n]: exact P(unit i dropped), by enumerating every pattern and offset. ``uniform_offset``:
    the offset is drawn uniformly from 0..dp-1 (the library's rule: every unit gets the same probability);
    False: it is always 0, so each (dp, keep) drops the same units every time and units differ."""
    if uniform_offset:
        return PatternDistribution(pairs, probs).drop_probability(n)
    prob = torch.zeros(n, dtype=torch.float64)
    for (dp, keep), q in zip(pairs, probs):
        prob += q * (~RowPattern(dp, 0, keep).keep_mask(n)).double()
    return prob


def check_drop_probability(candidate: Callable[..., Any]) -> CheckResult:
    """``candidate(pairs, probs, n, uniform_offset=True) -> Float[n]``: each unit's exact drop probability,
    in any float dtype (the spec asks for "a float tensor"; float32 sums are within the 1e-6 tolerance).
    The cases with ``uniform_offset=False`` (offset always 0) have units with different probabilities, so
    an answer that fills every entry with the expected rate, without enumerating, fails them."""
    fresh = fresh_generator()
    cases = [(pairs, probs, n) for pairs, probs in DISTRIBUTIONS for n in (7, 24)]
    cases += [(*random_distribution(fresh), draw_int(fresh, 1, 50)) for _ in range(2)]
    cases += [(pairs, probs, n, False) for pairs, probs in DISTRIBUTIONS for n in (7, 24)]
    cases += [(*random_distribution(fresh), draw_int(fresh, 1, 50), False) for _ in range(2)]
    return check("per-unit drop probability", candidate, reference_drop_probability, cases, atol=1e-6, any_float=True)
