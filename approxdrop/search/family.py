"""Pattern families: the candidate ``(dp, keep)`` pairs of a search, the rates they reach, and the
modelled GEMM work of a law (search/sgd.py's docstring states the project's choices)."""

from __future__ import annotations

import math

import numpy as np

from .._env import check_int, check_rate
from ..distribution import PatternDistribution

FAMILIES = ("paper", "extended")


def candidates(family: str, max_period: int) -> list[tuple[int, int]]:
    """The ``(dp, keep)`` pairs of a family up to ``max_period`` (see the module docstring)."""
    check_int("max_period", max_period, 1)
    if family == "paper":
        return [(dp, 1) for dp in range(1, max_period + 1)]
    if family == "extended":
        return [(1, 1)] + [(dp, keep) for dp in range(2, max_period + 1) for keep in range(1, dp)]
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def reachable_range(family: str, max_period: int) -> tuple[float, float]:
    """The rates a family can reach exactly: ``[0, 1 - 1/max_period]``."""
    rates = [1.0 - keep / dp for dp, keep in candidates(family, max_period)]
    return min(rates), max(rates)


def min_period(p: float) -> int:
    """The smallest ``max_period`` whose families reach rate ``p``: ``1 - 1/D >= p``."""
    period = max(1, math.ceil(1.0 / (1.0 - check_rate(p)) - 1e-9))
    return period if 1.0 - 1.0 / period >= p else period + 1


def pattern_work(pairs, work_exponent: float = 0.5) -> np.ndarray:
    """Float64[C]: modelled relative GEMM time ``(keep/dp) ** work_exponent`` of each pattern."""
    return np.array([(keep / dp) ** work_exponent for dp, keep in pairs])


def expected_work(dist: PatternDistribution, work_exponent: float = 0.5) -> float:
    """``sum q (keep/dp) ** work_exponent``: a distribution's expected relative GEMM time."""
    return float(np.dot(dist.probs, pattern_work(dist.pairs, work_exponent)))
