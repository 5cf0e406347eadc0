"""Eager against graphed training steps of the MLP: what a compiled step (CUDA graphs on a GPU) saves of
the host cost, and how many graphs ARD's patterns need.

Six steps per size, side by side in one process, methods interleaved (``bench.time_side_by_side``):
``bernoulli`` eager and compiled; ``row`` and ``row-g4`` (the MLP's default: four complementary batch
groups) each eager (their ``auto`` executor) and compiled with ``static_shapes=True`` (shapes set by each
site's ``(dp, keep)``; ``draw_patterns`` before each step, outside the graph). On CUDA the compiled steps use
``torch.compile(mode="reduce-overhead")``: CUDA graphs, one per ``(dp, keep)`` class of the static model.
Elsewhere ``--backend`` picks the compiler (default inductor; ``eager`` for a quick dry run).

Every step is zero_grad + forward + cross-entropy + backward + SGD step; the compiled ones compile the
model's forward and backward. The clock is wall time (synchronised on CUDA), not CPU time: after a
compile, inductor's worker threads in this process add CPU time to every step, compiled or not (run it
on a quiet machine). The ``row`` and ``row-g4`` models draw from one law per site with a single ``(dp, keep)``
class (``single_class_law``: the smallest period that keeps exactly ``1 - p``; a p with no such period up to 16
is refused), so after its first step a static compiled model replays one graph whatever the offsets; a
searched law of a small width has up to about ten classes per site, and one graph per combination.
``graphs`` counts the graphs Dynamo compiled for a step: each compiled step compiles through a backend object
of its own, so Dynamo keeps its graphs apart from the other steps' (a step never reuses a graph another step
compiled, as the models of one class would at p = 0, when their graphs are the same), and the count is that
backend's compiles; ``bound`` is the product over the static model's sites of its laws' classes. Run
``approxdrop bench-graphs --help``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch

from .._env import check_rate, describe_machine
from ..distribution import RATE_TOL, PatternDistribution
from ..models.mlp import ApproxDropoutMLP
from ..models.sites import static_graph_bound
from ..training.graphed import compiled_step
from ..training.mlp import training_step
from ..training.optim import sgd
from .bench import check_protocol, time_side_by_side
from .bench_overhead import PAPER_SIZES, TINY_BATCH, TINY_MLP
from .options import compile_backend, non_negative_int, positive_int, progress_bar, rate, write_record

COMMAND, HELP = "bench-graphs", "eager against compiled (CUDA-graphed on a GPU) MLP steps, and graphs per model"
STEPS = (
    "bernoulli eager",
    "bernoulli compiled",
    "row eager",
    "row static compiled",
    "row-g4 eager",
    "row-g4 static compiled",
)
PAPER_BATCH = 128


@dataclass
class GraphRow:
    """One measured step: model size, step label, ms per step (median over rounds), its ratio to eager
    bernoulli's, and the graphs compiled for it (None for eager steps) with their bound."""

    size: str
    step: str
    ms_per_step: float
    ratio: float
    graphs: int | None
    bound: int | None


def single_class_law(p: float, max_period: int = 16) -> PatternDistribution:
    """The row law with one ``(dp, keep)`` of rate p: ``keep / dp = 1 - p`` with ``dp <= max_period`` (the
    smallest such period), within the models' ``RATE_TOL``; ValueError for a p that has none."""
    kept = Fraction(1 - check_rate(p)).limit_denominator(max_period)
    if kept == 0 or abs(float(1 - kept) - p) > RATE_TOL:
        raise ValueError(
            f"p {p} is not 1 - keep/dp for any period dp <= {max_period}: the steps here draw from one (dp, keep) "
            "per site, so give such a rate (0.1, 0.25, 0.3, 0.5, 0.7, 0.75, 0.9, ...)"
        )
    return PatternDistribution(((kept.denominator, kept.numerator),), (1.0,))


class CountingBackend:
    """A torch.compile backend that compiles as the backend named ``name`` would (built as torch.compile
    builds it, with the mode torch.compile passes on) and counts its compiles in ``graphs``. One per compiled
    step: Dynamo keeps the graphs of backends that differ apart, so each step compiles, and counts, its own
    graphs; a graph another step made earlier in the process (Dynamo's cache is per code object, the same for
    every model of a class) is never reused or left uncounted."""

    def __init__(self, name: str) -> None:
        self.name = self.__name__ = name
        self.graphs = 0
        self._compilers: dict[str | None, Callable] = {}

    def __call__(self, graph: torch.fx.GraphModule, inputs: list, mode: str | None = None) -> Callable:
        self.graphs += 1
        if mode not in self._compilers:
            self._compilers[mode] = (
                torch._TorchCompileInductorWrapper(mode, None, None)
                if self.name == "inductor"
                else torch._TorchCompileWrapper(self.name, mode, None, None)
            )
        return self._compilers[mode](graph, inputs)

    def reset(self) -> None:
        for compiler in self._compilers.values():
            compiler.reset()


class _Counted:
    """A compiled step; ``graphs``: the graphs its own backend compiled during its calls."""

    def __init__(self, step: Callable[[], object], backend: CountingBackend) -> None:
        self.step, self.backend = step, backend

    @property
    def graphs(self) -> int:
        return self.backend.graphs

    def __call__(self) -> None:
        self.step()


def steps_for(
    sizes: tuple[int, ...], batch: int, p: float, device: torch.device, backend: str, seed: int = 0
) -> tuple[dict[str, Callable[[], object]], int]:
    """The steps of ``STEPS`` on one fixed batch, same initial weights; the static models' graph bound."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, sizes[0], generator=gen).to(device)  # [B, D]
    y = torch.randint(sizes[-1], (batch,), generator=gen).to(device)  # [B]
    row_laws = [single_class_law(p)] * (len(sizes) - 2)  # a site per hidden layer
    laws = {"bernoulli": None, "row": row_laws, "row-g4": row_laws}
    steps: dict[str, Callable[[], object]] = {}
    bound = 0
    for label in STEPS:
        method, compiled = label.split()[0], label.endswith("compiled")
        torch.manual_seed(seed)
        model = ApproxDropoutMLP(sizes, p, method=method, distributions=laws[method], static_shapes="static" in label)
        model = model.to(device).train()
        opt = sgd(model.parameters(), 0.01, momentum=0.9)
        if not compiled:
            steps[label] = lambda model=model, opt=opt: training_step(model, opt, x, y)
            continue
        counting = CountingBackend(backend)
        step = compiled_step(model, opt, torch.nn.functional.cross_entropy, backend=counting)
        steps[label] = _Counted(lambda step=step: step(x, y), counting)
        if "static" in label:
            bound = static_graph_bound(model)
    return steps, bound


def measure(args: argparse.Namespace) -> list[GraphRow]:
    """Time the steps of ``STEPS`` at each size of ``args``; rows in ``STEPS`` order per size."""
    single_class_law(args.p)  # a rate with one (dp, keep) class, refused before anything runs
    device = check_protocol(args.device, args.warmup, args.rounds, args.steps, [args.p], ["bernoulli"], ("bernoulli",))
    sizes = [("tiny", TINY_MLP, TINY_BATCH)] + ([] if args.no_paper else [("paper", PAPER_SIZES, PAPER_BATCH)])
    rows = []
    total = len(sizes) * len(STEPS) * (args.warmup + args.rounds)
    with progress_bar(total, COMMAND, not args.no_progress) as bar:
        for name, dims, batch in sizes:
            torch._dynamo.reset()
            steps, bound = steps_for(dims, batch, args.p, device, args.backend)
            times = time_side_by_side(steps, device, args.warmup, args.rounds, args.steps, bar)
            base = statistics.median(times["bernoulli eager"])
            for label, t in times.items():
                graphs = getattr(steps[label], "graphs", None)
                rows.append(
                    GraphRow(
                        f"{name} {list(dims)} batch {batch}",
                        label,
                        1e3 * statistics.median(t),
                        statistics.median(t) / base,
                        graphs,
                        bound if "static" in label else None,
                    )
                )
    return rows


def format_table(rows: list[GraphRow]) -> str:
    lines = ["| size | step | ms / step | x eager bernoulli | graphs (bound) |", "|---|---|---:|---:|---|"]
    for r in rows:
        graphs = "" if r.graphs is None else f"{r.graphs}" + ("" if r.bound is None else f" ({r.bound})")
        lines.append(f"| {r.size} | {r.step} | {r.ms_per_step:.3f} | {r.ratio:.2f} | {graphs} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--p", type=rate, default=0.5, help="dropout rate")
    parser.add_argument("--warmup", type=non_negative_int, default=10, help="steps per method before timing")
    parser.add_argument("--rounds", type=positive_int, default=10)
    parser.add_argument("--steps", type=positive_int, default=10, help="steps per method per round")
    parser.add_argument("--no-paper", action="store_true", help="skip the paper size (784-2048-2048-10, batch 128)")
    parser.add_argument(
        "--backend",
        type=compile_backend,
        default="inductor",
        help="torch.compile backend off CUDA (CUDA: mode reduce-overhead); one of torch._dynamo.list_backends",
    )


def run(args: argparse.Namespace) -> int:
    rows = measure(args)
    print(f"eager against compiled steps at p = {args.p}; {describe_machine(args.device)}")
    print(format_table(rows))
    write_record(args, rows)
    return 0
