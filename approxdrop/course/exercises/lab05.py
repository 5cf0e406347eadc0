"""Lab 05 exercises (training): how much of a step is GEMM (Amdahl's law), and one training step.
Each ``check_*`` takes the learner's function, runs it on fixed cases against the library and
prints one PASS / FAIL / TODO line.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...models import ApproxDropoutMLP, methods_for
from ...training import training_step
from ..checks import CheckResult, WrongAnswer, check, describe, draw_float, fresh_generator

SIZES = [12, 16, 16, 4]  # the small MLP the training-step check runs


def reference_gemm_share(measured_speedup: float, ideal_speedup: float) -> float:
    """Amdahl's law solved for the GEMM share f of the baseline step:
    ``1 / measured = (1 - f) + f / ideal``, so ``f = (1 - 1/measured) / (1 - 1/ideal)``."""
    return (1.0 - 1.0 / measured_speedup) / (1.0 - 1.0 / ideal_speedup)


def check_gemm_share(candidate: Callable[..., Any]) -> CheckResult:
    """``candidate(measured_speedup, ideal_speedup) -> float``: the share of the step spent in GEMMs, in
    float64 to 1e-9 (a share of order 1: float64 is exact to about 1e-15, a slip in the formula is far
    larger), on fixed cases and two drawn anew."""
    cases = [(2.26, 3.13), (1.0, 3.13), (3.13, 3.13), (1.5, 6.73), (1.2, 1.82), (0.9, 2.15)]
    fresh = fresh_generator()
    for _ in range(2):
        ideal = draw_float(fresh, 1.2, 8.0)
        cases.append((draw_float(fresh, 0.8, ideal), ideal))
    return check("GEMM share of a step", candidate, reference_gemm_share, cases, atol=1e-9)


def reference_train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """One step (approxdrop.training.training_step); returns the loss as a float."""
    return float(training_step(model, optimizer, x, y)[0])


def _loss_value(loss) -> float:
    """The loss a step returned, a float as the exercise asks; WrongAnswer for anything else, a tensor too (one
    that still requires grad keeps the step's whole graph alive for as long as the caller holds it)."""
    if isinstance(loss, numbers.Real) and not isinstance(loss, bool) and not torch.is_tensor(loss):
        return float(loss)
    hint = " (loss.item())" if torch.is_tensor(loss) and loss.numel() == 1 else ""
    raise WrongAnswer(f"the step returned {describe(loss)}, expected the loss as a float{hint}")


def _fresh_model(method: str, seed: int) -> nn.Module:
    """The MLP the training-step check trains, as it starts (global torch stream seeded with ``seed``)."""
    torch.manual_seed(seed)  # initial weights and bernoulli masks
    return ApproxDropoutMLP(SIZES, 0.5, method=method, tile=4, generator=torch.Generator().manual_seed(seed))


def train_step_element(flat: int, method: str, seed: int) -> str:
    """What element ``flat`` of ``after_three_steps``'s vector is: "the loss of step 2", or a parameter entry
    after the three steps ("parameter linears.1.weight[3, 5] after the three steps")."""
    if flat < 3:
        return f"the loss of step {flat + 1}"
    flat -= 3
    for name, param in _fresh_model(method, seed).named_parameters():
        if flat < param.numel():
            index = [int(i) for i in torch.unravel_index(torch.tensor(flat), param.shape)]
            return f"parameter {name}{index} after the three steps"
        flat -= param.numel()
    return f"element [{flat}] past the parameters"


def _check_batch_kept(batch: dict[str, tuple[torch.Tensor, torch.Tensor]], number: int) -> None:
    """WrongAnswer naming the first tensor of ``batch`` (name: (the tensor given to step ``number``, a copy
    taken before)) that the step changed in place."""
    for name, (given, before) in batch.items():
        same = given.shape == before.shape and given.dtype == before.dtype and torch.equal(given.detach(), before)
        if not same:
            raise WrongAnswer(f"step {number} changed {name} in place: leave the inputs as they are")


def after_three_steps(
    step: Callable[[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor], object], method: str, seed: int
) -> torch.Tensor:
    """Float[3 + parameters]: the three losses and the parameters after three ``step`` calls on a
    fresh model (same seed, same data, same pattern draws for every ``step`` function). WrongAnswer when a
    step changes its batch x or y in place (the checker's own copy-and-compare never sees them: they are
    made here)."""
    model = _fresh_model(method, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = torch.Generator().manual_seed(seed + 1)
    losses = []
    for number in range(1, 4):
        x, y = torch.rand(8, SIZES[0], generator=data), torch.randint(SIZES[-1], (8,), generator=data)  # [8, D], [8]
        batch = {"x (the third argument)": (x, x.clone()), "y (the fourth argument)": (y, y.clone())}
        losses.append(_loss_value(step(model, optimizer, x, y)))
        _check_batch_kept(batch, number)
    return torch.cat([torch.tensor(losses), *(p.detach().flatten() for p in model.parameters())])


def check_train_step(candidate: Callable[..., Any]) -> CheckResult:
    """``candidate(model, optimizer, x, y) -> loss``: one training step on every method of the MLP, compared
    by the three losses and the parameters after three steps; a FAIL names the loss or parameter that differs."""
    cases = [(method, seed) for seed, method in enumerate(methods_for("mlp"))]
    return check(
        "one training step",
        lambda method, seed: after_three_steps(candidate, method, seed),
        lambda method, seed: after_three_steps(reference_train_step, method, seed),
        cases,
        atol=1e-5,
        element_name=train_step_element,
    )
