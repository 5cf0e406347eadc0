"""Figures of lab 08, ARD in your own model: which GEMMs of a transformer block shrink once ``convert``
has turned its MLP into an ApproxDropoutFFN, and the live race against the nn.Dropout original.

- ``block_gemm_flops`` / ``format_block_gemms``: the FLOPs of every Linear GEMM of one decoder block in
  one training step (forward, gradient of the input, gradient of the weight), before and after.
- ``block_flops_left`` / ``block_flops_floor``: the share of those FLOPs left at rate p, and as p -> 1.
- ``gemm_flops_figure`` / ``update_gemm_flops_figure``: the same as bars, and the share left against p;
  traces, in order: ``0`` before, ``1`` after, ``2`` share left against p, ``3`` its floor, ``4`` the
  chosen p.
- ``race_figure`` / ``update_race_figure`` / ``race_result_figure``: the race of ``bench_transformer``
  (labels "nn.Dropout", "row G=1", ...); traces, in order, per method (index ``i``): ``3i`` loss
  (running mean), ``3i + 1`` validation loss, ``3i + 2`` step time (ms, running median).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..._env import check_int, check_rate
from ...experiments.bench_transformer import BASELINE
from ...models.methods import DROPOUT_METHODS, ROW, color
from ...training import RaceResult
from .matrix import KEPT, SKIPPED
from .training import WINDOW, race_panels, update_race_panels

PASSES = ("forward", "grad input", "grad weight")  # the three GEMMs of a Linear in one training step
FLOOR = "#E45756"


@dataclass(frozen=True)
class GemmFlops:
    """One GEMM of a block's training step: its Linear, its pass, the product's shape, FLOPs before and
    after conversion (expected, at rate p)."""

    layer: str
    step: str
    shape: str
    before: float
    after: float

    @property
    def name(self) -> str:
        return f"{self.layer}: {self.step}"

    @property
    def left(self) -> float:
        return self.after / self.before


def _shapes(n: int, k: int, m: int) -> dict[str, str]:
    """The products of a Linear [k -> m] on n tokens, per pass: Y = X W^T, dX = dY W, dW = dY^T X."""
    return {
        "forward": f"[{n} x {k}] @ [{k} x {m}]",
        "grad input": f"[{n} x {m}] @ [{m} x {k}]",
        "grad weight": f"[{m} x {n}] @ [{n} x {k}]",
    }


def block_gemm_flops(d_model: int, d_hidden: int, tokens: int, p: float) -> list[GemmFlops]:
    """Every Linear GEMM of one decoder block (``models.DecoderLM``) in one training step on ``tokens``
    tokens (batch x context), in FLOPs (2 per multiply-add), before and after ``convert``: a row pattern
    keeps ``1 - p`` of the hidden units (expected), so ``mlp fc1`` computes only the kept output rows and
    ``mlp fc2`` reads only the kept input columns, in all three passes; attention is unchanged.
    Attention's own products (q k^T, the weights times v) are not Linear layers and are not counted."""
    d, h, n = check_int("d_model", d_model, 1), check_int("d_hidden", d_hidden, 1), check_int("tokens", tokens, 1)
    kept = 1.0 - check_rate(p)
    layers = [  # (name, in features, out features, share left)
        ("attention qkv", d, 3 * d, 1.0),
        ("attention proj", d, d, 1.0),
        ("mlp fc1", d, h, kept),
        ("mlp fc2", h, d, kept),
    ]
    rows = []
    for name, k, m, left in layers:
        flops = 2.0 * n * k * m  # each pass multiplies the same three sizes
        rows += [GemmFlops(name, step, shape, flops, flops * left) for step, shape in _shapes(n, k, m).items()]
    return rows


def block_flops_left(d_model: int, d_hidden: int, p: float) -> float:
    """The share of a block's Linear GEMM FLOPs left after ``convert`` at rate p (``block_gemm_flops``;
    it does not depend on the number of tokens)."""
    rows = block_gemm_flops(d_model, d_hidden, 1, p)
    return sum(r.after for r in rows) / sum(r.before for r in rows)


def block_flops_floor(d_model: int, d_hidden: int) -> float:
    """The share of a block's Linear GEMM FLOPs that no dropout rate removes: the attention GEMMs'."""
    rows = block_gemm_flops(d_model, d_hidden, 1, 0.0)
    return sum(r.before for r in rows if r.layer.startswith("attention")) / sum(r.before for r in rows)


def format_block_gemms(rows: list[GemmFlops]) -> str:
    """The rows as a text table (MFLOPs), with a total line."""
    lines = [f"{'GEMM':<28} {'product':>24} {'MFLOP before':>13} {'after':>9} {'left':>6}"]
    total = GemmFlops("total", "", "", sum(r.before for r in rows), sum(r.after for r in rows))
    for r in [*rows, total]:
        name = r.name if r.step else r.layer
        lines.append(f"{name:<28} {r.shape:>24} {r.before / 1e6:>13.3f} {r.after / 1e6:>9.3f} {r.left:>6.3f}")
    return "\n".join(lines)


def _bar_title(p: float) -> str:
    return f"FLOPs of one training step at p = {p:g}"


def gemm_flops_figure(d_model: int, d_hidden: int, tokens: int, p: float) -> go.Figure:
    """Left: the FLOPs of every Linear GEMM of one block in one training step, before (grey) and after
    ``convert`` (blue) at rate p. Right: the block's share left against p, with its floor, the attention
    GEMMs, which no dropout rate removes. ``update_gemm_flops_figure`` moves p."""
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.6, 0.4],
        horizontal_spacing=0.22,
        subplot_titles=(_bar_title(p), "share of the block's GEMM FLOPs left"),
    )
    rows = block_gemm_flops(d_model, d_hidden, tokens, p)
    names = [r.name for r in rows][::-1]  # the first GEMM at the top
    bar = {"y": names, "orientation": "h"}
    before = go.Bar(x=[r.before for r in rows][::-1], name="nn.Dropout (before)", marker_color=SKIPPED, **bar)
    before.marker.line = {"color": "#888888", "width": 1}
    fig.add_trace(before, 1, 1)
    fig.add_trace(go.Bar(x=[], name="converted (after)", marker_color=KEPT, textposition="outside", **bar), 1, 1)
    ps = [i / 20 for i in range(20)]
    curve = go.Scatter(x=ps, y=[block_flops_left(d_model, d_hidden, q) for q in ps], mode="lines", name="share left")
    fig.add_trace(curve.update(line={"color": KEPT}), 1, 2)
    floor = block_flops_floor(d_model, d_hidden)
    floor_line = go.Scatter(x=[0, 1], y=[floor, floor], mode="lines", line={"color": FLOOR, "dash": "dash"})
    fig.add_trace(floor_line.update(name=f"floor: attention GEMMs, {floor:.2f} (at most {1 / floor:.1f}x)"), 1, 2)
    marker = go.Scatter(mode="markers+text", marker={"color": KEPT, "size": 10}, textposition="top right")
    fig.add_trace(marker.update(showlegend=False), 1, 2)
    fig.update_layout(
        barmode="overlay",
        height=460,
        width=900,
        margin={"t": 90},
        legend={"orientation": "h", "y": -0.18},
        title=f"Which GEMMs of a block shrink: d_model {d_model}, d_hidden {d_hidden}, {tokens:,} tokens per step",
    )
    fig.update_xaxes(title_text="FLOPs per training step", row=1, col=1)
    fig.update_xaxes(title_text="dropout rate p", range=[0, 1], row=1, col=2)
    fig.update_yaxes(title_text="share of the FLOPs before", range=[0, 1.05], row=1, col=2)
    update_gemm_flops_figure(fig, d_model, d_hidden, tokens, p)
    return fig


def update_gemm_flops_figure(
    fig: go.Figure | go.FigureWidget, d_model: int, d_hidden: int, tokens: int, p: float
) -> None:
    """Set the "after" bars, the marker and the title of a ``gemm_flops_figure`` to rate p; a FigureWidget
    redraws in place."""
    rows = block_gemm_flops(d_model, d_hidden, tokens, p)
    left = block_flops_left(d_model, d_hidden, p)
    with fig.batch_update():
        fig.data[1].update(x=[r.after for r in rows][::-1], text=[f"{r.left:.0%}" for r in rows][::-1])
        fig.data[4].update(x=[p], y=[left], text=[f"{left:.3f} left: at most {1 / left:.2f}x"])
        fig.layout.annotations[0].text = _bar_title(p)


# --------------------------------------------------------------------------- the race


def label_color(label: str) -> str:
    """The plot colour of a race label: nn.Dropout is the table's ``bernoulli``, "row G=g" its paper-family
    row method with g groups (grey when the table has none)."""
    if label == BASELINE:
        return color("bernoulli")
    if label.startswith("row G="):
        groups = int(label.removeprefix("row G="))
        rows = (m for m in DROPOUT_METHODS.values() if m.drops == ROW and m.family == "paper" and m.groups == groups)
        return next((m.color for m in rows), color(label))
    return color(label)


VALID_TITLE = "validation loss (nats / char)"
SYMBOLS = ("circle", "diamond", "square", "triangle-up", "cross", "x")  # one per label, when the dots sit side by side
DODGE = 0.05  # share of the race's steps between two labels' validation dots, when they share one step


def race_figure(methods: Sequence[str], title: str = "The transformer and its converted copies") -> go.Figure:
    """Empty figure with the traces of every race label, ready for ``update_race_figure``."""
    titles = (f"training loss (mean of {WINDOW})", VALID_TITLE, f"ms per step (median of {WINDOW})")
    fig = race_panels(methods, titles, title)
    fig.update_xaxes(matches="x")  # one step axis: the validation loss, taken after the last step, sits at its end
    for i, method in enumerate(methods):
        for trace in fig.data[3 * i : 3 * i + 3]:
            trace.line.color = label_color(method)
            if method == BASELINE:  # wider, drawn first: it shows around the copies' curves where they overlap
                trace.line.width, trace.marker.size = 5, 11
    return fig


def update_race_figure(fig: go.Figure | go.FigureWidget, result: RaceResult) -> None:
    """Set every trace from ``result`` (a RaceResult of ``bench_transformer.race``); a FigureWidget redraws
    in place. The race takes the validation loss once, after its last step: then the panel's title gives
    that step, and the labels' dots, which would sit on top of each other, stand side by side around it
    (``DODGE`` of the steps apart, one symbol each, drawn larger; the hover gives the step and the loss)."""
    with fig.batch_update():
        update_race_panels(fig, result)
        evaluated = {s for h in result.histories.values() for s in h.eval_step}
        once = len(evaluated) == 1
        fig.layout.annotations[1].text = f"{VALID_TITLE} after step {min(evaluated)}" if once else VALID_TITLE
        shown = [i for i, m in enumerate(result.methods) if result.histories[m].eval_step]
        steps = max((s for h in result.histories.values() for s in h.step), default=1)
        for k, i in enumerate(shown):
            trace, step = fig.data[3 * i + 1], min(evaluated)
            if once and len(shown) > 1:
                trace.update(
                    x=[step + (k - (len(shown) - 1) / 2) * DODGE * steps],
                    marker_symbol=SYMBOLS[k % len(SYMBOLS)],
                    marker_size=11 if result.methods[i] == BASELINE else 9,  # the symbols read at this size
                    customdata=[step],
                    hovertemplate="%{fullData.name}: %{y:.4f} after step %{customdata}<extra></extra>",
                )
            else:
                size = 11 if result.methods[i] == BASELINE else None  # as race_figure drew it
                trace.update(marker_symbol=None, marker_size=size, customdata=None, hovertemplate=None)


def race_result_figure(result: RaceResult, title: str = "The transformer and its converted copies") -> go.Figure:
    """A static figure of a finished (or running) race."""
    fig = race_figure(result.methods, title)
    update_race_figure(fig, result)
    return fig
