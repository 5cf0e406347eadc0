"""The language-model race (lab 07, the LSTM benchmark): LSTM language models with several dropout
methods trained side by side (``training.race``), and their training step and perplexity.

Every method starts from the same initial weights (``TorchLSTM`` has its own layout but the same
initialisation law), reads the same stream of truncated-BPTT batches and draws its dropout from its
own random streams (``race.race_seed``: the same draws whatever the other methods). The methods are
interleaved step by step, the order rotating every step, so a drift of the machine hits all of
them alike. A step is zero_grad + forward + cross-entropy + backward + gradient-norm clipping +
optimizer step; its time is measured around exactly that, synchronised on a GPU. The hidden state
is carried from batch to batch and detached. Default recipe: Zaremba et al.'s plain SGD (their lr 1
and clip 5 on a loss summed over time steps are lr 20 and clip 0.25 on our per-token mean loss
with 20-35 steps, PyTorch's word_language_model defaults); ``optimizer="adam"`` learns much faster
in short races (the tests use it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._env import check_int, check_positive, check_rate, default_device
from ..data import Corpus, batchify, bptt_batches
from ..models import get_method, language_model, lstm_gemm_work
from ..models.lstm import State
from ..models.methods import check_methods
from .optim import sgd
from .race import PERPLEXITY, History, RaceResult, check_race_settings, race_seed, run_race

OPTIMIZERS = {"sgd": (sgd, 20.0), "adam": (torch.optim.Adam, 3e-3)}  # name: (builder, default lr)


@dataclass(frozen=True)
class LMRaceConfig:
    """The settings of a language-model race: the model, the optimiser (a name from ``OPTIMIZERS``;
    lr: its default unless given), the gradient-norm bound ``clip`` (every method alike; None: no
    clipping) and the budget."""

    hidden: int = 200
    layers: int = 2
    p: float = 0.5
    steps: int = 200
    bptt: int = 35
    batch: int = 20
    optimizer: str = "sgd"
    lr: float | None = None
    clip: float | None = 0.25
    eval_every: int = 100
    eval_tokens: int | None = None
    warmup: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("hidden", self.hidden, 1)
        check_int("layers", self.layers, 1)
        check_rate(self.p)
        check_race_settings(self.steps, self.eval_every, self.warmup)
        check_int("bptt", self.bptt, 1)
        check_int("batch", self.batch, 1)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr is not None:
            check_positive("lr", self.lr)
        if self.clip is not None:
            check_positive("clip", self.clip)
        if self.eval_tokens is not None:  # the validation split is read in ``batch`` columns of 2 tokens or more
            check_int("eval_tokens", self.eval_tokens, 2 * self.batch)
        check_int("seed", self.seed, 0)


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
    """Mean cross-entropy per token of x (Long[T, B]) predicting y (Long[T, B]) -> (loss, state)."""
    logits, state = model(x, state)  # [T, B, V]
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)), state


def lm_training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    state: State | None,
    clip: float | None = 0.25,
) -> tuple[torch.Tensor, State]:
    """One truncated-BPTT step -> (loss Float[] detached, the new state detached for the next step)."""
    optimizer.zero_grad(set_to_none=True)
    loss, state = lm_loss(model, x, y, state)
    loss.backward()
    if clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.detach(), tuple(s.detach() for s in state)


@torch.no_grad()
def perplexity(model: nn.Module, data: torch.Tensor, bptt: int = 35) -> float:
    """exp(mean cross-entropy per token) of ``model`` in eval mode over data (Long[T, B]) read in
    order with the state carried; restores the training mode."""
    was_training = model.training
    model.eval()
    total, tokens, state = 0.0, 0, None
    for x, y in bptt_batches(data, bptt):
        loss, state = lm_loss(model, x, y, state)
        total += float(loss) * y.numel()
        tokens += y.numel()
    model.train(was_training)
    mean = total / max(1, tokens)
    return math.exp(mean) if mean < 700 or math.isnan(mean) else math.inf  # exp overflows past ~709; NaN stays NaN


class _LMContestant:
    """One method of the race: its model, optimiser and carried state, the validation data."""

    def __init__(self, model: nn.Module, config: LMRaceConfig, valid_data: torch.Tensor) -> None:
        opt_class, default_lr = OPTIMIZERS[config.optimizer]
        self.model, self.config, self.valid_data, self.state = model, config, valid_data, None
        self.optimizer = opt_class(model.parameters(), lr=default_lr if config.lr is None else config.lr)

    def step(self, batch) -> float:
        x, y, fresh = batch
        if fresh:  # a new pass over the training stream: a fresh state
            self.state = None
        loss, self.state = lm_training_step(self.model, self.optimizer, x, y, self.state, self.config.clip)
        return float(loss)

    def evaluate(self) -> float:
        return perplexity(self.model, self.valid_data, self.config.bptt)


def _check_split_length(name: str, ids: torch.Tensor, batch: int) -> None:
    """ValueError naming the split ``name`` when its token ids (Long[N]) are too few to read in ``batch``
    columns of at least 2 tokens (an input and its target), as ``batchify`` does."""
    if len(ids) < 2 * batch:
        raise ValueError(
            f"{name} has {len(ids)} tokens, too few for batch={batch}: it is read in {batch} columns of at least "
            f"2 tokens, so it needs at least {2 * batch}; use a smaller batch or a longer split"
        )


def train_lm(
    corpus: Corpus,
    methods: Sequence[str] = ("bernoulli", "row", "torch"),
    config: LMRaceConfig | None = None,
    *,
    callback: Callable[[RaceResult, int], None] | None = None,
    callback_every: int = 10,
    device: str | torch.device | None = None,
    progress: bool = True,
    **settings,
) -> RaceResult:
    """Train one language model per method for ``steps`` truncated-BPTT steps, interleaved.

    ``config`` holds the settings (default ``LMRaceConfig()``); keyword ``settings`` override its
    fields. Validation perplexity (on the first ``eval_tokens`` validation tokens) every
    ``eval_every`` steps and after the last; ``callback(result, step)`` every ``callback_every``
    steps and after the last, so a figure can follow the training live. The training stream wraps
    around (the states are reset) when it ends.
    """
    config = dataclasses.replace(config or LMRaceConfig(), **settings)
    methods = check_methods(methods, "lstm")
    dev = default_device(device)
    valid_ids = corpus.valid if config.eval_tokens is None else corpus.valid[: config.eval_tokens]
    _check_split_length("the training split (corpus.train)", corpus.train, config.batch)
    _check_split_length("the validation split (corpus.valid)", valid_ids, config.batch)
    train_data = batchify(corpus.train, config.batch).to(dev)  # [T, B]
    valid_data = batchify(valid_ids, config.batch).to(dev)  # [T', B]
    vocab = len(corpus.vocab)
    contestants = {}
    for method in methods:
        torch.manual_seed(config.seed)  # same initial weights for every method
        seed = race_seed(config.seed, method, "patterns")
        kwargs = {} if get_method(method).torch_modules else {"generator": torch.Generator().manual_seed(seed)}
        model = language_model(vocab, method, config.hidden, config.layers, config.p, **kwargs).to(dev).train()
        contestants[method] = _LMContestant(model, config, valid_data)
    work = {m: lstm_gemm_work(config.hidden, config.layers, vocab, config.p, m) for m in methods}
    result = RaceResult({m: History() for m in methods}, PERPLEXITY, config, work, str(dev), ("bernoulli", "torch"))
    stream = iter(bptt_batches(train_data, config.bptt))

    def next_batch(step: int):
        nonlocal stream
        try:
            return (*next(stream), False)
        except StopIteration:  # wrap around: a new pass, fresh states
            stream = iter(bptt_batches(train_data, config.bptt))
            return (*next(stream), True)

    return run_race(
        contestants, next_batch, result, steps=config.steps, eval_every=config.eval_every, callback=callback,
        callback_every=callback_every, progress=progress, seed=config.seed,
    )  # fmt: skip
