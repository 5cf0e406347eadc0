"""The cost-aware speed/fidelity frontier (beyond the paper): one search per weight ``mu`` of the
expected GEMM work."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from ..distribution import PatternDistribution, check_sequence
from .exact import exact_optimum
from .family import expected_work
from .sgd import search_distribution

# mu is in units of W1 per unit of relative time; the trade happens at mu ~ 1-10
DEFAULT_MUS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0, 20.0)


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
    **search_kwargs: Any,
) -> list[FrontierPoint]:
    """Distance to the binomial against expected work, one point per ``mu`` (cost-aware searches;
    ``exact=True`` solves each by LP instead). Plot ``expected_work`` against ``distance``: it runs
    from the W1 optimum (mu = 0) to the mix of dense steps and the sparsest pattern (large mu).
    ``search_kwargs`` (steps, lr, ...) go to ``search_distribution``; the LP takes none."""
    if exact and search_kwargs:
        raise ValueError(f"exact=True solves a linear program: search settings {sorted(search_kwargs)} do not apply")
    points = []
    for mu in check_sequence("mus", mus):
        if exact:
            dist = exact_optimum(p, n, kind, family, max_period, tile=tile, mu=mu, work_exponent=work_exponent)
        else:
            dist = search_distribution(
                p, n, kind, family, max_period, tile=tile, mu=mu, work_exponent=work_exponent, **search_kwargs
            )
        points.append(FrontierPoint(float(mu), dist.distance, expected_work(dist, work_exponent), dist))
    return points
