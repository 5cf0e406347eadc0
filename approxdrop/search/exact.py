"""The exact optimum of the search problem as a linear program (scipy's HiGHS), the oracle the
SGD search is tested against."""

from __future__ import annotations

import numpy as np

from ..distribution import PatternDistribution
from .family import candidates
from .problem import SearchProblem, check_search_args, to_distribution


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
    """The exact minimiser of ``W1 + mu * expected_work`` with mean p, as a linear program
    (scipy's HiGHS): variables q (Float64[C]) and t (Float64[n]), minimise ``sum t / n + mu work.q``
    subject to ``|CDF q - CDF_binom| <= t``, ``q >= 0``, ``sum q = 1``, ``rate.q = p``."""
    try:
        from scipy import sparse
        from scipy.optimize import linprog
    except ImportError as err:
        raise ImportError("exact_optimum needs scipy: pip install scipy (or approxdrop[test])") from err
    p, n, max_period, tile, mu, work_exponent = check_search_args(
        p, n, kind, family, max_period, tile, mu, work_exponent
    )
    problem = SearchProblem(p, n, candidates(family, max_period), mu, work_exponent)
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
    return to_distribution(problem, problem.project(q / q.sum()), kind, tile)
