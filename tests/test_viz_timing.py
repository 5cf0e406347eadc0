"""Timing chart and the live GEMM timing helpers."""

import itertools
import math
import statistics
from types import SimpleNamespace

import plotly.graph_objects as go
import pytest
import torch

import approxdrop.course.viz.training as training_viz
from approxdrop import RowPattern, TilePattern
from approxdrop.course.viz.timing import (
    BUSY_SPREAD,
    PairedTiming,
    Spread,
    TimingSpread,
    from_bench,
    median_rows,
    ms_text,
    noise_warning,
    race_lines,
    race_speedups,
    repeat_timings,
    spread,
    spread_figure,
    timing_figure,
    timing_lines,
    update_timing_figure,
)
from approxdrop.experiments.bench import BenchRow
from approxdrop.experiments.gemm_timing import Timing, dropout_timings, median_ms, row_timings, tile_timings
from approxdrop.models.methods import DROPOUT_METHODS, MODELS, methods_for
from approxdrop.training.race import ACCURACY, History, RaceResult, opposite_ways

ROWS = [Timing("dense GEMM", 4.0, 1.0), Timing("row pattern", 2.0, 0.25)]


def test_timing_figure_draws_measured_bars_and_the_work_bound():
    fig = timing_figure(ROWS, "t")
    bars, bound = fig.data
    assert list(bars.x) == ["dense GEMM", "row pattern"] and list(bars.y) == [4.0, 2.0]
    assert list(bound.y) == [4.0, 1.0]  # baseline ms x work
    assert bars.text[1] == "2.00 ms, 2.00x"  # speedup: the dense GEMM's time / its own (single medians: their ratio)
    assert bars.textposition == "none"  # the label is under the bar, in its tick label: no whisker runs through it
    assert list(fig.layout.xaxis.ticktext) == [
        "dense GEMM<br><b>4.00 ms, 1.00x</b>",
        "row pattern<br><b>2.00 ms, 2.00x</b>",
    ]
    assert "above 1x: faster" in fig.layout.title.text and "lower is faster" in fig.layout.yaxis.title.text
    assert fig.layout.yaxis.rangemode == "tozero"  # whiskers never push the axis below 0 ms
    assert bound.name == "GEMM-work bound (ideal)" and "black line: GEMM-work bound (ideal)" in fig.layout.title.text
    assert bound.marker.color == bound.marker.line.color == "#222222"  # not red: red is the `row` method's colour


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


def test_spread_of_tight_repeats_does_not_warn():
    s = spread([1.0, 1.02, 0.98, 1.01, 0.99])
    assert (s.median, s.low, s.high, s.count, s.dropped) == (1.0, 0.98, 1.02, 5, 0)
    assert s.q1 == pytest.approx(0.99) and s.q3 == pytest.approx(1.01)
    assert s.relative == pytest.approx(0.02) and not s.busy
    assert s.describe() == "1.00x (IQR 0.99-1.01, range 0.98-1.02 over 5 repeats)"
    assert noise_warning({"s": s}) is None


def test_busy_spread_warns_once_for_any_busy_timing():
    tight, busy = spread([0.5, 0.51, 0.49]), spread([0.47, 0.53, 1.08, 0.5, 0.9])
    assert busy.relative > BUSY_SPREAD and busy.busy
    warning = noise_warning({"tight one": tight, "kept columns": busy})
    assert warning is not None and "machine looks busy" in warning and "25%" in warning
    assert f"kept columns: IQR {busy.relative:.0%} of its median" in warning  # names the noisy one, its spread
    assert "tight one" not in warning
    both = noise_warning({"a": busy, "b": busy})
    assert both is not None and "a: IQR" in both and "; b: IQR" in both
    assert noise_warning({"tight one": tight}) is None and noise_warning({}) is None
    assert not Spread(1.0, 0.88, 1.12, 0.5, 2.0, 7).busy  # IQR 0.24 of the median: below the limit
    assert Spread(1.0, 0.87, 1.13, 0.87, 1.13, 7).busy  # 0.26: above it, however tight the range


def test_spread_leaves_out_nan_and_inf():
    s = spread([1.0, math.nan, 2.0, math.inf, 3.0])
    assert (s.median, s.count, s.dropped, s.low, s.high) == (2.0, 3, 2, 1.0, 3.0)
    assert s.describe().endswith("over 3 repeats, 2 not finite left out)")
    none = spread([math.nan, math.nan])
    assert none.count == 0 and none.dropped == 2 and math.isnan(none.median) and math.isnan(none.relative)
    assert not none.busy and none.describe() == "not measured (2 repeats, none finite)"
    assert noise_warning({"none": none}) is None
    one = spread([0.7])
    assert (one.q1, one.q3, one.relative, one.busy) == (0.7, 0.7, 0.0, False)
    assert one.describe(over="steps").endswith("over 1 step)")
    assert spread([math.nan]).describe() == "not measured (1 repeat, none finite)"


def test_repeat_timings_gives_the_ratio_to_the_baseline_of_each_round():
    rounds = iter([[4.0, 2.0], [8.0, 2.0], [4.0, 1.0]])  # the second round: a slow moment for the baseline

    def measure():
        dense, small = next(rounds)
        return [Timing("dense GEMM", dense, 1.0), Timing("small", small, 0.5)]

    dense, small = repeat_timings(measure, 3)
    assert (dense.name, small.name, small.work) == ("dense GEMM", "small", 0.5)
    assert dense.ratio.median == 1.0 and dense.ms.median == 4.0 and small.ms.median == 2.0
    assert (small.ratio.low, small.ratio.median, small.ratio.high) == (0.25, 0.25, 0.5)
    assert (small.speedup.low, small.speedup.median, small.speedup.high) == (2.0, 4.0, 4.0)
    assert median_rows([dense, small]) == [
        PairedTiming("dense GEMM", 4.0, 1.0, 1.0, "round"),
        PairedTiming("small", 2.0, 0.5, 4.0, "round"),
    ]
    lines = timing_lines([dense, small])
    assert lines[1].startswith("     small:   2.000 ms, speedup vs dense GEMM 4.00x (IQR 3.00-4.00, range 2.00-4.00")
    assert "over 3 rounds" in lines[1] and lines[1].endswith("; ideal 2.00x")  # 1 / GEMM work
    assert lines[-1] == noise_warning({"small": small.ratio})  # 0.25 / 0.25 / 0.5: IQR 0.125 of 0.25, busy
    assert "small: IQR 50% of its median" in lines[-1]
    with pytest.raises(ValueError, match="rounds"):
        repeat_timings(measure, 0)


def _history(seconds, start=1):
    return History(step=list(range(start, start + len(seconds))), seconds=list(seconds))


def test_race_speedups_pair_steps_after_warmup_and_warn_when_noisy():
    result = RaceResult(
        {
            "bernoulli": _history([9.0, 4.0, 4.0, 4.0, 4.0]),
            "row": _history([1.0, 2.0, 2.0, 2.0, 2.0]),  # the first step is warm-up: left out
            "tile": _history([9.0, 1.0, 4.0, 8.0, 2.0]),
            "late": _history([2.0], start=5),  # only step 5 pairs with bernoulli
        },
        ACCURACY,
        SimpleNamespace(p=0.5, warmup=1, steps=5),
        {"bernoulli": 1.0, "row": 0.3, "tile": 0.6, "late": 1.0},
        "cpu",
    )
    speed = race_speedups(result)
    assert list(speed) == ["row", "tile", "late"]
    assert (speed["row"].median, speed["row"].count, speed["row"].busy) == (2.0, 4, False)
    assert (speed["tile"].low, speed["tile"].high, speed["tile"].busy) == (0.5, 4.0, True)
    assert speed["late"].count == 1 and speed["late"].median == 2.0
    lines = race_lines(result)
    assert lines[0] == " row: speedup vs bernoulli 2.00x (IQR 2.00-2.00, range 2.00-2.00 over 4 steps)"
    assert lines[-1] == noise_warning({"tile": speed["tile"]}) and "tile: IQR" in lines[-1] and "row:" not in lines[-1]
    assert race_speedups(result, baseline="none") == {}


def test_timing_figure_draws_the_spread_as_whiskers_and_update_clears_them():
    spreads = [spread([3.0, 4.0, 5.0]), spread([1.5, 2.0, 3.0])]  # quartiles 3.5-4.5 and 1.75-2.5
    fig = timing_figure(ROWS, "t", spreads)
    err = fig.data[0].error_y
    assert err.visible and list(err.array) == [0.5, 0.5] and list(err.arrayminus) == [0.5, 0.25]
    assert "whiskers" in fig.layout.title.text
    assert not timing_figure(ROWS, "t").data[0].error_y.visible
    live = go.FigureWidget(timing_figure([], "t"))
    update_timing_figure(live, ROWS, "t", spreads)
    assert live.data[0].error_y.visible and list(live.data[0].error_y.arrayminus) == [0.5, 0.25]
    update_timing_figure(live, ROWS, "t")
    assert not live.data[0].error_y.visible and "whiskers" not in live.layout.title.text
    with pytest.raises(ValueError, match="1 spreads for 2"):
        timing_figure(ROWS, "t", spreads[:1])


def test_spread_figure_puts_the_medians_and_their_iqr_in_the_bars():
    timings = [TimingSpread("dense GEMM", 1.0, spread([4.0]), spread([1.0]), spread([1.0]))]
    timings.append(TimingSpread("small", 0.5, spread([1.0, 2.0, 5.0]), spread([0.5]), spread([2.0])))
    bars = spread_figure(timings, "t").data[0]
    assert list(bars.y) == [4.0, 2.0] and list(bars.error_y.array) == [0.0, 1.5]


def _race(histories: dict[str, History], warmup: int = 2, steps: int = 6) -> RaceResult:
    work = {m: 1.0 if m == "bernoulli" else 0.5 for m in histories}
    return RaceResult(histories, ACCURACY, SimpleNamespace(p=0.5, warmup=warmup, steps=steps), work, "cpu")


def test_a_method_diverged_in_warmup_has_no_step_time_and_no_speedup_is_taken_against_it():
    """Its warm-up times were its "median after warm-up", and every other method's speedup was taken against
    them (``h.seconds[warmup:] or h.seconds``): now it has none, and every ratio against it is "-"."""
    fast_warmup = History(step=[1], loss=[2.0], seconds=[0.001], diverged_at=2)  # stopped inside the warm-up
    result = _race({"bernoulli": fast_warmup, "row": _history([0.009, 0.004, 0.002, 0.002, 0.002, 0.002])}, warmup=2)
    rows = {r.method: r for r in result.summary()}
    assert math.isnan(rows["bernoulli"].ms_per_step) and rows["bernoulli"].speedups == {"bernoulli": None}
    assert rows["row"].ms_per_step == pytest.approx(2.0) and rows["row"].speedup is None
    assert result.timed_seconds("bernoulli") == {} and result.step_speedups("bernoulli", "row") == []
    table = result.format_table()
    assert "| bernoulli | - | - |" in table and "| row | 2.00 | - |" in table and "nan" not in table.lower()
    assert race_lines(result) == ["row: speedup vs bernoulli not measured (0 steps, none finite)"]
    assert [t.name for t in training_viz.summary_timings(result)] == ["row"]  # no bar without a timed step
    # a method (not the baseline) diverged in warm-up: its own row is "-", the baseline's is untouched
    result = _race({"bernoulli": _history([0.004] * 6), "row": History(step=[1], loss=[1.0], seconds=[1e-4])})
    rows = {r.method: r for r in result.summary()}
    assert math.isnan(rows["row"].ms_per_step) and rows["row"].speedup is None
    assert rows["bernoulli"].speedup == 1.0 and "| row | - | - |" in result.format_table()


def test_the_table_the_bars_and_the_lines_give_one_speedup():
    """The median of the per-step ratios, everywhere: the table said the ratio of the medians (1.50x here),
    the bar its inverse, the lines the median of the per-step ratios (2.00x)."""
    base = [0.009, 0.009, 0.004, 0.002, 0.005, 0.002, 0.003]  # steps 1-2 are warm-up
    row = [0.009, 0.009, 0.002, 0.001, 0.005, 0.002, 0.001]  # per step 2, 2, 1, 1, 3: median 2
    result = _race({"bernoulli": _history(base), "row": _history(row)}, warmup=2, steps=7)
    assert statistics.median(base[2:]) / statistics.median(row[2:]) == pytest.approx(1.5)  # not what is shown
    assert result.step_speedups("bernoulli", "row") == pytest.approx([2.0, 2.0, 1.0, 1.0, 3.0])
    assert result.summary()[1].speedup == pytest.approx(2.0) == result.speedup("bernoulli", "row")
    table = result.format_table()
    assert "| row | 2.00 | 2.00x |" in table and "| bernoulli | 3.00 | 1.00x |" in table
    assert "speedup vs bernoulli" in table.splitlines()[0] and "faster" in table.splitlines()[0]
    assert race_speedups(result)["row"].median == pytest.approx(2.0)
    assert race_lines(result)[0].startswith("row: speedup vs bernoulli 2.00x (IQR")
    fig = training_viz.summary_figure(result, "t")
    assert list(fig.data[0].text) == ["3.00 ms, 1.00x", "2.00 ms, 2.00x"]
    assert fig.layout.xaxis.ticktext[1] == "row<br><b>2.00 ms, 2.00x</b>"
    assert "median of the per-step ratios" in fig.layout.title.text
    plain = timing_figure(training_viz.summary_timings(result), "t")  # lab 07's way: the rows carry the speedups
    assert list(plain.data[0].text) == ["3.00 ms, 1.00x", "2.00 ms, 2.00x"] and "per-step" in plain.layout.title.text
    assert [t.speedup for t in training_viz.summary_timings(result)] == pytest.approx([1.0, 2.0])


def test_spread_figure_labels_the_median_per_round_speedup_that_the_lines_print():
    rounds = iter([[4.0, 1.0], [8.0, 2.0], [4.0, 4.0]])  # ratio of the medians: 4 / 2 = 2.00; per round 4, 4, 1

    def measure():
        dense, small = next(rounds)
        return [Timing("dense GEMM", dense, 1.0), Timing("small", small, 0.5)]

    timings = repeat_timings(measure, 3)
    fig = spread_figure(timings, "t")
    assert list(fig.data[0].text) == ["4.00 ms, 1.00x", "2.00 ms, 4.00x"]
    assert "speedup vs dense GEMM 4.00x" in timing_lines(timings)[1]
    assert "median of the per-round ratios" in fig.layout.title.text
    live = go.FigureWidget(timing_figure([], "t"))
    update_timing_figure(live, median_rows(timings), "t", [t.ms for t in timings])
    assert list(live.data[0].text) == ["4.00 ms, 1.00x", "2.00 ms, 4.00x"] and live.layout.xaxis.ticktext[1].endswith(
        "4.00x</b>"
    )
    assert "median of the per-round ratios" in live.layout.title.text


def test_spread_describe_names_rounds_or_steps():
    s = spread([1.0, 2.0, 3.0])
    assert s.describe("x", "rounds").endswith("over 3 rounds)") and s.describe("x", "steps").endswith("over 3 steps)")
    assert spread([math.nan]).describe("x", "steps") == "not measured (1 step, none finite)"


def _cie_lab(hex_color: str) -> tuple[float, float, float]:
    """CIE L*a*b* (D65) of an sRGB colour "#RRGGBB"."""
    srgb = [int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = [((c + 0.055) / 1.055) ** 2.4 if c > 0.04045 else c / 12.92 for c in srgb]
    xyz = (
        (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047,
        0.2126 * r + 0.7152 * g + 0.0722 * b,
        (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883,
    )
    fx, fy, fz = [t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in xyz]
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


@pytest.mark.parametrize("model", MODELS)
def test_the_methods_one_model_offers_have_colours_a_reader_tells_apart(model):
    # a figure draws every method of a race in its table colour: no two may look alike (CIE76 distance >= 20;
    # tile-g4 was at 14 from row-extended-g4 and 15 from tile, three greens)
    names = methods_for(model)
    for a, b in itertools.combinations(names, 2):
        la, lb = _cie_lab(DROPOUT_METHODS[a].color), _cie_lab(DROPOUT_METHODS[b].color)
        assert math.dist(la, lb) >= 20, (a, b)


def test_when_the_ms_and_the_speedup_point_opposite_ways_the_table_and_the_bars_say_so():
    """Lab 05 showed row-g4 at 230.69 ms against bernoulli's 221.44 ms labelled 1.05x, a taller bar called
    faster, with no word on why: each is a median, of different things, and a load that moves during the
    race can turn them apart. The table now says so under it, and the bar's label is marked."""
    base = [0.009, 0.009, 0.001, 0.010, 0.005]  # steps 1-2 are warm-up; after it: median 5 ms
    row = [0.009, 0.009, 0.0009, 0.009, 0.011]  # median 9 ms; per step 1.11, 1.11, 0.45: median 1.11x
    result = _race({"bernoulli": _history(base), "row": _history(row)}, warmup=2, steps=5)
    assert result.speedup("bernoulli", "row") == pytest.approx(1 / 0.9)
    table = result.format_table()
    rows, note = table.split("\n\n")
    assert "| row | 9.00 | 1.11x |" in rows and "| bernoulli | 5.00 | 1.00x |" in rows
    assert note.startswith("row took more ms per step than bernoulli, yet has a speedup above 1x.") and (
        note.endswith("read the speedup.") and "\n" not in note
    )
    fig = training_viz.summary_figure(result, "t")
    assert list(fig.data[0].text) == ["5.00 ms, 1.00x", "9.00 ms, 1.11x*"]
    assert "*: its ms and its speedup point opposite ways" in fig.layout.title.text
    assert fig.layout.margin.t > timing_figure(ROWS, "t").layout.margin.t  # room for the title's fourth line
    # the reverse: fewer ms, yet slower step by step
    result = _race({"bernoulli": _history(row), "row": _history(base)}, warmup=2, steps=5)
    assert result.timing_note().startswith("row took fewer ms per step than bernoulli, yet has a speedup below 1x")
    # agreeing numbers, a speedup shown as 1.00x, plain Timings: no note, no mark
    agree = _race({"bernoulli": _history(base), "row": _history([t / 2 for t in base])}, warmup=2, steps=5)
    assert "\n\n" not in agree.format_table() and "*" not in "".join(training_viz.summary_figure(agree).data[0].text)
    assert not opposite_ways(5.0, 9.0, 1.004) and not opposite_ways(5.0, 9.0, None) and opposite_ways(5.0, 9.0, 1.01)
    assert "*" not in "".join(timing_figure([Timing("a", 5.0, 1.0), Timing("b", 9.0, 0.5)]).data[0].text)


@pytest.mark.parametrize(
    "ms, text", [(221.437, "221.4"), (23.514, "23.5"), (2.034, "2.03"), (0.4123, "0.412"), (0.0, "0.000")]
)
def test_a_bar_label_gives_its_ms_to_three_or_four_digits(ms, text):
    """The labels printed three decimals whatever the size: "221.437 ms, 1.00x"."""
    assert ms_text(ms) == text
    speedup = ", 1.00x" if ms > 0 else ""  # no speedup over a 0 ms baseline
    assert timing_figure([Timing("a", ms, 1.0)]).data[0].text[0] == f"{text} ms{speedup}"
