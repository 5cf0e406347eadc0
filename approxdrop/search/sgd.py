"""The SGD-based pattern-distribution search (docs/method.md §5), its exact LP optimum, and the
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
- **Loss and optimiser.** ``W1(q) + penalty * (sum q r - p)^2 + mu * (work(q) - sum q keep/dp)`` with
  ``q = softmax(theta)`` (at mean p the last term is ``mu * work(q)`` less the constant ``mu * (1 - p)``;
  ``mu * work(q)`` itself pulled the mean off p); Adam on ``theta`` (started at ``-30 |r - p|``, cosine
  learning rate), with the gradient written out: ``dW1/dq_c = sum_k sign(CDF_q(k) - CDF_binom(k)) CDF_c(k) / n``,
  plus a multiplier on ``sum q r - p`` updated every ``MULTIPLIER_EVERY`` steps (method of multipliers): the
  penalty alone left the mean ~1e-3 off p, and the projection then cost up to 8e-4 of W1.
- **Projection.** Probabilities below ``min_prob`` are dropped (never the largest), then the mean is made exact by
  mixing in the one candidate on the other side of p that gives the lowest objective:
  ``q <- (1 - t) q + t e_j`` with ``t = (p - mean) / (r_j - mean)``.
- **Cost (beyond the paper).** The expected FLOPs of a site are fixed by the mean: ``1 - p``. Time
  is not: small GEMMs run less efficiently (docs/method.md §6: on an H100 a 4x FLOP cut gave about 1.7-1.9x
  at width <= 1024, about 3.4x at 4096-8192; reported, not recorded in this repository). We model the
  relative GEMM time of a pattern keeping the fraction ``f = keep/dp`` as ``f ** work_exponent`` (default 0.5:
  a 4x cut gives 2x) and call its mean ``expected_work``. It is concave, so mixing light and heavy patterns
  lowers it while moving the dropped-count law away from the binomial: ``mu`` trades fidelity for speed. With
  ``work_exponent = 1`` it is the constant ``1 - p`` and ``mu`` has no effect.
- **Extended never worse than paper.** The paper family is a subset of the extended one; an
  extended search also runs the paper search and returns whichever has the lower objective.
"""

from __future__ import annotations

import math

import numpy as np

from .._env import check_int, check_number, check_positive, check_rate
from ..distribution import PatternDistribution
from . import cache as store
from .family import candidates, expected_work
from .problem import SearchProblem, check_search_args, to_distribution

SEARCH_VERSION = 2  # bump when the search's results change (invalidates caches)
# Stated SGD-vs-LP tolerance on the objective (W1 + mu * work): sgd <= lp * (1 + REL) + ABS from n = 37 up.
# A scan of n = 2..128, p = 0.05, 0.1, .., 0.95 and 0.93, both families (5080 cells, mu = 0) found no miss
# from n = 37 (the tightest used 76% of the slack: extended, n = 37, p = 0.45) and 3 below it, where Adam has
# not converged in 1000 steps: W1 0.0049 against a bound of 0.0005 (paper, p = 0.93, n = 2), 0.0009 against
# 0.0007 (extended, p = 0.5, n = 36), 0.00057 against 0.0005 (extended, p = 0.75, n = 14).
SGD_REL_TOL, SGD_ABS_TOL = 0.05, 5e-4
MULTIPLIER_EVERY = 100  # Adam steps between updates of the multiplier on mean - p (every step diverges)


def _adam(problem: SearchProblem, steps: int, lr: float, penalty: float) -> tuple[np.ndarray, list[float]]:
    """Adam on the logits, with a multiplier on ``mean - p`` updated every ``MULTIPLIER_EVERY`` steps (method
    of multipliers); returns q = softmax(theta) and the loss at <= 200 evenly spaced steps."""
    theta = -30.0 * np.abs(problem.rate - problem.p)  # [C]: start near the patterns of rate ~p
    m1, m2 = np.zeros_like(theta), np.zeros_like(theta)
    beta1, beta2, every = 0.9, 0.99, max(1, steps // 200)
    history, multiplier = [], 0.0
    for step in range(1, steps + 1):
        q = np.exp(theta - theta.max())
        q /= q.sum()
        loss, grad_q = problem.loss_and_grad(q, penalty)
        grad_q = grad_q + multiplier * problem.rate  # the Lagrangian term multiplier * (mean - p)
        if step % MULTIPLIER_EVERY == 0:
            multiplier += 2.0 * penalty * (float(q @ problem.rate) - problem.p)
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
    Binomial(n, p), with expected rate p up to rounding (see the module docstring).

    Args:
        p: target rate, within ``reachable_range(family, max_period)``.
        n: units of the site (row) or tiles of the weight (tile).
        kind, tile: the kind and tile size of the returned distribution.
        family, max_period: the candidates.
        mu, work_exponent: cost-aware weight (>= 0) on ``expected_work`` (0: plain search), and
            its exponent (>= 0).
        steps, lr, penalty: Adam steps (>= 1), learning rate (> 0), weight of ``(mean - p)^2`` and step of
            the multiplier on ``mean - p`` (>= 0).
        min_prob: probabilities below it (in [0, 1)) are dropped before the exact-mean projection;
            the likeliest pattern always stays.
        cache: look up / store the result in ``search.cache`` (memory and disk).

    Returns a PatternDistribution with ``distance`` (the W1 above), ``loss_history`` (the loss at
    up to 200 evenly spaced Adam steps), ``n`` and ``target_p``.
    """
    p, n, max_period, tile, mu, work_exponent = check_search_args(
        p, n, kind, family, max_period, tile, mu, work_exponent
    )
    steps, lr = check_int("steps", steps, 1), check_positive("lr", lr)
    penalty, min_prob = check_number("penalty", penalty, 0.0), check_rate(min_prob, "min_prob")
    settings = dict(mu=mu, work_exponent=work_exponent, steps=steps, lr=lr, penalty=penalty, min_prob=min_prob)
    if cache:
        key = dict(p=p, n=n, kind=kind, family=family, max_period=max_period, tile=tile, version=SEARCH_VERSION)
        return store.cached(
            {**key, **settings}, lambda: search_distribution(p, n, kind, family, max_period, tile=tile, **settings)
        )
    problem = SearchProblem(p, n, candidates(family, max_period), mu, work_exponent)
    if p == 0.0:  # only (1, 1) has rate 0
        return to_distribution(problem, (problem.rate == 0.0).astype(np.float64), kind, tile)
    q, history = _adam(problem, steps, lr, penalty)
    q = np.where(q >= min(min_prob, q.max()), q, 0.0)  # the likeliest pattern always stays
    best = to_distribution(problem, problem.project(q / q.sum()), kind, tile, history)
    if family == "extended":
        paper = search_distribution(p, n, kind, "paper", max_period, tile=tile, **settings)
        if _objective(paper, mu, work_exponent) < _objective(best, mu, work_exponent):
            return paper
    return best


def _objective(dist: PatternDistribution, mu: float, work_exponent: float) -> float:
    return dist.distance + mu * expected_work(dist, work_exponent)
