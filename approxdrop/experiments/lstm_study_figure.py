"""The figure of the LSTM perplexity runs (``bench-lstm --perplexity-out``): perplexity against p, and
against training time."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..models.methods import color
from .study_figure import DASHES, add_line_style_legend

if TYPE_CHECKING:
    from .bench_lstm import LMRun


def lstm_study_figure(runs: Sequence[LMRun]) -> go.Figure:
    """Left: validation perplexity after the last step (mean ± std over the seeds that did not diverge)
    against p, one line per method. Right: seed-mean validation perplexity at every evaluation against
    the seed-median cumulative training time (a run the machine slowed down does not move the line), one
    line per (method, p), up to the last evaluation every seed reached: for a given time budget, which
    method is best (lower is better, log scale)."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("validation perplexity against p", "validation perplexity against time")
    )
    cells: dict[tuple[str, float], list[LMRun]] = {}
    for r in runs:
        cells.setdefault((r.method, r.p), []).append(r)
    methods = list(dict.fromkeys(r.method for r in runs))
    ps = sorted({r.p for r in runs})
    for method in methods:
        finals = [[r.perplexity for r in cells.get((method, p), []) if r.diverged_at is None] for p in ps]
        fig.add_trace(
            go.Scatter(
                x=[p for p, f in zip(ps, finals) if f],
                y=[statistics.mean(f) for f in finals if f],
                error_y={"array": [statistics.stdev(f) if len(f) > 1 else 0.0 for f in finals if f]},
                name=method,
                legendgroup=method,
                line_color=color(method),
                mode="lines+markers",
            ),
            1,
            1,
        )
        for i, p in enumerate(ps):
            cell = cells.get((method, p), [])
            evals = min((len(r.eval_step) for r in cell), default=0)  # every seed reached these
            if not evals:
                continue
            seconds = [statistics.median(r.eval_seconds[e] for r in cell) for e in range(evals)]
            perplexity = [statistics.mean(r.eval_perplexity[e] for r in cell) for e in range(evals)]
            steps = cell[0].eval_step[:evals]
            hover = f"{method} p={p:g}: %{{y:.1f}} after %{{x:.0f}} s, step %{{customdata}}<extra></extra>"
            fig.add_trace(
                go.Scatter(
                    x=seconds,
                    y=perplexity,
                    customdata=steps,
                    name=f"{method} p={p:g}",
                    legendgroup=method,
                    showlegend=False,
                    line={"color": color(method), "dash": DASHES[i % len(DASHES)]},
                    mode="lines+markers",
                    hovertemplate=hover,
                ),
                1,
                2,
            )
    add_line_style_legend(fig, ps)
    fig.update_xaxes(title_text="dropout rate p", range=[0, 1], row=1, col=1)
    fig.update_xaxes(title_text="training time (s, seed median; line style: p)", row=1, col=2)
    fig.update_yaxes(title_text="validation perplexity (last step)", row=1, col=1)
    fig.update_yaxes(title_text="validation perplexity", type="log", row=1, col=2)
    fig.update_layout(title="LSTM language model: does it train as well as dropout?", height=460)
    return fig
