"""The SGD-based pattern-distribution search (METHOD.md §5), its exact LP optimum, and the
cost-aware speed/fidelity frontier.

Project choices:

- **Candidates.** Family ``"paper"``: ``(dp, 1)`` for ``1 <= dp <= max_period``. Family
  ``"extended"``: ``(dp, keep)`` with ``1 <= keep < dp <= max_period``, plus ``(1, 1)``. Pairs of
  equal rate such as (2, 1) and (4, 2) are different patterns (different dropped-count laws when
  dp does not divide n, different co-drop structure), so both are kept; only the ``keep == dp``
  pairs, which all keep everything, are merged into (1, 1). Both families reach the rates
  ``[0, 1 - 1/max_period]``.
- **Distance.** Wasserstein-1 between the dropped *fraction* under the mixture and under
  Binomial(n, p): ``W1 = sum_{k<n} |CDF_q(k) - CDF_binom(k)| / n`` (the CDF-L1 distance in units
  of a rate, comparable across n). Each candidate contributes its dropped-count law over its
  uniform offset (``stats.candidate_dropped_counts``).
- **Tiles.** For ``kind="tile"`` ``n`` counts the tiles of the weight and the dropped-tile count is
  modelled as that of a row pattern on ``n`` units, as if the tile grid were one tile row. This is
  exact for a one-row grid; the mean and the per-tile drop probability are exact for every grid.
- **Loss and optimiser.** ``W1(q) + penalty * (sum q r - p)^2 + mu * work(q)`` with
  ``q = softmax(theta)``; Adam on ``theta`` (started at ``-30 |r - p|``, cosine learning rate), with
  the gradient written out: ``dW1/dq_c = sum_k sign(CDF_q(k) - CDF_binom(k)) CDF_c(k) / n``.
- **Projection.** Probabilities below ``min_prob`` are dropped, then the mean is made exact by
  mixing in the one candidate on the other side of p that gives the lowest objective:
  ``q <- (1 - t) q + t e_j`` with ``t = (p - mean) / (r_j - mean)``.
- **Cost (beyond the paper).** The expected FLOPs of a site are fixed by the mean: ``1 - p``. Time
  is not: small GEMMs run less efficiently (METHOD.md §6: on an H100 a 4x FLOP cut gives ~1.8x at
  width <= 1024, ~3.4x at 4096). We model the relative GEMM time of a pattern keeping the fraction
  ``f = keep/dp`` as ``f ** work_exponent`` (default 0.5: a 4x cut gives 2x) and call its mean
  ``expected_work``. It is concave, so mixing light and heavy patterns lowers it while moving the
  dropped-count law away from the binomial: ``mu`` trades fidelity for speed. With
  ``work_exponent = 1`` it is the constant ``1 - p`` and ``mu`` has no effect.
- **Extended never worse than paper.** The paper family is a subset of the extended one; an
  extended search also runs the paper search and returns whichever has the lower objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .distribution import KINDS, PatternDistribution, check_rate
from .patterns import check_int
from .stats import binomial_pmf, candidate_dropped_counts

FAMILIES = ("paper", "extended")
SEARCH_VERSION = 1  # bump when the search's results change (invalidates caches)
# mu is in units of W1 per unit of relative time; the trade happens at mu ~ 1-10
DEFAULT_MUS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0, 20.0)
# Stated SGD-vs-LP tolerance on the objective (W1 + mu * work): sgd <= lp * (1 + REL) + ABS.
SGD_REL_TOL, SGD_ABS_TOL = 0.05, 5e-4


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


@dataclass
class _Problem:
    """Everything the losses need for one (p, n, candidates, mu)."""

    p: float
    n: int
    pairs: list[tuple[int, int]]
    mu: float
    work_exponent: float

    def __post_init__(self) -> None:
        n, count = self.n, len(self.pairs)
        self.rate = np.array([1.0 - keep / dp for dp, keep in self.pairs])  # [C]
        self.work = pattern_work(self.pairs, self.work_exponent)  # [C]
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
        """What the search and the LP minimise: W1 + mu * expected work."""
        return self.distance(q) + self.mu * float(q @ self.work)

    def loss_and_grad(self, q: np.ndarray, penalty: float) -> tuple[float, np.ndarray]:
        """Loss and its gradient in q (Float64[C])."""
        diff = self.mixture_cdf(q) - self.cdf_binom  # [n]
        sign = np.append(np.sign(diff) / self.n, 0.0)  # [n+1]; k = n does not count
        tail = np.cumsum(sign[::-1])[::-1]  # [n+1]: sum_{k >= j} sign_k
        grad_w1 = np.bincount(self.index, weights=self.weight * tail[self.count], minlength=len(q))  # [C]
        gap = float(q @ self.rate) - self.p
        loss = float(np.abs(diff).sum() / self.n) + penalty * gap**2 + self.mu * float(q @ self.work)
        return loss, grad_w1 + 2.0 * penalty * gap * self.rate + self.mu * self.work

    def project(self, q: np.ndarray) -> np.ndarray:
        """Mix in the candidate on the other side of p that makes the mean exactly p at the
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


def _check_search_args(p, n, kind, family, max_period, mu) -> tuple[float, int]:
    p, n = check_rate(p), check_int("n", n, 1)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    low, high = reachable_range(family, max_period)
    if not low <= p <= high:
        raise ValueError(
            f"p={p} is outside the reachable range [{low:g}, {high:.6g}] of family {family!r} with "
            f"max_period={max_period}; use max_period >= {min_period(p)}"
        )
    if not (isinstance(mu, (int, float)) and mu >= 0.0):
        raise ValueError(f"mu must be a number >= 0, got {mu!r}")
    return p, n


def _finish(problem: _Problem, q: np.ndarray, kind: str, tile: int, history=()) -> PatternDistribution:
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


def _adam(problem: _Problem, steps: int, lr: float, penalty: float) -> tuple[np.ndarray, list[float]]:
    """Adam on the logits; returns q = softmax(theta) and the loss at <= 200 evenly spaced steps."""
    theta = -30.0 * np.abs(problem.rate - problem.p)  # [C]: start near the patterns of rate ~p
    m1, m2 = np.zeros_like(theta), np.zeros_like(theta)
    beta1, beta2, every = 0.9, 0.99, max(1, steps // 200)
    history = []
    for step in range(1, steps + 1):
        q = np.exp(theta - theta.max())
        q /= q.sum()
        loss, grad_q = problem.loss_and_grad(q, penalty)
        grad = q * (grad_q - q @ grad_q)  # softmax chain rule
        m1 = beta1 * m1 + (1.0 - beta1) * grad
        m2 = beta2 * m2 + (1.0 - beta2) * grad**2
        step_lr = lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / steps))
        theta -= step_lr * (m1 / (1.0 - beta1**step)) / (np.sqrt(m2 / (1.0 - beta2**step)) + 1e-12)
        if step % every == 0:
            history.append(loss)
    q = np.exp(theta - theta.max())
    return q / q.sum(), history


def search_distribution(
    p: float,
    n: int,
    kind: str = "row",
    family: str = "paper",
    max_period: int = 16,
    *,
    tile: int = 32,
    mu: float = 0.0,
    work_exponent: float = 0.5,
    steps: int = 1000,
    lr: float = 0.1,
    penalty: float = 100.0,
    min_prob: float = 1e-4,
    cache: bool = False,
) -> PatternDistribution:
    """The distribution over a family's patterns whose dropped-count law is closest (W1) to
    Binomial(n, p), with expected rate exactly p (see the module docstring).

    Args:
        p: target rate, within ``reachable_range(family, max_period)``.
        n: units of the site (row) or tiles of the weight (tile).
        kind, tile: the kind and tile size of the returned distribution.
        family, max_period: the candidates.
        mu, work_exponent: cost-aware weight on ``expected_work`` (0: plain search).
        steps, lr, penalty: Adam steps, learning rate, weight of ``(mean - p)^2``.
        min_prob: probabilities below it are dropped before the exact-mean projection.
        cache: look up / store the result in ``approxdrop.cache`` (memory and disk).

    Returns a PatternDistribution with ``distance`` (the W1 above), ``loss_history`` (the loss at
    up to 200 evenly spaced Adam steps), ``n`` and ``target_p``.
    """
    p, n = _check_search_args(p, n, kind, family, max_period, mu)
    check_int("steps", steps, 1)
    settings = dict(mu=mu, work_exponent=work_exponent, steps=steps, lr=lr, penalty=penalty, min_prob=min_prob)
    if cache:
        from . import cache as store

        key = dict(p=p, n=n, kind=kind, family=family, max_period=max_period, tile=tile, version=SEARCH_VERSION)
        return store.cached(
            {**key, **settings}, lambda: search_distribution(p, n, kind, family, max_period, tile=tile, **settings)
        )
    problem = _Problem(p, n, candidates(family, max_period), float(mu), float(work_exponent))
    if p == 0.0:  # only (1, 1) has rate 0
        return _finish(problem, (problem.rate == 0.0).astype(np.float64), kind, tile)
    q, history = _adam(problem, steps, lr, penalty)
    q = np.where(q >= min_prob, q, 0.0)
    best = _finish(problem, problem.project(q / q.sum()), kind, tile, history)
    if family == "extended":
        paper = search_distribution(p, n, kind, "paper", max_period, tile=tile, **settings)
        if _objective(paper, mu, work_exponent) < _objective(best, mu, work_exponent):
            return paper
    return best


def _objective(dist: PatternDistribution, mu: float, work_exponent: float) -> float:
    return dist.distance + mu * expected_work(dist, work_exponent)


def exact_optimum(
    p: float,
    n: int,
    kind: str = "row",
    family: str = "paper",
    max_period: int = 16,
    *,
    tile: int = 32,
    mu: float = 0.0,
    work_exponent: float = 0.5,
) -> PatternDistribution:
    """The exact minimiser of ``W1 + mu * expected_work`` with mean exactly p, as a linear program
    (scipy's HiGHS): variables q (Float64[C]) and t (Float64[n]), minimise ``sum t / n + mu work.q``
    subject to ``|CDF q - CDF_binom| <= t``, ``q >= 0``, ``sum q = 1``, ``rate.q = p``."""
    try:
        from scipy import sparse
        from scipy.optimize import linprog
    except ImportError as err:
        raise ImportError("exact_optimum needs scipy: pip install scipy (or approxdrop[test])") from err
    p, n = _check_search_args(p, n, kind, family, max_period, mu)
    problem = _Problem(p, n, candidates(family, max_period), float(mu), float(work_exponent))
    count = len(problem.pairs)
    cdf_t = sparse.csr_matrix(problem.cdf.T)  # [n, C]
    eye = sparse.identity(n, format="csr")
    a_ub = sparse.vstack([sparse.hstack([cdf_t, -eye]), sparse.hstack([-cdf_t, -eye])])  # [2n, C + n]
    b_ub = np.concatenate([problem.cdf_binom, -problem.cdf_binom])
    a_eq = np.zeros((2, count + n))
    a_eq[0, :count], a_eq[1, :count] = 1.0, problem.rate
    cost = np.concatenate([problem.mu * problem.work, np.full(n, 1.0 / n)])
    result = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=[1.0, p], bounds=(0, None), method="highs")
    if result.status != 0:
        raise RuntimeError(f"the linear program failed: {result.message}")
    q = np.clip(result.x[:count], 0.0, None)
    return _finish(problem, problem.project(q / q.sum()), kind, tile)


class FrontierPoint(NamedTuple):
    """One point of the speed/fidelity frontier."""

    mu: float
    distance: float  # W1 to the binomial
    expected_work: float  # modelled relative GEMM time
    distribution: PatternDistribution


def search_frontier(
    p: float,
    n: int,
    kind: str = "row",
    family: str = "extended",
    max_period: int = 16,
    *,
    mus=DEFAULT_MUS,
    tile: int = 32,
    work_exponent: float = 0.5,
    exact: bool = False,
    **search_kwargs,
) -> list[FrontierPoint]:
    """Distance to the binomial against expected work, one point per ``mu`` (cost-aware searches;
    ``exact=True`` solves each by LP instead). Plot ``expected_work`` against ``distance``: it runs
    from the W1 optimum (mu = 0) to the mix of dense steps and the sparsest pattern (large mu)."""
    points = []
    for mu in mus:
        if exact:
            dist = exact_optimum(p, n, kind, family, max_period, tile=tile, mu=mu, work_exponent=work_exponent)
        else:
            dist = search_distribution(
                p, n, kind, family, max_period, tile=tile, mu=mu, work_exponent=work_exponent, **search_kwargs
            )
        points.append(FrontierPoint(float(mu), dist.distance, expected_work(dist, work_exponent), dist))
    return points
