"""Timing chart and the live GEMM timing helpers."""

import plotly.graph_objects as go
import pytest
import torch

from approxdrop import RowPattern, TilePattern
from approxdrop.course.viz.timing import from_bench, timing_figure, update_timing_figure
from approxdrop.experiments.bench import BenchRow
from approxdrop.experiments.gemm_timing import Timing, dropout_timings, median_ms, row_timings, tile_timings

ROWS = [Timing("dense GEMM", 4.0, 1.0), Timing("row pattern", 2.0, 0.25)]


def test_timing_figure_draws_measured_bars_and_the_work_bound():
    fig = timing_figure(ROWS, "t")
    bars, bound = fig.data
    assert list(bars.x) == ["dense GEMM", "row pattern"] and list(bars.y) == [4.0, 2.0]
    assert list(bound.y) == [4.0, 1.0]  # baseline ms x work
    assert bars.text[1] == "2 ms = 0.50 x dense GEMM"


def test_update_timing_figure_in_place_from_empty():
    fig = go.FigureWidget(timing_figure([], "t"))
    bars = fig.data[0]
    assert "not measured" in fig.layout.title.text
    update_timing_figure(fig, ROWS, "t")
    assert fig.data[0] is bars and list(bars.y) == [4.0, 2.0] and list(fig.data[1].y) == [4.0, 1.0]


def test_from_bench_puts_bernoulli_first_and_keeps_one_p():
    rows = [
        BenchRow("row", 0.5, 3.0, 0.6, 0.32, 7),
        BenchRow("bernoulli", 0.5, 5.0, 1.0, 1.0, 7),
        BenchRow("row", 0.3, 4.0, 0.8, 0.55, 7),
    ]
    assert from_bench(rows, 0.5) == [Timing("bernoulli", 5.0, 1.0), Timing("row", 3.0, 0.32)]
    with pytest.raises(ValueError, match="bernoulli"):
        from_bench(rows[:1], 0.5)


def test_median_ms_measures_and_helpers_report_work():
    calls = []
    assert median_ms(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=3) >= 0 and len(calls) == 5
    drop = dropout_timings(4, 16, 20, 0.5, "cpu", repeats=2)
    assert [t.work for t in drop] == [1.0, 1.0, 1.0, 0.5]
    rows = row_timings(4, 12, RowPattern(3, 1), "cpu", repeats=2)
    assert [t.name for t in rows][0] == "dense GEMM" and rows[-1].work == pytest.approx(1 / 9)
    tiles = tile_timings(4, 16, 16, TilePattern(4, 0, 4), "cpu", repeats=2)
    assert tiles[-1].work == pytest.approx(0.25) and all(t.ms > 0 for t in tiles)
