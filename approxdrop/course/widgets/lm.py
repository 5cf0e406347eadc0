"""Lab 07's language-model race (``widgets.race.RacePanel`` over ``training.train_lm``): loss,
perplexity and step-time curves of LSTM language models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...data import Corpus
from ...models import LM_METHODS
from ...training import RaceResult, train_lm
from ..viz.lm import race_figure, update_race_figure
from .race import RacePanel


class LMRacePanel(RacePanel):
    """Train language models on ``corpus`` with the checked methods on Start
    (``train_lm(corpus, methods, **train_kwargs)``)."""

    METHODS = LM_METHODS

    def __init__(
        self,
        corpus: Corpus,
        methods: Sequence[str] = ("bernoulli", "row", "torch"),
        p: float = 0.5,
        steps: int = 200,
        result: RaceResult | None = None,
        **train_kwargs: Any,
    ) -> None:
        super().__init__(corpus, methods, p, steps, result, **train_kwargs)

    def _train(self, methods, p, steps, callback, **kwargs):
        return train_lm(self.source, methods, p=p, steps=steps, callback=callback, **kwargs)

    def _figure(self, methods):
        return race_figure(methods)

    def _update(self, fig, result) -> None:
        update_race_figure(fig, result)
