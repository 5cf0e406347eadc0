"""Lab 04's search panel: changing a control reruns the search and redraws the figure in place."""

import numpy as np
import pytest

from approxdrop.course.widgets.search import SearchPanel


def test_controls_rerun_the_search_and_redraw_in_place():
    panel = SearchPanel(p=0.5, n=64, family="paper", steps=100)
    traces, bars = list(panel.fig.data), panel.fig.data[0].y
    assert panel.dist.target_p == 0.5 and "expected rate 0.5000" in panel.status.value
    panel.p.value = 0.3
    assert panel.dist.target_p == pytest.approx(0.3) and panel.dist.expected_rate == pytest.approx(0.3)
    assert list(panel.fig.data) == traces and panel.fig.data[0].y != bars
    assert "p = 0.3 on n = 64" in panel.fig.layout.title.text
    panel.family.value = "extended"
    assert any(keep > 1 for _, keep in panel.dist.pairs)
    assert list(panel.fig.data[0].y) == pytest.approx(panel.dist.probs)
    panel.n.value = 16
    assert np.array(panel.fig.data[4].z).shape == (16, 16) and panel.dist.n == 16
    assert not panel.p.continuous_update


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_period": 1}, r"max_period must be in \[2, inf\), got 1"),
        ({"p": 0.99}, r"p must be in \[0.05, 0.93\] \(the slider's range for max_period=16\), got 0.99"),
        ({"n": 100}, r"n must be one of \(16, 64, 256, 1024, 2048\)"),
        ({"p": "0.5"}, "p must be a finite number, got '0.5'"),  # a TypeError from the range comparison
        ({"p": float("nan")}, "p must be a finite number, got nan"),
    ],
)
def test_settings_the_controls_cannot_show_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SearchPanel(**kwargs)


def test_the_slider_reaches_every_rate_the_period_allows():
    # 1 - 1/2 = 0.5 is reachable: the slider's top is not rounded below it by binary floating point
    assert SearchPanel(p=0.5, max_period=2, steps=5).p.max == 0.5
