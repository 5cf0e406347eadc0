"""Training figures: one trace per method per panel, filled from a TrainResult, redrawn in place."""

import math

import plotly.graph_objects as go
import pytest
import torch

from approxdrop.course.viz.training import (
    result_figure,
    running_mean,
    running_median,
    samples_figure,
    summary_timings,
    training_figure,
    update_training_figure,
)
from approxdrop.training import ACCURACY, History, MLPRaceConfig, RaceResult


def fake_result() -> RaceResult:
    def history(scale):
        return History(
            step=[1, 2, 3, 4],
            loss=[2.0 * scale, 1.0 * scale, 0.5, 0.25],
            seconds=[0.004 * scale, 0.002 * scale, 0.003 * scale, 0.001 * scale],
            eval_step=[2, 4],
            metric=[0.5, 0.75 * scale],
        )

    config = MLPRaceConfig(hidden=(8,), p=0.5, steps=4, batch=4, warmup=1)
    work = {"row": 0.25, "bernoulli": 1.0}
    return RaceResult({"row": history(0.5), "bernoulli": history(1.0)}, ACCURACY, config, work, "cpu")


def test_running_statistics():
    assert running_median([5.0, 1.0, 3.0, 2.0], window=3) == [5.0, 3.0, 3.0, 2.0]
    assert running_mean([2.0, 4.0, 6.0], window=2) == [2.0, 3.0, 5.0]


def test_training_figure_is_filled_in_place():
    result = fake_result()
    fig = go.FigureWidget(training_figure(result.methods))
    assert len(fig.data) == 6 and all(len(t.x) == 0 for t in fig.data)
    traces = list(fig.data)
    update_training_figure(fig, result)
    assert list(fig.data) == traces  # the same trace objects, updated
    row, bernoulli = fig.data[0:3], fig.data[3:6]
    assert row[0].name == "row" and bernoulli[0].name == "bernoulli"
    assert list(row[0].y) == pytest.approx(running_mean([1.0, 0.5, 0.5, 0.25]))
    assert list(bernoulli[1].x) == [2, 4] and list(bernoulli[1].y) == [0.5, 0.75]
    assert list(row[2].y) == pytest.approx([1e3 * s for s in running_median([0.002, 0.001, 0.0015, 0.0005])])
    assert row[0].line.color != bernoulli[0].line.color and row[0].xaxis == "x" and row[2].xaxis == "x3"


def test_static_figures_from_a_result():
    result = fake_result()
    fig = result_figure(result, title="t")
    assert isinstance(fig, go.Figure) and list(fig.data[4].y) == [0.5, 0.75] and fig.layout.title.text == "t"
    timings = summary_timings(result)
    assert [t.name for t in timings] == ["bernoulli", "row"]  # the baseline first
    assert timings[1].ms == pytest.approx(1.0)  # median of 1, 1.5, 0.5 ms (the first step is warm-up)
    assert timings[0].work == 1.0 and timings[1].work < 1.0


def diverged_result() -> RaceResult:
    """bernoulli trains 4 steps; row's loss became NaN at step 3 and tile's at step 1 (the race's way:
    nothing recorded from the step that diverged on)."""
    result = fake_result()
    row = result.histories["row"]
    row.step, row.loss, row.seconds, row.eval_step, row.metric = [1, 2], row.loss[:2], row.seconds[:2], [2], [0.5]
    row.diverged_at = 3
    result.histories["tile"] = History(diverged_at=1)
    result.gemm_work["tile"] = 0.5
    return result


def test_a_diverged_method_is_named_so_in_the_legend_and_no_nan_reaches_a_figure():
    result = diverged_result()
    fig = result_figure(result)
    names = [t.name for t in fig.data if t.showlegend is not False]
    assert names == ["row (diverged at step 3)", "bernoulli", "tile (diverged at step 1)"]
    assert {t.name for t in fig.data[:3]} == {"row (diverged at step 3)"}  # and in its hover labels
    assert list(fig.data[0].x) == [1, 2] and len(fig.data[6].x) == 0
    assert all(math.isfinite(v) for t in fig.data for v in t.y)
    timings = summary_timings(result)  # tile has no timed step: left out of the bar chart
    assert [t.name for t in timings] == ["bernoulli", "row (diverged at step 3)"]
    assert all(math.isfinite(t.ms) for t in timings)


def test_a_live_figure_renames_a_method_when_it_diverges():
    result = fake_result()
    fig = go.FigureWidget(training_figure(result.methods))
    update_training_figure(fig, result)
    assert fig.data[0].name == "row"
    result.histories["row"].diverged_at = 5
    update_training_figure(fig, result)
    assert fig.data[0].name == "row (diverged at step 5)" and fig.data[3].name == "bernoulli"


def test_samples_figure_shows_images_with_labels():
    x = torch.linspace(0, 1, 3 * 6).reshape(3, 6)
    fig = samples_figure(x, torch.tensor([7, 1, 2]), (2, 3), count=8)
    assert len(fig.data) == 3 and torch.tensor(fig.data[2].z).equal(x[2].reshape(2, 3))
    assert [a.text for a in fig.layout.annotations] == ["label 7", "label 1", "label 2"]


def test_metric_axis_has_a_minimum_span_so_noise_does_not_look_like_a_gap():
    from approxdrop.course.viz.training import MIN_SPAN, metric_range

    tight = [3.2371, 3.2424, 3.2420]  # validation losses 0.2% apart
    lo, hi = metric_range(tight)
    assert lo < min(tight) and hi > max(tight) and hi - lo >= MIN_SPAN * max(tight)
    assert metric_range([80.0, 85.0]) is None, "a real spread keeps plotly's autorange"
    assert metric_range([800.0, 1500.0], log=True) is None
    lo, hi = metric_range([300.0, 301.0], log=True)  # log axes take log10 bounds
    assert lo < math.log10(300.0) and hi > math.log10(301.0) and hi - lo >= MIN_SPAN
    assert metric_range([]) is None and metric_range([float("nan")]) is None


def test_log_ticks_label_at_least_four_values_however_narrow_the_range():
    from approxdrop.course.viz.training import log_ticks, tick_text

    assert log_ticks(1.5, 13) == [2.0, 3.0, 5.0, 7.0, 10.0]  # plotly drew 2, 5, 10, the 2 and 5 in a small font
    assert log_ticks(500, 2000) == [500.0, 700.0, 1000.0, 2000.0]
    narrow = log_ticks(4.0, 6.5)  # lab 08's ms panel: plotly labelled a single "5"
    assert len(narrow) >= 4 and all(4.0 <= t <= 6.5 for t in narrow)
    tight = log_ticks(3.2, 3.3)
    assert len(tight) >= 4 and all(3.2 <= t <= 3.3 for t in tight)
    assert log_ticks(1, 1000)[:4] == [1.0, 2.0, 5.0, 10.0]
    assert log_ticks(0.0, 1.0) == [] and log_ticks(2.0, math.inf) == [] and log_ticks(3.0, 3.0) == [3.0]
    assert [tick_text(t) for t in (20.0, 1.5, 1000.0, 0.25)] == ["20", "1.5", "1000", "0.25"]


def test_race_panels_put_readable_ticks_on_log_axes():
    result = fake_result()  # step times 0.5-4 ms
    fig = result_figure(result)
    ms = fig.layout.yaxis3
    assert ms.type == "log" and ms.tickmode == "array" and len(ms.tickvals) >= 4
    lo = min(min(t.y) for t in fig.data[2::3])
    hi = max(max(t.y) for t in fig.data[2::3])
    assert all(lo <= v <= hi for v in ms.tickvals) and list(ms.ticktext) == [f"{v:.4g}" for v in ms.tickvals]
    assert fig.layout.yaxis.type != "log" and fig.layout.yaxis.tickvals is None  # a linear axis keeps plotly's


def test_a_single_evaluation_sits_at_the_end_of_the_race_s_steps():
    """A CI-size race evaluates once, after its last step: plotly drew that column of dots on an axis 19-21."""
    result = fake_result()
    for h in result.histories.values():
        h.eval_step, h.metric = [4], [h.metric[-1]]
    fig = go.FigureWidget(training_figure(result.methods))
    update_training_figure(fig, result)
    lo, hi = fig.layout.xaxis2.range
    assert fig.layout.xaxis2.autorange is False and lo < 1 and 4 < hi < 4.5  # steps 1-4, the points at 4
    for h in result.histories.values():  # evaluations at several steps: plotly's range again
        h.eval_step, h.metric = [2, 4], [0.5, 0.6]
    update_training_figure(fig, result)
    assert fig.layout.xaxis2.autorange is True and fig.layout.xaxis2.range is None


def test_samples_figure_titles_images_with_class_names():
    from approxdrop.course.viz.training import class_names

    names = class_names("fashion-mnist", 10)
    assert names[0] == "T-shirt/top" and names[6] == "Shirt" and names[9] == "Ankle boot"
    assert class_names("mnist", 10) == [str(i) for i in range(10)] == class_names("digits", 10)
    x = torch.zeros(3, 6)
    fig = samples_figure(x, torch.tensor([6, 9, 1]), (2, 3), names=names)
    assert [a.text for a in fig.layout.annotations] == ["Shirt", "Ankle boot", "Trouser"]


def test_log_tick_labels_keep_one_format_across_the_axis():
    """Lab 07's perplexity axis read "2e+04", "1e+04", "5000", "2000", "1000": two formats on one axis."""
    from approxdrop.course.viz.training import log_ticks, tick_text

    ticks = log_ticks(900.0, 25_000.0)
    assert [tick_text(t) for t in ticks] == ["1000", "2000", "5000", "10000", "20000"]
    assert [tick_text(t) for t in (150_000.0, 12.5, 0.05, 3e6)] == ["150000", "12.5", "0.05", "3e+06"]
