"""ipywidgets panels for labs 02, 03 and 06: pattern sliders that redraw a plotly FigureWidget in
place, a button that re-times the GEMMs, and one step of grouped complementary patterns.

Sliders cannot produce an invalid pattern: when ``dp`` changes, ``offset`` is bounded to
``[0, dp-1]`` and ``keep`` to ``[1, dp]`` before anything is redrawn. Each panel has ``.widget``
(to display) and ``.fig`` (the FigureWidget); ``course.display.show(panel)`` displays a panel with a
static copy.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

import ipywidgets as w
import torch

from ..._env import check_int, check_number
from ...distribution import PatternDistribution
from ...experiments.gemm_timing import row_timings, tile_timings
from ...patterns import RowPattern, TilePattern
from ...search.defaults import distribution_for
from ..mode import device as default_device
from ..viz.live import figure_widget
from ..viz.matrix import (
    block_figure,
    block_reads,
    grouped_figure,
    row_figure,
    tile_figure,
    update_block_figure,
    update_grouped_figure,
    update_row_figure,
    update_tile_figure,
)
from ..viz.timing import (
    median_rows,
    noise_warning,
    repeat_timings,
    round_noise,
    timing_figure,
    update_timing_figure,
)

LAYOUT = {"continuous_update": False, "style": {"description_width": "60px"}}


class PatternSliders:
    """dp / offset / keep sliders kept consistent; ``on_change()`` runs once per user change."""

    def __init__(
        self, on_change: Callable[[], None], max_dp: int = 8, dp: int = 4, offset: int = 0, keep: int = 1
    ) -> None:
        RowPattern(dp, offset, keep)  # validates the starting values
        check_int("dp", dp, 1, max_dp)  # the dp slider would clamp it, and offset / keep would not follow
        self.dp = w.IntSlider(value=dp, min=1, max=max_dp, description="dp", **LAYOUT)
        self.offset = w.IntSlider(value=offset, min=0, max=dp - 1, description="offset", **LAYOUT)
        self.keep = w.IntSlider(value=keep, min=1, max=dp, description="keep", **LAYOUT)
        self._on_change = on_change
        self._hold = False
        self.dp.observe(self._dp_changed, "value")
        self.offset.observe(self._changed, "value")
        self.keep.observe(self._changed, "value")

    def _dp_changed(self, change) -> None:
        self._hold = True  # the range updates below may clamp offset / keep: redraw once, after
        try:
            self.offset.max = change["new"] - 1
            self.keep.max = change["new"]
        finally:
            self._hold = False
        self._on_change()

    def _changed(self, change) -> None:
        if not self._hold:
            self._on_change()

    @property
    def values(self) -> tuple[int, int, int]:
        return self.dp.value, self.offset.value, self.keep.value

    @property
    def box(self) -> w.VBox:
        return w.VBox([self.dp, self.offset, self.keep])


class _TimedPanel:
    """A matrix FigureWidget that follows the sliders, and a timing FigureWidget behind a button.
    ``time it`` measures ``rounds`` times, about ``repeats`` timed calls per method in all; the figure
    shows the medians, each labelled with its median per-round speedup over the dense GEMM, ``status`` the
    last method's speedup with its spread over the rounds (the same median as its bar's label),
    ``warning`` the busy-machine line (``viz.timing.noise_warning``) when the spread is large."""

    def __init__(self, batch: int, n: int, device, repeats: int, rounds: int = 5) -> None:
        # refused here, by name: batch=0 timed an empty GEMM (a meaningless speed-up), n=-5 or 2.5 failed
        # inside torch at the first click, repeats=0 was quietly taken as 1
        self.batch, self.n = check_int("batch", batch, 1), check_int("n", n, 1)
        self.rounds = check_int("rounds", rounds, 1)
        repeats = check_int("repeats", repeats, 1)
        self.repeats = -(-repeats // self.rounds)  # timed calls per round: about ``repeats`` in all, at least 1
        self.device = default_device() if device is None else device
        self.timing = figure_widget(timing_figure([], self._timing_title()))
        self.button = w.Button(description="time it", icon="clock-o", tooltip="measure the GEMMs at this pattern")
        self.status = w.HTML()
        self.warning = w.HTML()  # the busy-machine warning of the last timing, if any
        self.button.on_click(lambda _: self.time_it())

    def _timing_title(self, pattern: object = None) -> str:
        timed = f"{pattern}: " if pattern is not None else ""
        return f"{timed}{self.batch} x {self.n} @ {self.n} x {self.n}, {self.device}"

    def _measure(self):
        raise NotImplementedError

    def time_it(self) -> None:
        """Measure the GEMMs at the current pattern ``rounds`` times (``viz.timing.repeat_timings``) and
        redraw the timing figure in place with the medians; the status names the pattern timed and gives
        the last method's speedup over the dense GEMM (the dense GEMM's time over its own in each round:
        the median, as on its bar, with its spread over the rounds; above 1x: faster), and warns when the
        machine looks busy. The button is off while it measures; a failure is said in the status."""
        pattern = self.pattern  # the one timed, named in the results: the sliders may move on
        self.button.disabled = True
        self.status.value = html.escape(f"timing {pattern}...")
        try:
            self.spreads = spreads = repeat_timings(self._measure, self.rounds)
        except Exception as error:
            self.status.value = html.escape(f"timing {pattern} failed: {type(error).__name__}: {error}")
            raise
        finally:
            self.button.disabled = False
        update_timing_figure(
            self.timing,
            median_rows(spreads),
            self._timing_title(pattern),
            [t.ms for t in spreads],
        )
        best = spreads[-1]
        bound = f"{1 / best.work:.2f}x" if best.work > 0 else "none (the pattern keeps no work)"
        self.status.value = html.escape(
            f"{pattern}, {best.name}: speed-up over the dense GEMM {best.speedup.describe('x', 'rounds')} "
            f"(above 1x: faster); GEMM-work bound {bound}"
        )
        warning = noise_warning(round_noise(spreads))  # names each noisy method and its spread
        self.warning.value = f'<b style="color:#B22222">{html.escape(warning)}</b>' if warning else ""


def _layer_sizes(**sizes: int) -> tuple[int, ...]:
    """The layer sizes given by name (``n_out=32, n_in=48``), in order, if each is an int >= 1, else
    ValueError naming the first that is not."""
    return tuple(check_int(name, size, 1) for name, size in sizes.items())


def _tile_sizes(tiles: Sequence[int]) -> list[int]:
    """``tiles`` as a list if it is a non-empty sequence of distinct tile sizes (ints >= 1), the dropdown's
    choices; else ValueError saying what to give."""
    if isinstance(tiles, (str, bytes)) or not isinstance(tiles, Sequence) or not tiles:
        raise ValueError(f"tiles must be a non-empty sequence of tile sizes such as (8, 16), got {tiles!r}")
    sizes = [check_int("each tile size in tiles", t, 1) for t in tiles]
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"tiles must be distinct tile sizes (the dropdown's choices), got {tiles!r}")
    return sizes


class RowPatternPanel(_TimedPanel):
    """Lab 02: a layer W [n_out, n_in] and the next layer [n_next, n_out] under a RowPattern.
    Timing: a hidden layer [n, n] at batch ``batch`` (``gemm_timing.row_timings``)."""

    def __init__(
        self,
        n_out: int = 32,
        n_in: int = 48,
        n_next: int = 24,
        batch: int = 128,
        n: int = 1024,
        device: torch.device | str | None = None,
        repeats: int = 10,
        rounds: int = 5,
        **start: int,
    ) -> None:
        self.shape = _layer_sizes(n_out=n_out, n_in=n_in, n_next=n_next)
        super().__init__(batch, n, device, repeats, rounds)
        self.sliders = PatternSliders(self.redraw, **start)
        self.fig = figure_widget(row_figure(self.pattern, *self.shape))
        controls = w.HBox([self.sliders.box, w.VBox([self.button, self.status, self.warning])])
        self.widget = w.VBox([controls, self.fig, self.timing])

    @property
    def pattern(self) -> RowPattern:
        return RowPattern(*self.sliders.values)

    def redraw(self) -> None:
        update_row_figure(self.fig, self.pattern, *self.shape)

    def _measure(self):
        return row_timings(self.batch, self.n, self.pattern, self.device, repeats=self.repeats)


class TilePatternPanel(_TimedPanel):
    """Lab 03: the tile grid of a weight [n_out, n_in] under a TilePattern (tile size from a dropdown).
    Timing: W [n, n] at batch ``batch`` (``gemm_timing.tile_timings``)."""

    def __init__(
        self,
        n_out: int = 96,
        n_in: int = 128,
        batch: int = 128,
        n: int = 1024,
        device: torch.device | str | None = None,
        repeats: int = 10,
        rounds: int = 5,
        tiles: Sequence[int] = (4, 8, 16, 32),
        **start: int,
    ) -> None:
        self.shape = _layer_sizes(n_out=n_out, n_in=n_in)
        tiles = _tile_sizes(tiles)
        super().__init__(batch, n, device, repeats, rounds)
        start_tile = tiles[-2] if len(tiles) > 1 else tiles[0]  # the next to last: a mid-sized tile by default
        self.tile = w.Dropdown(options=tiles, value=start_tile, description="tile", style=LAYOUT["style"])
        self.sliders = PatternSliders(self.redraw, **start)
        self.tile.observe(lambda _: self.redraw(), "value")
        self.fig = figure_widget(tile_figure(self.pattern, *self.shape))
        controls = w.HBox([w.VBox([self.tile, self.sliders.box]), w.VBox([self.button, self.status, self.warning])])
        self.widget = w.VBox([controls, self.fig, self.timing])

    @property
    def pattern(self) -> TilePattern:
        dp, offset, keep = self.sliders.values
        return TilePattern(dp, offset, self.tile.value, keep)

    def redraw(self) -> None:
        update_tile_figure(self.fig, self.pattern, *self.shape)

    def _measure(self):
        return tile_timings(self.batch, self.n, self.n, self.pattern, self.device, repeats=self.repeats)


class BlockReadsPanel:
    """Lab 06: step through what one thread block of the tile kernel reads (``viz.matrix.block_reads``).
    Sliders: the pattern, the class z (starting at ``cls``), the block within the class, and how many K
    steps are shown, counted from 1 as the figure numbers them (starting at ``step``, bounded by the loop's
    length; ``None``: all, the block's whole loop)."""

    def __init__(
        self,
        n_out: int = 128,
        n_in: int = 128,
        tile: int = 16,
        block_n: int = 32,
        block_k: int = 16,
        cls: int = 0,
        step: int | None = None,
        **start: int,
    ) -> None:
        self.shape, self.tile = (n_out, n_in), tile
        # block_k=0 was "range() arg 3 must not be zero" and block_n=0 a ZeroDivisionError, from inside the figure
        self.block_n, self.block_k = check_int("block_n", block_n, 1), check_int("block_k", block_k, 1)
        self.sliders = PatternSliders(self._pattern_changed, **start)
        dp = self.sliders.dp.value
        if not 0 <= cls < dp:
            raise ValueError(f"cls must be a class of the pattern, in [0, {dp - 1}], got {cls}")
        self.cls = w.IntSlider(value=cls, min=0, max=dp - 1, description="class z", **LAYOUT)
        self.block = w.IntSlider(value=0, min=0, max=0, description="block", **LAYOUT)
        self.step = w.IntSlider(value=1, min=1, max=1, description="K steps shown", **LAYOUT)
        self._hold = False
        self._fit_ranges()
        if step is not None and step < 1:
            raise ValueError(f"step must be >= 1 (K steps shown; None for the whole loop), got {step}")
        self.step.value = self.step.max if step is None else min(step, self.step.max)
        for s in (self.cls, self.block):
            s.observe(lambda _: self._position_changed(), "value")
        self.step.observe(lambda _: self.redraw(), "value")
        self.fig = figure_widget(block_figure(self.pattern, *self.shape, *self._where(), *self._sizes()))
        self.widget = w.VBox([w.HBox([self.sliders.box, w.VBox([self.cls, self.block, self.step])]), self.fig])

    @property
    def pattern(self) -> TilePattern:
        dp, offset, keep = self.sliders.values
        return TilePattern(dp, offset, self.tile, keep)

    def _sizes(self) -> tuple[int, int, int]:
        return self.block_n, self.block_k, self.step.value - 1  # the figure's ``upto``: the last step, from 0

    def _where(self) -> tuple[int, int]:
        return self.cls.value, self.block.value

    def _fit_ranges(self) -> None:
        """Bound class, block and step to what exists for the current pattern."""
        self._hold = True
        try:
            pattern = self.pattern
            self.cls.max = pattern.dp - 1
            rows_p, _ = pattern.row_classes()[self.cls.value]
            self.block.max = max(0, math.ceil(rows_p.kept_count(self.shape[0]) / self.block_n) - 1)
            steps = block_reads(pattern, *self.shape, *self._where(), self.block_n, self.block_k)
            self.step.max = max(1, len(steps))
        finally:
            self._hold = False

    def _pattern_changed(self) -> None:
        self._fit_ranges()
        self.redraw()

    def _position_changed(self) -> None:
        if not self._hold:
            self._fit_ranges()
            self.redraw()

    def redraw(self) -> None:
        if not self._hold:
            update_block_figure(self.fig, self.pattern, *self.shape, *self._where(), *self._sizes())


class GroupedPatternPanel:
    """Lab 02: one step of grouped complementary patterns (docs/method.md §9) on a layer of ``n`` units, for
    a batch of ``batch`` samples: each group's kept units and how many groups keep each unit
    (``viz.matrix.grouped_figure``). The step is drawn by ``PatternDistribution.sample_groups`` from the
    law an ``ApproxDropoutMLP`` site of ``n`` units uses at rate p (``distribution_for(p, n)``).

    Sliders: G (1..``max_groups``) and p (``P_MIN``..``P_MAX``); a starting ``groups`` or ``p`` outside its
    slider's range is a ValueError (the slider would show another value than the one asked for). Moving one
    redraws the same step (the generator replays from where this step started), so G = 2 shows the first two
    groups of G = 4; **new draw** draws the next step.
    """

    P_MIN, P_MAX = 0.05, 0.9

    def __init__(
        self, n: int = 32, batch: int = 128, groups: int = 4, p: float = 0.5, max_groups: int = 16, seed: int = 0
    ) -> None:
        max_groups = check_int("max_groups", max_groups, 1)
        if check_int("groups", groups, 1) > max_groups:
            raise ValueError(
                f"groups must be in [1, {max_groups}] (the G slider's range, up to max_groups), got {groups}"
            )
        p = check_number("p", p)
        if not self.P_MIN <= p <= self.P_MAX:
            raise ValueError(f"p must be in [{self.P_MIN:g}, {self.P_MAX:g}] (the slider's range), got {p:g}")
        # every group the G slider can reach needs a sample: with fewer, the figure showed groups with no samples
        # under a title saying every unit is kept by some group
        batch = check_int("batch", batch, 1)
        if batch < max_groups:
            raise ValueError(
                f"batch must be at least max_groups = {max_groups} (each of up to {max_groups} groups on the "
                f"G slider needs a sample; lower max_groups for a smaller batch), got {batch}"
            )
        self.n, self.batch = n, batch
        self.groups = w.IntSlider(value=groups, min=1, max=max_groups, description="G", **LAYOUT)
        self.p = w.FloatSlider(value=p, min=self.P_MIN, max=self.P_MAX, step=0.05, description="p", **LAYOUT)
        self.button = w.Button(description="new draw", icon="refresh", tooltip="draw the next training step")
        self.generator = torch.Generator().manual_seed(seed)
        self._start = self.generator.get_state()  # where this step's draw starts
        self.patterns = self._draw()
        self.fig = figure_widget(grouped_figure(self.patterns, n, batch, self.p.value))
        self.groups.observe(lambda _: self.redraw(), "value")
        self.p.observe(lambda _: self.redraw(), "value")
        self.button.on_click(lambda _: self.new_draw())
        self.widget = w.VBox([w.HBox([self.groups, self.p, self.button]), self.fig])

    @property
    def law(self) -> PatternDistribution:
        """The pattern law of a row site of ``n`` units at the slider's p."""
        return distribution_for(self.p.value, self.n)

    def _draw(self) -> tuple[RowPattern, ...]:
        self.generator.set_state(self._start)
        return self.law.sample_groups(self.groups.value, self.generator)

    def redraw(self) -> None:
        """Draw this step again at the sliders' G and p and redraw the figure in place."""
        self.patterns = self._draw()
        update_grouped_figure(self.fig, self.patterns, self.n, self.batch, self.p.value)

    def new_draw(self) -> None:
        """Draw the next step (the generator goes on from where this step's draw ended)."""
        self._start = self.generator.get_state()
        self.redraw()
