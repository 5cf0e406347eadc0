"""Lab 08's panels: a p slider over the GEMMs of a transformer block that ``convert`` shrinks, and the race
of a DecoderLM with nn.Dropout against its converted copies (``widgets.race.RacePanel`` over
``experiments.bench_transformer.race``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as w

from ..._env import check_number
from ...experiments.bench_transformer import BASELINE, CharCorpus, TransformerRaceConfig, race
from ...training import RaceResult
from ..viz.ffn import block_flops_floor, block_flops_left, gemm_flops_figure, race_figure, update_gemm_flops_figure
from ..viz.ffn import update_race_figure as update_race
from ..viz.live import figure_widget
from .race import STYLE, RacePanel


class GemmFlopsPanel:
    """A p slider over ``viz.ffn.gemm_flops_figure`` for one block (``d_model``, ``d_hidden``) on ``tokens``
    tokens per step, and a status line with the share of the FLOPs left. ``.widget`` is what to display.
    ``p`` must lie in the slider's range ``[P_MIN, P_MAX]`` (the slider would clamp it, and the status line
    would then disagree with the figure)."""

    P_MIN, P_MAX = 0.0, 0.9

    def __init__(self, d_model: int, d_hidden: int, tokens: int, p: float = 0.3) -> None:
        self.sizes = (d_model, d_hidden, tokens)
        p = check_number("p", p)
        if not self.P_MIN <= p <= self.P_MAX:
            raise ValueError(f"p must be in [{self.P_MIN:g}, {self.P_MAX:g}] (the slider's range), got {p:g}")
        self.p = w.FloatSlider(
            value=p, min=self.P_MIN, max=self.P_MAX, step=0.05, description="p", continuous_update=False, style=STYLE
        )
        self.fig = figure_widget(gemm_flops_figure(d_model, d_hidden, tokens, p))
        self.status = w.HTML()
        self._status()
        self.p.observe(lambda _: self.redraw(), names="value")
        self.widget = w.VBox([self.p, self.status, self.fig])

    def _status(self) -> None:
        d_model, d_hidden, _ = self.sizes
        left, floor = block_flops_left(d_model, d_hidden, self.p.value), block_flops_floor(d_model, d_hidden)
        self.status.value = (
            f"p = {self.p.value:g}: the block's Linear GEMMs keep <b>{left:.3f}</b> of their FLOPs, at most "
            f"{1 / left:.2f}x faster; the attention GEMMs ({floor:.3f} of them) never shrink"
        )

    def redraw(self) -> None:
        """Set the figure and the status line to the slider's p."""
        update_gemm_flops_figure(self.fig, *self.sizes, self.p.value)
        self._status()


def race_groups(methods: Sequence[str]) -> list[int]:
    """The batch group counts of the converted copies among race labels ("row G=4" -> 4); nn.Dropout is
    always raced and needs none. ValueError for a label that is neither."""
    groups = []
    for label in methods:
        if label == BASELINE:
            continue
        count = label.removeprefix("row G=")
        if count == label or not count.isdigit() or int(count) < 1:
            raise ValueError(f"race labels are {BASELINE!r} or 'row G=<groups>', got {label!r}")
        groups.append(int(count))
    return groups


class TransformerRacePanel(RacePanel):
    """Race a DecoderLM with nn.Dropout against its ``convert`` ed copies on the characters ``chars`` on
    Start (``bench_transformer.race``). nn.Dropout is the race's baseline: it always trains (its box is
    checked and disabled). ``train_kwargs``: ``device``, ``callback_every`` and the other fields of a
    ``TransformerRaceConfig`` (``size``, ``lr``, ``clip``, ``warmup``, ``seed``)."""

    METHODS = (BASELINE, "row G=1", "row G=4")

    def __init__(
        self,
        chars: CharCorpus,
        methods: Sequence[str] = METHODS,
        p: float = 0.1,
        steps: int = 100,
        result: RaceResult | None = None,
        **train_kwargs: Any,
    ) -> None:
        super().__init__(chars, methods, p, steps, result, **train_kwargs)
        self.boxes[BASELINE].value, self.boxes[BASELINE].disabled = True, True

    @property
    def methods(self) -> list[str]:
        return [BASELINE, *(m for m, box in self.boxes.items() if box.value and m != BASELINE)]

    def _train(self, methods, p, steps, callback, progress=False, device=None, callback_every=10, **config):
        settings = TransformerRaceConfig(p=p, steps=steps, **config)
        return race(
            self.source,
            settings,
            race_groups(methods),
            device,
            progress,
            callback=callback,
            callback_every=callback_every,
        )

    def _figure(self, methods):
        return race_figure(methods)

    def _update(self, fig, result) -> None:
        update_race(fig, result)
