"""The cost-aware speed/fidelity frontier (beyond the paper): one search per weight ``mu`` of the
expected GEMM work."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from .._env import check_int, check_number
from ..distribution import PatternDistribution, check_sequence
from .exact import exact_optimum
from .family import expected_work
from .sgd import search_distribution

# mu is in units of W1 per unit of relative time; the trade happens at mu ~ 1-10
DEFAULT_MUS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0, 20.0)
# a pair of neighbouring mus closer than this share of the mu range is not split further: at a jump of
# the exact optimum (a breakpoint of the LP) halving the gap again only finds one end or the other
MIN_MU_GAP_SHARE = 1e-3
_W1_FLOOR = 1e-9  # W1 can be 0 (a law that matches the binomial): ratios are taken above this


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
    mus: Sequence[float] = DEFAULT_MUS,
    tile: int = 32,
    work_exponent: float = 0.5,
    exact: bool = False,
    refine: int = 0,
    refine_ratio: float = 2.0,
    **search_kwargs: Any,
) -> list[FrontierPoint]:
    """Distance to the binomial against expected work, one point per ``mu`` (cost-aware searches;
    ``exact=True`` solves each by LP instead). Plot ``expected_work`` against ``distance``: it runs
    from the W1 optimum (mu = 0) to the mix of dense steps and the sparsest pattern (large mu).
    ``search_kwargs`` (steps, lr, ...) go to ``search_distribution``; the LP takes none.

    The whole trade often happens over a narrow band of ``mu`` (between 3 and 4 at p = 0.6, n = 256),
    which a fixed grid steps over. ``refine = k`` adds up to ``k`` more points where the curve moves:
    each time it searches at the midpoint of the two neighbouring mus whose W1 differ by the largest
    factor, while that factor is above ``refine_ratio`` (and the two mus are more than
    ``MIN_MU_GAP_SHARE`` of the mu range apart). This is deterministic: the same arguments give the
    same mus. With ``refine > 0`` the points come back sorted by ``mu``."""
    if exact and search_kwargs:
        raise ValueError(f"exact=True solves a linear program: search settings {sorted(search_kwargs)} do not apply")
    refine = check_int("refine", refine, 0)
    refine_ratio = check_number("refine_ratio", refine_ratio, 1.0)

    def point(mu: float) -> FrontierPoint:
        if exact:
            dist = exact_optimum(p, n, kind, family, max_period, tile=tile, mu=mu, work_exponent=work_exponent)
        else:
            dist = search_distribution(
                p, n, kind, family, max_period, tile=tile, mu=mu, work_exponent=work_exponent, **search_kwargs
            )
        return FrontierPoint(float(mu), dist.distance, expected_work(dist, work_exponent), dist)

    points = [point(mu) for mu in check_sequence("mus", mus)]
    if refine == 0:
        return points
    points.sort(key=lambda pt: pt.mu)
    min_gap = MIN_MU_GAP_SHARE * (points[-1].mu - points[0].mu)
    for _ in range(refine):
        best, best_jump = None, math.log(refine_ratio)
        for i, (a, b) in enumerate(zip(points, points[1:])):
            jump = abs(math.log((b.distance + _W1_FLOOR) / (a.distance + _W1_FLOOR)))
            if b.mu - a.mu > min_gap and jump > best_jump:  # strictly larger: the first of equal jumps wins
                best, best_jump = i, jump
        if best is None:
            break
        points.insert(best + 1, point((points[best].mu + points[best + 1].mu) / 2))
    return points
