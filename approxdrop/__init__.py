"""approxdrop: Approximate Random Dropout (Song et al., arXiv:1805.08939) for PyTorch.

Importing approxdrop never compiles anything and never touches the network. The package's folders
are its layers, each importing only the ones before it in ``patterns`` -> ``distribution`` ->
``search`` -> ``ops`` -> ``models`` (and ``data``) -> ``training`` -> ``experiments`` /
``course``; ``_env`` serves them all.
"""

from .data import load_corpus, load_dataset
from .distribution import PatternDistribution, bracket_distribution
from .models import (
    DROPOUT_METHODS,
    LM_METHODS,
    LSTM_METHODS,
    METHODS,
    ApproxDropoutFFN,
    ApproxDropoutLSTM,
    ApproxDropoutMLP,
    DecoderLM,
    Method,
    TorchLSTM,
    convert,
    language_model,
    lora_targets,
    lstm_gemm_work,
    mlp_gemm_work,
)
from .models.sites import draw_patterns, pattern_key  # compiled and graphed training (README)
from .ops import cuda as kernels  # the CUDA kernels' build status and dispatch: ad.kernels.status()
from .ops import row_pattern_linear, tile_pattern_linear
from .patterns import RowPattern, TilePattern
from .search import (
    FAMILIES,
    FrontierPoint,
    binomial_pmf,
    binomial_test,
    candidates,
    co_drop_matrix,
    distance_to_binomial,
    distribution_for,
    drop_probability,
    dropped_count_histogram,
    dropped_count_pmf,
    exact_optimum,
    expected_work,
    monte_carlo,
    reachable_range,
    search_distribution,
    search_frontier,
)
from .training import LMRaceConfig, MLPRaceConfig, compiled_step, train, train_lm

__version__ = "0.1.0"

__all__ = [
    "DROPOUT_METHODS",
    "FAMILIES",
    "LM_METHODS",
    "LSTM_METHODS",
    "METHODS",
    "ApproxDropoutFFN",
    "ApproxDropoutLSTM",
    "ApproxDropoutMLP",
    "DecoderLM",
    "FrontierPoint",
    "LMRaceConfig",
    "MLPRaceConfig",
    "Method",
    "PatternDistribution",
    "RowPattern",
    "TilePattern",
    "TorchLSTM",
    "binomial_pmf",
    "binomial_test",
    "bracket_distribution",
    "candidates",
    "co_drop_matrix",
    "compiled_step",
    "convert",
    "distance_to_binomial",
    "distribution_for",
    "draw_patterns",
    "drop_probability",
    "dropped_count_histogram",
    "dropped_count_pmf",
    "exact_optimum",
    "expected_work",
    "kernels",
    "language_model",
    "lora_targets",
    "load_corpus",
    "load_dataset",
    "lstm_gemm_work",
    "mlp_gemm_work",
    "monte_carlo",
    "pattern_key",
    "reachable_range",
    "row_pattern_linear",
    "search_distribution",
    "search_frontier",
    "tile_pattern_linear",
    "train",
    "train_lm",
]
