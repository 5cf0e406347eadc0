"""The MLP race for the labs: ``train`` trains ApproxDropoutMLPs with several dropout methods side by
side (``training.race``), and the two pieces every MLP training shares: one training step and
the evaluation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._env import check_int, check_positive, check_rate, default_device
from ..data import Dataset
from ..models import ApproxDropoutMLP, mlp_gemm_work
from ..models.methods import check_methods
from .optim import sgd
from .race import ACCURACY, History, RaceResult, check_race_settings, race_seed, run_race


@dataclass(frozen=True)
class MLPRaceConfig:
    """The settings of an MLP race: the model, the optimiser (SGD with momentum 0.9), the budget.

    ``clip`` bounds every method's gradient norm alike (None: no clipping): the batch-shared
    methods spike at high p without it (the accuracy study's finding), and one rule for all keeps
    the race fair."""

    hidden: tuple[int, ...] = (2048, 2048)
    p: float = 0.5
    steps: int = 1000
    batch: int = 128
    lr: float = 0.03
    clip: float | None = 2.0
    tile: int = 32
    eval_every: int = 100
    eval_size: int | None = None
    warmup: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.hidden, (str, bytes)) or not isinstance(self.hidden, Iterable):
            raise ValueError(
                f"hidden must be a sequence of hidden-layer widths, e.g. (2048, 2048), or (32,) for one layer "
                f"of 32, got {self.hidden!r}"
            )
        object.__setattr__(self, "hidden", tuple(check_int("hidden width", h, 1) for h in self.hidden))
        check_rate(self.p)
        check_race_settings(self.steps, self.eval_every, self.warmup)
        check_int("batch", self.batch, 1)
        check_positive("lr", self.lr)
        if self.clip is not None:
            check_positive("clip", self.clip)
        if self.eval_size is not None:
            check_int("eval_size", self.eval_size, 1)
        check_int("seed", self.seed, 0)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> float:
    """Accuracy of ``model`` in eval mode on x (Float[N, D]), y (Long[N]), read ``batch`` examples at a
    time; restores the training mode. ValueError for x and y of different N, N = 0 (no accuracy to measure) or
    batch < 1."""
    _check_examples("x and y", x, y)
    batch = check_int("batch", batch, 1)
    was_training = model.training
    model.eval()
    correct = sum(int((model(x[i : i + batch]).argmax(-1) == y[i : i + batch]).sum()) for i in range(0, len(y), batch))
    model.train(was_training)
    return correct / len(y)


def _check_examples(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """ValueError naming ``name`` unless x (Float[N, ...]) and y (Long[N]) hold the same N >= 1 examples."""
    if len(x) != len(y):
        raise ValueError(f"{name} must hold as many examples as labels, got {len(x)} examples and {len(y)} labels")
    if not len(y):
        raise ValueError(f"{name} must hold at least one example, got none")


def training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, clip: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: zero_grad, forward, cross-entropy, backward, (gradient-norm clipping to ``clip``),
    optimizer step. x (Float[B, D]), y (Long[B]) -> (loss Float[], logits Float[B, classes]), detached."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)  # [B, classes]
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    if clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.detach(), logits.detach()


class _MLPContestant:
    """One method of the race: its model and optimiser, the test split it is evaluated on."""

    def __init__(self, model: nn.Module, config: MLPRaceConfig, test_x: torch.Tensor, test_y: torch.Tensor) -> None:
        self.model, self.clip, self.test_x, self.test_y = model, config.clip, test_x, test_y
        self.optimizer = sgd(model.parameters(), config.lr, momentum=0.9)

    def step(self, batch) -> float:
        loss, _ = training_step(self.model, self.optimizer, *batch, clip=self.clip)
        return float(loss)

    def evaluate(self) -> float:
        return evaluate(self.model, self.test_x, self.test_y)


def train(
    data: Dataset,
    methods: Sequence[str] = ("bernoulli", "row", "tile"),
    config: MLPRaceConfig | None = None,
    *,
    callback: Callable[[RaceResult, int], None] | None = None,
    callback_every: int = 10,
    device: str | torch.device | None = None,
    progress: bool = True,
    **settings,
) -> RaceResult:
    """Train one ApproxDropoutMLP ``[D, *hidden, classes]`` per method, interleaved step by step.

    ``config`` holds the settings (default ``MLPRaceConfig()``); keyword ``settings`` override its
    fields (``train(data, methods, p=0.3, steps=200)``). Test accuracy (on the first ``eval_size``
    test examples) every ``eval_every`` steps and after the last; ``callback(result, step)`` every
    ``callback_every`` steps and after the last, so a figure can follow the training live. A method's
    dropout draws depend on the seed and the method only (``race.race_seed``), not on the other methods.
    """
    config = dataclasses.replace(config or MLPRaceConfig(), **settings)
    methods = check_methods(methods, "mlp")
    _check_examples("the training split (data.train_x, data.train_y)", data.train_x, data.train_y)
    _check_examples("the test split (data.test_x, data.test_y)", data.test_x, data.test_y)
    dev = default_device(device)
    train_x, train_y = data.train_x.to(dev), data.train_y.to(dev)
    test_x, test_y = data.test_x[: config.eval_size].to(dev), data.test_y[: config.eval_size].to(dev)
    sizes = [train_x.shape[1], *config.hidden, data.info.classes]
    contestants = {}
    for method in methods:
        torch.manual_seed(config.seed)  # same initial weights for every method
        gen = torch.Generator().manual_seed(race_seed(config.seed, method, "patterns"))
        model = ApproxDropoutMLP(sizes, config.p, method=method, tile=config.tile, generator=gen).to(dev).train()
        contestants[method] = _MLPContestant(model, config, test_x, test_y)
    work = {m: mlp_gemm_work(sizes, config.p, m) for m in methods}
    result = RaceResult({m: History() for m in methods}, ACCURACY, config, work, str(dev))
    batches = torch.Generator().manual_seed(config.seed)

    def next_batch(step: int):
        index = torch.randint(len(train_y), (config.batch,), generator=batches).to(dev)
        return train_x[index], train_y[index]  # [B, D], [B]

    return run_race(
        contestants, next_batch, result, steps=config.steps, eval_every=config.eval_every, callback=callback,
        callback_every=callback_every, progress=progress, seed=config.seed,
    )  # fmt: skip
