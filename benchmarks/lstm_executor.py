"""The grouped LSTM's two executors, full training steps against what the measured probe picks.

For each size and method, one ApproxDropoutLSTM training step (forward, cross-entropy, backward, clipped
SGD: ``training.lm_training_step``) runs with ``executor="compact"`` and with ``executor="masked"`` (the
same initial weights and tokens), in rotating rounds after one warm-up step each; the table gives their
medians, the ratio, what the CPU rule of ``executor="auto"`` picks (``sites.grouped_executor``), and what
the measured executor picks with its probe's times (``models.lstm.LSTMProbe``: the last LSTM layer and the
decoder, both ways). Run:
    python benchmarks/lstm_executor.py --threads 1 --sizes small paper --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from approxdrop.models.executor_choice import measured_choice, row_bucket
from approxdrop.models.lstm import ApproxDropoutLSTM
from approxdrop.models.sites import grouped_executor
from approxdrop.training import lm_training_step

SIZES = {  # name: (vocabulary, hidden, time steps, batch), bench-lstm's sizes and a smoke-test one
    "tiny": (50, 16, 5, 8),
    "small": (10_000, 200, 20, 20),
    "paper": (10_000, 650, 35, 20),
}
LAYERS, GROUPS = 2, 4


def compare(size: str, method: str, p: float, rounds: int) -> str:
    """One table row: compact and masked step medians (ms), their ratio, the rule's and the probe's choice."""
    vocab, hidden, steps, batch = SIZES[size]
    tokens = torch.randint(vocab, (steps + 1, batch), generator=torch.Generator().manual_seed(0))  # [T + 1, B]
    runs = {}
    for executor in ("compact", "masked"):
        torch.manual_seed(0)
        model = ApproxDropoutLSTM(vocab, hidden, LAYERS, p, method, groups=GROUPS, executor=executor).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        runs[executor] = lambda m=model, o=optimizer: lm_training_step(m, o, tokens[:-1], tokens[1:], None)
        runs[executor]()  # warm-up
    times: dict[str, list[float]] = {executor: [] for executor in runs}
    for _ in range(rounds):
        for executor, step in runs.items():
            start = time.perf_counter()
            step()
            times[executor].append(time.perf_counter() - start)
    compact, masked = (1e3 * statistics.median(times[e]) for e in ("compact", "masked"))
    probe = ApproxDropoutLSTM(vocab, hidden, LAYERS, p, method, groups=GROUPS).executor_probe(steps)
    choice = measured_choice(probe, row_bucket(steps * batch), GROUPS, torch.float32, torch.device("cpu"))
    rule = grouped_executor("auto", steps * batch, GROUPS, max(4 * hidden * hidden, vocab * hidden))
    return (
        f"| {size} | {method} | {compact:.0f} | {masked:.0f} | {compact / masked:.2f} | {rule} | "
        f"{choice.path} ({choice.reason}) |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["small", "paper"])
    parser.add_argument("--methods", nargs="+", default=["row-g4", "row-extended-g4"])
    parser.add_argument("--p", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {args.threads} thread(s), p = {args.p}, G = {GROUPS}, {LAYERS} layers")
    print("| size | method | compact ms | masked ms | compact / masked | CPU rule | measured |")
    print("|---|---|---:|---:|---:|---|---|")
    for size in args.sizes:
        for method in args.methods:
            print(compare(size, method, args.p, args.rounds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
