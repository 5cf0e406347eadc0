"""Train ApproxDropoutMLPs with several dropout methods side by side, for the labs' live race.

Every method starts from the same initial weights and sees the same mini-batches. The methods are
interleaved step by step (the order rotates every step), so a drift of the machine hits all of
them alike. One step is zero_grad + forward + cross-entropy + backward + optimizer step; its time
is measured around exactly that, with a CUDA synchronisation before and after on a GPU.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .bench import gemm_work_fraction, sync
from .data import Dataset
from .layers import METHODS, ApproxDropoutMLP


@dataclass
class History:
    """What one method did: per training step, and at every evaluation."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # wall time of the step
    train_accuracy: list[float] = field(default_factory=list)  # running mean (EMA 0.9) of batch accuracy
    eval_step: list[int] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)


@dataclass
class SummaryRow:
    """One method's line of the final table."""

    method: str
    ms_per_step: float  # median over the steps after warm-up
    speedup: float | None  # bernoulli's ms_per_step / this one's (None without bernoulli)
    test_accuracy: float
    gemm_work: float  # ideal GEMM work left, relative to dense (approxdrop.bench.gemm_work_fraction)


@dataclass
class TrainResult:
    """Histories per method plus the settings they were trained with."""

    histories: dict[str, History]
    sizes: list[int]
    p: float
    batch: int
    device: str
    warmup: int

    @property
    def methods(self) -> list[str]:
        return list(self.histories)

    def summary(self) -> list[SummaryRow]:
        """Median step time (after ``warmup`` steps), speedup against bernoulli, final test accuracy."""
        ms = {m: 1e3 * statistics.median(h.seconds[self.warmup :] or h.seconds) for m, h in self.histories.items()}
        base = ms.get("bernoulli")
        return [
            SummaryRow(
                m,
                ms[m],
                base / ms[m] if base else None,
                h.test_accuracy[-1] if h.test_accuracy else float("nan"),
                gemm_work_fraction(self.sizes, self.p, m),
            )
            for m, h in self.histories.items()
        ]

    def format_table(self) -> str:
        """The summary as a markdown table."""
        lines = [
            "| method | ms / step (median) | speedup vs bernoulli | ideal GEMM speedup | test accuracy |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in self.summary():
            speedup = "-" if r.speedup is None else f"{r.speedup:.2f}x"
            lines.append(
                f"| {r.method} | {r.ms_per_step:.2f} | {speedup} | {1 / r.gemm_work:.2f}x | {r.test_accuracy:.3f} |"
            )
        return "\n".join(lines)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> float:
    """Accuracy of ``model`` in eval mode on x (Float[N, D]), y (Long[N]); restores the training mode."""
    was_training = model.training
    model.eval()
    correct = sum(int((model(x[i : i + batch]).argmax(-1) == y[i : i + batch]).sum()) for i in range(0, len(y), batch))
    model.train(was_training)
    return correct / max(1, len(y))


def training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, clip: float | None = None
):
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


def train(
    data: Dataset,
    methods=("bernoulli", "row", "tile"),
    *,
    hidden=(2048, 2048),
    p: float = 0.5,
    steps: int = 1000,
    batch: int = 128,
    lr: float = 0.03,
    tile: int = 32,
    eval_every: int = 100,
    eval_size: int | None = None,
    warmup: int = 5,
    callback: Callable[[TrainResult, int], None] | None = None,
    callback_every: int = 10,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Train one ApproxDropoutMLP ``[D, *hidden, classes]`` per method, interleaved step by step.

    SGD with momentum 0.9 at ``lr``. Test accuracy (on the first ``eval_size`` test examples) every
    ``eval_every`` steps and after the last; ``callback(result, step)`` every ``callback_every``
    steps and after the last, so a figure can follow the training live.
    """
    methods = list(methods)
    if not methods or any(m not in METHODS for m in methods) or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be distinct names from {METHODS}, got {methods}")
    if steps < 1 or batch < 1 or eval_every < 1 or callback_every < 1:
        raise ValueError(
            f"steps, batch, eval_every, callback_every must be >= 1, got {steps, batch, eval_every, callback_every}"
        )
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_x, train_y = data.train_x.to(dev), data.train_y.to(dev)
    test_x, test_y = data.test_x[:eval_size].to(dev), data.test_y[:eval_size].to(dev)
    sizes = [train_x.shape[1], *hidden, data.info.classes]
    models, optimizers = {}, {}
    for i, method in enumerate(methods):
        torch.manual_seed(seed)  # same initial weights for every method
        gen = torch.Generator().manual_seed(seed + 1 + i)  # pattern draws
        models[method] = ApproxDropoutMLP(sizes, p, method=method, tile=tile, generator=gen).to(dev).train()
        optimizers[method] = torch.optim.SGD(models[method].parameters(), lr=lr, momentum=0.9)
    result = TrainResult({m: History() for m in methods}, sizes, p, batch, str(dev), min(warmup, steps - 1))
    batches = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="training", disable=not progress, file=sys.stderr)
    for step in range(1, steps + 1):
        index = torch.randint(len(train_y), (batch,), generator=batches).to(dev)
        x, y = train_x[index], train_y[index]  # [B, D], [B]
        for method in methods[step % len(methods) :] + methods[: step % len(methods)]:
            model, opt, hist = models[method], optimizers[method], result.histories[method]
            sync(dev)
            start = time.perf_counter()
            loss, logits = training_step(model, opt, x, y)
            sync(dev)
            hist.seconds.append(time.perf_counter() - start)
            hist.step.append(step)
            hist.loss.append(float(loss))
            acc = float((logits.argmax(-1) == y).float().mean())
            hist.train_accuracy.append(acc if step == 1 else 0.9 * hist.train_accuracy[-1] + 0.1 * acc)
            if step % eval_every == 0 or step == steps:
                hist.eval_step.append(step)
                hist.test_accuracy.append(evaluate(model, test_x, test_y))
        bar.update()
        if callback is not None and (step % callback_every == 0 or step == steps):
            callback(result, step)
    bar.close()
    return result
