"""Lab 05's training race (``widgets.race.RacePanel`` over ``training.train``): loss, accuracy and
step-time curves of MLPs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...data import Dataset
from ...models import METHODS
from ...training import RaceResult, train
from ..viz.training import training_figure, update_training_figure
from .race import RacePanel


class TrainingPanel(RacePanel):
    """Train ``data`` with the checked methods on Start (``train(data, methods, **train_kwargs)``)."""

    METHODS = METHODS

    def __init__(
        self,
        data: Dataset,
        methods: Sequence[str] = ("bernoulli", "row", "tile"),
        p: float = 0.5,
        steps: int = 200,
        result: RaceResult | None = None,
        **train_kwargs: Any,
    ) -> None:
        super().__init__(data, methods, p, steps, result, **train_kwargs)

    def _train(self, methods, p, steps, callback, **kwargs):
        return train(self.source, methods, p=p, steps=steps, callback=callback, **kwargs)

    def _figure(self, methods):
        return training_figure(methods)

    def _update(self, fig, result) -> None:
        update_training_figure(fig, result)
