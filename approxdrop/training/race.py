"""One interleaved race engine for every model kind: several dropout methods trained side by side.

Every method starts from the same initial weights and sees the same batches. The methods are
interleaved step by step, the order rotating every step, so a drift of the machine hits all of
them alike. A step's time is measured around exactly the training step (the ``Contestant``'s
``step``), with a CUDA synchronisation before and after on a GPU. Every ``eval_every`` steps, and
after the last, each method is evaluated (test accuracy, validation perplexity, ...). A method
whose loss becomes NaN or inf is stopped there and marked "diverged at step N": no NaN reaches
its history, a figure or a table.

The MLP race (``training.mlp.train``) and the language-model race (``training.lm.train_lm``) are
thin layers over ``run_race``: they build one ``Contestant`` per method and a batch source.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from .._env import check_int, sync


@dataclass
class History:
    """What one method did: per training step, and at every evaluation."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # wall time of the step
    eval_step: list[int] = field(default_factory=list)
    metric: list[float] = field(default_factory=list)  # the race's Metric at every eval_step
    diverged_at: int | None = None  # the step whose loss was NaN or inf; the method stopped there


@dataclass(frozen=True)
class Metric:
    """What a race evaluates: its name in tables and figures, and which way is better."""

    name: str
    higher_is_better: bool
    digits: int = 3


ACCURACY = Metric("test accuracy", higher_is_better=True, digits=3)
PERPLEXITY = Metric("valid perplexity", higher_is_better=False, digits=1)


@dataclass(frozen=True)
class SummaryRow:
    """One method's line of the final table."""

    method: str
    ms_per_step: float  # median over the steps after warm-up
    speedups: dict[str, float | None]  # baseline method: its ms_per_step / this one's (None without it)
    metric: float  # the last evaluation
    gemm_work: float  # ideal GEMM work left relative to dense (models.methods)
    diverged_at: int | None = None

    @property
    def speedup(self) -> float | None:
        """Speedup against the first baseline (bernoulli)."""
        return next(iter(self.speedups.values()), None)


@dataclass
class RaceResult:
    """Histories per method, the settings they were trained with, and the summary table."""

    histories: dict[str, History]
    metric: Metric
    config: Any  # the race's frozen settings (MLPRaceConfig, LMRaceConfig)
    gemm_work: dict[str, float]
    device: str
    baselines: tuple[str, ...] = ("bernoulli",)

    @property
    def methods(self) -> list[str]:
        return list(self.histories)

    @property
    def p(self) -> float:
        return self.config.p

    @property
    def warmup(self) -> int:
        return min(self.config.warmup, self.config.steps - 1)

    def summary(self) -> list[SummaryRow]:
        """Median step time (after ``warmup`` steps), speedups against the baselines, last evaluation."""
        ms = {
            m: 1e3 * statistics.median(h.seconds[self.warmup :] or h.seconds or [math.nan])
            for m, h in self.histories.items()
        }
        return [
            SummaryRow(
                m,
                ms[m],
                {b: ms[b] / ms[m] if _timed(ms.get(b)) and _timed(ms[m]) else None for b in self.baselines},
                h.metric[-1] if h.metric else float("nan"),
                self.gemm_work[m],
                h.diverged_at,
            )
            for m, h in self.histories.items()
        ]

    def format_table(self) -> str:
        """The summary as a markdown table."""
        names = {"bernoulli": "bernoulli", "torch": "nn.LSTM"}
        speed_cols = "".join(f" speedup vs {names.get(b, b)} |" for b in self.baselines)
        lines = [
            f"| method | ms / step (median) |{speed_cols} ideal GEMM speedup | {self.metric.name} |",
            "|---|---:|" + "---:|" * (len(self.baselines) + 2),
        ]
        for r in self.summary():
            speeds = "".join(" - |" if s is None else f" {s:.2f}x |" for s in r.speedups.values())
            value = f"{r.metric:.{self.metric.digits}f}" if r.metric == r.metric else "-"
            if r.diverged_at is not None:
                value = f"diverged at step {r.diverged_at}" + (f" (last: {value})" if r.metric == r.metric else "")
            ms = f"{r.ms_per_step:.2f}" if _timed(r.ms_per_step) else "-"  # a method stopped before any timed step
            lines.append(f"| {r.method} | {ms} |{speeds} {1 / r.gemm_work:.2f}x | {value} |")
        return "\n".join(lines)


class Contestant(Protocol):
    """One method in a race: a training step on a batch (returns the loss) and an evaluation."""

    def step(self, batch: Any) -> float: ...

    def evaluate(self) -> float: ...


def check_race_settings(steps: int, eval_every: int, warmup: int) -> None:
    """ValueError naming the value when a race's step counts are not usable."""
    check_int("steps", steps, 1)
    check_int("eval_every", eval_every, 1)
    check_int("warmup", warmup, 0)


def run_race(
    contestants: dict[str, Contestant],
    next_batch: Callable[[int], Any],
    result: RaceResult,
    *,
    steps: int,
    eval_every: int,
    callback: Callable[[RaceResult, int], None] | None = None,
    callback_every: int = 10,
    progress: bool = True,
) -> RaceResult:
    """Train every contestant for ``steps`` steps, interleaved with a rotating order; ``next_batch(step)``
    gives the batch of step ``step`` (the same for every method). Fills ``result``'s histories;
    ``callback(result, step)`` every ``callback_every`` steps and after the last."""
    check_int("callback_every", callback_every, 1)
    device = torch.device(result.device)
    methods: Sequence[str] = list(contestants)
    bar = tqdm(total=steps, desc="training", disable=not progress, file=sys.stderr)
    for step in range(1, steps + 1):
        batch = next_batch(step)
        for method in methods[step % len(methods) :] + methods[: step % len(methods)]:
            contestant, hist = contestants[method], result.histories[method]
            if hist.diverged_at is not None:
                continue
            sync(device)
            start = time.perf_counter()
            loss = float(contestant.step(batch))
            sync(device)
            if not math.isfinite(loss):
                hist.diverged_at = step
                continue
            hist.seconds.append(time.perf_counter() - start)
            hist.step.append(step)
            hist.loss.append(loss)
            if step % eval_every == 0 or step == steps:
                hist.eval_step.append(step)
                hist.metric.append(contestant.evaluate())
        bar.update()
        if callback is not None and (step % callback_every == 0 or step == steps):
            callback(result, step)
    bar.close()
    return result


def _timed(ms: float | None) -> bool:
    """Whether a method has a step time: None (no such method) and NaN (no step timed) have none."""
    return ms is not None and not math.isnan(ms)
