"""The search for pattern laws (docs/method.md §5): families of candidate patterns, the SGD search and
its exact LP optimum, the cost-aware frontier, the default law of a dropout site, the search cache,
and the statistics that compare a law with Binomial(n, p)."""

from .defaults import distribution_for
from .exact import exact_optimum
from .family import FAMILIES, MAX_PERIODS, candidates, expected_work, min_period, pattern_work, reachable_range
from .frontier import DEFAULT_MUS, FrontierPoint, search_frontier
from .sgd import SEARCH_VERSION, SGD_ABS_TOL, SGD_REL_TOL, search_distribution
from .stats import (
    binomial_pmf,
    binomial_test,
    co_drop_matrix,
    distance_to_binomial,
    drop_probability,
    dropped_count_histogram,
    dropped_count_pmf,
    monte_carlo,
)

__all__ = [
    "DEFAULT_MUS",
    "FAMILIES",
    "MAX_PERIODS",
    "SEARCH_VERSION",
    "SGD_ABS_TOL",
    "SGD_REL_TOL",
    "FrontierPoint",
    "binomial_pmf",
    "binomial_test",
    "candidates",
    "co_drop_matrix",
    "distance_to_binomial",
    "distribution_for",
    "drop_probability",
    "dropped_count_histogram",
    "dropped_count_pmf",
    "exact_optimum",
    "expected_work",
    "min_period",
    "monte_carlo",
    "pattern_work",
    "reachable_range",
    "search_distribution",
    "search_frontier",
]
