"""Lab 04's search panel: a target-p slider, the unit count n and the family; every change reruns
``search_distribution`` and redraws the 2 x 2 search figure in place. ``.widget`` is what to
display, ``.fig`` the FigureWidget, ``.dist`` the current distribution; ``course.display.show(panel)``
displays it with a static copy.
"""

from __future__ import annotations

import math

import ipywidgets as w

from ..._env import check_int, check_number
from ...search import FAMILIES, search_distribution
from ..viz.live import figure_widget
from ..viz.search import search_figure, update_search_figure

STYLE = {"description_width": "70px"}
N_CHOICES = (16, 64, 256, 1024, 2048)  # the site widths the panel offers


class SearchPanel:
    """Search a row distribution for (p, n, family) and show it; ``max_period`` bounds the candidates."""

    def __init__(
        self, p: float = 0.5, n: int = 256, family: str = "paper", max_period: int = 16, steps: int = 1000
    ) -> None:
        self.max_period, self.search_steps = check_int("max_period", max_period, 2), steps
        top = math.floor(round(100 * (1.0 - 1.0 / max_period), 6)) / 100  # the largest reachable rate, rounded down
        if not 0.05 <= check_number("p", p) <= top:  # a string was a TypeError from the comparison
            raise ValueError(f"p must be in [0.05, {top}] (the slider's range for max_period={max_period}), got {p}")
        if n not in N_CHOICES:
            raise ValueError(f"n must be one of {N_CHOICES} (the dropdown's choices), got {n}")
        self.p = w.FloatSlider(
            value=p, min=0.05, max=top, step=0.01, description="target p", continuous_update=False, style=STYLE
        )
        self.n = w.Dropdown(options=list(N_CHOICES), value=n, description="n units", style=STYLE)
        self.family = w.Dropdown(options=list(FAMILIES), value=family, description="family", style=STYLE)
        self.status = w.HTML()
        self.dist = self._search()
        self.fig = figure_widget(search_figure(self.dist, self.n.value, self.p.value, steps))
        for control in (self.p, self.n, self.family):
            control.observe(lambda _: self.redraw(), "value")
        self.widget = w.VBox([w.HBox([self.p, self.n, self.family]), self.status, self.fig])

    def _search(self):
        dist = search_distribution(
            self.p.value, self.n.value, "row", self.family.value, self.max_period, steps=self.search_steps
        )
        self.status.value = (
            f"{len(dist.pairs)} patterns, expected rate {dist.expected_rate:.4f}, W1 {dist.distance:.4f}"
        )
        return dist

    def redraw(self) -> None:
        """Search again for the current controls and redraw in place."""
        self.dist = self._search()
        update_search_figure(self.fig, self.dist, self.n.value, self.p.value, self.search_steps)
