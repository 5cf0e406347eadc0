"""``show(panel)``: the lab's widget, then a static copy of its status lines and figures, in order."""

import ipywidgets as w
import plotly.graph_objects as go
import pytest

from approxdrop.course import display as course_display
from approxdrop.course.display import show, static_copy
from approxdrop.course.widgets.patterns import RowPatternPanel


class FakePanel:
    def __init__(self) -> None:
        self.fig = go.FigureWidget(go.Figure(go.Bar(x=["a"], y=[1.0]), layout={"title": "first"}))
        self.timing = go.FigureWidget(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])))
        self.status = w.HTML("<b>row</b>: 1.50x &gt; 1.00x")
        controls = w.HBox([w.VBox([w.IntSlider(), w.Button()]), w.VBox([self.status, w.HTML("")])])
        self.widget = w.VBox([controls, self.fig, self.timing])


@pytest.fixture
def shown(monkeypatch):
    """What ``show`` passes to IPython's display, in order."""
    displayed = []
    monkeypatch.setattr(course_display, "display", displayed.append)
    return displayed


def test_static_copy_is_every_figure_and_status_line_in_the_order_shown():
    panel = FakePanel()
    status, fig, timing = static_copy(panel.widget)
    assert status == "row: 1.50x > 1.00x"  # tags stripped, entities decoded, the empty HTML left out
    assert type(fig) is go.Figure and type(timing) is go.Figure  # static figures, not widgets
    assert fig.layout.title.text == "first" and list(fig.data[0].y) == [1.0] and list(timing.data[0].y) == [3, 4]


def test_show_displays_the_widget_then_prints_and_draws_the_static_copy(shown, capsys):
    panel = FakePanel()
    show(panel)
    assert shown[0] is panel.widget
    assert [type(f) for f in shown[1:]] == [go.Figure, go.Figure]
    assert shown[1].to_dict() == go.Figure(panel.fig).to_dict()
    assert shown[2].to_dict() == go.Figure(panel.timing).to_dict()
    assert capsys.readouterr().out == "row: 1.50x > 1.00x\n"


def test_show_copies_a_lab_panel_as_it_is_now(shown, capsys):
    panel = RowPatternPanel(n_out=12, n_in=5, n_next=4, batch=4, n=16, device="cpu", repeats=1, dp=3)
    panel.time_it()
    show(panel)
    matrix, timing = shown[1:]
    assert list(timing.data[0].x) == list(panel.timing.data[0].x) and len(timing.data[0].x) == 4  # the measurement
    assert matrix.layout.title.text == panel.fig.layout.title.text
    assert "speed-up over the dense GEMM" in capsys.readouterr().out
