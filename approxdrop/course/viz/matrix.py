"""Weight-matrix views: kept and skipped rows (RowPattern) or tiles (TilePattern), the kept units of
the batch groups of one step (grouped complementary patterns), and which parts of a weight one thread
block of the pattern GEMM reads (kernels/pattern_gemm.h), as plotly heatmaps.

Cells are drawn on the weight's own coordinates (input unit across, output unit down), so partial
tiles at the edges show their true size. Kept = blue, skipped = grey.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ...patterns import RowPattern, TilePattern

KEPT, SKIPPED = "#4C78A8", "#E6E6E6"
TWO_COLORS = [[0.0, SKIPPED], [0.5, SKIPPED], [0.5, KEPT], [1.0, KEPT]]


def _edges(n: int, step: int) -> list[int]:
    """Cell edges 0, step, 2 step, ..., n (the last cell may be shorter)."""
    return list(range(0, n, step)) + [n]


def _heatmap(z: torch.Tensor, x_edges, y_edges, hover: str) -> go.Heatmap:
    return go.Heatmap(
        z=z.int().tolist(),
        x=x_edges,
        y=y_edges,
        zmin=0,
        zmax=1,
        colorscale=TWO_COLORS,
        showscale=False,
        xgap=1,
        ygap=1,
        hovertemplate=hover + "<extra></extra>",
    )


# --------------------------------------------------------------------------- dropout masks


def masks_figure(masks: dict[str, torch.Tensor]) -> go.Figure:
    """Dropout masks side by side, each Bool[batch, units] (True = kept); subplot titles count the
    units dropped for every sample of the batch (the only ones a GEMM could skip)."""
    if not masks:
        raise ValueError("masks_figure needs at least one mask, got none")
    titles = [
        f"{name}<br>{int((~m).all(0).sum())} of {m.shape[1]} units dropped for all samples" for name, m in masks.items()
    ]
    fig = make_subplots(rows=1, cols=len(masks), subplot_titles=titles, horizontal_spacing=0.06)
    for i, m in enumerate(masks.values()):
        trace = _heatmap(m, None, None, "sample %{y}, unit %{x}: %{z} (1 = kept)")
        fig.add_trace(trace, 1, i + 1)
    fig.update_yaxes(autorange="reversed", title_text="sample in the batch", col=1)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="unit")
    fig.update_layout(height=360, margin={"t": 80})
    return fig


# --------------------------------------------------------------------------- row patterns


def row_title(pattern: RowPattern, n: int) -> str:
    """Skipped rows and GEMM work left of both layers the pattern touches."""
    kept = pattern.kept_count(n)
    return (
        f"RowPattern(dp={pattern.dp}, offset={pattern.offset}, keep={pattern.keep}) on {n} units: "
        f"{n - kept} of {n} rows skipped<br><sup>GEMM work left {kept / n:.3f} in this layer (rows) "
        f"and {kept / n:.3f} in the next (columns); kept values scaled by {pattern.scale:.3g}</sup>"
    )


def _row_traces(pattern: RowPattern, n_out: int, n_in: int, n_next: int) -> tuple[go.Heatmap, go.Heatmap]:
    mask = pattern.keep_mask(n_out)  # [n_out]
    this = _heatmap(mask[:, None], [0, n_in], list(range(n_out + 1)), "row %{y}: %{z} (1 = kept)")  # [n_out, 1]
    nxt = _heatmap(mask[None, :], list(range(n_out + 1)), [0, n_next], "column %{x}: %{z} (1 = kept)")  # [1, n_out]
    return this, nxt


def row_figure(pattern: RowPattern, n_out: int, n_in: int, n_next: int) -> go.Figure:
    """This layer's weight [n_out, n_in] with skipped rows, next layer's [n_next, n_out] with skipped columns.
    Trace 0's z is the keep mask as a column (Int[n_out, 1]); trace 1's z as a row (Int[1, n_out])."""
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[n_in / (n_in + n_out), n_out / (n_in + n_out)],
        subplot_titles=(f"this layer W [{n_out} x {n_in}]", f"next layer W [{n_next} x {n_out}]"),
    )
    this, nxt = _row_traces(pattern, n_out, n_in, n_next)
    fig.add_trace(this, 1, 1)
    fig.add_trace(nxt, 1, 2)
    fig.update_yaxes(autorange="reversed", title_text="output unit")
    fig.update_xaxes(title_text="input unit")
    fig.update_layout(title=row_title(pattern, n_out), height=420, margin={"t": 110})
    return fig


def update_row_figure(
    fig: go.Figure | go.FigureWidget, pattern: RowPattern, n_out: int, n_in: int, n_next: int
) -> None:
    """Redraw a ``row_figure`` for another pattern (in place for a FigureWidget)."""
    this, nxt = _row_traces(pattern, n_out, n_in, n_next)
    with fig.batch_update():
        fig.data[0].z = this.z
        fig.data[1].z = nxt.z
        fig.layout.title.text = row_title(pattern, n_out)


# --------------------------------------------------------------------------- grouped row patterns

STRIP_PX, GAP_PX, MARGIN_TOP, MARGIN_BOTTOM = 24, 46, 100, 50  # heights of the grouped figure


def group_keep_counts(patterns: Sequence[RowPattern], n: int) -> torch.Tensor:
    """Long[n]: how many of the groups' patterns keep each of ``n`` units."""
    if not patterns:
        raise ValueError("need at least one group's pattern, got none")
    return torch.stack([p.keep_mask(n) for p in patterns]).long().sum(0)  # [G, n] -> [n]


def _group_labels(groups: int, batch: int) -> list[str]:
    """``group g · samples a-b`` for each group of a batch split as ``torch.tensor_split`` does."""
    labels = []
    for g, part in enumerate(torch.tensor_split(torch.arange(batch), groups)):
        rows = "no samples" if not part.numel() else f"samples {int(part[0])}-{int(part[-1])}"
        labels.append(f"group {g} · {rows}")
    return labels


def grouped_title(patterns: Sequence[RowPattern], n: int, p: float | None = None) -> str:
    """The step's shared (dp, keep), the groups' offsets, and how many units no group keeps."""
    first, groups = patterns[0], len(patterns)
    untrained = int((group_keep_counts(patterns, n) == 0).sum())
    law = f"p = {p:g}: " if p is not None else ""
    pair = f"(dp, keep) = ({first.dp}, {first.keep})"
    if groups == 1:
        step = f"G = 1 group (the paper's method) draws {pair}, offset {first.offset}"
    else:
        step = f"G = {groups} groups share {pair}; offsets {[pt.offset for pt in patterns]}"
    if untrained:
        cover = f"{untrained} of {n} units kept by no group (grey): G = {groups} < dp = {first.dp}"
    else:
        cover = f"every unit kept by some group{' (G >= dp)' if groups >= first.dp else ''}"
    counts = sorted({q.kept_count(n) for q in patterns})  # offsets keep different counts when dp does not divide n
    shown = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    kept = f"{'each group keeps' if groups > 1 else 'it keeps'} {shown} of {n} units"
    return f"{law}{step}<br><sup>{kept}, scaled by {first.scale:.3g}; {cover}</sup>"


def _count_title(groups: int, p: float | None) -> str:
    """The title of the keep-count strip: with ``p``, the average count over steps, G (1 - p)."""
    average = f" (average over steps: G (1 - p) = {groups * (1 - p):.3g})" if p is not None else ""
    return f"kept by how many groups{average}"


def _grouped_parts(patterns: Sequence[RowPattern], n: int, batch: int) -> tuple[go.Heatmap, go.Heatmap, dict]:
    """The groups' keep masks (Int[G, n]), the keep counts (Int[1, n]) and the layout that fits G strips."""
    groups = len(patterns)
    masks = torch.stack([p.keep_mask(n) for p in patterns])  # [G, n]
    counts = masks.long().sum(0, keepdim=True)  # [1, n]
    strips = go.Heatmap(
        z=masks.int().tolist(),
        y=list(range(groups)),
        zmin=0,
        zmax=1,
        colorscale=TWO_COLORS,
        showscale=False,
        xgap=1,
        ygap=3,
        hovertemplate="group %{y}, unit %{x}: %{z} (1 = kept)<extra></extra>",
    )
    cut = 0.5 / groups  # 0 (no group) grey; 1..G from light to dark blue
    kept_by = go.Heatmap(
        z=counts.tolist(),
        zmin=0,
        zmax=groups,
        colorscale=[[0.0, SKIPPED], [cut, SKIPPED], [cut, "#C6D6EA"], [1.0, KEPT]],
        showscale=False,
        xgap=1,
        text=counts.tolist(),
        texttemplate="%{text}",
        hovertemplate="unit %{x}: kept by %{z} groups<extra></extra>",
    )
    plot = STRIP_PX * (groups + 1) + GAP_PX  # px: G strips, the gap, the count strip
    split = STRIP_PX / plot
    layout = {
        "height": plot + MARGIN_TOP + MARGIN_BOTTOM,
        "yaxis.domain": [split + GAP_PX / plot, 1.0],
        "yaxis.tickvals": list(range(groups)),
        "yaxis.ticktext": _group_labels(groups, batch),
        "yaxis2.domain": [0.0, split],
    }
    return strips, kept_by, layout


def grouped_figure(patterns: Sequence[RowPattern], n: int, batch: int = 128, p: float | None = None) -> go.Figure:
    """One step of grouped complementary patterns (docs/method.md §9) on a layer of ``n`` units: one strip per
    batch group (trace 0, z Int[G, n]: 1 where the group keeps the unit; rows labelled with the group's
    samples of a batch of ``batch`` split by ``torch.tensor_split``), and below them how many groups keep
    each unit (trace 1, z Int[1, n]). ``p``, when given, goes into the title."""
    group_keep_counts(patterns, n)  # validates: at least one pattern
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=("", _count_title(len(patterns), p)))
    strips, kept_by, layout = _grouped_parts(patterns, n, batch)
    fig.add_trace(strips, 1, 1)
    fig.add_trace(kept_by, 2, 1)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_yaxes(showticklabels=False, row=2, col=1)
    fig.update_xaxes(title_text="unit of the layer", row=2, col=1)
    fig.update_layout(title=grouped_title(patterns, n, p), margin={"t": MARGIN_TOP, "b": MARGIN_BOTTOM})
    fig.update_layout(layout)
    fig.layout.annotations[0].update(y=layout["yaxis2.domain"][1], yanchor="bottom")
    return fig


def update_grouped_figure(
    fig: go.Figure | go.FigureWidget, patterns: Sequence[RowPattern], n: int, batch: int = 128, p: float | None = None
) -> None:
    """Redraw a ``grouped_figure`` for another step or another G (in place for a FigureWidget)."""
    strips, kept_by, layout = _grouped_parts(patterns, n, batch)
    with fig.batch_update():
        fig.data[0].update(z=strips.z, y=strips.y)
        fig.data[1].update(z=kept_by.z, zmax=kept_by.zmax, colorscale=kept_by.colorscale, text=kept_by.text)
        fig.update_layout(layout)
        fig.layout.annotations[0].update(y=layout["yaxis2.domain"][1], text=_count_title(len(patterns), p))
        fig.layout.title.text = grouped_title(patterns, n, p)


# --------------------------------------------------------------------------- tile patterns


def _square_axes(fig: go.Figure) -> None:
    """One weight entry is a square; output unit 0 at the top."""
    fig.update_yaxes(autorange="reversed", title_text="output unit", scaleanchor="x", constrain="domain")
    fig.update_xaxes(title_text="input unit", constrain="domain")


def tile_title(pattern: TilePattern, n_out: int, n_in: int) -> str:
    """Skipped tiles and GEMM work left of a tile pattern on a weight [n_out, n_in]."""
    tiles = pattern.tile_mask(n_out, n_in)
    skipped = int((~tiles).sum())
    work = pattern.kept_count(n_out, n_in) / (n_out * n_in)
    return (
        f"TilePattern(dp={pattern.dp}, offset={pattern.offset}, tile={pattern.tile}, keep={pattern.keep})<br>"
        f"{skipped} of {tiles.numel()} tiles skipped<br><sup>GEMM work left {work:.3f}; "
        f"kept weights scaled by {pattern.scale:.3g}</sup>"
    )


def _tile_trace(pattern: TilePattern, n_out: int, n_in: int) -> go.Heatmap:
    z = pattern.tile_mask(n_out, n_in)  # [ceil(n_out/T), ceil(n_in/T)]
    return _heatmap(z, _edges(n_in, pattern.tile), _edges(n_out, pattern.tile), "tile at (%{y}, %{x}): %{z}")


def tile_figure(pattern: TilePattern, n_out: int, n_in: int) -> go.Figure:
    """The weight [n_out, n_in] as its tile grid; trace 0's z is ``pattern.tile_mask`` (1 = kept)."""
    fig = go.Figure(_tile_trace(pattern, n_out, n_in))
    _square_axes(fig)
    fig.update_layout(title=tile_title(pattern, n_out, n_in), height=480, width=560, margin={"t": 110})
    return fig


def update_tile_figure(fig: go.Figure | go.FigureWidget, pattern: TilePattern, n_out: int, n_in: int) -> None:
    """Redraw a ``tile_figure`` for another pattern (in place for a FigureWidget)."""
    trace = _tile_trace(pattern, n_out, n_in)
    with fig.batch_update():
        fig.data[0].update(z=trace.z, x=trace.x, y=trace.y)
        fig.layout.title.text = tile_title(pattern, n_out, n_in)


# --------------------------------------------------------------------------- what one thread block reads


def block_reads(
    pattern: TilePattern, n_out: int, n_in: int, cls: int, block: int, block_n: int = 64, block_k: int = 32
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The weight entries one thread block of the tile forward kernel reads, step by step.

    Class ``cls`` (0 <= cls < dp) owns the output tile rows ``a = cls (mod dp)``; its output units
    and its kept input units are ``pattern.row_classes()[cls]``. Block ``block`` computes logical
    output units ``[block * block_n, (block + 1) * block_n)`` of its class, and at K step ``s``
    reads the logical kept inputs ``[s * block_k, (s + 1) * block_k)``. Returns one
    ``(rows Long[<=block_n], cols Long[<=block_k])`` pair per step: W[rows][:, cols] is read.
    """
    rows_p, cols_p = pattern.row_classes()[cls]
    rows = rows_p.kept_indices(n_out)[block * block_n : (block + 1) * block_n]
    cols = cols_p.kept_indices(n_in)
    if rows.numel() == 0:
        return []
    return [(rows, cols[k : k + block_k]) for k in range(0, cols.numel(), block_k)]


def block_z(
    pattern: TilePattern,
    n_out: int,
    n_in: int,
    steps: Sequence[tuple[torch.Tensor, torch.Tensor]],
    upto: int | None = None,
) -> torch.Tensor:
    """Float[n_out, n_in]: NaN where skipped, 0 where kept (not read by this block), ``s + 1`` where
    the block reads the entry at step ``s`` (only steps ``<= upto`` when given). ``steps`` and ``upto``
    index from 0, as the kernel's loop does; the values, like every label a figure shows, number the
    steps from 1."""
    z = torch.zeros(n_out, n_in)
    z[~pattern.keep_mask(n_out, n_in)] = float("nan")
    for s, (rows, cols) in enumerate(steps):
        if upto is not None and s > upto:
            break
        z[rows[:, None], cols[None, :]] = s + 1.0
    return z


def _step_colorbar(top: int) -> dict:
    """The K-step colour key: 0 is "not read", the steps are numbered 1..``top``."""
    ticks = list(range(top + 1)) if top <= 12 else [0, *range(1, top + 1, max(1, top // 8))]
    return {
        "title": {"text": "K step"},
        "len": 0.8,
        "tickvals": ticks,
        "ticktext": ["not read" if t == 0 else str(t) for t in ticks],
    }


def _block_trace(pattern, n_out, n_in, cls, block, block_n, block_k, upto) -> tuple[go.Heatmap, str]:
    steps = block_reads(pattern, n_out, n_in, cls, block, block_n, block_k)
    z = block_z(pattern, n_out, n_in, steps, upto)
    top = max(len(steps), 1)
    cut = 0.5 / top
    scale = [[0.0, "#C6D6EA"], [cut, "#C6D6EA"], [cut, "#FDD49E"], [1.0, "#B30000"]]
    trace = go.Heatmap(
        z=[[None if v != v else v for v in row] for row in z.tolist()],  # NaN -> gap (skipped)
        zmin=0,
        zmax=top,
        colorscale=scale,
        colorbar=_step_colorbar(top),
        hovertemplate="W[%{y}, %{x}]: K step %{z} (0 = not read by this block in the steps shown)<extra></extra>",
    )
    sizes = [r.numel() * c.numel() for r, c in steps]
    shown = len(steps) if upto is None else min(upto + 1, len(steps))
    kept = pattern.kept_count(n_out, n_in)
    if shown == len(steps):
        reads = f"{len(steps)} K steps, all shown: reads {sum(sizes)} of {kept} kept weights"
    else:
        first = "step 1" if shown == 1 else f"steps 1-{shown}"
        reads = f"{len(steps)} K steps, {first} shown: reads {sum(sizes[:shown])} so far ({sum(sizes)} in all)"
    title = (
        f"Block {block} of class {cls} (tile rows a = {cls} mod {pattern.dp})<br>{reads}"
        "<br><sup>grey-blue: kept, not read by this block in the steps shown (other blocks', or later steps)</sup>"
        "<br><sup>white: skipped, never read</sup>"
    )
    return trace, title


def block_figure(
    pattern: TilePattern,
    n_out: int,
    n_in: int,
    cls: int = 0,
    block: int = 0,
    block_n: int = 64,
    block_k: int = 32,
    upto: int | None = None,
) -> go.Figure:
    """Weight [n_out, n_in] coloured by the K step at which one thread block reads each entry
    (see ``block_reads``); meant for small weights (one heatmap cell per weight)."""
    trace, title = _block_trace(pattern, n_out, n_in, cls, block, block_n, block_k, upto)
    fig = go.Figure(trace)
    _square_axes(fig)
    fig.update_layout(title=title, height=535, width=580, margin={"t": 155}, plot_bgcolor="white")
    return fig


def update_block_figure(
    fig: go.Figure | go.FigureWidget,
    pattern: TilePattern,
    n_out: int,
    n_in: int,
    cls: int,
    block: int,
    block_n: int = 64,
    block_k: int = 32,
    upto: int | None = None,
) -> None:
    """Redraw a ``block_figure`` (in place for a FigureWidget)."""
    trace, title = _block_trace(pattern, n_out, n_in, cls, block, block_n, block_k, upto)
    with fig.batch_update():
        fig.data[0].update(z=trace.z, zmax=trace.zmax, colorscale=trace.colorscale, colorbar=trace.colorbar)
        fig.layout.title.text = title
