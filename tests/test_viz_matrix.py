"""Weight-matrix figures: the heatmaps hold the pattern's masks and the titles the right counts."""

import math

import plotly.graph_objects as go
import pytest
import torch

from approxdrop import RowPattern, TilePattern
from approxdrop.course.viz.matrix import (
    block_figure,
    block_reads,
    block_z,
    masks_figure,
    row_figure,
    tile_figure,
    update_block_figure,
    update_row_figure,
    update_tile_figure,
)


def z(trace) -> torch.Tensor:
    return torch.tensor([[math.nan if v is None else v for v in row] for row in trace.z])


def test_masks_figure_shows_each_mask_and_counts_units_dropped_for_the_whole_batch():
    shared = torch.tensor([True, False, True, False]).expand(3, 4)  # [batch 3, units 4]
    per_element = torch.tensor([[True, False, True, True], [False, True, True, False], [True, True, False, True]])
    fig = masks_figure({"per element": per_element, "shared": shared})
    assert torch.equal(z(fig.data[0]), per_element.float()) and torch.equal(z(fig.data[1]), shared.float())
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [
        "per element<br>0 of 4 units dropped for all samples",
        "shared<br>2 of 4 units dropped for all samples",
    ]


def test_row_figure_shows_kept_rows_and_next_layer_columns():
    pattern = RowPattern(3, 1)
    fig = row_figure(pattern, 10, 6, 4)
    mask = pattern.keep_mask(10).int()
    assert torch.equal(z(fig.data[0]), mask[:, None].float())  # [n_out, 1]
    assert torch.equal(z(fig.data[1]), mask[None, :].float())  # [1, n_out]
    assert "7 of 10 rows skipped" in fig.layout.title.text and "GEMM work left 0.300" in fig.layout.title.text


def test_update_row_figure_changes_the_traces_in_place():
    fig = go.FigureWidget(row_figure(RowPattern(2, 0), 8, 5, 3))
    trace = fig.data[0]
    update_row_figure(fig, RowPattern(4, 3, 2), 8, 5, 3)
    assert fig.data[0] is trace
    assert torch.equal(z(trace)[:, 0], RowPattern(4, 3, 2).keep_mask(8).float())
    assert "4 of 8 rows skipped" in fig.layout.title.text


@pytest.mark.parametrize(
    "pattern, n_out, n_in, skipped", [(TilePattern(3, 1, 4), 12, 12, 6), (TilePattern(4, 2, 3, 3), 10, 7, 3)]
)
def test_tile_figure_holds_the_tile_mask_and_counts_skipped_tiles(pattern, n_out, n_in, skipped):
    fig = tile_figure(pattern, n_out, n_in)
    mask = pattern.tile_mask(n_out, n_in)
    assert torch.equal(z(fig.data[0]), mask.float())
    assert int((~mask).sum()) == skipped
    assert f"{skipped} of {mask.numel()} tiles skipped" in fig.layout.title.text
    assert list(fig.data[0].x)[-1] == n_in and list(fig.data[0].y)[-1] == n_out  # partial edge tiles end at n
    work = pattern.kept_count(n_out, n_in) / (n_out * n_in)
    assert f"GEMM work left {work:.3f}" in fig.layout.title.text


def test_update_tile_figure_in_place():
    fig = go.FigureWidget(tile_figure(TilePattern(2, 0, 4), 16, 16))
    trace = fig.data[0]
    update_tile_figure(fig, TilePattern(4, 1, 8), 16, 16)
    assert fig.data[0] is trace and torch.equal(z(trace), TilePattern(4, 1, 8).tile_mask(16, 16).float())


@pytest.mark.parametrize("pattern", [TilePattern(3, 1, 4), TilePattern(4, 3, 4, 2), TilePattern(2, 0, 8, 2)])
def test_blocks_read_every_kept_weight_exactly_once_and_nothing_else(pattern):
    n_out, n_in, block_n, block_k = 40, 36, 8, 4
    reads = torch.zeros(n_out, n_in, dtype=torch.long)
    for cls in range(pattern.dp):
        for block in range(n_out):
            for rows, cols in block_reads(pattern, n_out, n_in, cls, block, block_n, block_k):
                assert rows.numel() <= block_n and cols.numel() <= block_k
                reads[rows[:, None], cols[None, :]] += 1
    assert torch.equal(reads, pattern.keep_mask(n_out, n_in).long())


def test_block_figure_colours_reads_by_step_and_leaves_skipped_blank():
    pattern = TilePattern(3, 1, 4)
    steps = block_reads(pattern, 24, 24, 2, 0, 8, 4)
    fig = block_figure(pattern, 24, 24, cls=2, block=0, block_n=8, block_k=4)
    got = z(fig.data[0])
    assert torch.equal(torch.isnan(got), ~pattern.keep_mask(24, 24))
    for s, (rows, cols) in enumerate(steps):
        assert (got[rows[:, None], cols[None, :]] == s + 1).all()
    assert f"{len(steps)} K steps" in fig.layout.title.text
    first_only = block_z(pattern, 24, 24, steps, upto=0)
    assert int((first_only > 0).sum()) == steps[0][0].numel() * steps[0][1].numel()
    widget = go.FigureWidget(fig)
    trace = widget.data[0]
    update_block_figure(widget, pattern, 24, 24, 0, 0, 8, 4, upto=0)
    assert widget.data[0] is trace and "class 0" in widget.layout.title.text
