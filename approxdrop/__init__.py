"""approxdrop: Approximate Random Dropout (Song et al., arXiv:1805.08939) for PyTorch.

Importing approxdrop never compiles anything and never touches the network.
"""

from .distribution import PatternDistribution, bracket_distribution, distribution_for
from .layers import METHODS, ApproxDropoutMLP
from .ops import row_pattern_linear, tile_pattern_linear
from .patterns import RowPattern, TilePattern

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "ApproxDropoutMLP",
    "PatternDistribution",
    "RowPattern",
    "TilePattern",
    "bracket_distribution",
    "distribution_for",
    "row_pattern_linear",
    "tile_pattern_linear",
]
