"""Lab 05's training race (``widgets.race.RacePanel`` over ``training.train``): loss, accuracy and
step-time curves of MLPs."""

from __future__ import annotations

from ...models import METHODS
from ...training import train
from ..viz.training import training_figure, update_training_figure
from .race import RacePanel


class TrainingPanel(RacePanel):
    """Train ``data`` with the checked methods on Start (``train(data, methods, **train_kwargs)``)."""

    METHODS = METHODS

    def __init__(self, data, methods=("bernoulli", "row", "tile"), p=0.5, steps=200, result=None, **train_kwargs):
        super().__init__(data, methods, p, steps, result, **train_kwargs)

    def _train(self, methods, p, steps, callback, **kwargs):
        return train(self.source, methods, p=p, steps=steps, callback=callback, **kwargs)

    def _figure(self, methods):
        return training_figure(methods)

    def _update(self, fig, result) -> None:
        update_training_figure(fig, result)
