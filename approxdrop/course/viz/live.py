"""Live figures: the plotly ``FigureWidget`` s that the labs redraw in place, all given one width.

A static figure (``fig.show()``) fills the notebook's width by itself. A FigureWidget does not: plotly's
widget (an anywidget since plotly 6) lays its figure out before the notebook attaches it to the page
and does not follow its container afterwards, so without a width it is plotly's default 700 px, about
half of JupyterLab's output area, and the titles of three side-by-side panels run into each other.

Where widgets do not render (GitHub, nbviewer, an executed notebook opened without its kernel) a viewer
shows a displayed widget's text/plain instead: for a FigureWidget that is its repr, every trace and
layout value, thousands of characters. ``figure_widget`` returns a ``LiveFigure``, whose repr is one
line naming the figure; the labs draw a static copy of it below.
"""

from __future__ import annotations

import re

import plotly.graph_objects as go

WIDTH = 900  # px: three race panels with their titles fit; JupyterLab's output area is wider with the side bar open


class LiveFigure(go.FigureWidget):
    """A FigureWidget whose repr (the text/plain of ``display(live)``, what a static viewer shows) is one
    line, not the figure's data."""

    def __repr__(self) -> str:
        title = self.layout.title.text or ""
        first = re.sub(r"<[^>]*>", "", title.split("<br>")[0]).strip()  # the title's first line, no markup
        named = f": {first}" if first else ""
        return f"live figure{named} (a widget; where it does not show, the static copy below does)"


def figure_widget(fig: go.Figure, width: int = WIDTH) -> LiveFigure:
    """``fig`` as a FigureWidget (a ``LiveFigure``: a one-line text/plain), ``width`` px wide unless the
    figure has a width of its own (a square matrix figure keeps it)."""
    live = LiveFigure(fig)
    if live.layout.width is None:
        live.layout.width = width
    return live
