"""What a race promises beyond its numbers: the methods take turns going first at each step, and ``training_step``
clips the gradient norm it is given."""

import math

import torch
from torch import nn

from approxdrop.training import ACCURACY, History, MLPRaceConfig, RaceResult, run_race, training_step


class Recorder:
    """A contestant that logs each step to a shared list, loss 1, metric 0.5."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def step(self, batch):
        self.log.append((batch, self.name))
        return 1.0

    def evaluate(self):
        return 0.5


def race(methods, steps, eval_every):
    log = []
    contestants = {m: Recorder(m, log) for m in methods}
    result = RaceResult(
        {m: History() for m in methods}, ACCURACY, MLPRaceConfig(steps=steps), dict.fromkeys(methods, 1.0), "cpu"
    )
    run_race(contestants, lambda step: step, result, steps=steps, eval_every=eval_every, progress=False)
    return result, log


def test_each_method_goes_first_in_turn_so_no_method_always_runs_on_a_cold_or_warm_machine():
    """Over as many steps as there are methods, every method runs first once (and every method runs every step)."""
    methods = ["bernoulli", "row", "tile"]
    _, log = race(methods, steps=3, eval_every=3)
    by_step = {s: [m for b, m in log if b == s] for s in (1, 2, 3)}
    assert all(sorted(order) == sorted(methods) for order in by_step.values())
    assert sorted(order[0] for order in by_step.values()) == sorted(methods)


def test_training_step_clips_the_gradient_norm_to_clip():
    """Plain SGD with lr 1 moves the parameters by exactly the gradient; with a gradient norm far above ``clip``
    the step's norm over all parameters is ``clip``."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.mul_(100)  # large logits: a large gradient
    x, y = 100 * torch.randn(16, 4), torch.randint(3, (16,))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    training_step(model, optimizer, x, y, clip=0.01)
    moved = math.sqrt(sum(float(((p.detach() - b) ** 2).sum()) for p, b in zip(model.parameters(), before)))
    assert math.isclose(moved, 0.01, rel_tol=1e-3), moved
