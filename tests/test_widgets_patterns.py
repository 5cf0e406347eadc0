"""Pattern panels, driven from Python: sliders stay valid and redraw the FigureWidgets in place."""

import torch

from approxdrop import RowPattern, TilePattern
from approxdrop.course.widgets.patterns import BlockReadsPanel, PatternSliders, RowPatternPanel, TilePatternPanel


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
    panel.sliders.dp.value = 3
    panel.sliders.offset.value = 2
    assert panel.fig.data[0] is trace and panel.fig.layout.title.text != title
    assert torch.equal(torch.tensor(trace.z)[:, 0], RowPattern(3, 2).keep_mask(12).int())
    bars = panel.timing.data[0]
    assert bars.y is None or len(bars.y) == 0
    panel.button.click()
    assert panel.timing.data[0] is bars and len(bars.y) == 4 and "speed-up over the dense GEMM" in panel.status.value


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
    panel.cls.value = 3
    panel.sliders.dp.value = 2
    assert panel.cls.max == 1 and panel.cls.value == 1
    assert panel.block.max == 1 and panel.step.max == 3  # 16 rows of class 1 / 8 per block; 16 kept inputs / 4
    panel.step.value = 1
    assert panel.fig.data[0] is trace and "class 1" in panel.fig.layout.title.text
