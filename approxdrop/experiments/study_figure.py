"""Figures of the accuracy-parity study (experiments.study): accuracy against p, and against wall time."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..models.methods import color

if TYPE_CHECKING:
    from .study import RunResult

DASHES = ("solid", "dash", "dot", "dashdot")


def add_line_style_legend(fig: go.Figure, ps: Sequence[float]) -> None:
    """Legend entries for the line styles of the right panel (row 1, column 2): one dash per p, in order."""
    for i, p in enumerate(ps):
        style = {"color": "#555555", "dash": DASHES[i % len(DASHES)]}
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=style, name=f"p = {p:g}"), 1, 2)


def study_figure(results: Sequence[RunResult]) -> go.Figure:
    """Left: test accuracy after the last epoch (mean ± std over seeds) against p, one line per variant.
    Right: seed-mean validation accuracy after each epoch against cumulative training time, one line per
    (variant, p): for a given time budget, which method is best (the test set is evaluated only once)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("test accuracy against p", "validation accuracy against time"))
    cells: dict[tuple[str, float], list] = {}
    for r in results:
        cells.setdefault((r.variant, r.p), []).append(r)
    variants = list(dict.fromkeys(r.variant for r in results))
    ps = sorted({r.p for r in results})
    for variant in variants:
        finals = [[run.test_accuracy for run in cells[(variant, p)]] for p in ps]
        fig.add_trace(
            go.Scatter(
                x=ps,
                y=[statistics.mean(f) for f in finals],
                error_y={"array": [statistics.stdev(f) if len(f) > 1 else 0.0 for f in finals]},
                name=variant,
                legendgroup=variant,
                line_color=color(variant),
                mode="lines+markers",
            ),
            1,
            1,
        )
        for i, p in enumerate(ps):
            runs = cells[(variant, p)]
            epochs = len(runs[0].val_accuracy)
            seconds = [statistics.mean(sum(run.epoch_seconds[: e + 1]) for run in runs) for e in range(epochs)]
            accuracy = [statistics.mean(run.val_accuracy[e] for run in runs) for e in range(epochs)]
            fig.add_trace(
                go.Scatter(
                    x=seconds,
                    y=accuracy,
                    name=f"{variant} p={p:g}",
                    legendgroup=variant,
                    showlegend=False,
                    line={"color": color(variant), "dash": DASHES[i % len(DASHES)]},
                    mode="lines+markers",
                    hovertemplate=f"{variant} p={p:g}: %{{y:.4f}} after %{{x:.0f}} s<extra></extra>",
                ),
                1,
                2,
            )
    add_line_style_legend(fig, ps)
    fig.update_xaxes(title_text="dropout rate p", range=[0, 1], row=1, col=1)
    fig.update_xaxes(title_text="training time (s, seed mean; line style: p)", row=1, col=2)
    fig.update_yaxes(title_text="test accuracy", row=1, col=1)
    fig.update_yaxes(title_text="validation accuracy", row=1, col=2)
    fig.update_layout(title="Does it train as well as dropout?", height=460)
    return fig
