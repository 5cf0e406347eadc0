"""One interleaved race engine for every model kind: several dropout methods trained side by side.

Every method starts from the same initial weights and sees the same batches. The methods are
interleaved step by step, the order rotating every step, so a drift of the machine hits all of
them alike. A step's time is measured around exactly the training step (the ``Contestant``'s
``step``), with a CUDA synchronisation before and after on a GPU. Every ``eval_every`` steps, and
after the last, each method is evaluated (test accuracy, validation perplexity, ...). A method
whose loss becomes NaN or inf is stopped there and marked "diverged at step N": no NaN reaches
its history, a figure or a table. A method's random draws depend only on the seed and its name
(``race_seed``), not on which other methods race or in which order.

The MLP race (``training.mlp.train``) and the language-model race (``training.lm.train_lm``) are
thin layers over ``run_race``: they build one ``Contestant`` per method and a batch source.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
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


BASELINE_NAMES = {"bernoulli": "bernoulli", "torch": "nn.LSTM"}  # a baseline as the table names it


def opposite_ways(base_ms: float, ms: float, speedup: float | None) -> bool:
    """Whether a method's median ms / step (``ms``) and its speedup over a baseline (median of the per-step
    ratios) point opposite ways: more ms than the baseline's median ``base_ms`` with a speedup above 1x, or
    fewer with one below. A speedup that shows as 1.00x, equal ms or a missing number never does. Both are
    medians, of different things: under a load that changes during a race they can disagree."""
    numbers = (base_ms, ms, speedup)
    if speedup is None or not all(math.isfinite(v) for v in numbers) or round(speedup, 2) == 1 or ms == base_ms:
        return False
    return (speedup > 1) == (ms > base_ms)


@dataclass(frozen=True)
class SummaryRow:
    """One method's line of the final table."""

    method: str
    ms_per_step: float  # median over the steps after warm-up (NaN: none timed after it)
    # baseline method: the median over the steps both timed after warm-up of its time / this one's
    # (RaceResult.speedup; above 1: faster); None without such a step
    speedups: dict[str, float | None]
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

    def timed_seconds(self, method: str) -> dict[int, float]:
        """``method``'s step times (seconds) by step, for the steps after ``warmup``: the ones every
        statistic of the summary reads. Empty for a method that is not in the race, or that was stopped
        (diverged) before its first step after the warm-up: its warm-up steps are never read as its time."""
        h = self.histories.get(method)
        return {} if h is None else {s: t for s, t in zip(h.step, h.seconds) if s > self.warmup}

    def step_speedups(self, baseline: str, method: str) -> list[float]:
        """``baseline``'s time over ``method``'s at every step after warm-up that both timed, in step order.
        The race interleaves the methods step by step, so each pair is measured side by side and a slow
        moment of the machine hits both. Empty without such a step (either method missing or stopped)."""
        base = self.timed_seconds(baseline)
        return [base[s] / t for s, t in self.timed_seconds(method).items() if s in base and t > 0 and base[s] > 0]

    def speedup(self, baseline: str, method: str) -> float | None:
        """The median of ``step_speedups(baseline, method)``: how many times faster ``method`` ran than
        ``baseline`` (above 1: faster); None where no step pairs (a missing or stopped baseline too)."""
        ratios = self.step_speedups(baseline, method)
        return statistics.median(ratios) if ratios else None

    def summary(self) -> list[SummaryRow]:
        """Median step time after ``warmup`` steps (NaN: no timed step after it), speedups against the
        baselines (``speedup``: the median of the per-step ratios; None without a timed pair), last
        evaluation."""
        ms = {m: 1e3 * statistics.median(self.timed_seconds(m).values() or [math.nan]) for m in self.histories}
        return [
            SummaryRow(
                m,
                ms[m],
                {b: self.speedup(b, m) for b in self.baselines},
                h.metric[-1] if h.metric else float("nan"),
                self.gemm_work[m],
                h.diverged_at,
            )
            for m, h in self.histories.items()
        ]

    def timing_note(self, rows: list[SummaryRow] | None = None) -> str:
        """One line for under the table when a method's ms / step and its speedup over a baseline point
        opposite ways (``opposite_ways``: more ms than the baseline, yet a speedup above 1x, or the reverse),
        saying which and why, and which number to read; "" when they all agree. ``rows``: ``summary()``, when
        the caller has it."""
        rows = self.summary() if rows is None else rows
        ms = {r.method: r.ms_per_step for r in rows}
        parts = []
        for b in self.baselines:
            if not _timed(ms.get(b)):
                continue
            for above, more in ((True, "more"), (False, "fewer")):
                odd = [
                    r.method
                    for r in rows
                    if r.method != b
                    and opposite_ways(ms[b], r.ms_per_step, r.speedups[b])
                    and (r.speedups[b] > 1) == above
                ]
                if odd:
                    parts.append(
                        f"{', '.join(odd)} took {more} ms per step than {BASELINE_NAMES.get(b, b)}, yet "
                        f"{'has' if len(odd) == 1 else 'have'} a speedup {'above' if above else 'below'} 1x"
                    )
        if not parts:
            return ""
        return (
            "; ".join(parts) + ". The ms column is the median over each method's own steps, which the machine's "
            "load moves; the speedup compares each step with the baseline's in the same step, where the load hits "
            "both: read the speedup."
        )

    def format_table(self) -> str:
        """The summary as a markdown table. A speedup is the median over the steps of the baseline's time
        over the method's in the same step (above 1x: faster); "-" where there is none to take. Under the
        table, after a blank line, ``timing_note`` when a method's ms and its speedup point opposite ways."""
        speed_cols = "".join(
            f" speedup vs {BASELINE_NAMES.get(b, b)} (median per step; > 1x: faster) |" for b in self.baselines
        )
        lines = [
            f"| method | ms / step (median) |{speed_cols} ideal GEMM speedup | {self.metric.name} |",
            "|---|---:|" + "---:|" * (len(self.baselines) + 2),
        ]
        rows = self.summary()
        for r in rows:
            speeds = "".join(" - |" if s is None else f" {s:.2f}x |" for s in r.speedups.values())
            value = f"{r.metric:.{self.metric.digits}f}" if r.metric == r.metric else "-"
            if r.diverged_at is not None:
                value = f"diverged at step {r.diverged_at}" + (f" (last: {value})" if r.metric == r.metric else "")
            ms = f"{r.ms_per_step:.2f}" if _timed(r.ms_per_step) else "-"  # a method stopped before any timed step
            lines.append(f"| {r.method} | {ms} |{speeds} {1 / r.gemm_work:.2f}x | {value} |")
        note = self.timing_note(rows)
        return "\n".join(lines + (["", note] if note else []))


class Contestant(Protocol):
    """One method in a race: a training step on a batch (returns the loss) and an evaluation."""

    def step(self, batch: Any) -> float: ...

    def evaluate(self) -> float: ...


def check_race_settings(steps: int, eval_every: int, warmup: int) -> None:
    """ValueError naming the value when a race's step counts are not usable."""
    check_int("steps", steps, 1)
    check_int("eval_every", eval_every, 1)
    check_int("warmup", warmup, 0)


def race_seed(seed: int, method: str, stream: str) -> int:
    """The seed of ``method``'s random ``stream`` ("patterns", "global", ...) in a race of seed ``seed``: a
    stable hash of the three (not Python's ``hash``), so a method's draws do not depend on the other methods."""
    digest = hashlib.blake2b(f"{stream}/{method}/{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: any torch seed


class GlobalStream:
    """One contestant's own stream of torch's global random state (the CPU's, and the GPU's on ``device``):
    ``with stream:`` swaps it in, and saves it back after, so its nn.Dropout draws are its own."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.cuda = device if device.type == "cuda" else None
        self.cpu_state = torch.Generator().manual_seed(seed).get_state()
        self.cuda_state = None if self.cuda is None else torch.Generator(self.cuda).manual_seed(seed).get_state()

    def __enter__(self) -> None:
        torch.set_rng_state(self.cpu_state)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda_state, self.cuda)

    def __exit__(self, *exc: object) -> None:
        self.cpu_state = torch.get_rng_state()
        if self.cuda is not None:
            self.cuda_state = torch.cuda.get_rng_state(self.cuda)


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
    seed: int | None = None,
) -> RaceResult:
    """Train every contestant for ``steps`` steps, interleaved with a rotating order; ``next_batch(step)``
    gives the batch of step ``step`` (the same for every method). Fills ``result``'s histories;
    ``callback(result, step)`` every ``callback_every`` steps and after the last. With a ``seed``, each
    contestant draws from torch's global random state through its own ``GlobalStream`` (seeded by
    ``race_seed(seed, method, "global")``), swapped in outside its timed step (about 1 us on a CPU), and
    the global state is restored after the race; None: they share the global state."""
    check_int("callback_every", callback_every, 1)
    device = torch.device(result.device)
    methods: Sequence[str] = list(contestants)
    own = {m: nullcontext() if seed is None else GlobalStream(race_seed(seed, m, "global"), device) for m in methods}
    bar = tqdm(total=steps, desc="training", disable=not progress, file=sys.stderr)
    with torch.random.fork_rng([device] if device.type == "cuda" else [], enabled=seed is not None):
        for step in range(1, steps + 1):
            batch = next_batch(step)
            for method in methods[step % len(methods) :] + methods[: step % len(methods)]:
                contestant, hist = contestants[method], result.histories[method]
                if hist.diverged_at is not None:
                    continue
                with own[method]:
                    sync(device)
                    start = time.perf_counter()
                    loss = float(contestant.step(batch))
                    sync(device)
                    seconds = time.perf_counter() - start
                    if not math.isfinite(loss):
                        hist.diverged_at = step
                        continue
                    hist.seconds.append(seconds)
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
