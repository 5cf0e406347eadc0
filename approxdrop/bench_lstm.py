"""LSTM language-model benchmark: step time of every method at every p side by side, and
validation perplexity after a fixed budget of steps.

Step time: random tokens (the time does not depend on them), the protocol of ``approxdrop.bench``
(same initial weights, warm-up, rotating rounds, median). Sizes: ``paper`` = 2 x 650, vocabulary
10,000, 35 steps, batch 20 (Zaremba's medium model, the paper's setting); ``small`` = 2 x 200,
20 steps (Zaremba's small model). Perplexity: ``approxdrop.lm_train.train_lm`` on
``load_corpus("auto")`` for ``--perplexity-steps`` steps per p. Run
``python -m approxdrop.bench_lstm --help``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from .bench import describe_machine, time_side_by_side
from .lstm import LM_METHODS, language_model

SIZES = {  # name: (hidden, layers, vocab, bptt, batch)
    "paper": (650, 2, 10_000, 35, 20),
    "small": (200, 2, 10_000, 20, 20),
}


def lstm_gemm_work_fraction(hidden: int, layers: int, vocab: int, p: float, method: str) -> float:
    """GEMM work left relative to dense, the ideal bound: row / shared shrink every input
    projection and the decoder to the kept ``1 - p`` of their inputs; the recurrent GEMMs stay."""
    keep = 1.0 - p if method in ("row", "row-extended", "shared") else 1.0
    gates = 4 * hidden
    dense = layers * 2 * hidden * gates + hidden * vocab  # input + recurrent projections, decoder
    kept = layers * hidden * gates * (1 + keep) + hidden * vocab * keep
    return kept / dense


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


def _make_step(model, x, y, lr: float = 1.0):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    vocab = model.vocab

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        logits, _ = model(x)  # [T, B, V]
        torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1)).backward()
        opt.step()

    return step


def measure_lstm(
    size: str = "paper",
    ps=(0.3, 0.5, 0.7),
    methods=LM_METHODS,
    device: str = "cpu",
    warmup: int = 2,
    rounds: int = 5,
    steps: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> list[LSTMBenchRow]:
    """Time one training step per method and p at ``SIZES[size]``."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {list(SIZES)}, got {size!r}")
    if "bernoulli" not in methods:
        raise ValueError(f"methods must include 'bernoulli' (the baseline of the ratios), got {methods}")
    hidden, layers, vocab, bptt, batch = SIZES[size]
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(vocab, (bptt, batch), generator=gen).to(dev)  # [T, B]
    y = torch.randint(vocab, (bptt, batch), generator=gen).to(dev)  # [T, B]
    rows = []
    bar = tqdm(total=len(ps) * len(methods) * (warmup + rounds), desc=f"bench {size}", disable=not progress)
    for p in ps:
        steps_by_method = {}
        for method in methods:
            torch.manual_seed(seed)
            steps_by_method[method] = _make_step(language_model(vocab, method, hidden, layers, p).to(dev).train(), x, y)
        times = time_side_by_side(steps_by_method, dev, warmup, rounds, steps, bar)
        median = {m: statistics.median(t) for m, t in times.items()}
        for method in methods:
            rows.append(
                LSTMBenchRow(
                    size,
                    method,
                    p,
                    1e3 * median[method],
                    median[method] / median["bernoulli"],
                    median[method] / median["torch"] if "torch" in median else None,
                    lstm_gemm_work_fraction(hidden, layers, vocab, p, method),
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


def perplexity_table(size: str, ps, methods, steps: int, eval_tokens: int | None = None, seeds=(0,)) -> str:
    """Validation perplexity after ``steps`` training steps per method and p (one interleaved race
    per p and seed on ``load_corpus("auto")``), as a markdown table: mean and spread over seeds, the
    ratio of the means to bernoulli's, the median step time."""
    from .corpus import load_corpus
    from .lm_train import train_lm

    hidden, layers, _, bptt, batch = SIZES[size]
    corpus = load_corpus("auto")
    lines = [
        f"Corpus: {corpus.info.name} ({corpus.info.source}), vocabulary {len(corpus.vocab)}; {size} size, "
        f"{steps} steps of {bptt} x {batch} tokens, SGD lr 20, clip 0.25, "
        f"{'all' if eval_tokens is None else f'the first {eval_tokens}'} validation tokens, seeds {list(seeds)}.",
        "",
        "| p | method | valid perplexity (mean ± std) | ratio to bernoulli | ms / step (median) |",
        "|---:|---|---:|---:|---:|",
    ]
    for p in ps:
        runs = {m: [] for m in methods}  # method: [(perplexity, ms per step) per seed]
        for seed in seeds:
            result = train_lm(
                corpus, methods, hidden=hidden, layers=layers, p=p, steps=steps, bptt=bptt, batch=batch,
                eval_every=steps, eval_tokens=eval_tokens, seed=seed,
            )  # fmt: skip
            for r in result.summary():
                runs[r.method].append((r.valid_perplexity, r.ms_per_step))
        means = {m: statistics.mean(ppl for ppl, _ in runs[m]) for m in methods}
        for method in methods:
            ppls = [ppl for ppl, _ in runs[method]]
            spread = statistics.stdev(ppls) if len(ppls) > 1 else 0.0
            ms = statistics.median(t for _, t in runs[method])
            ratio = means[method] / means["bernoulli"]
            lines.append(f"| {p:.1f} | {method} | {means[method]:.1f} ± {spread:.1f} | {ratio:.3f} | {ms:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m approxdrop.bench_lstm", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="*", default=["paper", "small"], choices=list(SIZES), help="none: no timing")
    parser.add_argument("--ps", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--methods", nargs="+", default=list(LM_METHODS), choices=LM_METHODS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per method per round")
    parser.add_argument("--perplexity-steps", type=int, default=0, help="also train this many steps per p (small size)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the perplexity runs")
    parser.add_argument("--eval-tokens", type=int, help="validation tokens for the perplexity (default: all)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--json", help="write the timing rows here")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if "bernoulli" not in args.methods:
        parser.error("--methods must include bernoulli (the baseline of the ratios)")
    print(f"LSTM language model; {describe_machine(args.device)}")
    rows = []
    for size in args.sizes:
        rows += measure_lstm(size, args.ps, args.methods, args.device, args.warmup, args.rounds, args.steps)
    if rows:
        print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            payload = {"machine": describe_machine(args.device), "args": vars(args), "rows": [asdict(r) for r in rows]}
            json.dump(payload, f)
    if args.perplexity_steps:
        print()
        print(perplexity_table("small", args.ps, args.methods, args.perplexity_steps, args.eval_tokens, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
