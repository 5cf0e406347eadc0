"""The race panel shared by labs 05 and 07: method checkboxes, a p slider, a step count and a Start
button; the curves redraw in place while the models train, a progress bar counts the steps, and the
final table lands below. ``.widget`` is what to display, ``.fig`` the FigureWidget, ``.result`` the
last result (None before the first run); ``course.display.show(panel)`` displays it with a static copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as w
import plotly.graph_objects as go

from ..._env import check_int, check_rate
from ...data import Corpus, Dataset
from ...models.methods import check_names
from ...training import RaceResult
from ..viz.live import figure_widget
from ..viz.timing import race_lines

STYLE = {"description_width": "70px"}
MAX_STEPS = 100_000  # the steps box's upper end


class RacePanel:
    """Race the checked methods on ``source`` on Start. Subclasses name the methods (``METHODS``) and
    say how to train (``_train``), how to build the figure (``_figure``) and how to redraw it
    (``_update``); ``methods`` (the boxes checked at first) must be names of ``METHODS``, else a ValueError
    names the known ones. ``result``: an earlier result to show until the first Start. ``steps`` must lie in
    the steps box's range, 1 to ``MAX_STEPS`` (the box would clamp it, and the progress bar would not follow)."""

    METHODS: tuple[str, ...] = ()

    def __init__(
        self,
        source: Dataset | Corpus,
        methods: Sequence[str],
        p: float = 0.5,
        steps: int = 200,
        result: RaceResult | None = None,
        **train_kwargs: Any,
    ) -> None:
        if check_int("steps", steps, 1) > MAX_STEPS:
            raise ValueError(f"steps must be in [1, {MAX_STEPS}] (the steps box's range), got {steps}")
        methods = check_names(methods, list(self.METHODS), least=0)  # a name without a box would be dropped
        self.source, self.train_kwargs, self.result = source, train_kwargs, result
        if result is not None:
            methods, p = result.methods, result.p
        order = sorted(self.METHODS, key=lambda m: m != "bernoulli")  # the baseline first
        self.boxes = {m: w.Checkbox(value=m in methods, description=m, indent=False) for m in order}
        p = check_rate(p)  # the slider spans 0.1-0.9, and reaches further to show a given or earlier rate as it is
        self.p = w.FloatSlider(
            value=p, min=min(0.1, p), max=max(0.9, p), step=0.05, description="p", continuous_update=False, style=STYLE
        )
        self.steps = w.BoundedIntText(value=steps, min=1, max=MAX_STEPS, description="steps", style=STYLE)
        self.button = w.Button(description="Start", icon="play", button_style="primary")
        self.progress = w.IntProgress(value=0, min=0, max=steps, description="steps", style=STYLE)
        self.table = w.Output()
        self.fig = figure_widget(self._figure(methods))
        if result is not None:
            self._update(self.fig, result)
            self._show_table(result)
        self.button.on_click(lambda _: self.start())
        controls = w.HBox([w.VBox(list(self.boxes.values())), w.VBox([self.p, self.steps, self.button])])
        self.widget = w.VBox([controls, self.progress, self.fig, self.table])

    def _train(self, methods, p, steps, callback, **kwargs):
        raise NotImplementedError

    def _figure(self, methods) -> go.Figure:
        raise NotImplementedError

    def _update(self, fig, result) -> None:
        raise NotImplementedError

    @property
    def methods(self) -> list[str]:
        return [m for m, box in self.boxes.items() if box.value]

    def _follow(self, result, step: int) -> None:
        self._update(self.fig, result)
        self.progress.value = step

    def start(self) -> None:
        """Train the checked methods; redraw the curves in place as they go, then show the table."""
        methods = self.methods
        if not methods:
            self.table.clear_output()
            with self.table:
                print("check at least one method")
            return
        self.button.disabled = True
        self.progress.value, self.progress.max = 0, self.steps.value
        self.result = None  # the last run's result goes with its table: neither stands for this run
        self.table.clear_output()
        with self.fig.batch_update():  # one set of traces per checked method
            self.fig.data = ()
            for trace in self._figure(methods).data:
                self.fig.add_trace(trace)
        try:
            self.result = self._train(
                methods, self.p.value, self.steps.value, self._follow, progress=False, **self.train_kwargs
            )
        except BaseException as error:  # the stop button (KeyboardInterrupt) or a failure: said where the table goes
            with self.table:
                why = "stopped" if isinstance(error, KeyboardInterrupt) else f"failed: {type(error).__name__}: {error}"
                print(f"the race {why} at step {self.progress.value} of {self.progress.max}: no table")
            raise
        finally:
            self.button.disabled = False
        self._show_table(self.result)

    def _show_table(self, result: RaceResult) -> None:
        """The final table, then each method's speedup over the race's first baseline with its spread over the
        steps and the busy-machine warning when a spread is large (``viz.timing.race_lines``)."""
        self.table.clear_output()
        with self.table:
            print(result.format_table())
            for line in race_lines(result):
                print(line)
