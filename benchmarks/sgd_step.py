"""The paper-size MLP step (784-2048-2048-10, batch 128) of bernoulli, row and row-g4, each with torch's
per-parameter SGD loop and with the fused SGD that ``approxdrop.training.sgd`` builds, side by side in one
run (``time_side_by_side``: 3 warm-up steps, 9 rounds of 3 steps, medians), one torch thread. Recorded in
benchmarks/overhead.md, "Fused SGD, on another machine".

    python benchmarks/sgd_step.py [P]    # P: the dropout rate, default 0.5
"""

import statistics
import sys

import torch

from approxdrop import ApproxDropoutMLP
from approxdrop._env import describe_machine
from approxdrop.experiments.bench import PAPER_SIZES, time_side_by_side
from approxdrop.training import sgd, training_step

METHODS = ("bernoulli", "row", "row-g4")


def main(p: float) -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(128, PAPER_SIZES[0], generator=gen), torch.randint(10, (128,), generator=gen)  # [B, 784], [B]
    optimizers = {
        "loop": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, foreach=False),
        "fused": lambda params: sgd(params, 0.01, momentum=0.9),
    }
    steps = {}
    for method in METHODS:
        for name, make in optimizers.items():
            torch.manual_seed(0)
            model = ApproxDropoutMLP(PAPER_SIZES, p, method=method)
            opt = make(model.parameters())
            steps[method, name] = lambda model=model, opt=opt: training_step(model, opt, x, y)
    times = time_side_by_side(steps, torch.device("cpu"), warmup=3, rounds=9, steps=3)
    ms = {key: 1e3 * statistics.median(t) for key, t in times.items()}
    print(f"{describe_machine('cpu')}, p {p}")
    print("| method | loop SGD ms | fused SGD ms | loop x bernoulli | fused x bernoulli |\n|---|---:|---:|---:|---:|")
    for m in METHODS:
        loop, fused = ms[m, "loop"], ms[m, "fused"]
        print(
            f"| {m} | {loop:.2f} | {fused:.2f} | {loop / ms['bernoulli', 'loop']:.3f} | "
            f"{fused / ms['bernoulli', 'fused']:.3f} |"
        )


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 0.5)
