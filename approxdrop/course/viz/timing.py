"""Timing bar chart: measured time per method, with the GEMM-work bound drawn on each bar.

The bound of a method is ``baseline ms * work``: the time it would take if time shrank exactly
with the GEMM work it has left. Rows are ``experiments.gemm_timing.Timing`` (name, ms, work);
``from_bench`` converts ``experiments.bench.measure`` rows at one p.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import plotly.graph_objects as go

from ...experiments.gemm_timing import Timing

if TYPE_CHECKING:
    from ...experiments.bench import BenchRow  # not at run time: bench pulls in the training stack and tqdm


def from_bench(rows: Iterable[BenchRow], p: float) -> list[Timing]:
    """The ``experiments.bench.BenchRow`` rows at rate ``p`` as Timings (ms per training step), with
    ``bernoulli`` first, so that it is the baseline of the bound."""
    picked = sorted((r for r in rows if abs(r.p - p) < 1e-9), key=lambda r: r.method != "bernoulli")
    if not picked or picked[0].method != "bernoulli":
        raise ValueError(f"no 'bernoulli' row at p={p} in the benchmark rows")
    return [Timing(r.method, r.ms_per_step, r.gemm_work) for r in picked]


def _traces(rows: Sequence[Timing]) -> tuple[go.Bar, go.Scatter]:
    names = [r.name for r in rows]
    base = rows[0].ms if rows else 1.0
    bars = go.Bar(
        x=names,
        y=[r.ms for r in rows],
        name="measured",
        text=[f"{r.ms:.3g} ms = {r.ms / base:.2f} x {rows[0].name}" for r in rows],
        textposition="inside",
        insidetextanchor="middle",
        textfont={"color": "white"},
        marker_color="#4C78A8",
    )
    bound = go.Scatter(
        x=names,
        y=[base * r.work for r in rows],
        name="GEMM-work bound",
        mode="markers",
        marker={"symbol": "line-ew-open", "size": 40, "line": {"width": 3, "color": "#E45756"}},
        hovertemplate="%{x}: bound %{y:.3g} ms<extra></extra>",
    )
    return bars, bound


def _title(title: str, rows: Sequence[Timing]) -> str:
    if not rows:
        return f"{title}<br><sup>not measured yet</sup>"
    return f"{title}<br><sup>red line: {rows[0].name} time x GEMM work left (ideal); bars: measured median</sup>"


def timing_figure(rows: Sequence[Timing], title: str = "Measured time") -> go.Figure:
    """Bars of measured ms per method; the first row is the baseline of the ratios and of the bound.
    With no rows the figure is empty, ready for ``update_timing_figure``."""
    bars, bound = _traces(rows)
    fig = go.Figure([bars, bound])
    fig.update_layout(
        title=_title(title, rows), yaxis_title="milliseconds", height=380, legend={"orientation": "h", "y": -0.2}
    )
    return fig


def update_timing_figure(
    fig: go.Figure | go.FigureWidget, rows: Sequence[Timing], title: str = "Measured time"
) -> None:
    """Redraw a figure made by ``timing_figure`` (a FigureWidget redraws in place)."""
    bars, bound = _traces(rows)
    with fig.batch_update():
        fig.data[0].update(x=bars.x, y=bars.y, text=bars.text)
        fig.data[1].update(x=bound.x, y=bound.y)
        fig.layout.title.text = _title(title, rows)
