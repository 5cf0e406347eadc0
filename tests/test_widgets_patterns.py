"""Pattern panels, driven from Python: sliders stay valid and redraw the FigureWidgets in place."""

import pytest
import torch

from approxdrop import RowPattern, TilePattern
from approxdrop.course.viz.live import WIDTH
from approxdrop.course.viz.matrix import block_figure, group_keep_counts
from approxdrop.course.widgets.patterns import (
    BlockReadsPanel,
    GroupedPatternPanel,
    PatternSliders,
    RowPatternPanel,
    TilePatternPanel,
)
from approxdrop.experiments.gemm_timing import Timing
from approxdrop.search import distribution_for


def test_sliders_bound_offset_and_keep_by_dp_and_redraw_once():
    calls = []
    s = PatternSliders(lambda: calls.append(s.values), dp=6, offset=5, keep=6)
    s.dp.value = 3
    assert (s.offset.max, s.keep.max) == (2, 3)
    assert s.values == (3, 2, 3) and calls == [(3, 2, 3)]  # clamped, one redraw with a valid pattern
    s.dp.value = 8
    assert (s.offset.max, s.keep.max) == (7, 8) and s.values == (8, 2, 3)


def test_row_panel_redraws_in_place_and_times_on_click():
    panel = RowPatternPanel(n_out=12, n_in=5, n_next=4, batch=4, n=16, device="cpu", repeats=1)
    trace, title = panel.fig.data[0], panel.fig.layout.title.text
    assert panel.fig.layout.width == panel.timing.layout.width == WIDTH
    panel.sliders.dp.value = 3
    panel.sliders.offset.value = 2
    assert panel.fig.data[0] is trace and panel.fig.layout.title.text != title
    assert torch.equal(torch.tensor(trace.z)[:, 0], RowPattern(3, 2).keep_mask(12).int())
    bars = panel.timing.data[0]
    assert bars.y is None or len(bars.y) == 0
    panel.button.click()
    assert panel.timing.data[0] is bars and len(bars.y) == 4 and "speed-up over the dense GEMM" in panel.status.value
    assert "over 5 rounds" in panel.status.value and len(panel.spreads) == 4  # the default: 5 rounds


def test_timed_panel_shows_the_spread_and_warns_only_when_busy():
    panel = RowPatternPanel(n_out=12, n_in=5, n_next=4, batch=4, n=16, device="cpu", repeats=10, rounds=4)
    assert panel.repeats == 3  # about 10 timed calls per method in all, over 4 rounds
    quiet = iter([[4.0, 2.0, 2.0, 1.0], [4.0, 2.0, 2.0, 1.0], [4.2, 2.0, 2.0, 1.0], [4.0, 2.1, 2.0, 1.0]])
    busy = iter([[4.0, 2.0, 2.0, 1.0], [4.0, 2.0, 2.0, 4.0], [4.0, 2.0, 2.0, 1.0], [4.0, 2.0, 2.0, 1.0]])
    names = ["dense GEMM", "kept rows", "kept columns", "rows and columns"]
    for rounds, warns in ((quiet, False), (busy, True)):
        panel._measure = lambda r=rounds: [Timing(n, ms, 1.0) for n, ms in zip(names, next(r))]
        panel.time_it()
        timed = str(panel.pattern)
        assert panel.status.value.startswith(f"{timed}, rows and columns: speed-up over the dense GEMM 4.00x (IQR")
        assert "over 4 rounds" in panel.status.value
        assert ("machine looks busy" in panel.warning.value) is warns
        assert ("rows and columns: IQR" in panel.warning.value) is warns  # the noisy one, named
        assert "kept rows" not in panel.warning.value
    with pytest.raises(ValueError, match="rounds"):
        RowPatternPanel(n=16, rounds=0)


def test_tile_panel_follows_tile_size_and_pattern():
    panel = TilePatternPanel(n_out=16, n_in=24, batch=4, n=16, device="cpu", repeats=1)
    trace = panel.fig.data[0]
    panel.tile.value = 4
    panel.sliders.dp.value = 3
    panel.sliders.keep.value = 2
    assert panel.fig.data[0] is trace
    assert torch.equal(torch.tensor(trace.z), TilePattern(3, 0, 4, 2).tile_mask(16, 24).int())
    panel.button.click()
    assert len(panel.timing.data[0].y) == 3


def test_block_panel_bounds_class_block_and_step():
    panel = BlockReadsPanel(n_out=32, n_in=32, tile=4, block_n=8, block_k=4, dp=4)
    trace = panel.fig.data[0]
    assert panel.cls.value == 0 and panel.step.value == panel.step.max == 2  # the whole loop: 8 kept inputs / 4
    panel.cls.value = 3
    panel.sliders.dp.value = 2
    assert panel.cls.max == 1 and panel.cls.value == 1
    assert panel.block.max == 1 and panel.step.max == 4  # 16 rows of class 1 / 8 per block; 16 kept inputs / 4
    panel.step.value = 1
    assert panel.fig.data[0] is trace and "class 1" in panel.fig.layout.title.text


def test_block_panel_starts_at_a_given_class_with_the_whole_loop_and_refuses_a_class_the_pattern_lacks():
    panel = BlockReadsPanel(n_out=96, n_in=96, tile=8, block_n=16, block_k=8, dp=3, offset=1, cls=1)
    whole_loop = block_figure(TilePattern(3, 1, tile=8), 96, 96, cls=1, block=0, block_n=16, block_k=8)
    assert panel.cls.value == 1 and panel.fig.layout.title.text == whole_loop.layout.title.text
    assert list(panel.fig.data[0].z) == list(whole_loop.data[0].z)
    with pytest.raises(ValueError, match="got 3"):
        BlockReadsPanel(dp=3, cls=3)


def test_block_panel_can_start_part_way_through_the_loop():
    """Lab 06 opens at an early K step, so that it does not repeat lab 03's whole-loop figure."""
    panel = BlockReadsPanel(n_out=96, n_in=96, tile=8, block_n=16, block_k=8, dp=3, offset=1, cls=1, step=2)
    whole_loop = block_figure(TilePattern(3, 1, tile=8), 96, 96, cls=1, block=0, block_n=16, block_k=8)
    two_steps = block_figure(TilePattern(3, 1, tile=8), 96, 96, cls=1, block=0, block_n=16, block_k=8, upto=1)
    assert panel.step.value == 2 < panel.step.max and panel.step.min == 1  # K steps shown, from 1
    assert list(panel.fig.data[0].z) == list(two_steps.data[0].z) != list(whole_loop.data[0].z)
    assert BlockReadsPanel(n_out=32, n_in=32, tile=4, block_n=8, block_k=4, dp=4, step=99).step.value == 2
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"got {bad}"):
            BlockReadsPanel(dp=3, step=bad)


def test_grouped_panel_redraws_the_same_step_for_every_g_and_a_new_step_on_click():
    panel = GroupedPatternPanel(n=24, batch=16, groups=4, p=0.5, seed=3)
    strips, counts = panel.fig.data
    assert z_of(strips).shape == (4, 24) and panel.groups.max == 16
    four = panel.patterns
    assert len(four) == 4 and len({(pt.dp, pt.keep) for pt in four}) == 1
    panel.groups.value = 2
    assert panel.fig.data[0] is strips and z_of(strips).shape == (2, 24)
    assert panel.patterns == four[:2]  # the same step, fewer groups
    panel.groups.value = 9
    assert panel.patterns[:4] == four and z_of(strips).shape == (9, 24)
    assert torch.equal(z_of(counts)[0], group_keep_counts(panel.patterns, 24))
    panel.p.value = 0.75
    assert panel.law == distribution_for(0.75, 24) and "p = 0.75" in panel.fig.layout.title.text
    assert torch.equal(z_of(strips), torch.stack([pt.keep_mask(24) for pt in panel.patterns]).int())
    steps = {tuple(pt.offset for pt in panel.patterns)}
    for _ in range(5):
        panel.button.click()
        steps.add(tuple(pt.offset for pt in panel.patterns))
        assert panel.fig.data[0] is strips and z_of(strips).shape == (9, 24)
    assert len(steps) > 1  # new draws, not the same step again


def z_of(trace) -> torch.Tensor:
    return torch.tensor(trace.z)


def test_time_it_is_off_while_it_measures_names_the_pattern_timed_and_says_a_failure():
    panel = RowPatternPanel(n_out=12, n_in=5, n_next=4, batch=4, n=16, device="cpu", repeats=1, rounds=2)
    seen = []
    names = ["dense GEMM", "kept rows", "kept columns", "rows and columns"]
    panel._measure = lambda: seen.append(panel.button.disabled) or [Timing(n, 1.0, 1.0) for n in names]
    timed = str(panel.pattern)
    panel.button.click()
    assert seen == [True, True] and not panel.button.disabled  # a second click cannot queue a second timing
    panel.sliders.dp.value = 5  # the results stay those of the pattern timed, and say which it was
    assert panel.status.value.startswith(timed) and panel.timing.layout.title.text.startswith(timed)

    def fails():
        raise RuntimeError("out of memory")

    panel._measure = fails
    with pytest.raises(RuntimeError):
        panel.time_it()
    assert "failed: RuntimeError: out of memory" in panel.status.value and not panel.button.disabled


def test_time_it_on_a_pattern_that_keeps_no_work_says_there_is_no_bound():
    panel = TilePatternPanel(n_out=4, n_in=4, batch=2, n=8, device="cpu", repeats=1, rounds=1)
    panel.sliders.dp.value, panel.sliders.offset.value = 8, 7  # at n = 8 no tile of the timed layer is kept
    panel.time_it()
    assert panel.status.value.endswith("GEMM-work bound none (the pattern keeps no work)"), panel.status.value


def test_a_starting_dp_above_the_sliders_range_is_refused():
    with pytest.raises(ValueError, match=r"dp must be in \[1, 8\], got 9"):
        RowPatternPanel(device="cpu", dp=9)


def test_one_tile_size_is_a_dropdown_of_one_and_no_tile_sizes_or_bad_ones_are_refused():
    """tiles=(16,) and tiles=() raised IndexError (the default choice was tiles[-2])."""
    panel = TilePatternPanel(n_out=8, n_in=8, batch=2, n=8, device="cpu", repeats=1, tiles=(16,))
    assert panel.tile.options == (16,) and panel.pattern.tile == 16
    assert TilePatternPanel(device="cpu", tiles=[4, 8, 16]).tile.value == 8  # the next to last, as before
    bad = [((), "tiles must be a non-empty sequence"), (16, "tiles must be a non-empty sequence"),
           ((8, 0), r"each tile size in tiles must be in \[1, inf\), got 0"),
           ((8, 2.5), "each tile size in tiles must be an int"), ((8, 8), "tiles must be distinct")]  # fmt: skip
    for tiles, match in bad:
        with pytest.raises(ValueError, match=match):
            TilePatternPanel(device="cpu", tiles=tiles)


@pytest.mark.parametrize("panel, sizes", [(RowPatternPanel, (0, 4, 4)), (TilePatternPanel, (4, 0))])
def test_a_layer_of_no_units_is_refused_by_name(panel, sizes):
    """RowPatternPanel(0, 4, 4) and TilePatternPanel(4, 0) raised ZeroDivisionError while drawing."""
    name = "n_out" if sizes[0] == 0 else "n_in"
    with pytest.raises(ValueError, match=rf"{name} must be in \[1, inf\), got 0"):
        panel(*sizes, device="cpu")


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(p=0.0), r"p must be in \[0.05, 0.9\] \(the slider's range\), got 0"),
     (dict(p=1.5), r"p must be in \[0.05, 0.9\] \(the slider's range\), got 1.5"),
     (dict(p=float("nan")), "p must be a finite number"),
     (dict(groups=40), r"groups must be in \[1, 16\] \(the G slider's range, up to max_groups\), got 40"),
     (dict(groups=0), r"groups must be in \[1, inf\), got 0"), (dict(groups=5, max_groups=4), r"\[1, 4\]")],
)  # fmt: skip
def test_a_grouped_panel_setting_outside_its_sliders_range_is_refused(kwargs, match):
    """p=0.0 was shown as 0.05, p=1.5 as 0.9 and groups=40 as 16, with no word."""
    with pytest.raises(ValueError, match=match):
        GroupedPatternPanel(n=8, batch=16, **kwargs)
    assert GroupedPatternPanel(n=8, batch=16, groups=16, p=0.9).p.value == 0.9  # the sliders' ends are fine


TIMED = dict(n_out=12, n_in=5, n_next=4, batch=4, n=16, device="cpu", repeats=1)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"batch": 0}, r"batch must be in \[1, inf\), got 0"),  # timed an empty GEMM: "0.04x", a busy warning
        ({"batch": 2.5}, "batch must be an int, got 2.5"),
        ({"n": -5}, r"n must be in \[1, inf\), got -5"),  # torch's negative-dimension RuntimeError at the click
        ({"n": 2.5}, "n must be an int, got 2.5"),  # a randn() TypeError at the click
        ({"repeats": 0}, r"repeats must be in \[1, inf\), got 0"),  # quietly taken as 1
        ({"repeats": -3}, r"repeats must be in \[1, inf\), got -3"),
        ({"repeats": 2.0}, "repeats must be an int, got 2.0"),
        ({"rounds": 1.5}, "rounds must be an int, got 1.5"),
    ],
)
def test_timed_panels_refuse_bad_sizes_when_built(bad, message):
    for panel in (RowPatternPanel, TilePatternPanel):
        sizes = {k: v for k, v in TIMED.items() if panel is RowPatternPanel or k != "n_next"}
        with pytest.raises(ValueError, match=message):
            panel(**{**sizes, **bad})


def test_a_grouped_panel_refuses_a_batch_too_small_for_its_groups():
    """batch=3 with G up to 16 drew groups with no samples under "every unit kept by some group"."""
    for batch, message in [
        (3, r"batch must be at least max_groups = 16 .*got 3"),
        (0, r"batch must be in \[1, inf\), got 0"),
        (2.5, "batch must be an int, got 2.5"),
    ]:
        with pytest.raises(ValueError, match=message):
            GroupedPatternPanel(n=8, batch=batch, groups=4)
    assert GroupedPatternPanel(n=8, batch=3, groups=2, max_groups=3).groups.max == 3  # a smaller slider fits


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"block_k": 0}, r"block_k must be in \[1, inf\), got 0"),  # "range() arg 3 must not be zero"
        ({"block_n": 0}, r"block_n must be in \[1, inf\), got 0"),  # a ZeroDivisionError
        ({"block_n": 8.0}, "block_n must be an int, got 8.0"),
    ],
)
def test_block_panel_refuses_empty_blocks_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        BlockReadsPanel(**{**dict(n_out=32, n_in=32, tile=4, block_n=8, block_k=4, dp=4), **bad})
