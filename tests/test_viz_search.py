"""Search figures: bars, loss curve, dropped-count law vs binomial, co-drop heatmap, families,
frontier; the 2 x 2 figure redrawn in place."""

import numpy as np
import plotly.graph_objects as go
import pytest

import approxdrop as ad
from approxdrop.course.viz.search import (
    co_drop_figure,
    count_figure,
    families_figure,
    frontier_figure,
    loss_figure,
    probability_figure,
    search_figure,
    update_search_figure,
)
from approxdrop.search import FrontierPoint
from approxdrop.search.stats import binomial_pmf

MIX = ad.PatternDistribution(((2, 1), (3, 1)), (0.4, 0.6), n=24, target_p=0.6, distance=0.05, loss_history=(3, 2, 1))


def test_search_figure_holds_the_distribution_and_its_statistics():
    fig = search_figure(MIX, 24, 0.6, steps=30)
    bars, loss, pattern, binomial, co_drop = fig.data
    assert list(bars.x) == ["2/1", "3/1"] and list(bars.y) == [0.4, 0.6]
    assert list(loss.x) == [10, 20, 30] and list(loss.y) == [3, 2, 1]
    counts = dict(zip(pattern.x, pattern.y))
    assert counts[12] == pytest.approx(0.4) and counts[16] == pytest.approx(0.6)  # dp=2 drops 12, dp=3 drops 16
    assert list(binomial.y) == pytest.approx(binomial_pmf(24, 0.6)[binomial.x[0] : binomial.x[-1] + 1])
    z = np.array(co_drop.z)
    assert z.shape == (24, 24) and np.allclose(np.diag(z), 0.6)
    assert _white_stops(co_drop.colorscale) == [pytest.approx(0.36, abs=1e-12)]
    # units 6 apart fall in the same class of both combs: dropped together whenever one is (0.6);
    # neighbours: never both under dp=2, both under dp=3 at one offset in three (0.6 / 3)
    assert z[0, 6] == pytest.approx(0.6) and z[0, 1] == pytest.approx(0.2)


def test_update_search_figure_redraws_in_place():
    fig = go.FigureWidget(search_figure(MIX, 24, 0.6))
    traces = list(fig.data)
    other = ad.search_distribution(0.3, 64, family="extended", steps=50)
    update_search_figure(fig, other, 64, 0.3, steps=50)
    assert list(fig.data) == traces
    assert list(fig.data[0].y) == pytest.approx(other.probs) and len(fig.data[1].y) == len(other.loss_history)
    assert np.array(fig.data[4].z).shape == (48, 48) and "p = 0.3 on n = 64" in fig.layout.title.text


def test_single_figures_and_families():
    assert list(probability_figure(MIX).data[0].y) == [0.4, 0.6]
    assert loss_figure(MIX).layout.yaxis.type == "log"
    fig = count_figure(MIX, 24, 0.6)
    assert len(fig.data) == 2 and f"W1 {ad.distance_to_binomial(MIX, 24, 0.6):.4f}" in fig.layout.title.text
    assert np.array(co_drop_figure(MIX, 10).data[0].z).shape == (10, 10)
    one = ad.PatternDistribution(((2, 1),), (1.0,))
    fig = families_figure({"one": one, "mix": MIX}, 24, 0.6)
    assert len(fig.data) == 4 and fig.data[0].showlegend and not fig.data[2].showlegend
    assert [a.text for a in fig.layout.annotations] == [
        f"one: W1 {ad.distance_to_binomial(one, 24, 0.6):.4f}",
        f"mix: W1 {ad.distance_to_binomial(MIX, 24, 0.6):.4f}",
    ]


def test_frontier_figure_plots_work_against_distance():
    points = [FrontierPoint(0.0, 0.01, 0.7, MIX), FrontierPoint(5.0, 0.2, 0.55, MIX)]
    trace = frontier_figure(points).data[0]
    assert list(trace.x) == [0.01, 0.2] and list(trace.y) == [0.7, 0.55] and list(trace.text) == ["mu=0", "mu=5"]
    crowded = [FrontierPoint(mu, d, w, MIX) for mu, d, w in [(0, 0.0100, 0.7), (1, 0.0105, 0.7), (2, 0.05, 0.65)]]
    assert list(frontier_figure(crowded).data[0].text) == ["mu=0..1", "", "mu=2"]


def test_the_loss_figure_draws_a_reference_loss_as_a_dashed_line():
    """Lab 04 compares the curve with the bracket mix's loss: a dashed line across the recorded steps."""
    assert len(loss_figure(MIX).data) == 1
    curve, line = loss_figure(MIX, steps=30, reference=0.0486, reference_name="bracket").data
    assert list(line.x) == [10, 30] and list(line.y) == [0.0486, 0.0486] and line.line.dash == "dash"
    assert line.name == "bracket: 0.0486" and curve.showlegend


def test_the_last_frontier_label_sits_below_the_line_that_comes_down_to_it():
    """The curve falls into its last point from the upper left: a label above left sat on the line."""
    points = [FrontierPoint(mu, d, w, MIX) for mu, d, w in [(0, 0.001, 0.63), (4, 0.31, 0.55), (10, 0.41, 0.52)]]
    fig = frontier_figure(points)
    # every point right of the middle that the curve comes down to: the middle one's label sat on the line too
    assert list(fig.data[0].textposition) == ["top right", "bottom left", "bottom left"]
    low, high = fig.layout.yaxis.range
    assert low < 0.52 and high > 0.63  # room for the labels inside the plot
    assert fig.data[0].line.dash == "dot"  # the line only joins the points in order of mu: no curve of its own


# lab 04's frontier (p = 0.6, n = 256): seven points within a factor 2 at the left, four at the right
LAB04 = [(0, 0.0010, 0.632), (0.5, 0.0010, 0.632), (1, 0.0010, 0.632), (1.5, 0.0010, 0.632), (2, 0.0010, 0.632)]
LAB04 += [(2.5, 0.0013, 0.632), (3, 0.0018, 0.632), (4, 0.4075, 0.520), (6, 0.4089, 0.52), (10, 0.409, 0.52)]


def test_frontier_labels_that_would_overlap_on_a_wide_log_axis_share_one():
    """Overlap is a label's width as a share of the axis span: on 2.6 decades "mu=0..2", "mu=2.5" and
    "mu=3" printed on top of each other (the rule was a 10% distance)."""
    points = [FrontierPoint(mu, d, w, MIX) for mu, d, w in LAB04]
    assert list(frontier_figure(points).data[0].text) == ["mu=0..3"] + [""] * 6 + ["mu=4..10", "", ""]
    # the same two W1 a factor 1.8 apart are far apart on an axis of a fifth of a decade
    narrow = [FrontierPoint(mu, d, 0.632, MIX) for mu, d in [(2, 0.0010), (3, 0.0018)]]
    assert list(frontier_figure(narrow).data[0].text) == ["mu=2", "mu=3"]


def test_frontier_labels_are_spaced_by_their_own_length():
    """A run's label is as long as its text: "mu=3.12..3.22" needs more room than "mu=4"."""
    short = [FrontierPoint(mu, d, 0.6, MIX) for mu, d in [(1, 0.001), (2, 0.003), (3, 1.0)]]
    assert list(frontier_figure(short).data[0].text) == ["mu=1", "mu=2", "mu=3"]
    long = [FrontierPoint(mu, d, 0.6, MIX) for mu, d in [(1.0625, 0.001), (2.125, 0.003), (3, 1.0)]]
    assert list(frontier_figure(long).data[0].text) == ["mu=1.06..2.12", "", "mu=3"]


def test_a_law_built_by_hand_is_titled_without_a_width_or_a_distance():
    """A law built by hand has no n and no W1: the title says neither (it said "n = 0", "W1 0.0000")."""
    from approxdrop.course.viz.search import probability_figure

    hand = ad.PatternDistribution(((2, 1), (3, 1)), (0.5, 0.5))
    title = probability_figure(hand).layout.title.text
    assert "n = " not in title and "W1" not in title and "expected rate 0.5833" in title
    searched = ad.search_distribution(0.5, 64, family="paper")
    assert "on n = 64" in probability_figure(searched).layout.title.text


def _white_stops(colorscale) -> list[float]:
    return [
        float(pos) for pos, color in colorscale if color.replace(" ", "").lower() in ("rgb(255,255,255)", "#ffffff")
    ]


@pytest.mark.parametrize(
    "law",
    [
        MIX,
        ad.PatternDistribution(((2, 1),), (1.0,)),
        ad.PatternDistribution(((5, 1),), (1.0,)),
        ad.PatternDistribution(((10, 7),), (1.0,)),  # p = 0.3: its stops summed to 0.9999999999999999, not 1
        ad.PatternDistribution(((1, 1), (2, 1), (5, 1)), (0.5, 0.25, 0.25)),
        ad.PatternDistribution(((1, 1),), (1.0,)),  # p = 0: white at the very bottom, nothing below it
    ],
)
def test_the_co_drop_colour_key_puts_white_exactly_at_p_squared(law):
    """With zmin = 0 and zmax = 1 fixed plotly ignores zmid, so "RdBu_r" drew white at 0.5, not at p^2
    (0.36 at p = 0.6 came out light blue while the subtitle called it white)."""
    p2 = law.expected_rate**2
    for trace in (co_drop_figure(law, 10).data[0], search_figure(law, 24, law.expected_rate).data[4]):
        assert (trace.zmin, trace.zmax) == (0.0, 1.0)
        positions = [float(pos) for pos, _ in trace.colorscale]
        assert positions[0] == 0.0 and positions[-1] == 1.0 and positions == sorted(positions)
        assert _white_stops(trace.colorscale) == [pytest.approx(p2, abs=1e-12)]
        below, above = [c for pos, c in trace.colorscale if pos < p2], [c for pos, c in trace.colorscale if pos > p2]
        assert (bool(below) == (p2 > 0)) and above  # blue below p^2 (where there is room), red above
    assert f"white: {p2:.3f}" in co_drop_figure(law, 10).layout.title.text


def test_the_search_panel_moves_its_white_with_p():
    fig = go.FigureWidget(search_figure(MIX, 24, 0.6))
    other = ad.search_distribution(0.3, 64, family="paper", steps=50)
    update_search_figure(fig, other, 64, 0.3, steps=50)
    assert _white_stops(fig.data[4].colorscale) == [pytest.approx(other.expected_rate**2, abs=1e-12)]
    assert f"p² = {other.expected_rate**2:.3f}" in fig.layout.annotations[3].text


def test_the_loss_curve_has_a_log_step_axis_and_the_frontier_says_its_time_is_modelled():
    assert loss_figure(MIX).layout.xaxis.type == "log" and search_figure(MIX, 24, 0.6).layout.xaxis2.type == "log"
    points = [FrontierPoint(0.0, 0.01, 0.7, MIX), FrontierPoint(5.0, 0.2, 0.55, MIX)]
    title = frontier_figure(points).layout.yaxis.title.text
    assert "modelled, not measured" in title and "f^0.5" in title
    assert "f^0.7" in frontier_figure(points, work_exponent=0.7).layout.yaxis.title.text
    families = families_figure({"one": ad.PatternDistribution(((2, 1),), (1.0,))}, 24, 0.6)
    assert families.layout.yaxis.title.text == "probability"
