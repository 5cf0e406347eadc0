"""approxdrop: Approximate Random Dropout (Song et al., arXiv:1805.08939) for PyTorch.

Importing approxdrop never compiles anything and never touches the network.
"""

from . import kernels as kernels  # registers the CUDA implementations of the ops; builds nothing
from .distribution import PatternDistribution, bracket_distribution, distribution_for
from .layers import METHODS, ApproxDropoutMLP
from .lstm import LM_METHODS, LSTM_METHODS, ApproxDropoutLSTM, TorchLSTM, language_model
from .ops import row_pattern_linear, tile_pattern_linear
from .patterns import RowPattern, TilePattern
from .search import (
    FAMILIES,
    FrontierPoint,
    candidates,
    exact_optimum,
    expected_work,
    reachable_range,
    search_distribution,
    search_frontier,
)
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

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "METHODS",
    "ApproxDropoutLSTM",
    "ApproxDropoutMLP",
    "FrontierPoint",
    "LM_METHODS",
    "LSTM_METHODS",
    "PatternDistribution",
    "RowPattern",
    "TilePattern",
    "TorchLSTM",
    "binomial_pmf",
    "binomial_test",
    "bracket_distribution",
    "candidates",
    "co_drop_matrix",
    "distance_to_binomial",
    "distribution_for",
    "drop_probability",
    "dropped_count_histogram",
    "dropped_count_pmf",
    "exact_optimum",
    "language_model",
    "expected_work",
    "monte_carlo",
    "reachable_range",
    "row_pattern_linear",
    "search_distribution",
    "search_frontier",
    "tile_pattern_linear",
]
