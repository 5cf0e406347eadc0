"""Training curves of several dropout methods on one figure: loss, accuracy, step time.

``training_figure(methods)`` makes the empty figure (three subplots, one colour per method) and
``update_training_figure(fig, result)`` fills it from a ``training.RaceResult``; on a
FigureWidget that redraws in place, so it can follow a training run through ``train``'s callback.
Traces, in order, per method ``m`` (index ``i``): ``3i`` loss (running mean), ``3i + 1`` test
accuracy, ``3i + 2`` step time (ms, running median). A log axis gets its ticks from the data
(``log_ticks``: at least four labelled ticks however narrow the range), and a panel whose evaluations
all sit at one step spans the race's steps instead of a unit around that step. A method the race
stopped because its loss became NaN or inf is named "m (diverged at step N)" in the legend; its
curves end at its last finite step (the race records no NaN, so none reaches a figure).

``summary_figure(result)`` is the race's bar chart, labelled with the table's speedups;
``samples_figure`` shows images titled with ``class_names``.
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
from .timing import PairedTiming, timing_figure

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
    method (``3i``, ``3i + 1``, ``3i + 2``), coloured from the methods table; ``log_cols``: log y axes
    (``update_race_panels`` puts readable ticks on every log axis).
    No width: a static figure fills the notebook (``figure_widget`` gives a live one its width)."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.08)
    for method in methods:
        style = {"legendgroup": method, "line": {"color": color(method)}}
        fig.add_trace(go.Scatter(x=[], y=[], name=method, mode="lines", **style), 1, 1)
        fig.add_trace(go.Scatter(x=[], y=[], name=method, mode="lines+markers", showlegend=False, **style), 1, 2)
        fig.add_trace(go.Scatter(x=[], y=[], name=method, mode="lines", showlegend=False, **style), 1, 3)
    fig.update_xaxes(title_text="step")
    for col in log_cols:
        # ticks at 1, 2, 5 x 10^k until there is data; update_race_panels sets them from the data
        fig.update_yaxes(type="log", dtick="D2", minorloglabels="complete", row=1, col=col)
    fig.update_annotations(font_size=14)  # the subplot titles: they fit a panel a third of the figure wide
    fig.update_layout(title=title, height=380, legend={"orientation": "h", "y": -0.25}, margin={"t": 80})
    return fig


LOG_MANTISSAS = (
    (1, 2, 5),
    (1, 2, 3, 5, 7),
    (1, 1.5, 2, 3, 4, 5, 6, 7, 8),
    (1, 1.2, 1.4, 1.6, 1.8, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 9),
)
MIN_TICKS = 4  # labelled ticks a log axis shows at least (plotly's own: one, "5", over 4-6.5 ms)


def log_ticks(lo: float, hi: float, least: int = MIN_TICKS) -> list[float]:
    """Tick values for a log axis spanning [lo, hi] (both > 0): the sparsest of 1-2-5, 1-2-3-5-7, ... x 10^k
    that puts at least ``least`` ticks in it; where even the densest does not (a range of a few percent),
    evenly spaced round values. Empty when the range is not positive and finite."""
    if not (0 < lo <= hi and math.isfinite(hi)):
        return []
    if hi == lo:
        return [lo]
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    for mantissas in LOG_MANTISSAS:
        ticks = [m * 10.0**k for k in decades for m in mantissas if lo <= m * 10.0**k <= hi]
        if len(ticks) >= least:
            return [float(f"{t:.6g}") for t in ticks]
    raw = (hi - lo) / least
    step = min(
        (m * 10.0 ** math.floor(math.log10(raw)) for m in (1, 2, 2.5, 5, 10)),
        key=lambda c: abs(c - raw) if c <= raw * 1.01 else math.inf,
    )
    first = math.ceil(lo / step) * step
    return [float(f"{first + i * step:.6g}") for i in range(int((hi - first) / step + 1e-9) + 1)]


def tick_text(value: float) -> str:
    """A tick label in full, in one format from the smallest tick to the largest: ``20``, ``1.5``, ``1000``,
    ``0.25``, and whole numbers written out up to a million (``20000``, not ``2e+04`` beside ``5000``)."""
    if 1 <= value < 1e6 and value == round(value):
        return f"{value:.0f}"
    return f"{value:.4g}" if value < 1e6 else f"{value:.3g}"


def _log_axis_ticks(axis, values: Sequence[float], span: Sequence[float] | None = None) -> None:
    """Ticks from ``log_ticks`` over the values a log axis shows, or over its fixed range ``span`` (log10
    bounds); plotly's own where there are none. Every tick is labelled in full, in the axis's normal font."""
    if span is not None:
        lo, hi = 10 ** span[0], 10 ** span[1]
    else:
        finite = [v for v in values if math.isfinite(v) and v > 0]
        lo, hi = (min(finite), max(finite)) if finite else (math.nan, math.nan)
    ticks = log_ticks(lo, hi) if math.isfinite(lo) else []
    if ticks:
        axis.update(tickmode="array", tickvals=ticks, ticktext=[tick_text(t) for t in ticks])
    else:
        axis.update(tickmode="auto", tickvals=None, ticktext=None)


def update_race_panels(fig: go.Figure | go.FigureWidget, result: RaceResult) -> None:
    """Set every trace of a ``race_panels`` figure from ``result`` (a ``training.RaceResult``: its
    histories' loss, metric at the evaluation steps, seconds); a FigureWidget redraws in place. A
    diverged method's traces are named ``race_name``'s way. Every log axis gets ``log_ticks``; when all
    evaluations sit at one step (a short race evaluates once, after its last step), the metric panel's x
    axis spans the race's steps, with the points at its end, as on the other two panels."""
    panels: list[list[float]] = [[], [], []]  # every y value of each panel (a batch update defers the traces')
    with fig.batch_update():
        for i, method in enumerate(result.methods):
            h = result.histories[method]
            name = race_name(method, h)
            curves = (running_mean(h.loss), list(h.metric), [1e3 * s for s in running_median(h.seconds)])
            for col, (x, y) in enumerate(zip((h.step, h.eval_step, h.step), curves)):
                fig.data[3 * i + col].update(x=x, y=y, name=name)
                panels[col].extend(y)
        span = metric_range(panels[1], fig.layout.yaxis2.type == "log")
        fig.layout.yaxis2.update(range=span, autorange=span is None)
        _metric_steps(fig.layout.xaxis2, result)
        axes = (fig.layout.yaxis, fig.layout.yaxis2, fig.layout.yaxis3)
        for values, axis, fixed in zip(panels, axes, (None, span, None)):
            if axis.type == "log":
                _log_axis_ticks(axis, values, fixed)


def _metric_steps(axis, result: RaceResult) -> None:
    """The metric panel's x range: plotly's own while the evaluations spread over several steps; when they
    all sit at one, the race's steps (else plotly draws a unit around the step: 19-21 for one point at 20).
    A panel whose x axis follows another's (``matches``) is left to it."""
    if axis.matches is not None:
        return
    evals = {s for h in result.histories.values() for s in h.eval_step}
    steps = [s for h in result.histories.values() for s in h.step]
    if len(evals) == 1 and steps and min(steps) < max(evals):
        lo, hi = min(steps), max(max(steps), *evals)
        pad = 0.04 * (hi - lo)
        axis.update(range=[lo - pad, hi + pad], autorange=False)
    else:
        axis.update(range=None, autorange=True)


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
    GEMM work left and the speedup over the first row that the table gives (``PairedTiming``: the median
    of the per-step ratios, so the chart's labels are the table's numbers); a diverged method named
    ``race_name``'s way, one with no timed step left out."""
    rows = _charted(result)
    return [
        PairedTiming(
            race_name(r.method, result.histories[r.method]),
            r.ms_per_step,
            r.gemm_work,
            result.speedup(rows[0].method, r.method),
            "step",
        )
        for r in rows
    ]


def _charted(result: RaceResult) -> list:
    """The summary rows the bar chart shows, in its order: bernoulli first, none without a timed step."""
    rows = sorted(result.summary(), key=lambda r: r.method != "bernoulli")
    return [r for r in rows if math.isfinite(r.ms_per_step)]  # NaN: diverged before a timed step


def summary_figure(result: RaceResult, title: str = "ms per training step") -> go.Figure:
    """The race's bar chart: each method's median ms per step, the GEMM-work bound, and under each bar the
    speedup the table gives (the ``PairedTiming`` rows of ``summary_timings`` carry it)."""
    return timing_figure(summary_timings(result), title)  # PairedTiming rows: labelled with the table's speedups


FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def class_names(dataset: str, classes: int) -> list[str]:
    """What the labels 0..``classes``-1 of ``dataset`` (a ``DatasetInfo.name``) stand for: Fashion-MNIST's
    clothing classes; for MNIST and the 8x8 digits (and any other set) the digits themselves."""
    if dataset == "fashion-mnist" and classes == len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES)
    return [str(i) for i in range(classes)]


def samples_figure(
    x: torch.Tensor,
    y: torch.Tensor,
    image_shape: tuple[int, int],
    count: int = 8,
    title: str = "Examples",
    names: Sequence[str] | None = None,
) -> go.Figure:
    """The first ``count`` images of x (Float[N, H*W]) with their labels y (Long[N]), in one row; ``names``
    (e.g. ``class_names(data.info.name, data.info.classes)``) titles each image with its class's name
    instead of "label k"."""
    count = min(count, len(y))
    if count < 1:
        raise ValueError(f"samples_figure needs at least one image and count >= 1, got {len(y)} images, count {count}")
    labels = [int(label) for label in y[:count]]
    titles = [f"label {k}" if names is None else names[k] for k in labels]
    fig = make_subplots(rows=1, cols=count, subplot_titles=titles)
    for i in range(count):
        image = x[i].reshape(image_shape).tolist()  # [H, W]
        fig.add_trace(go.Heatmap(z=image, colorscale="gray_r", showscale=False, zmin=0, zmax=1), 1, i + 1)
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_annotations(font_size=13)
    fig.update_layout(title=title, height=220, margin={"t": 70, "b": 10})
    return fig
