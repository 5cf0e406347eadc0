"""Training: one interleaved race engine for every model kind, and the MLP and language-model steps."""

from .graphed import compiled_step
from .lm import OPTIMIZERS, LMRaceConfig, lm_loss, lm_training_step, perplexity, train_lm
from .mlp import MLPRaceConfig, evaluate, train, training_step
from .optim import sgd
from .race import ACCURACY, PERPLEXITY, History, Metric, RaceResult, SummaryRow, run_race

__all__ = [
    "ACCURACY",
    "OPTIMIZERS",
    "PERPLEXITY",
    "History",
    "LMRaceConfig",
    "MLPRaceConfig",
    "Metric",
    "RaceResult",
    "SummaryRow",
    "compiled_step",
    "evaluate",
    "lm_loss",
    "lm_training_step",
    "perplexity",
    "run_race",
    "sgd",
    "train",
    "train_lm",
    "training_step",
]
