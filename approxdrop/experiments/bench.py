"""Training-step benchmark: ApproxDropoutMLP, every method at every p, side by side in one process.

One step is zero_grad + forward + cross-entropy + backward + optimizer step. For each p all
methods are built from the same initial weights, warmed up, then timed in alternating rounds
(the order rotates every round) so that drifts of the machine hit every method alike; each
method's time is the median over rounds of the mean step time within a round. On CUDA every
round is synchronised. Run ``approxdrop bench --help``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from .._env import check_int, check_rate, describe_machine, sync
from ..models import METHODS, ApproxDropoutMLP, Method, get_method, mlp_gemm_work
from ..training import sgd, training_step
from .options import Distinct, non_negative_int, positive_int, progress_bar, rate, write_record

PAPER_SIZES = (784, 2048, 2048, 10)


@dataclass
class BenchRow:
    """One measured (method, p) cell."""

    method: str
    p: float
    ms_per_step: float
    ratio_to_bernoulli: float
    gemm_work: float
    rounds: int


def mlp_step(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, lr: float = 0.01
) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """A zero-argument training step of ``model`` on one fixed batch (SGD with momentum 0.9)."""
    opt = sgd(model.parameters(), lr, momentum=0.9)
    return lambda: training_step(model, opt, x, target)


def check_protocol(
    device: str | torch.device,
    warmup: int,
    rounds: int,
    steps: int,
    ps: Sequence[float],
    methods: Sequence[str],
    choices: tuple[str, ...],
) -> torch.device:
    """Check the arguments every benchmark shares; return the device. ValueError naming a bad one:
    the device must be cpu or cuda (available), warmup >= 0, rounds and steps >= 1, ps non-empty
    rates, methods distinct names of ``choices`` that include the baseline, bernoulli."""
    check_int("warmup", warmup, 0)
    check_int("rounds", rounds, 1)
    check_int("steps", steps, 1)
    if not ps:
        raise ValueError(f"ps must hold at least one dropout rate, got {ps!r}")
    for p in ps:
        check_rate(p)
    if "bernoulli" not in methods:
        raise ValueError(f"methods must include 'bernoulli' (the baseline of the ratios), got {methods}")
    bad = [m for m in methods if m not in choices]
    if bad or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be distinct names from {choices}, got {methods}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be cpu or cuda, got {device!r} ({err})") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda (timings on {dev.type} mean nothing), got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available in this torch ({torch.__version__})")
    return dev


def _configuration(method: Method) -> tuple:
    """What a method times, as the methods table says it: what it drops, from which family, in how many batch
    groups, in which modules (its name, label and colour aside)."""
    return method.drops, method.family, method.groups, method.torch_modules


def with_groups(methods: Sequence[str], groups: Sequence[int]) -> dict[str, tuple[str, int | None]]:
    """What a benchmark times: ``{label: (method, groups)}``, every method with its own groups, then
    ``row`` with each G of ``groups`` (label ``"row G=4"``). ValueError for a G that makes a method of
    ``methods`` (the same family and groups in the methods table: G = 1 is ``row``, G = 4 ``row-g4``),
    which would time one configuration twice under two labels."""
    variants: dict[str, tuple[str, int | None]] = {m: (m, None) for m in methods}
    timed = {_configuration(get_method(m)): m for m in methods}
    for g in (check_int("groups", g, 1) for g in groups):
        same = timed.get(_configuration(replace(get_method("row"), groups=g)))
        if same is not None:
            raise ValueError(
                f"groups {g}: row with {g} batch group(s) is the method {same} (the same family and groups), "
                f"which is timed already; give one of them"
            )
        variants[f"row G={g}"] = ("row", g)
    return variants


def time_side_by_side(
    steps_by_method: dict[str, Callable[[], object]],
    device: torch.device,
    warmup: int,
    rounds: int,
    steps: int,
    bar: tqdm | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call of each zero-argument ``step`` in ``steps_by_method``: ``warmup`` calls
    each, then ``rounds`` rounds in which every method runs ``steps`` calls (the order rotates
    every round, synchronised on CUDA) -> {method: [mean seconds per call, one per round]}.
    ``clock``: wall time by default; ``time.process_time`` counts this process's CPU time only (host
    cost on a CPU shared with other work)."""
    methods = list(steps_by_method)
    for method in methods:
        for _ in range(warmup):
            steps_by_method[method]()
            if bar is not None:
                bar.update()
    times = {m: [] for m in methods}
    for r in range(rounds):
        for method in methods[r % len(methods) :] + methods[: r % len(methods)]:
            step = steps_by_method[method]
            sync(device)
            start = clock()
            for _ in range(steps):
                step()
            sync(device)
            times[method].append((clock() - start) / steps)
            if bar is not None:
                bar.update()
    return times


def measure(
    sizes: Sequence[int] = PAPER_SIZES,
    batch: int = 128,
    ps: Sequence[float] = (0.3, 0.5, 0.7),
    methods: Sequence[str] = METHODS,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    tile: int = 32,
    warmup: int = 3,
    rounds: int = 7,
    steps: int = 3,
    seed: int = 0,
    progress: bool = True,
    groups: Sequence[int] = (),
) -> list[BenchRow]:
    """Time one training step per method and p; see the module docstring for the protocol. Each
    ``G`` in ``groups`` adds ``row`` with G batch groups (``"row G=4"``). Bad arguments raise
    ValueError (``check_protocol``; sizes, batch, tile, G >= 1, at least two sizes)."""
    dev = check_protocol(device, warmup, rounds, steps, ps, methods, METHODS)
    if len(sizes) < 2:
        raise ValueError(f"sizes must hold at least an input and an output width, got {sizes!r}")
    for width in sizes:
        check_int("size", width, 1)
    check_int("batch", batch, 1)
    check_int("tile", tile, 1)
    variants = with_groups(methods, groups)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, sizes[0], generator=gen).to(dev, dtype)
    target = torch.randint(sizes[-1], (batch,), generator=gen).to(dev)
    rows: list[BenchRow] = []
    with progress_bar(len(ps) * len(variants) * (warmup + rounds), "bench", progress) as bar:  # ended on Ctrl-C too
        for p in ps:
            steps_by_method = {}
            for label, (method, g) in variants.items():
                torch.manual_seed(seed)  # same initial weights for every method
                model = ApproxDropoutMLP(sizes, p, method=method, tile=tile, groups=g).to(dev, dtype).train()
                steps_by_method[label] = mlp_step(model, x, target)
            times = time_side_by_side(steps_by_method, dev, warmup, rounds, steps, bar)
            base = statistics.median(times["bernoulli"])
            for label, (method, _) in variants.items():
                med = statistics.median(times[label])
                rows.append(BenchRow(label, p, 1e3 * med, med / base, mlp_gemm_work(sizes, p, method), rounds))
    return rows


def format_table(rows: list[BenchRow]) -> str:
    """Markdown table: method, p, ms/step, ratio to bernoulli, GEMM-work bound."""
    lines = [
        "| p | method | ms / step | ratio to bernoulli | GEMM work left (bound) |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.p:g} | {r.method} | {r.ms_per_step:.2f} | {r.ratio_to_bernoulli:.3f} | {r.gemm_work:.3f} |")
    return "\n".join(lines)


COMMAND, HELP = "bench", "training-step time of every dropout method of the MLP, side by side"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=list(PAPER_SIZES), help="MLP widths")
    parser.add_argument("--batch", type=positive_int, default=128)
    parser.add_argument("--ps", type=rate, nargs="+", action=Distinct, default=[0.3, 0.5, 0.7], help="dropout rates")
    parser.add_argument("--methods", nargs="+", action=Distinct, default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--groups", type=positive_int, nargs="+", action=Distinct, default=[], help="also time row with G batch groups"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--tile", type=positive_int, default=32)
    parser.add_argument("--warmup", type=non_negative_int, default=3)
    parser.add_argument("--rounds", type=positive_int, default=7)
    parser.add_argument("--steps", type=positive_int, default=3, help="steps per method per round")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (both sides alike)")


def run(args: argparse.Namespace) -> int:
    if "bernoulli" not in args.methods:
        args.parser.error("--methods must include bernoulli (the baseline of the ratios)")
    if len(args.sizes) < 2:
        args.parser.error(f"--sizes {' '.join(map(str, args.sizes))}: give at least an input and an output width")
    with_groups(args.methods, args.groups)  # a --groups that repeats a method: refused before any run
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    rows = measure(
        sizes=tuple(args.sizes),
        batch=args.batch,
        ps=tuple(args.ps),
        methods=tuple(args.methods),
        device=args.device,
        dtype=getattr(torch, args.dtype),
        tile=args.tile,
        warmup=args.warmup,
        rounds=args.rounds,
        steps=args.steps,
        progress=not args.no_progress,
        groups=tuple(args.groups),
    )
    print(f"ApproxDropoutMLP {args.sizes}, batch {args.batch}, {args.dtype}; {describe_machine(args.device)}")
    print(format_table(rows))
    write_record(args, rows)
    return 0
