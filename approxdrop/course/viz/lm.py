"""Figures of lab 07, the LSTM language model: where the dropout sits, which weight columns each GEMM
reads, what shrinks, and the live perplexity / step-time race.

- ``model_figure``: the unrolled model, dropout sites on the non-recurrent arrows only.
- ``sites_figure``: for one drawn step, the columns of every GEMM's weight that are read.
- ``embedding_read_mask`` / ``read_masks_figure``: which entries of the embedding output [T, B, E]
  one training step read, measured through autograd, as [T x E] images.
- ``gemm_work_rows`` / ``gemm_work_figure``: GEMM work per GEMM, dense vs row, and its floor.
- ``race_figure`` / ``update_race_figure``: the training race from a ``training.RaceResult``;
  traces, in order, per method ``m`` (index ``i``): ``3i`` loss (running mean), ``3i + 1`` validation
  perplexity, ``3i + 2`` step time (ms, running median).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ...experiments.gemm_timing import Timing
from ...models import ApproxDropoutLSTM, TorchLSTM, lstm_gemm_work
from ...patterns import RowPattern
from ...training import RaceResult
from .matrix import KEPT, SKIPPED, TWO_COLORS
from .training import WINDOW, race_panels, summary_timings, update_race_panels

SAME_PATTERN = "one pattern per step, the same for every t and sample"
SITE, RECURRENT, PLAIN = "#E45756", "#9D9D9D", "#4C78A8"  # dropout site, recurrent arrow, other arrow


def site_names(layers: int) -> list[str]:
    """What each dropout site connects: site ``i`` feeds LSTM ``i + 1``, the last one the decoder."""
    stages = ["embedding", *(f"LSTM {i + 1}" for i in range(layers)), "decoder"]
    return [f"{a} → {b}" for a, b in zip(stages[:-1], stages[1:])]


# --------------------------------------------------------------------------- the model


ARROW = {"xref": "x", "yref": "y", "axref": "x", "ayref": "y", "text": "", "showarrow": True, "arrowhead": 2}


def _arrow(x0: float, y0: float, x1: float, y1: float, color: str) -> dict:
    """An arrow annotation from (x0, y0) to (x1, y1), in data coordinates."""
    return dict(x=x1, y=y1, ax=x0, ay=y0, arrowcolor=color, arrowsize=1.2, arrowwidth=2, **ARROW)


def model_figure(layers: int = 2, steps: int = 3) -> go.Figure:
    """The model unrolled over ``steps`` time steps: word -> embedding -> LSTM 1..layers -> decoder.
    Dropout sites (red) sit on the arrows up the stack; the recurrent arrows (grey) are never dropped."""
    names = ["word x<sub>t</sub>", "embedding", *(f"LSTM {i + 1}" for i in range(layers)), "decoder → x<sub>t+1</sub>"]
    fig = go.Figure()
    half_w, half_h = 0.36, 0.22
    for t in range(steps):
        for level, name in enumerate(names):
            fig.add_shape(
                type="rect",
                x0=t - half_w,
                x1=t + half_w,
                y0=level - half_h,
                y1=level + half_h,
                line={"color": "#555555"},
                fillcolor="#F2F2F2" if level in (0, len(names) - 1) else "#DCE6F2",
            )
            fig.add_annotation(
                x=t, y=level, text=name.replace("t+1", str(t + 2)).replace("<sub>t<", f"<sub>{t + 1}<"), showarrow=False
            )
            if level + 1 < len(names):
                color = SITE if level >= 1 else PLAIN
                fig.add_annotation(_arrow(t, level + half_h, t, level + 1 - half_h, color))
            if 2 <= level < len(names) - 1 and t + 1 < steps:
                fig.add_annotation(_arrow(t + half_w, level, t + 1 - half_w, level, RECURRENT))
    site_y = [level + 0.5 for level in range(1, layers + 2)]
    fig.add_trace(
        go.Scatter(
            x=[t for t in range(steps) for _ in site_y],
            y=site_y * steps,
            mode="markers",
            name="dropout site",
            marker={"symbol": "x", "size": 11, "color": SITE, "line": {"width": 1, "color": "white"}},
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[None],
            y=[None],
            mode="lines",
            name="recurrent h, c: never dropped",
            line={"color": RECURRENT, "width": 3},
        )
    )
    for i, (y, name) in enumerate(zip(site_y, site_names(layers))):
        fig.add_annotation(
            x=steps - 0.5,
            y=y,
            xanchor="left",
            align="left",
            showarrow=False,
            font={"color": SITE, "size": 13},
            text=f"<b>site {i}</b>: {name}<br><span style='font-size:11px'>{SAME_PATTERN}</span>",
        )
    fig.update_xaxes(visible=False, range=[-0.5, steps + 1.1])
    fig.update_yaxes(visible=False, range=[-0.5, len(names) - 0.5])
    fig.update_layout(
        title=f"The {layers}-layer LSTM language model unrolled over {steps} time steps",
        height=120 * len(names),
        legend={"orientation": "h", "y": -0.02},
        margin={"t": 60, "b": 20},
        plot_bgcolor="white",
    )
    return fig


# --------------------------------------------------------------------------- which columns each GEMM reads


def _weights(site_widths: list[int], hidden: int, vocab: int) -> list[tuple[str, int, int, int | None]]:
    """(name, rows, columns, site read or None for h_t-1) of every GEMM weight, in forward order."""
    layers = len(site_widths) - 1
    out = []
    for i in range(layers):
        out.append((f"W<sub>ih</sub> LSTM {i + 1}", 4 * hidden, site_widths[i], i))
        out.append((f"W<sub>hh</sub> LSTM {i + 1}", 4 * hidden, hidden, None))
    out.append(("decoder W", vocab, hidden, layers))
    return out


def sites_figure(patterns: list[RowPattern], site_widths: list[int], hidden: int, vocab: int) -> go.Figure:
    """Every GEMM weight of one training step, its read columns blue and skipped ones grey: the
    input projections W_ih [4H x n] and the decoder [V x H] read only their site's kept units, the
    recurrent W_hh [4H x H] read all of h_t-1. ``patterns``: one RowPattern per site (``last_patterns``)."""
    weights = _weights(site_widths, hidden, vocab)
    titles = []
    for name, rows, cols, site in weights:
        read = cols if site is None else patterns[site].kept_count(cols)
        source = "h<sub>t-1</sub>, all" if site is None else f"site {site}"
        titles.append(f"{name} [{rows} x {cols}]<br><sup>reads {source}: {read} of {cols} columns</sup>")
    # one weight per row, stacked: five panels side by side need 1150 px, wider than a notebook (900)
    fig = make_subplots(rows=len(weights), cols=1, subplot_titles=titles, vertical_spacing=0.5 / len(weights))
    for k, (_, rows, cols, site) in enumerate(weights):
        mask = torch.ones(cols, dtype=torch.bool) if site is None else patterns[site].keep_mask(cols)  # [cols]
        heat = go.Heatmap(
            z=[mask.int().tolist()],
            x=list(range(cols + 1)),
            y=[0, rows],
            zmin=0,
            zmax=1,
            colorscale=TWO_COLORS,
            showscale=False,
            hovertemplate="column %{x}: %{z} (1 = read)<extra></extra>",
        )
        fig.add_trace(heat, k + 1, 1)
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(title_text="input column", row=len(weights), col=1)
    fig.update_layout(
        title="Which weight columns the GEMMs of one training step read (blue) and skip (grey)",
        height=130 * len(weights) + 140,
        width=900,
        margin={"t": 110, "l": 40, "r": 20},
    )
    return fig


def embedding_read_mask(model: ApproxDropoutLSTM | TorchLSTM, x: torch.Tensor) -> torch.Tensor:
    """Bool[T, B, E]: the entries of the embedding output that one training forward of ``model`` on x
    (Long[T, B]) read, i.e. those its output depends on (non-zero gradient of the logits' sum). Puts the
    model in training mode (a fresh draw per site, in ``last_patterns``) and leaves no gradients behind."""
    caught = {}

    def keep_output(module, inputs, output):
        output.retain_grad()
        caught["u"] = output  # [T, B, E]

    handle = model.embedding.register_forward_hook(keep_output)
    try:
        logits, _ = model.train()(x)  # [T, B, V]
        logits.sum().backward()
    finally:
        handle.remove()
    model.zero_grad(set_to_none=True)
    return caught["u"].grad != 0


def _mask_title(name: str, mask: torch.Tensor) -> str:
    skipped = int((~mask).all(0).sum())
    same = bool((mask == mask[:1]).all())
    rows = "every time step reads the same columns" if same else "the mask changes from step to step"
    return f"{name}: {rows}<br><sup>{skipped} of {mask.shape[1]} columns skipped at all {mask.shape[0]} steps</sup>"


READ_KEY = "blue: read (its unit kept) · grey: not read (dropped)"


def read_masks_figure(masks: dict[str, torch.Tensor], site: str = "embedding output") -> go.Figure:
    """Read masks side by side, each Bool[T, n] (True = read) for one sample of the batch; the titles
    say whether every time step reads the same columns, and how many columns no step reads."""
    fig = make_subplots(
        rows=1,
        cols=len(masks),
        subplot_titles=[_mask_title(n, m) for n, m in masks.items()],
        horizontal_spacing=0.06,
    )
    for i, mask in enumerate(masks.values()):
        gap = 1 if mask.shape[1] <= 100 else 0  # cells narrower than a gap would vanish
        heat = go.Heatmap(
            z=mask.int().tolist(),
            zmin=0,
            zmax=1,
            colorscale=TWO_COLORS,
            showscale=False,
            xgap=gap,
            ygap=gap,
            hovertemplate="t = %{y}, unit %{x}: %{z} (1 = read)<extra></extra>",
        )
        fig.add_trace(heat, 1, i + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_yaxes(title_text="time step t", col=1)
    fig.update_xaxes(title_text=f"unit of the {site}")
    fig.update_layout(
        title=f"What one training step read of the {site}<br><sup>{READ_KEY}</sup>",
        height=420,
        width=min(900, 450 * len(masks) + 100),
        margin={"t": 130},
    )
    return fig


# --------------------------------------------------------------------------- what shrinks


@dataclass(frozen=True)
class GemmWork:
    """One GEMM of the model: multiply-adds per token, dense and with row patterns at rate p."""

    name: str
    shape: str
    dense: int
    row: float


def gemm_work_rows(hidden: int, layers: int, vocab: int, p: float) -> list[GemmWork]:
    """Forward multiply-adds per token of every GEMM (the two backward GEMMs scale the same way), with
    the embedding as wide as the LSTM (as ``lstm_gemm_work``): input projections and the
    decoder keep ``1 - p`` of their inputs, the recurrent GEMMs keep all."""
    gates, rows = 4 * hidden, []
    for i in range(layers):
        rows.append(
            GemmWork(f"input projection {i + 1}", f"[{gates} x {hidden}]", gates * hidden, gates * hidden * (1 - p))
        )
        rows.append(GemmWork(f"recurrent {i + 1}", f"[{gates} x {hidden}]", gates * hidden, gates * hidden))
    rows.append(GemmWork("decoder", f"[{vocab} x {hidden}]", vocab * hidden, vocab * hidden * (1 - p)))
    return rows


def format_gemm_work(rows: list[GemmWork]) -> str:
    """The rows as a text table with a total line (multiply-adds per token, as everywhere in the labs)."""
    dense, row = "dense multiply-adds/token", "row multiply-adds/token"
    lines = [f"{'GEMM':<20} {'weight':>14} {dense:>27} {row:>25} {'left':>6}"]
    for r in [*rows, GemmWork("total", "", sum(r.dense for r in rows), sum(r.row for r in rows))]:
        lines.append(f"{r.name:<20} {r.shape:>14} {r.dense:>27,} {r.row:>25,.0f} {r.row / r.dense:>6.3f}")
    return "\n".join(lines)


def gemm_work_figure(hidden: int, layers: int, vocab: int, p: float) -> go.Figure:
    """Left: multiply-adds per token of every GEMM, dense vs row at rate p. Right: the GEMM work left
    (row) against p, with its floor, the recurrent GEMMs' share, which no dropout rate removes."""
    rows = gemm_work_rows(hidden, layers, vocab, p)
    work = lstm_gemm_work(hidden, layers, vocab, p, "row")
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.55, 0.45],
        horizontal_spacing=0.2,
        subplot_titles=(f"multiply-adds per token at p = {p:g}", "GEMM work left with row patterns"),
    )
    names = [r.name for r in rows][::-1]  # the first GEMM at the top
    fig.add_trace(
        go.Bar(
            y=names,
            x=[r.dense for r in rows][::-1],
            orientation="h",
            name="dense",
            marker_color=SKIPPED,
            marker_line={"color": "#888888", "width": 1},
        ),
        1,
        1,
    )
    fig.add_trace(
        go.Bar(
            y=names,
            x=[r.row for r in rows][::-1],
            orientation="h",
            name=f"row, p = {p:g}",
            marker_color=KEPT,
            text=[f"{r.row / r.dense:.0%}" for r in rows][::-1],
            textposition="outside",
        ),
        1,
        1,
    )
    ps = [i / 20 for i in range(20)]
    fig.add_trace(
        go.Scatter(
            x=ps,
            y=[lstm_gemm_work(hidden, layers, vocab, q, "row") for q in ps],
            mode="lines",
            name="row: work left",
            line={"color": KEPT},
        ),
        1,
        2,
    )
    floor = lstm_gemm_work(hidden, layers, vocab, 1.0, "row")
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[floor, floor],
            mode="lines",
            line={"color": SITE, "dash": "dash"},
            name=f"floor: recurrent GEMMs, {floor:.2f} (at most {1 / floor:.1f}x)",
        ),
        1,
        2,
    )
    fig.add_trace(
        go.Scatter(
            x=[p],
            y=[work],
            mode="markers+text",
            marker={"color": KEPT, "size": 10},
            text=[f"{work:.3f} left:<br>at most {1 / work:.2f}x"],
            # above and right of the point while there is room on the right, else below and left (the curve
            # falls to the right, so neither side covers it); drawn past the axes rather than clipped
            textposition="top right" if p <= 0.6 else "bottom left",
            cliponaxis=False,
            showlegend=False,
        ),
        1,
        2,
    )
    fig.update_layout(
        barmode="overlay",
        height=400,
        width=900,
        margin={"t": 90},
        legend={"orientation": "h", "y": -0.2},
        title=f"What shrinks: LSTM {layers} x {hidden}, vocabulary {vocab:,}",
    )
    fig.update_xaxes(title_text="multiply-adds per token (forward)", row=1, col=1)
    fig.update_xaxes(title_text="dropout rate p", range=[0, 1], row=1, col=2)
    fig.update_yaxes(title_text="share of dense GEMM work", range=[0, 1.05], row=1, col=2)
    return fig


# --------------------------------------------------------------------------- the race


PERPLEXITY_TITLE = "validation perplexity"


def race_figure(methods: Sequence[str], title: str = "Language models side by side") -> go.Figure:
    """Empty figure with the traces of every method, ready for ``update_race_figure``."""
    titles = (f"training loss (mean of {WINDOW})", PERPLEXITY_TITLE, f"ms per step (median of {WINDOW})")
    fig = race_panels(methods, titles, title, log_cols=(2,))
    fig.update_yaxes(type="log", dtick="D2", minorloglabels="complete", row=1, col=3)  # 1, 2, 5 x 10^k in full
    return fig


def update_race_figure(fig: go.Figure | go.FigureWidget, result: RaceResult) -> None:
    """Set every trace from ``result`` (a RaceResult); a FigureWidget redraws in place. The axes are
    ``update_race_panels``' (readable log ticks; a single evaluation on the race's steps); after a single
    evaluation (CI mode: one, after the last step) the perplexity panel's title gives its step and its dots
    are larger, so their colours read."""
    with fig.batch_update():
        update_race_panels(fig, result)
        evaluated = {s for h in result.histories.values() for s in h.eval_step}
        once = len(evaluated) == 1
        fig.layout.annotations[1].text = f"{PERPLEXITY_TITLE} at step {min(evaluated)}" if once else PERPLEXITY_TITLE
        for i in range(len(result.methods)):
            fig.data[3 * i + 1].marker.size = 10 if once else None


def race_result_figure(result: RaceResult, title: str = "Language models side by side") -> go.Figure:
    """A static figure of a finished (or running) race."""
    fig = race_figure(result.methods, title)
    update_race_figure(fig, result)
    return fig


def race_timings(result: RaceResult) -> list[Timing]:
    """The summary as Timings for ``viz.timing.timing_figure`` (``viz.training.summary_timings``):
    bernoulli first, each with its ideal GEMM work left (``lstm_gemm_work``)."""
    return summary_timings(result)
