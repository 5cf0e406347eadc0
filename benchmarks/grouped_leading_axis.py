"""Grouped row patterns on [B, T, d] inputs: a training step (forward + backward) of one ApproxDropoutFFN (d_model
128, hidden 512) and one OutputRowDropout (a Linear 512 -> 128) with four batch groups, per executor, next to the
one-pattern (``row``) block and per-element dropout, at a few batch shapes. A fixed law (dp 4, keep 3: p = 0.25)
makes every draw drop units, so no step runs the cheap keep-everything pattern. One torch thread, CPU process
time, median of ``--rounds`` steps after 2 warm-up steps. Recorded in benchmarks/convert_step.md ("Grouped blocks
on [B, T, d] inputs").

    python benchmarks/grouped_leading_axis.py [--rounds 7]
"""

import argparse
import statistics
import time

import torch
from torch import nn

import approxdrop as ad
from approxdrop._env import describe_machine
from approxdrop.models.output_side import OutputRowDropout

LAW = [ad.PatternDistribution(((4, 3),), (1.0,))]
SHAPES = [(16, 32), (128, 8), (128, 32), (4096, 1)]  # (B, T)


def step_ms(fn, rounds: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(rounds):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return 1e3 * statistics.median(times)


def blocks() -> dict:
    """label -> (module, input width) of each timed block."""
    torch.manual_seed(0)
    ffn = {f"FFN row-g4 {ex}": ad.ApproxDropoutFFN(128, 512, 0.25, method="row-g4", distributions=LAW, executor=ex)
           for ex in ("compact", "masked")}  # fmt: skip
    ffn["FFN row"] = ad.ApproxDropoutFFN(128, 512, 0.25, method="row", distributions=LAW, executor="compact")
    ffn["FFN dropout"] = ad.ApproxDropoutFFN(128, 512, 0.25, method="bernoulli")
    out = {f"output row-g4 {ex}": OutputRowDropout(nn.Linear(512, 128), 0.25, "row-g4", LAW, executor=ex)
           for ex in ("compact", "masked")}  # fmt: skip
    out["output row"] = OutputRowDropout(nn.Linear(512, 128), 0.25, "row", LAW, executor="compact")
    out["output dropout"] = nn.Sequential(nn.Linear(512, 128), nn.Dropout(0.25))
    return {**{k: (m, 128) for k, m in ffn.items()}, **{k: (m, 512) for k, m in out.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(describe_machine("cpu"))
    timed = blocks()
    print("| block | " + " | ".join(f"B {b} x T {t}" for b, t in SHAPES) + " |")
    print("|---|" + "---:|" * len(SHAPES))
    for label, (module, width) in timed.items():
        module.train()
        cells = []
        for b, t in SHAPES:
            x = torch.randn(b, t, width, requires_grad=True)  # [B, T, d]
            ms = step_ms(lambda module=module, x=x: module(x).sum().backward(), args.rounds)
            cells.append(f"{ms:.1f}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
