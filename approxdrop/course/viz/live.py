"""Live figures: the plotly ``FigureWidget`` s that the labs redraw in place, all given one width.

A static figure (``fig.show()``) fills the notebook's width by itself. A FigureWidget does not: plotly's
widget (an anywidget since plotly 6) lays its figure out before the notebook attaches it to the page
and does not follow its container afterwards, so without a width it is plotly's default 700 px, about
half of JupyterLab's output area, and the titles of three side-by-side panels run into each other.
"""

from __future__ import annotations

import plotly.graph_objects as go

WIDTH = 900  # px: three race panels with their titles fit; JupyterLab's output area is wider with the side bar open


def figure_widget(fig: go.Figure, width: int = WIDTH) -> go.FigureWidget:
    """``fig`` as a FigureWidget, ``width`` px wide unless the figure has a width of its own (a square
    matrix figure keeps it)."""
    live = go.FigureWidget(fig)
    if live.layout.width is None:
        live.layout.width = width
    return live
