"""Training curves of several dropout methods on one figure: loss, accuracy, step time.

``training_figure(methods)`` makes the empty figure (three subplots, one colour per method) and
``update_training_figure(fig, result)`` fills it from a ``training.RaceResult``; on a
FigureWidget that redraws in place, so it can follow a training run through ``train``'s callback.
Traces, in order, per method ``m`` (index ``i``): ``3i`` loss (running mean), ``3i + 1`` test
accuracy, ``3i + 2`` step time (ms, running median). A method the race stopped because its loss
became NaN or inf is named "m (diverged at step N)" in the legend; its curves end at its last
finite step (the race records no NaN, so none reaches a figure).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ...experiments.gemm_timing import Timing
from ...models.methods import color
from ...training import History, RaceResult

WINDOW = 9  # steps in the running median of the step time


def running_median(values: list[float], window: int = WINDOW) -> list[float]:
    """Median of the last ``window`` values at every position."""
    return [statistics.median(values[max(0, i + 1 - window) : i + 1]) for i in range(len(values))]


def running_mean(values: list[float], window: int = WINDOW) -> list[float]:
    """Mean of the last ``window`` values at every position."""
    return [statistics.fmean(values[max(0, i + 1 - window) : i + 1]) for i in range(len(values))]


def race_name(method: str, history: History) -> str:
    """``method`` as the legend names it: with "(diverged at step N)" when the race stopped it there."""
    return method if history.diverged_at is None else f"{method} (diverged at step {history.diverged_at})"


def race_panels(methods: Sequence[str], titles: Sequence[str], title: str, log_cols: Sequence[int] = (3,)) -> go.Figure:
    """Empty three-panel race figure (loss, an evaluation metric, step time) with three traces per
    method (``3i``, ``3i + 1``, ``3i + 2``), coloured from the methods table; ``log_cols``: log y axes.
    No width: a static figure fills the notebook (``figure_widget`` gives a live one its width)."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.08)
    for method in methods:
        style = {"legendgroup": method, "line": {"color": color(method)}}
        fig.add_trace(go.Scatter(x=[], y=[], name=method, mode="lines", **style), 1, 1)
        fig.add_trace(go.Scatter(x=[], y=[], name=method, mode="lines+markers", showlegend=False, **style), 1, 2)
        fig.add_trace(go.Scatter(x=[], y=[], name=method, mode="lines", showlegend=False, **style), 1, 3)
    fig.update_xaxes(title_text="step")
    for col in log_cols:
        # ticks at 1, 2, 5 x 10^k, each labelled in full ("20", not a bare "2" beside "10")
        fig.update_yaxes(type="log", dtick="D2", minorloglabels="complete", row=1, col=col)
    fig.update_annotations(font_size=14)  # the subplot titles: they fit a panel a third of the figure wide
    fig.update_layout(title=title, height=380, legend={"orientation": "h", "y": -0.25}, margin={"t": 80})
    return fig


def update_race_panels(fig: go.Figure | go.FigureWidget, result: RaceResult) -> None:
    """Set every trace of a ``race_panels`` figure from ``result`` (a ``training.RaceResult``: its
    histories' loss, metric at the evaluation steps, seconds); a FigureWidget redraws in place. A
    diverged method's traces are named ``race_name``'s way."""
    with fig.batch_update():
        for i, method in enumerate(result.methods):
            h = result.histories[method]
            name = race_name(method, h)
            fig.data[3 * i].update(x=h.step, y=running_mean(h.loss), name=name)
            fig.data[3 * i + 1].update(x=h.eval_step, y=h.metric, name=name)
            fig.data[3 * i + 2].update(x=h.step, y=[1e3 * s for s in running_median(h.seconds)], name=name)
        span = metric_range([y for h in result.histories.values() for y in h.metric], fig.layout.yaxis2.type == "log")
        fig.layout.yaxis2.update(range=span, autorange=span is None)


MIN_SPAN = 0.05  # the metric axis spans at least 5% of the metric's size: noise must not look like a gap


def metric_range(values: Sequence[float], log: bool = False) -> list[float] | None:
    """The y range of the metric panel: None (autorange) when the values spread over at least ``MIN_SPAN``
    of their size, else a range of that span centred on them (a log axis takes log10 bounds). Without
    it plotly stretches 3.2371-3.2424 over the whole panel and a difference of 0.2% looks decisive."""
    finite = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
    if not finite:
        return None
    points = [math.log10(v) for v in finite] if log else finite
    lo, hi = min(points), max(points)
    size = MIN_SPAN * (1 if log else max(abs(lo), abs(hi)))  # log: 5% of a decade is about 12%
    if hi - lo >= size or size == 0:
        return None
    middle = (lo + hi) / 2
    return [middle - 0.55 * size, middle + 0.55 * size]


def training_figure(methods: Sequence[str], title: str = "Training side by side") -> go.Figure:
    """Empty figure with the traces of every method, ready for ``update_training_figure``."""
    titles = (f"training loss (mean of {WINDOW})", "test accuracy", f"ms per step (median of {WINDOW})")
    return race_panels(methods, titles, title)


def update_training_figure(fig: go.Figure | go.FigureWidget, result: RaceResult) -> None:
    """Set every trace from ``result`` (a RaceResult); a FigureWidget redraws in place."""
    update_race_panels(fig, result)


def result_figure(result: RaceResult, title: str = "Training side by side") -> go.Figure:
    """A static figure of a finished (or running) training."""
    fig = training_figure(result.methods, title)
    update_training_figure(fig, result)
    return fig


def summary_timings(result: RaceResult) -> list[Timing]:
    """The summary as Timings for ``viz.timing.timing_figure``, bernoulli first, each with its ideal
    GEMM work left; a diverged method named ``race_name``'s way, one with no timed step left out."""
    rows = sorted(result.summary(), key=lambda r: r.method != "bernoulli")
    return [
        Timing(race_name(r.method, result.histories[r.method]), r.ms_per_step, r.gemm_work)
        for r in rows
        if math.isfinite(r.ms_per_step)  # NaN: diverged at its first step
    ]


def samples_figure(
    x: torch.Tensor, y: torch.Tensor, image_shape: tuple[int, int], count: int = 8, title: str = "Examples"
) -> go.Figure:
    """The first ``count`` images of x (Float[N, H*W]) with their labels y (Long[N]), in one row."""
    count = min(count, len(y))
    if count < 1:
        raise ValueError(f"samples_figure needs at least one image and count >= 1, got {len(y)} images, count {count}")
    fig = make_subplots(rows=1, cols=count, subplot_titles=[f"label {int(label)}" for label in y[:count]])
    for i in range(count):
        image = x[i].reshape(image_shape).tolist()  # [H, W]
        fig.add_trace(go.Heatmap(z=image, colorscale="gray_r", showscale=False, zmin=0, zmax=1), 1, i + 1)
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(title=title, height=220, margin={"t": 70, "b": 10})
    return fig
