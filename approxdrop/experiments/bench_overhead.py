"""Host overhead of a training step: what each dropout method's own machinery (Python, dispatch, pattern
draws, loops) costs where the GEMMs cost nothing, and where on this machine ARD starts to win.

Timings side by side in one process, methods interleaved (``bench.time_side_by_side``):
- **host ms / step** on tiny models (MLP [8, 16, 16, 2] batch 4, an FFN block d 8 -> 32 -> 8 batch 4 and
  its ``nn.Sequential`` twin, an LSTM language model 2 x 16, vocabulary 50, 5 x 4 tokens): compute is
  negligible there, so the step time is the fixed host cost; on a GPU it is the step time of every lab;
- **aten ops per step** at the paper size (MLP 784-2048-2048-10, batch 128): every op one training step
  dispatches (forward, backward, optimizer), counted with a TorchDispatchMode, and how many of them
  compute, leaving out views such as ``t``, ``slice`` or ``detach`` (on a GPU, the ops that launch kernels);
  the median and range over a few steps (a step's count depends on its draw), for each executor of the row
  methods (``compact``, what the CPU rule runs at this size; ``masked``, what a measured choice runs where
  the host cost decides);
- **crossover**: for each batch size, the smallest width ``w`` of an MLP [w, w, w, 10] from which a
  method's step beats nn.Dropout's (ratio < 1) at every wider width tried too, on this machine (with the
  default executor: the CPU rule on a CPU, measured on CUDA);
- **executors**: on the same grid, for the row methods (the others run no executor), the executor of the CPU
  rule against the one measured on this device (``executor="measured"``, ``models.executor_choice``), with
  the probe's times.

Every step is zero_grad + forward + loss + backward + SGD step. On a CPU with one torch thread the clock is
this process's CPU time (``time.process_time``), so other work on a shared machine does not count; else
wall time, synchronised on CUDA. Run ``approxdrop bench-overhead --help``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm.auto import tqdm

from .._env import check_int, check_rate, describe_machine
from ..models import METHODS, ApproxDropoutFFN, ApproxDropoutLSTM, get_method
from ..models.executor_choice import measured_choice
from ..models.lstm import LSTM_METHODS
from ..models.methods import ROW
from ..models.mlp import ApproxDropoutMLP
from ..models.sites import grouped_executor
from ..training import sgd
from ..training.lm import lm_training_step
from .bench import check_protocol, mlp_step, time_side_by_side
from .options import Distinct, non_negative_int, positive_int, progress_bar, rate, write_record

TINY_MLP = (8, 16, 16, 2)
TINY_BATCH = 4
PAPER_SIZES = (784, 2048, 2048, 10)
CROSSOVER_WIDTHS = (16, 32, 64, 128, 256, 512, 1024, 2048)
CROSSOVER_BATCHES = (8, 32, 128)
FFN_METHODS = ("bernoulli", "row", "row-g4")  # the FFN's baseline is its nn.Sequential twin ("nn.Dropout")


@dataclass
class OverheadRow:
    """One measured cell: ``model`` (mlp, ffn, lstm), method label, host ms per step and its ratio to the
    model's nn.Dropout baseline (the spread is the relative interquartile range over rounds)."""

    model: str
    method: str
    ms_per_step: float
    ratio: float
    spread: float


@dataclass
class OpCountRow:
    """aten ops dispatched by a paper-size training step of ``method`` run by ``executor`` (``auto`` for methods
    without one), over ``steps`` steps: the median of all of them (``ops``) and their range, the median of
    those that compute (``_OpCounter``), and the most frequent ones of the first step counted."""

    method: str
    executor: str
    steps: int
    ops: int
    ops_range: tuple[int, int]
    compute_ops: int
    top: str


@dataclass
class CrossoverRow:
    """The smallest width from which ``method``'s step beats nn.Dropout's at ``batch`` at every wider width
    tried too (``lasting_win``; None: no such width), with the ratio at every width tried."""

    method: str
    batch: int
    width: int | None
    ratios: dict[int, float]


def host_clock(device: torch.device) -> Callable[[], float]:
    """CPU time of this process on a CPU with one torch thread (what the host spends, whatever else runs),
    else wall time."""
    return time.process_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter


def _spread(times: list[float]) -> float:
    """Relative interquartile range of ``times`` (0 for fewer than 4)."""
    if len(times) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(times, n=4)
    return (q3 - q1) / statistics.median(times)


def mlp_steps(
    sizes: Sequence[int],
    batch: int,
    p: float,
    methods: Sequence[str],
    device: torch.device,
    seed: int = 0,
    executor: str = "auto",
) -> dict[str, Callable[[], object]]:
    """A zero-argument training step per MLP method on one fixed batch, same initial weights (``executor``: how
    the row methods run, ``sites.GROUPED_EXECUTORS``)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, sizes[0], generator=gen).to(device)
    y = torch.randint(sizes[-1], (batch,), generator=gen).to(device)
    steps = {}
    for method in methods:
        torch.manual_seed(seed)
        model = ApproxDropoutMLP(sizes, p, method=method, executor=executor)
        steps[method] = mlp_step(model.to(device).train(), x, y)
    return steps


def _bind(step, model, opt, x, y) -> Callable[[], object]:
    return lambda: step(model, opt, x, y)


def ffn_steps(p: float, methods: Sequence[str], device: torch.device, seed: int = 0) -> dict[str, Callable[[], object]]:
    """Tiny FFN block (d 8 -> 32 -> 8, batch 4, GELU): ``nn.Dropout`` is the plain nn.Sequential twin,
    the others ApproxDropoutFFN built around the same Linears (what ``convert`` makes)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(TINY_BATCH, 8, generator=gen).to(device)
    target = torch.randn(TINY_BATCH, 8, generator=gen).to(device)
    steps = {}
    for method in methods:
        torch.manual_seed(seed)
        fc1, fc2 = nn.Linear(8, 32), nn.Linear(32, 8)
        if method == "bernoulli":
            block = nn.Sequential(fc1, nn.GELU(), nn.Dropout(p), fc2)
            label = "nn.Dropout"
        else:
            block = ApproxDropoutFFN.from_modules(fc1, nn.GELU(), fc2, p, method=method)
            label = method
        block = block.to(device).train()
        opt = sgd(block.parameters(), 0.01, momentum=0.9)
        steps[label] = _bind(_regression_step, block, opt, x, target)
    return steps


def _regression_step(model, opt, x, target) -> None:
    opt.zero_grad(set_to_none=True)
    nn.functional.mse_loss(model(x), target).backward()
    opt.step()


def lstm_steps(
    p: float, methods: Sequence[str], device: torch.device, seed: int = 0
) -> dict[str, Callable[[], object]]:
    """Tiny LSTM language model (2 x 16, vocabulary 50, 5 steps x batch 4), one truncated-BPTT step."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(50, (6, 4), generator=gen).to(device)  # [T + 1, B]
    steps = {}
    for method in methods:
        torch.manual_seed(seed)
        model = ApproxDropoutLSTM(50, hidden=16, layers=2, p=p, method=method).to(device).train()
        opt = sgd(model.parameters(), 0.1)
        steps[method] = _bind(_lm_step, model, opt, tokens[:-1], tokens[1:])
    return steps


def _lm_step(model, opt, x, y) -> None:
    lm_training_step(model, opt, x, y, None)


def host_overhead(
    p: float,
    mlp_methods: Sequence[str],
    lstm_methods: Sequence[str],
    device: torch.device,
    warmup: int,
    rounds: int,
    steps: int,
    bar: tqdm | None = None,
) -> list[OverheadRow]:
    """Host ms per step of every method on the three tiny models; ratios to each model's nn.Dropout."""
    rows = []
    for model, steps_by_method, base in (
        ("mlp", mlp_steps(TINY_MLP, TINY_BATCH, p, mlp_methods, device), "bernoulli"),
        ("ffn", ffn_steps(p, FFN_METHODS, device), "nn.Dropout"),
        ("lstm", lstm_steps(p, lstm_methods, device), "bernoulli"),
    ):
        times = time_side_by_side(steps_by_method, device, warmup, rounds, steps, bar, host_clock(device))
        base_median = statistics.median(times[base])
        for label, t in times.items():
            median = statistics.median(t)
            rows.append(OverheadRow(model, label, 1e3 * median, median / base_median, _spread(t)))
    return rows


class _OpCounter(TorchDispatchMode):
    """Counts every op dispatched inside it (``ops``, by name), and in ``compute`` those that compute: aten ops
    that are not views (a view, ``t``, ``slice``, ``detach``, ..., only makes a new header)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.compute = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        self.compute += func.namespace == "aten" and not func.is_view
        return func(*args, **(kwargs or {}))


OP_COUNT_STEPS = 8  # steps counted per method and executor: a step's count depends on its draw


def op_counts(
    p: float, methods: Sequence[str], device: torch.device, sizes: Sequence[int] = PAPER_SIZES
) -> list[OpCountRow]:
    """aten ops of ``OP_COUNT_STEPS`` paper-size training steps per method and executor (after one warm-up
    step); row methods once per executor (compact, masked), the others as they run."""
    rows = []
    for method in methods:
        executors = ("compact", "masked") if get_method(method).drops == ROW else ("auto",)
        for executor in executors:
            step = mlp_steps(sizes, 128, p, [method], device, executor=executor)[method]
            step()  # warm-up: momentum buffers exist, the laws are searched
            counters = []
            for _ in range(OP_COUNT_STEPS):
                with _OpCounter() as counter:
                    step()
                counters.append(counter)
            totals = [sum(c.ops.values()) for c in counters]
            top = ", ".join(f"{name.removeprefix('aten.')} {n}" for name, n in counters[0].ops.most_common(4))
            compute = round(statistics.median(c.compute for c in counters))
            rows.append(
                OpCountRow(
                    method,
                    executor,
                    OP_COUNT_STEPS,
                    round(statistics.median(totals)),
                    (min(totals), max(totals)),
                    compute,
                    top,
                )
            )
    return rows


def crossover(
    p: float,
    methods: Sequence[str],
    device: torch.device,
    widths: Sequence[int],
    batches: Sequence[int],
    warmup: int,
    rounds: int,
    steps: int,
    bar: tqdm | None = None,
) -> list[CrossoverRow]:
    """For each batch, the smallest width w of an MLP [w, w, w, 10] from which each method beats nn.Dropout
    at every wider width tried (``lasting_win``)."""
    ratios: dict[tuple[str, int], dict[int, float]] = {(m, b): {} for m in methods for b in batches}
    for batch in batches:
        for width in widths:
            times = time_side_by_side(
                mlp_steps((width, width, width, 10), batch, p, ("bernoulli", *methods), device),
                device,
                warmup,
                rounds,
                steps,
                bar,
                host_clock(device),
            )
            base = statistics.median(times["bernoulli"])
            for m in methods:
                ratios[m, batch][width] = statistics.median(times[m]) / base
    return [CrossoverRow(m, b, lasting_win(r), r) for (m, b), r in ratios.items()]


@dataclass
class ExecutorRow:
    """How an MLP [w, w, w, 10] of ``method`` runs its row patterns at ``batch``: the CPU rule's executor
    (``sites.grouped_executor``), the one measured on this device (``executor="measured"``, the default on
    CUDA) and the probe's times (ms per forward and backward; None: not timed)."""

    method: str
    batch: int
    width: int
    rule: str
    measured: str
    masked_ms: float | None
    compact_ms: float | None


def executor_choices(
    p: float,
    methods: Sequence[str],
    device: torch.device,
    widths: Sequence[int],
    batches: Sequence[int],
    bar: tqdm | None = None,
) -> list[ExecutorRow]:
    """The rule's and the measurement's executor for each method, batch and width of the crossover grid."""
    rows = []
    for method in methods:
        for batch in batches:
            for width in widths:
                model = ApproxDropoutMLP((width, width, width, 10), p, method, executor="measured").to(device)
                rule = grouped_executor("auto", batch, model.groups, width * width)
                choice = measured_choice(model.executor_probe(), batch, model.groups, torch.float32, device)
                times = dict(choice.times_ms) if choice is not None else {}
                measured = choice.path if choice is not None else "masked"
                rows.append(
                    ExecutorRow(method, batch, width, rule, measured, times.get("masked"), times.get("compact"))
                )
                if bar is not None:
                    bar.update(1)
    return rows


def lasting_win(ratios: dict[int, float]) -> int | None:
    """The smallest width whose ratio, and every wider width's, is below 1 (None: the widest one is not): a
    ratio that dips below 1 and comes back above is the machine's noise near 1, not a crossover."""
    widths = sorted(ratios)
    lasting = [w for i, w in enumerate(widths) if all(ratios[v] < 1.0 for v in widths[i:])]
    return lasting[0] if lasting else None


def format_tables(
    overhead: list[OverheadRow],
    counts: list[OpCountRow],
    cross: list[CrossoverRow],
    executors: Sequence[ExecutorRow] = (),
) -> str:
    """The results as Markdown tables."""
    lines = ["| model | method | host ms / step | x nn.Dropout | spread (IQR) |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r.model} | {r.method} | {r.ms_per_step:.3f} | {r.ratio:.2f} | {r.spread:.0%} |" for r in overhead]
    if counts:
        lines += [
            "",
            f"| method | executor | aten ops / step (paper size; median, range over {counts[0].steps} steps) "
            "| of which compute (median) | most frequent |",
            "|---|---|---:|---:|---|",
        ]
        lines += [
            f"| {r.method} | {r.executor} | {r.ops} ({r.ops_range[0]}-{r.ops_range[1]}) | {r.compute_ops} | {r.top} |"
            for r in counts
        ]
    if cross:
        widths = sorted(next(iter(cross)).ratios)
        lines += ["", "| " + " | ".join(["method", "batch", "wins from width", *(f"w={w}" for w in widths)]) + " |"]
        lines.append("|---|---:|---:|" + "---:|" * len(widths))
        for r in cross:
            cells = [r.method, str(r.batch), "none" if r.width is None else str(r.width)]
            lines.append("| " + " | ".join([*cells, *(f"{r.ratios[w]:.2f}" for w in widths)]) + " |")
    if executors:
        lines += [
            "",
            "| method | batch | width | CPU rule | measured here | masked ms | compact ms |",
            "|---|---:|---:|---|---|---:|---:|",
        ]
        for r in executors:
            ms = " | ".join("-" if t is None else f"{t:.3f}" for t in (r.masked_ms, r.compact_ms))
            lines.append(f"| {r.method} | {r.batch} | {r.width} | {r.rule} | {r.measured} | {ms} |")
    return "\n".join(lines)


COMMAND, HELP = "bench-overhead", "host cost of a training step on tiny models, aten ops per step, the crossover"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--p", type=rate, default=0.5, help="dropout rate")
    defaults = ("bernoulli", "row", "row-g4")
    parser.add_argument("--methods", nargs="+", action=Distinct, default=list(defaults), choices=METHODS)
    parser.add_argument("--lstm-methods", nargs="+", action=Distinct, default=list(defaults), choices=LSTM_METHODS)
    parser.add_argument("--warmup", type=non_negative_int, default=20)
    parser.add_argument("--rounds", type=positive_int, default=15)
    parser.add_argument("--steps", type=positive_int, default=20, help="steps per method per round")
    parser.add_argument("--no-op-counts", action="store_true", help="skip the paper-size aten op counts")
    parser.add_argument(
        "--no-executors", action="store_true", help="skip the executor choices (CPU rule against measured)"
    )
    parser.add_argument(
        "--crossover-widths",
        type=positive_int,
        nargs="+",
        action=Distinct,
        default=list(CROSSOVER_WIDTHS),
        help="widths w of the crossover's MLPs [w, w, w, 10] (also the executor table's)",
    )
    parser.add_argument(
        "--crossover-batches",
        type=positive_int,
        nargs="+",
        action=Distinct,
        default=list(CROSSOVER_BATCHES),
        help="batch sizes of the crossover (also the executor table's)",
    )
    parser.add_argument("--crossover-rounds", type=positive_int, default=5)


def measure(
    args: argparse.Namespace,
) -> tuple[list[OverheadRow], list[OpCountRow], list[CrossoverRow], list[ExecutorRow]]:
    """Run the measurements of ``args`` (see ``add_arguments``)."""
    check_rate(args.p)
    for name in ("methods", "lstm_methods"):
        if "bernoulli" not in getattr(args, name):
            args.parser.error(f"--{name.replace('_', '-')} must include bernoulli (the baseline)")
    dev = check_protocol(args.device, args.warmup, args.rounds, args.steps, [args.p], args.methods, METHODS)
    challengers = [m for m in args.methods if m != "bernoulli"]
    row_methods = [m for m in challengers if get_method(m).drops == ROW]  # those an executor runs (row patterns)
    widths, batches = [check_int("width", w, 1) for w in args.crossover_widths], args.crossover_batches
    total = (  # the steps each phase counts on the bar: host_overhead, crossover, executor_choices
        (args.warmup + args.rounds) * (len(args.methods) + len(FFN_METHODS) + len(args.lstm_methods))
        + len(widths) * len(batches) * (1 + args.crossover_rounds) * len(args.methods)
        + len(widths) * len(batches) * len(row_methods) * (not args.no_executors)
    )
    with progress_bar(total, COMMAND, not args.no_progress) as bar:
        overhead = host_overhead(
            args.p, args.methods, args.lstm_methods, dev, args.warmup, args.rounds, args.steps, bar
        )
        counts = [] if args.no_op_counts else op_counts(args.p, args.methods, dev)
        cross = crossover(args.p, challengers, dev, widths, batches, 1, args.crossover_rounds, 3, bar)
        executors = [] if args.no_executors else executor_choices(args.p, row_methods, dev, widths, batches, bar)
    return overhead, counts, cross, executors


def run(args: argparse.Namespace) -> int:
    overhead, counts, cross, executors = measure(args)
    print(f"host overhead at p = {args.p}, {torch.get_num_threads()} torch thread(s); {describe_machine(args.device)}")
    print(format_tables(overhead, counts, cross, executors))
    write_record(args, [*overhead, *counts, *cross, *executors])
    return 0
