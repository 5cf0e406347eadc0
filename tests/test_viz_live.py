"""Live figures get the course's width; the race figures' subplot titles fit side by side."""

import plotly.graph_objects as go
import pytest

from approxdrop import TilePattern
from approxdrop.course.viz.live import WIDTH, figure_widget
from approxdrop.course.viz.lm import race_figure
from approxdrop.course.viz.matrix import tile_figure
from approxdrop.course.viz.training import training_figure

EM = 0.55  # average character width of plotly's default font, in font sizes (Arial/Open Sans run 0.5 - 0.55)
PLOTLY_DEFAULT_WIDTH = 700  # what a FigureWidget without a width gets


def test_a_live_figure_gets_the_course_width_and_a_square_one_keeps_its_own():
    static = training_figure(["row"])
    assert static.layout.width is None  # a static figure fills the notebook's width
    live = figure_widget(static)
    assert isinstance(live, go.FigureWidget) and live.layout.width == WIDTH
    square = tile_figure(TilePattern(3, 1, tile=8), n_out=60, n_in=96)
    assert figure_widget(square).layout.width == square.layout.width != WIDTH


def test_a_live_figure_shows_one_line_of_text_where_widgets_do_not_render():
    from IPython.core.formatters import DisplayFormatter

    fig = training_figure(["bernoulli", "row"], title="MNIST, MLP <b>[784, 10]</b><br><sup>detail</sup>")
    live = figure_widget(fig)
    bundle, _ = DisplayFormatter().format(live)  # what display(live) stores in a notebook
    text = bundle["text/plain"]
    assert "application/vnd.jupyter.widget-view+json" in bundle  # still the live widget where it renders
    assert "\n" not in text and len(text) < 200 and "'data'" not in text  # not the figure's repr
    assert text.startswith("live figure: MNIST, MLP [784, 10] (") and "static copy below" in text
    assert [t.name for t in go.Figure(live).data] == [t.name for t in fig.data]  # a static copy: the same traces


@pytest.mark.parametrize("figure", [training_figure, race_figure])
@pytest.mark.parametrize("width", [PLOTLY_DEFAULT_WIDTH, WIDTH])
def test_race_panel_titles_do_not_run_into_each_other(figure, width):
    fig = figure(["bernoulli", "row"])
    plot = width - 80 - 80  # plotly's default left and right margins
    titles = sorted(fig.layout.annotations, key=lambda a: a.x)
    assert len(titles) == 3
    for left, right in zip(titles, titles[1:]):
        gap = (right.x - left.x) * plot  # between the centres of two subplot titles, px
        half_widths = EM * (left.font.size * len(left.text) + right.font.size * len(right.text)) / 2
        assert half_widths < gap, f"{left.text!r} and {right.text!r} overlap at {width} px"
