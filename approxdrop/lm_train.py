"""Train LSTM language models with several dropout methods side by side (lab 07, the LSTM benchmark).

Every method starts from the same initial weights (``TorchLSTM`` has its own layout but the same
initialisation law) and reads the same stream of truncated-BPTT batches. The methods are
interleaved step by step, the order rotating every step, so a drift of the machine hits all of
them alike. A step is zero_grad + forward + cross-entropy + backward + gradient-norm clipping +
optimizer step; its time is measured around exactly that, synchronised on a GPU. The hidden state
is carried from batch to batch and detached. Default recipe: Zaremba et al.'s plain SGD (their lr 1
and clip 5 on a loss summed over time steps are lr 20 and clip 0.25 on our per-token mean loss
with 20-35 steps, PyTorch's word_language_model defaults); ``optimizer="adam"`` learns much faster
in short races (the tests use it).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .bench import sync
from .corpus import Corpus, batchify, bptt_batches
from .lstm import LM_METHODS, State, language_model

OPTIMIZERS = {"sgd": (torch.optim.SGD, 20.0), "adam": (torch.optim.Adam, 3e-3)}  # name: (class, default lr)


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, state: State | None):
    """Mean cross-entropy per token of x (Long[T, B]) predicting y (Long[T, B]) -> (loss, state)."""
    logits, state = model(x, state)  # [T, B, V]
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)), state


def lm_training_step(model, optimizer, x, y, state: State | None, clip: float | None = 0.25):
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
    return math.exp(total / max(1, tokens))


@dataclass
class LMHistory:
    """What one method did: per training step, and at every evaluation."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    valid_perplexity: list[float] = field(default_factory=list)


@dataclass
class LMSummaryRow:
    """One method's line of the final table."""

    method: str
    ms_per_step: float  # median over the steps after warm-up
    speedup: float | None  # bernoulli's ms_per_step / this one's
    speedup_vs_torch: float | None  # TorchLSTM's ms_per_step / this one's
    valid_perplexity: float


@dataclass
class LMTrainResult:
    """Histories per method plus the settings they were trained with."""

    histories: dict[str, LMHistory]
    hidden: int
    layers: int
    p: float
    batch: int
    bptt: int
    device: str
    warmup: int

    @property
    def methods(self) -> list[str]:
        return list(self.histories)

    def summary(self) -> list[LMSummaryRow]:
        """Median step time after ``warmup`` steps, speedups, last validation perplexity."""
        ms = {m: 1e3 * statistics.median(h.seconds[self.warmup :] or h.seconds) for m, h in self.histories.items()}
        base, torch_ms = ms.get("bernoulli"), ms.get("torch")
        return [
            LMSummaryRow(
                m,
                ms[m],
                base / ms[m] if base else None,
                torch_ms / ms[m] if torch_ms else None,
                h.valid_perplexity[-1] if h.valid_perplexity else float("nan"),
            )
            for m, h in self.histories.items()
        ]

    def format_table(self) -> str:
        """The summary as a markdown table."""
        lines = [
            "| method | ms / step (median) | speedup vs bernoulli | speedup vs nn.LSTM | valid perplexity |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in self.summary():
            a = "-" if r.speedup is None else f"{r.speedup:.2f}x"
            b = "-" if r.speedup_vs_torch is None else f"{r.speedup_vs_torch:.2f}x"
            lines.append(f"| {r.method} | {r.ms_per_step:.1f} | {a} | {b} | {r.valid_perplexity:.1f} |")
        return "\n".join(lines)


def train_lm(
    corpus: Corpus,
    methods=("bernoulli", "row", "torch"),
    *,
    hidden: int = 200,
    layers: int = 2,
    p: float = 0.5,
    steps: int = 200,
    bptt: int = 35,
    batch: int = 20,
    optimizer: str = "sgd",
    lr: float | None = None,
    clip: float | None = 0.25,
    eval_every: int = 100,
    eval_tokens: int | None = None,
    warmup: int = 3,
    callback: Callable[[LMTrainResult, int], None] | None = None,
    callback_every: int = 10,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
) -> LMTrainResult:
    """Train one language model per method for ``steps`` truncated-BPTT steps, interleaved.

    ``optimizer`` is a name from ``OPTIMIZERS`` (lr: its default unless given); ``clip`` the
    gradient-norm bound (None: no clipping).

    Validation perplexity (on the first ``eval_tokens`` validation tokens) every ``eval_every``
    steps and after the last; ``callback(result, step)`` every ``callback_every`` steps and after
    the last, so a figure can follow the training live. The training stream wraps around (the
    state is reset) when it ends.
    """
    methods = list(methods)
    if not methods or any(m not in LM_METHODS for m in methods) or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be distinct names from {LM_METHODS}, got {methods}")
    if min(steps, bptt, batch, eval_every, callback_every) < 1:
        got = (steps, bptt, batch, eval_every, callback_every)
        raise ValueError(f"steps, bptt, batch, eval_every, callback_every must be >= 1, got {got}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    opt_class, default_lr = OPTIMIZERS[optimizer]
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_data = batchify(corpus.train, batch).to(dev)  # [T, B]
    valid_ids = corpus.valid if eval_tokens is None else corpus.valid[:eval_tokens]
    valid_data = batchify(valid_ids, batch).to(dev)  # [T', B]
    models, optimizers = {}, {}
    for i, method in enumerate(methods):
        torch.manual_seed(seed)  # same initial weights for every method
        kwargs = {} if method == "torch" else {"generator": torch.Generator().manual_seed(seed + 1 + i)}
        models[method] = language_model(len(corpus.vocab), method, hidden, layers, p, **kwargs).to(dev).train()
        optimizers[method] = opt_class(models[method].parameters(), lr=default_lr if lr is None else lr)
    result = LMTrainResult(
        {m: LMHistory() for m in methods}, hidden, layers, p, batch, bptt, str(dev), min(warmup, steps - 1)
    )
    states: dict[str, State | None] = dict.fromkeys(methods)
    stream = iter(bptt_batches(train_data, bptt))
    bar = tqdm(total=steps, desc="training", disable=not progress, file=sys.stderr)
    for step in range(1, steps + 1):
        try:
            x, y = next(stream)
        except StopIteration:  # wrap around: a new pass, fresh states
            stream, states = iter(bptt_batches(train_data, bptt)), dict.fromkeys(methods)
            x, y = next(stream)
        for method in methods[step % len(methods) :] + methods[: step % len(methods)]:
            hist = result.histories[method]
            sync(dev)
            start = time.perf_counter()
            loss, states[method] = lm_training_step(models[method], optimizers[method], x, y, states[method], clip)
            sync(dev)
            hist.seconds.append(time.perf_counter() - start)
            hist.step.append(step)
            hist.loss.append(float(loss))
            if step % eval_every == 0 or step == steps:
                hist.eval_step.append(step)
                hist.valid_perplexity.append(perplexity(models[method], valid_data, bptt))
        bar.update()
        if callback is not None and (step % callback_every == 0 or step == steps):
            callback(result, step)
    bar.close()
    return result
