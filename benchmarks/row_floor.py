"""How far the paper-size `row` step (784-2048-2048-10, batch 128, SGD with momentum) is from its floor, side by
side in one run (``time_side_by_side``: 3 warm-up steps, 11 rounds of 3 steps, medians), one torch thread.

Timed per p, each against bernoulli's step:
- ``row``: the library's step;
- ``floor``: what the step cannot avoid under the benchmark's protocol: a dense MLP of the kept widths
  (784-k-k-10, k = round((1 - p) * 2048)) forward and backward, and the fused SGD over all 5.8 M parameters
  of the full-size model, which every method pays (the dense-gradient contract of torch.optim);
- ``compact fwd/bwd`` and ``full SGD``: the floor's two parts alone.

Recorded in benchmarks/cpu_mlp_step.md, "The floor under the row step".

    python benchmarks/row_floor.py [P ...]    # default 0.3 0.5 0.7
"""

import statistics
import sys

import torch
from torch import nn

from approxdrop import ApproxDropoutMLP
from approxdrop._env import describe_machine
from approxdrop.experiments.bench import PAPER_SIZES, time_side_by_side
from approxdrop.training import sgd, training_step

BATCH = 128


def floor_steps(p: float, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The floor's steps for rate p: (compact forward and backward + full SGD, each part alone)."""
    k = round((1 - p) * PAPER_SIZES[1])
    compact = nn.Sequential(nn.Linear(PAPER_SIZES[0], k), nn.ReLU(), nn.Linear(k, k), nn.ReLU(), nn.Linear(k, 10))
    full = ApproxDropoutMLP(PAPER_SIZES, p, method="none")
    for param in full.parameters():
        param.grad = torch.zeros_like(param)  # dense gradients, as every method hands its optimizer
    full_sgd = sgd(full.parameters(), 0.01, momentum=0.9).step

    def compact_pass() -> None:
        compact.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(compact(x), y).backward()  # [B, 10] logits

    def floor() -> None:
        compact_pass()
        full_sgd()

    return {"floor": floor, "compact fwd/bwd": compact_pass, "full SGD": full_sgd}


def main(ps: list[float]) -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(BATCH, PAPER_SIZES[0], generator=gen), torch.randint(10, (BATCH,), generator=gen)  # [B, 784], [B]
    print(describe_machine("cpu"))
    print("| p | bernoulli ms | row | floor | compact fwd/bwd | full SGD |")
    print("|---:|---:|---:|---:|---:|---:|")
    for p in ps:
        steps = {}
        for method in ("bernoulli", "row"):
            torch.manual_seed(0)
            model = ApproxDropoutMLP(PAPER_SIZES, p, method=method)
            opt = sgd(model.parameters(), 0.01, momentum=0.9)
            steps[method] = lambda model=model, opt=opt: training_step(model, opt, x, y)
        steps.update(floor_steps(p, x, y))
        times = time_side_by_side(steps, torch.device("cpu"), warmup=3, rounds=11, steps=3)
        ms = {label: 1e3 * statistics.median(t) for label, t in times.items()}
        cells = [f"{ms[label]:.2f} ({ms[label] / ms['bernoulli']:.3f})" for label in list(steps)[1:]]
        print(f"| {p} | {ms['bernoulli']:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main([float(a) for a in sys.argv[1:]] or [0.3, 0.5, 0.7])
