"""Figures of a searched PatternDistribution (docs/method.md §4-5), from ``approxdrop.search`` and
``approxdrop.search.stats``: its probabilities per (dp, keep), the search's loss curve, the dropped-count
law against Binomial(n, p), the co-drop matrix, families side by side and the cost-aware frontier.

``search_figure`` puts the first four on one 2 x 2 figure and ``update_search_figure`` redraws it
in place (a FigureWidget); traces in order: 0 probabilities, 1 loss, 2 pattern law, 3 binomial,
4 co-drop heatmap.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.colors import get_colorscale
from plotly.subplots import make_subplots

from ...distribution import PatternDistribution
from ...search import FrontierPoint, co_drop_matrix, distance_to_binomial, dropped_count_histogram

PATTERN, BINOMIAL = "#E45756", "#4C78A8"
CO_DROP_UNITS = 48  # units shown in the co-drop heatmap (the top-left block of the full matrix)


def _label(pair: tuple[int, int]) -> str:
    """Short tick label ``dp/keep`` (the axis title says so), so many patterns fit without overlap."""
    return f"{pair[0]}/{pair[1]}"


def probability_trace(dist: PatternDistribution) -> go.Bar:
    """Bars: probability of each (dp, keep), hover shows its rate."""
    return go.Bar(
        x=[_label(pair) for pair in dist.pairs],
        y=list(dist.probs),
        customdata=[1.0 - keep / dp for dp, keep in dist.pairs],
        marker_color=PATTERN,
        name="q(dp, keep)",
        showlegend=False,
        hovertemplate="dp/keep %{x}: q = %{y:.4f}, rate %{customdata:.3f}<extra></extra>",
    )


def loss_trace(dist: PatternDistribution, steps: int = 1000) -> go.Scatter:
    """The search's loss at its recorded steps (``loss_history``, evenly spaced over ``steps``)."""
    every = max(1, steps // max(1, len(dist.loss_history)))
    return go.Scatter(
        x=[every * (i + 1) for i in range(len(dist.loss_history))],
        y=list(dist.loss_history),
        mode="lines",
        line_color=PATTERN,
        name="search loss",
        showlegend=False,
    )


def count_traces(dist: PatternDistribution, n: int, p: float | None = None) -> tuple[go.Bar, go.Scatter]:
    """Dropped-count law of the patterns (bars) and of Binomial(n, p) (line), where either has mass."""
    hist = dropped_count_histogram(dist, n, p)
    mass = np.flatnonzero((hist.pattern > 1e-9) | (hist.binomial > 1e-6))
    low, high = int(mass.min()), int(mass.max()) + 1
    count = hist.count[low:high].tolist()
    bars = go.Bar(x=count, y=hist.pattern[low:high].tolist(), name="patterns", marker_color=PATTERN)
    line = go.Scatter(
        x=count, y=hist.binomial[low:high].tolist(), name="Binomial(n, p)", mode="lines", line_color=BINOMIAL
    )
    return bars, line


WHITE = "rgb(255,255,255)"
DIVERGING = [color for _, color in get_colorscale("RdBu_r")]  # blue, ..., near-white middle, ..., red


def co_drop_colorscale(white_at: float) -> list[list]:
    """RdBu_r on [0, 1] with its middle, pure white, at ``white_at`` instead of 0.5: its blue half stretched
    over [0, white_at], its red half over [white_at, 1]. (Plotly ignores ``zmid`` once ``zmin`` and ``zmax``
    are fixed, so the colour key of a [0, 1] heatmap is set here.)"""
    if not 0.0 <= white_at <= 1.0:
        raise ValueError(f"white_at must be in [0, 1], got {white_at}")
    half = len(DIVERGING) // 2  # index of the middle colour
    blue = [[white_at * i / half, DIVERGING[i]] for i in range(half)] if white_at > 0 else []
    # the last stop exactly 1.0 (plotly.js rejects a colorscale ending at 0.9999999999999999 and draws its default)
    red = [
        [1.0 if i == half else white_at + (1 - white_at) * i / half, DIVERGING[half + i]] for i in range(1, half + 1)
    ]
    red = red if white_at < 1 else []
    return [*blue, [white_at, WHITE], *red]


def co_drop_trace(dist: PatternDistribution, units: int = CO_DROP_UNITS) -> go.Heatmap:
    """Heatmap of P(unit u and unit v both dropped) for the first ``units`` units, on a fixed [0, 1] colour
    range: white exactly at p^2 (Bernoulli's value off the diagonal), red above, blue below."""
    white = min(1.0, dist.expected_rate**2)  # a float sum may land a hair above 1
    return go.Heatmap(
        z=co_drop_matrix(dist, units).tolist(),  # [units, units]
        zmin=0.0,
        zmax=1.0,
        colorscale=co_drop_colorscale(white),
        colorbar={"title": "P(both)", "len": 0.45, "y": 0.22},
        hovertemplate="units %{x} and %{y}: %{z:.3f}<extra></extra>",
    )


def _title(dist: PatternDistribution, n: int | None) -> str:
    """The law's kind, rate and expected rate; its width and W1 to the binomial where they are known (a law
    built by hand, not searched, has neither)."""
    p = dist.target_p if dist.target_p is not None else dist.expected_rate
    width = f" on n = {n}" if n else ""
    w1 = f", W1 to the binomial {dist.distance:.4f}" if dist.distance is not None else ""
    return f"{dist.kind} patterns for p = {p:.3g}{width}: expected rate {dist.expected_rate:.4f}{w1}"


def _co_drop_subtitle(dist: PatternDistribution, n: int) -> str:
    """The co-drop panel's title: the units it shows and its colour key, white at p^2."""
    return f"co-drop probability, units 0-{min(n, CO_DROP_UNITS) - 1} (white: p² = {dist.expected_rate**2:.3f})"


def search_figure(dist: PatternDistribution, n: int, p: float | None = None, steps: int = 1000) -> go.Figure:
    """2 x 2: probabilities, search loss, dropped-count law vs binomial, co-drop matrix."""
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=(
            "probability of each pattern",
            "search loss (W1 + penalty)",
            "number of dropped units",
            _co_drop_subtitle(dist, n),
        ),
        vertical_spacing=0.16,
    )
    fig.add_trace(probability_trace(dist), 1, 1)
    fig.add_trace(loss_trace(dist, steps), 1, 2)
    for trace in count_traces(dist, n, p):
        fig.add_trace(trace, 2, 1)
    fig.add_trace(co_drop_trace(dist, min(n, CO_DROP_UNITS)), 2, 2)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_yaxes(autorange="reversed", row=2, col=2)
    fig.update_xaxes(title_text="pattern dp/keep", type="category", row=1, col=1)
    fig.update_xaxes(title_text="Adam step (log scale)", type="log", row=1, col=2)  # most of the fall is early
    fig.update_xaxes(title_text="dropped units", row=2, col=1)
    fig.update_layout(title=_title(dist, n), height=720, bargap=0.1, legend={"orientation": "h", "y": -0.08})
    return fig


def update_search_figure(
    fig: go.Figure | go.FigureWidget, dist: PatternDistribution, n: int, p: float | None = None, steps: int = 1000
) -> None:
    """Redraw a ``search_figure`` for another distribution (in place for a FigureWidget)."""
    bars, loss = probability_trace(dist), loss_trace(dist, steps)
    pattern, binomial = count_traces(dist, n, p)
    with fig.batch_update():
        fig.data[0].update(x=bars.x, y=bars.y, customdata=bars.customdata)
        fig.data[1].update(x=loss.x, y=loss.y)
        fig.data[2].update(x=pattern.x, y=pattern.y)
        fig.data[3].update(x=binomial.x, y=binomial.y)
        co_drop = co_drop_trace(dist, min(n, CO_DROP_UNITS))
        fig.data[4].update(z=co_drop.z, colorscale=co_drop.colorscale)
        fig.layout.annotations[3].text = _co_drop_subtitle(dist, n)
        fig.layout.title.text = _title(dist, n)


def _single(trace, title: str, xaxis: str, yaxis: str, **layout) -> go.Figure:
    fig = go.Figure(trace)
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis, **{"height": 380, "bargap": 0.1, **layout})
    return fig


def probability_figure(dist: PatternDistribution) -> go.Figure:
    """Bars of q(dp, keep)."""
    return _single(probability_trace(dist), _title(dist, dist.n), "pattern dp/keep", "probability")


def loss_figure(
    dist: PatternDistribution, steps: int = 1000, reference: float | None = None, reference_name: str = "reference"
) -> go.Figure:
    """The search's loss curve, both axes on a log scale (the loss falls mostly in the first steps).
    ``reference``: a loss to compare against, drawn as a dashed horizontal line named ``reference_name``
    in the legend (e.g. a mix whose mean is exactly p: its penalty term is 0, so its loss is its W1)."""
    curve = loss_trace(dist, steps)
    traces = [curve]
    if reference is not None:
        curve.update(showlegend=True)
        traces.append(
            go.Scatter(
                x=[curve.x[0], curve.x[-1]] if curve.x else [1, steps],
                y=[reference, reference],
                mode="lines",
                line={"color": "#333333", "dash": "dash", "width": 1.5},
                name=f"{reference_name}: {reference:.4f}",
                hovertemplate=f"{reference_name}: {reference:.4f}<extra></extra>",
            )
        )
    return _single(
        traces,
        "Search loss: W1 + penalty x (mean - p)^2",
        "Adam step (log scale)",
        "loss (log scale)",
        xaxis_type="log",
        yaxis_type="log",
        legend={"x": 0.99, "xanchor": "right", "y": 0.99, "yanchor": "top", "bgcolor": "rgba(255,255,255,0.7)"},
    )


def count_figure(dist: PatternDistribution, n: int, p: float | None = None, title: str | None = None) -> go.Figure:
    """The dropped-count law of the patterns against Binomial(n, p)."""
    w1 = distance_to_binomial(dist, n, p)
    title = title or f"Number of dropped units out of {n}: patterns vs Binomial (W1 {w1:.4f})"
    return _single(list(count_traces(dist, n, p)), title, "dropped units", "probability")


def co_drop_figure(dist: PatternDistribution, units: int = CO_DROP_UNITS) -> go.Figure:
    """The co-drop heatmap of the first ``units`` units."""
    p = dist.expected_rate
    title = f"P(units u and v both dropped)<br><sup>white: {p * p:.3f}, as Bernoulli({p:.3g}) off the diagonal</sup>"
    fig = _single(co_drop_trace(dist, units), title, "unit v", "unit u", height=520, width=600)
    fig.update_yaxes(autorange="reversed")
    fig.data[0].colorbar.update(len=1.0, y=0.5)
    return fig


def families_figure(dists: dict[str, PatternDistribution], n: int, p: float) -> go.Figure:
    """One dropped-count panel per labelled distribution (e.g. paper vs extended), each with the binomial."""
    labels = list(dists)
    if not labels:
        raise ValueError("families_figure needs at least one distribution, got none")
    fig = make_subplots(
        rows=1,
        cols=len(labels),
        shared_yaxes=True,
        subplot_titles=[f"{label}: W1 {distance_to_binomial(dists[label], n, p):.4f}" for label in labels],
    )
    for col, label in enumerate(labels, start=1):
        bars, line = count_traces(dists[label], n, p)
        bars.update(showlegend=col == 1)
        line.update(showlegend=col == 1)
        fig.add_trace(bars, 1, col)
        fig.add_trace(line, 1, col)
        fig.update_xaxes(title_text="dropped units", row=1, col=col)
    fig.update_yaxes(title_text="probability", row=1, col=1)
    fig.update_layout(title=f"Dropped-count law against Binomial({n}, {p:g})", height=380, bargap=0.1)
    return fig


def frontier_figure(
    points: list[FrontierPoint], title: str = "Cost-aware frontier", work_exponent: float = 0.5
) -> go.Figure:
    """Expected relative GEMM time against distance to the binomial, one point per ``mu``; points
    whose labels would overlap share one label, e.g. ``mu=6..20``. The dotted line only joins the
    points in order of ``mu``. The time is the search's model, not a measurement: a pattern keeping a
    share f costs ``f ** work_exponent`` of dense (the ``work_exponent`` the frontier was searched
    with, 0.5 by default), and the y axis says so."""
    if not points:
        raise ValueError("frontier_figure needs at least one point, got none")
    fig = go.Figure(
        go.Scatter(
            x=[pt.distance for pt in points],
            y=[pt.expected_work for pt in points],
            text=_frontier_labels(points),
            mode="lines+markers+text",
            textposition=_label_sides(points),
            line={"color": PATTERN, "dash": "dot"},
            hovertemplate="mu %{customdata:.4g}: W1 %{x:.4f}, modelled time %{y:.3f}<extra></extra>",
            customdata=[pt.mu for pt in points],
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title="W1 distance to the binomial, log scale (lower: more like Bernoulli dropout)",
        xaxis_type="log",
        yaxis_title=f"expected GEMM time, modelled, not measured<br>(f^{work_exponent:g} of dense for a share f kept)",
        height=420,
    )
    fig.update_yaxes(range=list(_work_range(points)))
    return fig


# a label's size as a share of the plot area, for 12 px text on the figure's default size (about
# 540 x 280 px inside the axes): about 7 px a character and 17 px a line
LABEL_CHAR_SHARE, LABEL_LINE_SHARE = 0.013, 0.06


def _work_range(points: list[FrontierPoint]) -> tuple[float, float]:
    """The y axis range: the points' times and room for the labels above the top point and below the last one."""
    low, high = min(pt.expected_work for pt in points), max(pt.expected_work for pt in points)
    pad = max(high - low, 0.01) * 0.12
    return low - pad, high + pad


def _mu_text(first: float, last: float) -> str:
    return f"mu={first:.3g}" if first == last else f"mu={first:.3g}..{last:.3g}"


def _frontier_labels(points: list[FrontierPoint]) -> list[str]:
    """``mu=a..b`` on the first of each run of points whose labels would overlap on the plot, empty on
    the others. A point joins the run when it lies within the run's label width of the run's first
    point across (the label's share of the plot's width, times the log axis span) and within a line
    of text of it up and down (a share of the time axis span)."""
    logs = [math.log10(pt.distance + 1e-12) for pt in points]
    x_span = max(max(logs) - min(logs), 1e-12)
    y_low, y_high = _work_range(points)
    y_span = y_high - y_low
    labels = [""] * len(points)
    start = 0
    for i in range(1, len(points) + 1):
        near = False
        if i < len(points):
            # the run's label as it stands or with point i in it, whichever is longer, and a character of margin
            chars = max(len(_mu_text(points[start].mu, points[k].mu)) for k in (i - 1, i)) + 1
            width = chars * LABEL_CHAR_SHARE
            near = (
                abs(logs[i] - logs[start]) / x_span < width
                and abs(points[i].expected_work - points[start].expected_work) / y_span < LABEL_LINE_SHARE
            )
        if not near:
            labels[start] = _mu_text(points[start].mu, points[i - 1].mu)
            start = i
    return labels


def _label_sides(points: list[FrontierPoint]) -> list[str]:
    """Labels right of points in the left half of the log axis, left of the others (none clipped). A
    point in the right half that the curve comes down to from the upper left takes its label below
    left, off the line (above left sat on it)."""
    logs = [math.log(pt.distance + 1e-12) for pt in points]
    middle = (min(logs) + max(logs)) / 2
    sides = ["top right" if x <= middle else "top left" for x in logs]
    for i in range(1, len(points)):
        if sides[i] == "top left" and points[i].expected_work < points[i - 1].expected_work:
            sides[i] = "bottom left"
    return sides
