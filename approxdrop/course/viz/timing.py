"""Timing bar chart: measured time per method, with the GEMM-work bound drawn on each bar; and the one
helper every live timing of the labs reports through: its spread over rounds (or steps), and a warning when
that spread says the machine was busy.

The bound of a method is ``baseline ms * work``: the time it would take if time shrank exactly
with the GEMM work it has left. Rows are ``experiments.gemm_timing.Timing`` (name, ms, work);
``from_bench`` converts ``experiments.bench.measure`` rows at one p.

One statistic and one direction everywhere: a **speedup** is the baseline's time over the method's (above
1x: faster). Where a timing is repeated side by side (rounds of labs 01-03, the interleaved steps of a
race), it is the median of the per-round (per-step) ratios, and the bars' labels, the printed lines and the
race's table all show that same number. A chart of single medians (no rounds) labels the ratio of them.
The bars are medians of each method's own times: when the load changes while they are measured, a bar and
its speedup can point opposite ways; its label is then marked ``*`` and the title says why (the race's
table says it in a line under it, ``RaceResult.timing_note``).

Spread: ``spread(values)`` gives median, quartiles and range (NaN and inf left out);
``noise_warning`` returns one warning line, naming each noisy measurement and its spread, when any
interquartile range is above ``BUSY_SPREAD`` (25%) of its median. ``repeat_timings`` repeats a GEMM timing
(labs 01-03: ``timing_lines`` prints it, the pattern panels show it); ``race_speedups`` / ``race_lines``
give a race's per-step speedups (lab 05).
``Spread.describe`` names what was repeated: "rounds" (a timing repeated side by side) or "steps" (a race).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import plotly.graph_objects as go

from ...experiments.gemm_timing import Timing
from ...training.race import opposite_ways

if TYPE_CHECKING:
    from ...experiments.bench import BenchRow  # not at run time: bench pulls in the training stack and tqdm
    from ...training import RaceResult


def from_bench(rows: Iterable[BenchRow], p: float) -> list[Timing]:
    """The ``experiments.bench.BenchRow`` rows at rate ``p`` as Timings (ms per training step), with
    ``bernoulli`` first, so that it is the baseline of the bound."""
    picked = sorted((r for r in rows if abs(r.p - p) < 1e-9), key=lambda r: r.method != "bernoulli")
    if not picked or picked[0].method != "bernoulli":
        raise ValueError(f"no 'bernoulli' row at p={p} in the benchmark rows")
    return [Timing(r.method, r.ms_per_step, r.gemm_work) for r in picked]


@dataclass(frozen=True)
class PairedTiming(Timing):
    """A ``Timing`` that carries its measured speedup over the chart's first row, taken side by side: the
    median of the per-``paired`` ratios ("round": a timing repeated side by side, ``median_rows``; "step": a
    race, ``viz.training.summary_timings``, with the speedups of its table). ``timing_figure`` labels a chart
    of these rows with that speedup, so a chart drawn from them agrees with the lines and the table whoever
    draws it. None: no step to pair."""

    speedup: float | None = None
    paired: str = "step"


def _error_bars(spreads: Sequence[Spread] | None) -> dict:
    """Whiskers from each bar's median to its quartiles (``spreads``: one ms Spread per row), or none."""
    if not spreads:
        return {"visible": False}
    return {
        "type": "data",
        "symmetric": False,
        "array": [s.q3 - s.median for s in spreads],
        "arrayminus": [s.median - s.q1 for s in spreads],
        "color": "#333333",
        "thickness": 1.5,
        "width": 8,
        "visible": True,
    }


def _carried(rows: Sequence[Timing]) -> tuple[list[float | None] | None, str | None]:
    """The speedups and their pairing that ``PairedTiming`` rows carry; (None, None) for plain Timings."""
    if rows and all(isinstance(r, PairedTiming) for r in rows):
        return [r.speedup for r in rows], rows[0].paired
    return None, None


def _speedups(rows: Sequence[Timing]) -> list[float | None]:
    """Each row's speedup over the first row: what ``PairedTiming`` rows carry (None or NaN: none), else the
    first row's ms over the row's (single medians: the only statistic there is)."""
    speedups, _ = _carried(rows)
    if speedups is not None:
        return [None if s is None or not math.isfinite(s) else float(s) for s in speedups]
    base = rows[0].ms if rows else 0.0
    return [base / r.ms if base > 0 and r.ms > 0 else None for r in rows]


def ms_text(ms: float) -> str:
    """``ms`` to 3 or 4 significant digits, as a bar's label shows it: ``221.4``, ``23.5``, ``2.03``, ``0.412``."""
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


ODD_MARK = "*"  # after a label whose ms and speedup point opposite ways; the title says why


def _odd(rows: Sequence[Timing], speedups: Sequence[float | None]) -> list[bool]:
    """Per row, whether its ms and the speedup it carries point opposite ways against the first row
    (``training.race.opposite_ways``, as the race's table notes under it); never for plain Timings, whose
    speedup is the ratio of the ms themselves."""
    carried, _ = _carried(rows)
    if carried is None or not rows:
        return [False] * len(rows)
    return [opposite_ways(rows[0].ms, r.ms, s) for r, s in zip(rows, speedups)]


def _label(row: Timing, speedup: float | None, odd: bool = False) -> str:
    """A bar's label: its median ms (``ms_text``) and its speedup over the first row (e.g. ``2.00 ms, 2.00x``),
    marked ``ODD_MARK`` when the two point opposite ways."""
    return f"{ms_text(row.ms)} ms" + ("" if speedup is None else f", {speedup:.2f}x") + (ODD_MARK if odd else "")


BOUND_NAME = "GEMM-work bound (ideal)"
BOUND_COLOUR = "#222222"  # near black: red is the `row` method's colour in the training curves (methods table)


def _traces(rows: Sequence[Timing], spreads: Sequence[Spread] | None = None) -> tuple[go.Bar, go.Scatter, list[str]]:
    """The bars, the bound marks, and the x tick labels: each bar's name over its label. The label goes
    under the bar, not in it, where no whisker and no bound line can run through it."""
    if spreads is not None and len(spreads) != len(rows):
        raise ValueError(f"{len(spreads)} spreads for {len(rows)} timing rows")
    names = [r.name for r in rows]
    base = rows[0].ms if rows else 1.0
    speedups = _speedups(rows)
    labels = [_label(r, s, odd) for r, s, odd in zip(rows, speedups, _odd(rows, speedups))]
    bars = go.Bar(
        x=names,
        y=[r.ms for r in rows],
        error_y=_error_bars(spreads),
        name="measured",
        text=labels,
        textposition="none",  # shown in the tick labels; in the hover too
        hovertemplate="%{x}: %{text}<extra></extra>",
        marker_color="#4C78A8",
    )
    bound = go.Scatter(
        x=names,
        y=[base * r.work for r in rows],
        name=BOUND_NAME,
        mode="markers",
        marker={  # an open symbol is stroked in marker.color (plotly.js); line.color for other renderers
            "symbol": "line-ew-open",
            "size": 40,
            "color": BOUND_COLOUR,
            "line": {"width": 3, "color": BOUND_COLOUR},
        },
        hovertemplate="%{x}: bound %{y:.3g} ms<extra></extra>",
    )
    ticks = [f"{name}<br><b>{label}</b>" for name, label in zip(names, labels)]
    return bars, bound, ticks


def _title(title: str, rows: Sequence[Timing], spreads: Sequence[Spread] | None = None) -> str:
    if not rows:
        return f"{title}<br><sup>not measured yet</sup>"
    _, paired = _carried(rows)
    base = rows[0].name
    how = f"median of the per-{paired} ratios" if paired else "ratio of the medians"
    bars = "bars: measured median, whiskers: its IQR over the rounds" if spreads else "bars: measured median"
    odd = (
        f"<br><sup>{ODD_MARK}: its ms and its speedup point opposite ways: the load moved the medians; the speedup "
        f"pairs each {paired} with {base}'s, so read it</sup>"
        if any(_odd(rows, _speedups(rows)))
        else ""
    )
    return (
        f"{title}<br><sup>under each bar: its ms and its speedup, {base}'s time / its time ({how}; above 1x: "
        f"faster)</sup><br><sup>black line: {BOUND_NAME}, {base} time x GEMM work left; {bars}</sup>{odd}"
    )


def _axes(ticks: Sequence[str], rows: Sequence[Timing]) -> dict:
    return {
        "xaxis": {"tickmode": "array", "tickvals": [r.name for r in rows], "ticktext": list(ticks)},
        "yaxis": {"title": {"text": "ms (lower is faster)"}, "rangemode": "tozero"},
    }


def _top_margin(rows: Sequence[Timing]) -> int:
    """Room for the title's three lines, and a fourth on ``ODD_MARK`` when a label carries it."""
    return 135 if any(_odd(rows, _speedups(rows))) else 110


def timing_figure(
    rows: Sequence[Timing], title: str = "Measured time", spreads: Sequence[Spread] | None = None
) -> go.Figure:
    """Bars of measured ms per method; the first row is the baseline of the speedups and of the bound.
    ``spreads`` (one ms ``Spread`` per row) draws each bar's interquartile range as whiskers. Each bar is
    labelled with its speedup: the one ``PairedTiming`` rows carry (the median of the side-by-side ratios, as
    the title says), else the first row's ms over its own (single medians). The labels sit in the x tick
    labels, under the bars. With no rows the figure is empty, ready for ``update_timing_figure``."""
    bars, bound, ticks = _traces(rows, spreads)
    fig = go.Figure([bars, bound])
    fig.update_layout(
        title=_title(title, rows, spreads),
        height=420,
        margin={"t": _top_margin(rows)},
        legend={"orientation": "h", "y": -0.28},
        **_axes(ticks, rows),
    )
    return fig


def update_timing_figure(
    fig: go.Figure | go.FigureWidget,
    rows: Sequence[Timing],
    title: str = "Measured time",
    spreads: Sequence[Spread] | None = None,
) -> None:
    """Redraw a figure made by ``timing_figure`` (a FigureWidget redraws in place)."""
    bars, bound, ticks = _traces(rows, spreads)
    with fig.batch_update():
        fig.data[0].update(x=bars.x, y=bars.y, text=bars.text, error_y=bars.error_y)
        fig.data[1].update(x=bound.x, y=bound.y)
        fig.layout.title.text = _title(title, rows, spreads)
        fig.update_layout(margin={"t": _top_margin(rows)}, **_axes(ticks, rows))


# ---- spread over rounds: one helper for every live timing of the labs ----------------------------------

BUSY_SPREAD = 0.25
"""A timing is flagged noisy when its interquartile range exceeds this share of its median. On a quiet
machine repeated medians of one GEMM agree within a few percent, and the per-step speedups of lab 05's
CI-size race (steps of about 1.5 ms) within 15-20% (this project's 2-core CPU, 2026-12-06); with other work
on the cores the same timings spread 30-100%, and a ratio read from them can be off by more than the effect
it measures."""

BUSY_WARNING = (
    "WARNING: the machine looks busy: {noisy} (above {limit:.0%}: noisy); "
    "time again when it is quiet, and compare with the recorded reference in the text"
)


@dataclass(frozen=True)
class Spread:
    """Median, quartiles and range of repeated measurements of one quantity; ``count`` finite values
    (NaN and inf are left out and counted in ``dropped``)."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    count: int
    dropped: int = 0

    @property
    def relative(self) -> float:
        """Interquartile range over the median (NaN without a positive median)."""
        return (self.q3 - self.q1) / self.median if self.count and self.median > 0 else math.nan

    @property
    def busy(self) -> bool:
        """True when the spread says the machine was busy: IQR above ``BUSY_SPREAD`` of the median."""
        return self.relative > BUSY_SPREAD

    def describe(self, unit: str = "x", over: str = "repeats") -> str:
        """E.g. ``0.53x (IQR 0.47-0.60, range 0.45-1.08 over 7 rounds)``; ``over`` names what was repeated
        ("rounds" of a side-by-side timing, "steps" of a race)."""
        if not self.count:
            return f"not measured ({counted(self.dropped, over)}, none finite)"
        text = (
            f"{self.median:.2f}{unit} (IQR {self.q1:.2f}-{self.q3:.2f}, "
            f"range {self.low:.2f}-{self.high:.2f} over {counted(self.count, over)}"
        )
        return text + (f", {self.dropped} not finite left out)" if self.dropped else ")")


def counted(count: int, plural: str) -> str:
    """``1 step``, ``7 steps``: ``count`` and the noun ``plural`` (ending in s) in its number."""
    return f"{count} {plural if count != 1 else plural.removesuffix('s')}"


def spread(values: Iterable[float]) -> Spread:
    """The ``Spread`` of ``values``; non-finite values are left out (all of them: every field NaN)."""
    values = [float(v) for v in values]
    finite = sorted(v for v in values if math.isfinite(v))
    dropped = len(values) - len(finite)
    if not finite:
        return Spread(math.nan, math.nan, math.nan, math.nan, math.nan, 0, dropped)
    if len(finite) == 1:
        q1 = q3 = finite[0]
    else:
        q1, _, q3 = statistics.quantiles(finite, n=4, method="inclusive")
    return Spread(statistics.median(finite), q1, q3, finite[0], finite[-1], len(finite), dropped)


def noise_warning(spreads: Mapping[str, Spread]) -> str | None:
    """``BUSY_WARNING`` naming each busy measurement of ``spreads`` (what was measured -> its Spread) with
    its IQR as a share of its median, e.g. ``kept columns: IQR 36% of its median``; None when none is busy."""
    noisy = [f"{name}: IQR {s.relative:.0%} of its median" for name, s in spreads.items() if s.busy]
    return BUSY_WARNING.format(noisy="; ".join(noisy), limit=BUSY_SPREAD) if noisy else None


@dataclass(frozen=True)
class TimingSpread:
    """One method's timing over repeated rounds: ms per round, and its time as a share of the first
    method's in the same round (``ratio``) and that method's time over its own (``speedup``): measured
    side by side, so a slow moment of the machine hits both."""

    name: str
    work: float
    ms: Spread
    ratio: Spread
    speedup: Spread


def repeat_timings(measure: Callable[[], Sequence[Timing]], rounds: int) -> list[TimingSpread]:
    """Call ``measure()`` (e.g. ``lambda: gemm_timing.dropout_timings(...)``, a list of medians, the first
    the baseline) ``rounds`` times; each method's ms and ratios to the baseline over the rounds."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    runs = [list(measure()) for _ in range(rounds)]

    def share(num: float, den: float) -> float:
        return num / den if den > 0 else math.nan

    return [
        TimingSpread(
            row.name,
            row.work,
            spread(run[i].ms for run in runs),
            spread(share(run[i].ms, run[0].ms) for run in runs),
            spread(share(run[0].ms, run[i].ms) for run in runs),
        )
        for i, row in enumerate(runs[0])
    ]


def round_noise(spreads: Sequence[TimingSpread]) -> dict[str, Spread]:
    """For ``noise_warning``: each method after the baseline, by name, with the noisier of its per-round
    speedup and time share (reciprocals, whose relative IQRs differ a little)."""
    return {
        s.name: max(s.speedup, s.ratio, key=lambda x: -1.0 if math.isnan(x.relative) else x.relative)
        for s in spreads[1:]
    }


def median_rows(spreads: Sequence[TimingSpread]) -> list[PairedTiming]:
    """The medians as rows for ``timing_figure``, each carrying its median per-round speedup over the first:
    the number ``timing_lines`` prints."""
    return [PairedTiming(s.name, s.ms.median, s.work, s.speedup.median, "round") for s in spreads]


def spread_figure(timings: Sequence[TimingSpread], title: str = "Measured time") -> go.Figure:
    """``timing_figure`` of ``repeat_timings`` results: median bars with their IQR as whiskers, each
    labelled with its median per-round speedup over the first."""
    return timing_figure(median_rows(timings), title, [t.ms for t in timings])


def timing_lines(spreads: Sequence[TimingSpread], baseline: str | None = None) -> list[str]:
    """One line per method: median ms, its speedup over the first method (the first's time over its own in
    each round: the median, with its spread over the rounds; above 1x: faster), and the ideal speedup of
    its GEMM work left (``1 / work``, the black line of the chart); then the busy-machine warning when a
    spread is large."""
    base = baseline or (spreads[0].name if spreads else "")
    width = max((len(s.name) for s in spreads), default=0)
    lines = [
        f"{s.name:>{width}}: {s.ms.median:7.3f} ms, speedup vs {base} {s.speedup.describe('x', 'rounds')}; "
        f"ideal {1 / s.work:.2f}x"
        for s in spreads
    ]
    warning = noise_warning(round_noise(spreads))
    return lines + ([warning] if warning else [])


def race_speedups(result: RaceResult, baseline: str | None = None) -> dict[str, Spread]:
    """Per method, the spread of the per-step speedup ``baseline ms / method ms`` (default: the race's first
    baseline, ``bernoulli`` or lab 08's ``nn.Dropout``) over the steps after warm-up that both ran
    (``RaceResult.step_speedups``: the race interleaves them, so each pair is measured side by side). Its
    median is the table's speedup (``RaceResult.speedup``)."""
    baseline = baseline or result.baselines[0]
    if baseline not in result.histories:
        return {}
    return {m: spread(result.step_speedups(baseline, m)) for m in result.histories if m != baseline}


def race_lines(result: RaceResult, baseline: str | None = None) -> list[str]:
    """One line per method: its speedup over ``baseline`` (default: the race's first baseline; the table's
    number: the median of the per-step ratios, above 1x: faster) with the spread over the steps, then the
    busy-machine warning when a spread is large."""
    baseline = baseline or result.baselines[0]
    speedups = race_speedups(result, baseline)
    width = max((len(m) for m in speedups), default=0)
    lines = [f"{m:>{width}}: speedup vs {baseline} {s.describe('x', 'steps')}" for m, s in speedups.items()]
    warning = noise_warning(speedups)
    return lines + ([warning] if warning else [])
