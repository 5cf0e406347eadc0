"""One search problem: the dropped-count laws of a family's candidates against Binomial(n, p), the
W1 objective with its gradient, the exact-mean projection, and the argument checks shared by the
SGD search and the LP."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._env import check_int, check_number, check_rate
from ..distribution import KINDS, PatternDistribution
from .family import MAX_PERIODS, check_family, check_max_period, min_period, pattern_work, reachable_range
from .stats import binomial_pmf, candidate_dropped_counts

# the widest site a law is searched for: the dropped-count laws hold n + 1 values per candidate, and a search
# at 2**22 units takes about a minute and 1 GB on a 2-core CPU (wider layers than any model's)
MAX_SEARCH_UNITS = 2**22


@dataclass
class SearchProblem:
    """Everything the losses need for one (p, n, candidates, mu)."""

    p: float
    n: int
    pairs: list[tuple[int, int]]
    mu: float
    work_exponent: float

    def __post_init__(self) -> None:
        n, count = self.n, len(self.pairs)
        kept = np.array([keep / dp for dp, keep in self.pairs])  # [C]
        self.rate = 1.0 - kept  # [C]
        self.work = pattern_work(self.pairs, self.work_exponent)  # [C]
        # work beyond the kept fraction: at mean p, the work less the constant 1 - p, so it moves the optimum
        # as the work does, without pulling the mean off p during the search (zero for work_exponent = 1)
        self.excess_work = self.work - kept  # [C]
        self.index, self.count, self.weight = candidate_dropped_counts(self.pairs, n)  # [M] each
        self.cdf_binom = np.cumsum(binomial_pmf(n, self.p))[:n]  # [n]
        pmf = np.zeros((count, n + 1))
        np.add.at(pmf, (self.index, self.count), self.weight)
        self.cdf = np.cumsum(pmf, axis=1)[:, :n]  # [C, n]; CDF at k = n is 1 for everyone

    def mixture_cdf(self, q: np.ndarray) -> np.ndarray:
        """Float64[n]: CDF of the dropped count under the mixture q (sparse: O(M + n))."""
        return np.cumsum(np.bincount(self.count, weights=q[self.index] * self.weight, minlength=self.n + 1))[: self.n]

    def distance(self, q: np.ndarray) -> float:
        return float(np.abs(self.mixture_cdf(q) - self.cdf_binom).sum() / self.n)

    def objective(self, q: np.ndarray) -> float:
        """What the search and the LP minimise (over laws of mean p): W1 + mu * expected work."""
        return self.distance(q) + self.mu * float(q @ self.work)

    def loss_and_grad(self, q: np.ndarray, penalty: float) -> tuple[float, np.ndarray]:
        """Loss ``W1 + penalty * (mean - p)^2 + mu * excess work`` and its gradient in q (Float64[C]); with
        mean p it is ``objective`` less the constant ``mu * (1 - p)``."""
        diff = self.mixture_cdf(q) - self.cdf_binom  # [n]
        sign = np.append(np.sign(diff) / self.n, 0.0)  # [n+1]; k = n does not count
        tail = np.cumsum(sign[::-1])[::-1]  # [n+1]: sum_{k >= j} sign_k
        grad_w1 = np.bincount(self.index, weights=self.weight * tail[self.count], minlength=len(q))  # [C]
        gap = float(q @ self.rate) - self.p
        loss = float(np.abs(diff).sum() / self.n) + penalty * gap**2 + self.mu * float(q @ self.excess_work)
        return loss, grad_w1 + 2.0 * penalty * gap * self.rate + self.mu * self.excess_work

    def project(self, q: np.ndarray) -> np.ndarray:
        """Mix in the candidate on the other side of p that makes the mean p (up to rounding) at the
        lowest objective. q: Float64[C] -> Float64[C]."""
        mean = float(q @ self.rate)
        if mean == self.p:
            return q
        side = np.flatnonzero(self.rate >= self.p if mean < self.p else self.rate <= self.p)  # [E]
        t = (self.p - mean) / (self.rate[side] - mean)  # [E], in (0, 1]
        mixed = (1.0 - t[:, None]) * self.mixture_cdf(q) + t[:, None] * self.cdf[side]  # [E, n]
        work = (1.0 - t) * (q @ self.work) + t * self.work[side]  # [E]
        cost = np.abs(mixed - self.cdf_binom).sum(1) / self.n + self.mu * work
        best = int(np.argmin(cost))
        out = (1.0 - t[best]) * q
        out[side[best]] += t[best]
        return out


def check_reached(p: float, family: str) -> None:
    """ValueError unless ``family`` (a name of FAMILIES) reaches the rate ``p`` at its longest period."""
    limit = MAX_PERIODS[check_family(family)]
    if p > 1.0 - 1.0 / limit:
        hint = "" if family == "paper" else f"; family 'paper' reaches p <= 1 - 1/{MAX_PERIODS['paper']}"
        raise ValueError(
            f"p={p} is above {1.0 - 1.0 / limit:.7g} = 1 - 1/{limit}, the highest rate family {family!r} reaches "
            f"(its periods are capped at MAX_PERIODS[{family!r}] = {limit}){hint}"
        )


def check_search_args(
    p: float, n: int, kind: str, family: str, max_period: int, tile: int, mu: float, work_exponent: float
) -> tuple[float, int, int, int, float, float]:
    """The arguments the SGD search and the LP share, checked: ``(p, n, max_period, tile, mu,
    work_exponent)`` as numbers, else ValueError naming the bad one."""
    p, n = check_rate(p), check_int("n", n, 1)
    if n > MAX_SEARCH_UNITS:
        raise ValueError(
            f"n={n} units is above MAX_SEARCH_UNITS = 2**22 = {MAX_SEARCH_UNITS}, the widest site a pattern law is "
            "searched for (its dropped-count laws hold n + 1 values per candidate)"
        )
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    check_reached(p, family)
    max_period = check_max_period(family, max_period)
    low, high = reachable_range(family, max_period)
    if not low <= p <= high:
        raise ValueError(
            f"p={p} is outside the reachable range [{low:g}, {high:.6g}] of family {family!r} with "
            f"max_period={max_period}; use max_period >= {min_period(p)}"
        )
    tile = check_int("tile", tile, 1)
    mu, work_exponent = check_number("mu", mu, 0.0), check_number("work_exponent", work_exponent, 0.0)
    return p, n, max_period, tile, mu, work_exponent


def to_distribution(
    problem: SearchProblem, q: np.ndarray, kind: str, tile: int, history: Sequence[float] = ()
) -> PatternDistribution:
    """Drop probabilities below 1e-12, renormalise, and wrap as a PatternDistribution."""
    keep = np.flatnonzero(q > 1e-12)
    probs = q[keep] / q[keep].sum()
    return PatternDistribution(
        pairs=tuple(problem.pairs[i] for i in keep),
        probs=tuple(probs),
        kind=kind,
        tile=tile,
        n=problem.n,
        target_p=problem.p,
        distance=problem.distance(np.bincount(keep, weights=probs, minlength=len(q))),
        loss_history=history,
    )
