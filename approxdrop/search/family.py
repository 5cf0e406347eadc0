"""Pattern families: the candidate ``(dp, keep)`` pairs of a search, the rates they reach, and the
modelled GEMM work of a law (search/sgd.py's docstring states the project's choices)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .._env import check_int, check_number, check_rate
from ..distribution import MAX_PERIOD, PatternDistribution, check_pair, check_sequence

FAMILIES = ("paper", "extended")
# The longest period of each family's candidates. A search holds every candidate's dropped-count law:
# sum(dp) entries (about max_period**2 / 2 for "paper", max_period**3 / 3 for "extended") and a
# [candidates, n] CDF table, so the period is capped; "paper" reaches p <= 1 - 1/1024 = 0.99902,
# "extended" p <= 1 - 1/64 = 0.984375.
MAX_PERIODS = {"paper": MAX_PERIOD, "extended": 64}


def check_family(family: str) -> str:
    """``family`` if it is one of ``FAMILIES``, else ValueError naming it."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return family


def check_max_period(family: str, max_period: int) -> int:
    """``max_period`` as an int in ``[1, MAX_PERIODS[family]]``, else ValueError naming it."""
    limit = MAX_PERIODS[check_family(family)]
    max_period = check_int("max_period", max_period, 1)
    if max_period > limit:
        raise ValueError(
            f"max_period={max_period} is above the limit {limit} of family {family!r} (MAX_PERIODS), "
            f"which reaches p <= 1 - 1/{limit} = {1.0 - 1.0 / limit:.7g}"
        )
    return max_period


def candidates(family: str, max_period: int) -> list[tuple[int, int]]:
    """The ``(dp, keep)`` pairs of a family up to ``max_period`` (see the module docstring)."""
    max_period = check_max_period(family, max_period)
    if family == "paper":
        return [(dp, 1) for dp in range(1, max_period + 1)]
    return [(1, 1)] + [(dp, keep) for dp in range(2, max_period + 1) for keep in range(1, dp)]


def reachable_range(family: str, max_period: int) -> tuple[float, float]:
    """The rates a family can reach exactly: ``[0, 1 - 1/max_period]``."""
    rates = [1.0 - keep / dp for dp, keep in candidates(family, max_period)]
    return min(rates), max(rates)


def min_period(p: float) -> int:
    """The smallest ``max_period`` whose families reach rate ``p``: ``1 - 1/D >= p``."""
    period = max(1, math.ceil(1.0 / (1.0 - check_rate(p)) - 1e-9))
    return period if 1.0 - 1.0 / period >= p else period + 1


def pattern_work(pairs: Sequence[tuple[int, int]], work_exponent: float = 0.5) -> np.ndarray:
    """Float64[C]: modelled relative GEMM time ``(keep/dp) ** work_exponent`` of each pattern (``pairs``:
    ``(dp, keep)`` with ``1 <= keep <= dp``; ``work_exponent`` >= 0), else ValueError naming the bad one."""
    work_exponent = check_number("work_exponent", work_exponent, 0.0)
    pairs = [check_pair(i, pair) for i, pair in enumerate(check_sequence("pairs", pairs))]
    return np.array([(keep / dp) ** work_exponent for dp, keep in pairs])


def expected_work(dist: PatternDistribution, work_exponent: float = 0.5) -> float:
    """``sum q (keep/dp) ** work_exponent``: a distribution's expected relative GEMM time."""
    return float(np.dot(dist.probs, pattern_work(dist.pairs, work_exponent)))
