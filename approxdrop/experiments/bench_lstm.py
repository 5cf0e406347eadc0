"""LSTM language-model benchmark: step time of every method at every p side by side, and
validation perplexity after a fixed budget of steps.

Step time: random tokens (the time does not depend on them), the protocol of ``experiments.bench``
(same initial weights, warm-up, rotating rounds, median). Sizes: ``paper`` = 2 x 650, vocabulary
10,000, 35 steps, batch 20 (Zaremba's medium model, the paper's setting); ``small`` = 2 x 200,
20 steps (Zaremba's small model). Perplexity: ``training.train_lm`` on
``load_corpus("auto")`` for ``--perplexity-steps`` steps per p. Run
``approxdrop bench-lstm --help``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .._env import describe_machine
from ..data import load_corpus
from ..models import LM_METHODS, language_model, lstm_gemm_work
from ..models.lstm import State
from ..training import LMRaceConfig, lm_training_step, train_lm
from .bench import check_protocol, time_side_by_side, with_groups
from .options import non_negative_int, positive_int, rate, write_record


@dataclass(frozen=True)
class LSTMSize:
    """A language model's size and its batches: LSTM width and depth, vocabulary, BPTT steps, batch."""

    hidden: int
    layers: int
    vocab: int
    bptt: int
    batch: int


SIZES = {
    "paper": LSTMSize(hidden=650, layers=2, vocab=10_000, bptt=35, batch=20),
    "small": LSTMSize(hidden=200, layers=2, vocab=10_000, bptt=20, batch=20),
}


@dataclass
class LSTMBenchRow:
    """One measured (method, p) cell."""

    size: str
    method: str
    p: float
    ms_per_step: float
    ratio_to_bernoulli: float
    ratio_to_torch: float | None
    gemm_work: float


def lm_step(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float = 1.0
) -> Callable[[], tuple[torch.Tensor, State]]:
    """A zero-argument training step of ``model`` on one fixed batch (plain SGD, no state, no clipping)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return lambda: lm_training_step(model, opt, x, y, None, clip=None)


def measure_lstm(
    size: str = "paper",
    ps: Sequence[float] = (0.3, 0.5, 0.7),
    methods: Sequence[str] = LM_METHODS,
    device: str = "cpu",
    warmup: int = 2,
    rounds: int = 5,
    steps: int = 1,
    seed: int = 0,
    progress: bool = True,
    groups: Sequence[int] = (),
) -> list[LSTMBenchRow]:
    """Time one training step per method and p at ``SIZES[size]``; each G of ``groups`` adds ``row``
    with G batch groups (``"row G=4"``). ValueError for bad arguments (``bench.check_protocol``)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {list(SIZES)}, got {size!r}")
    dev = check_protocol(device, warmup, rounds, steps, ps, methods, LM_METHODS)
    shape = SIZES[size]
    hidden, layers, vocab, bptt, batch = shape.hidden, shape.layers, shape.vocab, shape.bptt, shape.batch
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(vocab, (bptt, batch), generator=gen).to(dev)  # [T, B]
    y = torch.randint(vocab, (bptt, batch), generator=gen).to(dev)  # [T, B]
    variants = with_groups(methods, groups)
    rows = []
    bar = tqdm(total=len(ps) * len(variants) * (warmup + rounds), desc=f"bench {size}", disable=not progress)
    for p in ps:
        steps_by_method = {}
        for label, (method, g) in variants.items():
            torch.manual_seed(seed)
            extra = {} if g is None else {"groups": g}
            model = language_model(vocab, method, hidden, layers, p, **extra).to(dev).train()
            steps_by_method[label] = lm_step(model, x, y)
        times = time_side_by_side(steps_by_method, dev, warmup, rounds, steps, bar)
        median = {m: statistics.median(t) for m, t in times.items()}
        for label, (method, _) in variants.items():
            rows.append(
                LSTMBenchRow(
                    size,
                    label,
                    p,
                    1e3 * median[label],
                    median[label] / median["bernoulli"],
                    median[label] / median["torch"] if "torch" in median else None,
                    lstm_gemm_work(hidden, layers, vocab, p, method),
                )
            )
    bar.close()
    return rows


def format_table(rows: list[LSTMBenchRow]) -> str:
    """Markdown: ms/step, time ratio to bernoulli and to nn.LSTM (below 1 = faster), speedups, bound."""
    lines = [
        "| size | p | method | ms / step | ratio to bernoulli | ratio to nn.LSTM | speedup vs nn.LSTM "
        "| GEMM work left |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        torch_ratio = "-" if r.ratio_to_torch is None else f"{r.ratio_to_torch:.3f}"
        speedup = "-" if r.ratio_to_torch is None else f"{1 / r.ratio_to_torch:.2f}x"
        lines.append(
            f"| {r.size} | {r.p:.1f} | {r.method} | {r.ms_per_step:.1f} | {r.ratio_to_bernoulli:.3f} | {torch_ratio} "
            f"| {speedup} | {r.gemm_work:.3f} |"
        )
    return "\n".join(lines)


def perplexity_table(
    size: str,
    ps: Sequence[float],
    methods: Sequence[str],
    steps: int,
    eval_tokens: int | None = None,
    seeds: Sequence[int] = (0,),
) -> str:
    """Validation perplexity after ``steps`` training steps per method and p (one interleaved race
    per p and seed on ``load_corpus("auto")``), as a markdown table: mean and spread over seeds, the
    ratio of the means to bernoulli's, the median step time."""
    shape = SIZES[size]
    corpus = load_corpus("auto")
    lines = [
        f"Corpus: {corpus.info.name} ({corpus.info.source}), vocabulary {len(corpus.vocab)}; {size} size, "
        f"{steps} steps of {shape.bptt} x {shape.batch} tokens, SGD lr 20, clip 0.25, "
        f"{'all' if eval_tokens is None else f'the first {eval_tokens}'} validation tokens, seeds {list(seeds)}.",
        "",
        "| p | method | valid perplexity (mean ± std) | ratio to bernoulli | ms / step (median) |",
        "|---:|---|---:|---:|---:|",
    ]
    for p in ps:
        runs = {m: [] for m in methods}  # method: [(perplexity, ms per step) per seed]
        for seed in seeds:
            config = LMRaceConfig(
                hidden=shape.hidden, layers=shape.layers, p=p, steps=steps, bptt=shape.bptt, batch=shape.batch,
                eval_every=steps, eval_tokens=eval_tokens, seed=seed,
            )  # fmt: skip
            for r in train_lm(corpus, methods, config).summary():
                runs[r.method].append((r.metric, r.ms_per_step))
        means = {m: statistics.mean(ppl for ppl, _ in runs[m]) for m in methods}
        for method in methods:
            ppls = [ppl for ppl, _ in runs[method]]
            spread = statistics.stdev(ppls) if len(ppls) > 1 else 0.0
            ms = statistics.median(t for _, t in runs[method])
            ratio = means[method] / means["bernoulli"]
            lines.append(f"| {p:.1f} | {method} | {means[method]:.1f} ± {spread:.1f} | {ratio:.3f} | {ms:.1f} |")
    return "\n".join(lines)


COMMAND, HELP = "bench-lstm", "LSTM language-model step time and perplexity of every method"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", nargs="*", default=["paper", "small"], choices=list(SIZES), help="none: no timing")
    parser.add_argument("--ps", type=rate, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--methods", nargs="+", default=list(LM_METHODS), choices=LM_METHODS)
    parser.add_argument("--groups", type=positive_int, nargs="+", default=[], help="also time row with G batch groups")
    parser.add_argument("--warmup", type=non_negative_int, default=2)
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--steps", type=positive_int, default=1, help="timed steps per method per round")
    parser.add_argument(
        "--perplexity-steps", type=non_negative_int, default=0, help="also train this many steps per p (small size)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the perplexity runs")
    parser.add_argument("--eval-tokens", type=positive_int, help="validation tokens for the perplexity (default: all)")


def run(args: argparse.Namespace) -> int:
    if "bernoulli" not in args.methods:
        args.parser.error("--methods must include bernoulli (the baseline of the ratios)")
    print(f"LSTM language model; {describe_machine(args.device)}")
    rows = []
    for size in args.sizes:
        rows += measure_lstm(
            size, args.ps, args.methods, args.device, args.warmup, args.rounds, args.steps,
            progress=not args.no_progress, groups=args.groups,
        )  # fmt: skip
    if rows:
        print(format_table(rows))
    write_record(args, rows)
    if args.perplexity_steps:
        print()
        print(perplexity_table("small", args.ps, args.methods, args.perplexity_steps, args.eval_tokens, args.seeds))
    return 0
