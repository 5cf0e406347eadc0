"""Training-step benchmark of one transformer MLP block: ``ApproxDropoutFFN`` against the
``nn.Sequential(Linear, GELU, Dropout, Linear)`` block it replaces, side by side in one process.

One step is zero_grad + forward + mean-squared error against a fixed target + backward + SGD step
with momentum, on x of shape [batch, sequence, d_model]. Every block starts from the same weights;
the methods are warmed up, then timed in rotating rounds (``bench.time_side_by_side``); each time
is the median over rounds. ``bernoulli`` is the plain ``nn.Sequential`` block with ``nn.Dropout``:
the ratios are to it. Run ``approxdrop bench-ffn --help``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._env import check_int, describe_machine
from ..models import ApproxDropoutFFN
from ..models.ffn import FFN_METHODS
from ..training import sgd
from .bench import check_protocol, time_side_by_side
from .options import Distinct, non_negative_int, positive_int, progress_bar, rate, write_record

CHOICES = tuple(m for m in FFN_METHODS if m != "none")


@dataclass
class FFNBenchRow:
    """One measured (method, p) cell."""

    method: str
    p: float
    ms_per_step: float
    ratio_to_dropout_block: float
    rounds: int


def dropout_block(d_model: int, d_hidden: int, p: float) -> nn.Sequential:
    """The block users write: ``Linear -> GELU -> nn.Dropout(p) -> Linear``."""
    return nn.Sequential(nn.Linear(d_model, d_hidden), nn.GELU(), nn.Dropout(p), nn.Linear(d_hidden, d_model))


def block_for(method: str, d_model: int, d_hidden: int, p: float) -> nn.Module:
    """``bernoulli``: the ``nn.Sequential`` block; any other method: ``ApproxDropoutFFN`` with the same weights
    (built around the block's own Linears)."""
    block = dropout_block(d_model, d_hidden, p)
    if method == "bernoulli":
        return block
    return ApproxDropoutFFN.from_modules(block[0], nn.GELU(), block[3], p, method=method)


def ffn_step(block: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A zero-argument training step of ``block`` on a fixed x, target (Tensor[B, T, d_model])."""
    opt = sgd(block.parameters(), 1e-3, momentum=0.9)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(block(x), target)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def measure(
    d_model: int = 1024,
    d_hidden: int = 4096,
    batch: int = 16,
    sequence: int = 128,
    ps: Sequence[float] = (0.3,),
    methods: Sequence[str] = ("bernoulli", "row", "row-g4"),
    device: str = "cpu",
    warmup: int = 2,
    rounds: int = 5,
    steps: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> list[FFNBenchRow]:
    """Median step time of every method at every p and its ratio to the ``nn.Dropout`` block's."""
    dev = check_protocol(device, warmup, rounds, steps, ps, methods, CHOICES)
    for name, value in (("d_model", d_model), ("d_hidden", d_hidden), ("batch", batch), ("sequence", sequence)):
        check_int(name, value, 1)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, sequence, d_model, generator=gen).to(dev)  # [B, T, d_model]
    target = torch.randn(batch, sequence, d_model, generator=gen).to(dev)
    rows = []
    total = len(ps) * len(methods) * (warmup + rounds)
    with progress_bar(total, "bench-ffn", progress) as bar:  # ended on Ctrl-C too, before cli says so
        for p in ps:
            steps_by_method = {}
            for method in methods:
                torch.manual_seed(seed)  # the same initial weights for every method
                steps_by_method[method] = ffn_step(block_for(method, d_model, d_hidden, p).to(dev).train(), x, target)
            times = time_side_by_side(steps_by_method, dev, warmup, rounds, steps, bar)
            base = statistics.median(times["bernoulli"])
            for method in methods:
                med = statistics.median(times[method])
                rows.append(FFNBenchRow(method, p, 1e3 * med, med / base, rounds))
    return rows


def format_table(rows: list[FFNBenchRow]) -> str:
    """Markdown table: p, method, ms/step, ratio to the nn.Dropout block."""
    lines = ["| p | method | ms / step | ratio to the nn.Dropout block |", "|---:|---|---:|---:|"]
    for r in rows:
        label = "nn.Dropout block" if r.method == "bernoulli" else f"ApproxDropoutFFN {r.method}"
        lines.append(f"| {r.p:g} | {label} | {r.ms_per_step:.1f} | {r.ratio_to_dropout_block:.3f} |")
    return "\n".join(lines)


COMMAND, HELP = "bench-ffn", "training-step time of ApproxDropoutFFN against the nn.Dropout MLP block"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--d-model", type=positive_int, default=1024)
    parser.add_argument("--d-hidden", type=positive_int, default=4096)
    parser.add_argument("--batch", type=positive_int, default=16, help="sequences per step")
    parser.add_argument("--sequence", type=positive_int, default=128, help="tokens per sequence")
    parser.add_argument("--ps", type=rate, nargs="+", action=Distinct, default=[0.3], help="dropout rates")
    parser.add_argument(
        "--methods", nargs="+", action=Distinct, default=["bernoulli", "row", "row-g4"], choices=CHOICES
    )
    parser.add_argument("--warmup", type=non_negative_int, default=2)
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--steps", type=positive_int, default=1, help="steps per method per round")


def run(args: argparse.Namespace) -> int:
    rows = measure(args.d_model, args.d_hidden, args.batch, args.sequence, tuple(args.ps), tuple(args.methods),
                   args.device, args.warmup, args.rounds, args.steps, progress=not args.no_progress)  # fmt: skip
    print(
        f"MLP block d_model {args.d_model}, d_hidden {args.d_hidden}, {args.batch} x {args.sequence} tokens, "
        f"float32; {describe_machine(args.device)}"
    )
    print(format_table(rows))
    write_record(args, rows)
    return 0
