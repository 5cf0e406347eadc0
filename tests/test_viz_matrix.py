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
    group_keep_counts,
    grouped_figure,
    masks_figure,
    row_figure,
    tile_figure,
    update_block_figure,
    update_grouped_figure,
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


def test_grouped_figure_has_one_strip_per_group_and_counts_the_groups_keeping_each_unit():
    patterns = [RowPattern(4, 3), RowPattern(4, 0), RowPattern(4, 2)]  # G = 3 < dp = 4: unit 1 mod 4 is left out
    fig = grouped_figure(patterns, 10, batch=7, p=0.75)
    masks = torch.stack([pt.keep_mask(10) for pt in patterns]).float()  # [G, n]
    assert torch.equal(z(fig.data[0]), masks) and list(fig.data[0].y) == [0, 1, 2]
    counts = group_keep_counts(patterns, 10)
    assert counts.tolist() == [1, 0, 1, 1, 1, 0, 1, 1, 1, 0]
    assert torch.equal(z(fig.data[1]), counts[None].float()) and fig.data[1].zmax == 3
    labels = ["group 0 · samples 0-2", "group 1 · samples 3-4", "group 2 · samples 5-6"]  # tensor_split of 7
    assert list(fig.layout.yaxis.ticktext) == labels
    title = fig.layout.title.text
    assert "G = 3 groups share (dp, keep) = (4, 1); offsets [3, 0, 2]" in title
    assert "3 of 10 units kept by no group" in title and title.startswith("p = 0.75")
    assert "G (1 - p) = 0.75" in fig.layout.annotations[0].text


def test_grouped_figure_says_when_every_unit_is_kept_and_labels_empty_groups():
    patterns = RowPattern(2, 0, 1), RowPattern(2, 1, 1), RowPattern(2, 1, 1)
    fig = grouped_figure(patterns, 6, batch=2)
    assert group_keep_counts(patterns, 6).tolist() == [1, 2, 1, 2, 1, 2]
    assert "every unit kept by some group (G >= dp)" in fig.layout.title.text
    assert list(fig.layout.yaxis.ticktext)[2] == "group 2 · no samples"  # tensor_split of 2 samples into 3
    assert "the paper's method" in grouped_figure(patterns[:1], 6).layout.title.text
    with pytest.raises(ValueError, match="none"):
        grouped_figure([], 6)


def test_update_grouped_figure_changes_the_number_of_strips_in_place():
    fig = go.FigureWidget(grouped_figure([RowPattern(3, 1), RowPattern(3, 0)], 9))
    strips, height = fig.data[0], fig.layout.height
    patterns = [RowPattern(3, o) for o in (2, 0, 1, 1, 2, 0)]
    update_grouped_figure(fig, patterns, 9, batch=12, p=2 / 3)
    assert fig.data[0] is strips and z(strips).shape == (6, 9) and list(strips.y) == list(range(6))
    assert torch.equal(z(fig.data[1])[0], group_keep_counts(patterns, 9).float()) and fig.data[1].zmax == 6
    assert fig.layout.height > height and len(fig.layout.yaxis.ticktext) == 6
    assert "offsets [2, 0, 1, 1, 2, 0]" in fig.layout.title.text


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


def test_the_grouped_title_gives_the_range_of_kept_counts_when_offsets_keep_different_counts():
    """n = 32 and dp = 3: offsets 0 and 1 keep 11 units, offset 2 keeps 10."""
    from approxdrop.course.viz.matrix import grouped_title

    patterns = [RowPattern(3, o) for o in (2, 1, 0, 1)]
    assert "each group keeps 10-11 of 32 units" in grouped_title(patterns, 32, 0.5)
    assert "each group keeps 8 of 32 units" in grouped_title([RowPattern(4, o) for o in range(4)], 32, 0.5)


def test_figures_given_nothing_to_draw_say_so():
    """Empty input gave plotly's "'cols' argument must be an int greater than 0" or min() of an empty sequence."""
    from approxdrop.course.viz import search, timing, training
    from approxdrop.course.viz.matrix import masks_figure
    from approxdrop.experiments.gemm_timing import Timing

    cases = [
        (lambda: masks_figure({}), "at least one mask"),
        (lambda: search.families_figure({}, 24, 0.6), "at least one distribution"),
        (lambda: search.frontier_figure([]), "at least one point"),
        (lambda: training.samples_figure(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), (2, 2)), "one image"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message):
            make()
    bars = timing.timing_figure([Timing("dense", 0.0, 1.0), Timing("x", 0.5, 0.5)]).data[0]  # a 0 ms baseline
    assert list(bars.text) == ["0.000 ms", "0.500 ms"]


def test_block_figure_numbers_k_steps_from_1_and_counts_the_reads_shown_so_far():
    """Lab 03 / lab 06's block figure: the colour key numbers the steps 1..4 (0 is "not read"), and part-way
    through the loop the title counts what was read so far (it said "reads 512 of 3072" at 2 of 4 steps)."""
    pattern = TilePattern(3, 1, tile=8)
    steps = block_reads(pattern, 96, 96, 1, 0, 16, 8)
    sizes = [r.numel() * c.numel() for r, c in steps]
    assert len(steps) == 4 and sizes == [128] * 4
    whole = block_figure(pattern, 96, 96, cls=1, block=0, block_n=16, block_k=8)
    bar = whole.data[0].colorbar
    assert list(bar.tickvals) == [0, 1, 2, 3, 4] and list(bar.ticktext) == ["not read", "1", "2", "3", "4"]
    assert "4 K steps, all shown: reads 512 of 3072 kept weights" in whole.layout.title.text
    two = block_figure(pattern, 96, 96, cls=1, block=0, block_n=16, block_k=8, upto=1)
    assert "4 K steps, steps 1-2 shown: reads 256 so far (512 in all)" in two.layout.title.text
    one = block_figure(pattern, 96, 96, cls=1, block=0, block_n=16, block_k=8, upto=0)
    assert "step 1 shown: reads 128 so far" in one.layout.title.text
    assert int((z(two.data[0]) > 0).sum()) == 256 and float(z(two.data[0]).nan_to_num().max()) == 2.0
    # every title line fits the figure's 580 px: the colour key is its own line, not cut at "white: skipped, ne..."
    lines = two.layout.title.text.replace("<sup>", "").replace("</sup>", "").split("<br>")
    assert lines[-1] == "white: skipped, never read" and max(len(line) for line in lines) <= 90
    widget = go.FigureWidget(whole)
    update_block_figure(widget, TilePattern(2, 0, tile=8), 96, 96, 0, 0, 16, 8, upto=0)
    assert list(widget.data[0].colorbar.ticktext) == ["not read", *map(str, range(1, widget.data[0].zmax + 1))]
