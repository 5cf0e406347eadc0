"""One call shows a lab's interactive panel: ``show(panel)``.

It displays the panel's widget, then a static copy of what the panel shows now: its status lines and
a ``go.Figure`` of each of its plotly ``FigureWidget`` s, in the order they appear. The copies are
what a reader sees where widgets do not render (a notebook viewer, a notebook reopened without its
kernel), so every lab reads well there too (docs/design.md#labs).
"""

from __future__ import annotations

import html
import re
from typing import Protocol

import ipywidgets as w
import plotly.graph_objects as go
from IPython.display import display


def static_copy(widget: w.Widget) -> list[go.Figure | str]:
    """What ``widget`` shows, depth first: a static ``go.Figure`` of every FigureWidget and the text of
    every non-empty HTML status line."""
    if isinstance(widget, go.FigureWidget):
        return [go.Figure(widget)]
    if isinstance(widget, w.HTML):
        text = html.unescape(re.sub(r"<[^>]*>", "", widget.value)).strip()
        return [text] if text else []
    return [part for child in getattr(widget, "children", ()) for part in static_copy(child)]


class Panel(Protocol):
    """What ``show`` takes: a lab's panel, with the ``widget`` to display."""

    widget: w.Widget


def show(panel: Panel) -> None:
    """Display ``panel.widget`` (a lab's panel: sliders, buttons, live figures), then its static copy
    (``static_copy``): the status lines printed, the figures drawn."""
    display(panel.widget)
    for part in static_copy(panel.widget):
        if isinstance(part, str):
            print(part)
        else:
            display(part)
