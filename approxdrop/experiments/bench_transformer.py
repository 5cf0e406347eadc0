"""Transformer benchmark: a small GPT-2-style character language model (``models.DecoderLM``) with
nn.Dropout in its MLPs, against copies turned by ``convert`` into row-pattern dropout (``row G=1``,
``row G=4``, ...): step time side by side and validation loss after a fixed budget of steps.

For each p and seed, every method starts from the same initial weights (the converted models are
copies of the nn.Dropout one) and reads the same batches; the methods are trained step by step
interleaved, the order rotating every step (``training.race``), so a drift of the machine hits them
alike. A step is zero_grad + forward + cross-entropy + backward + gradient-norm clipping + AdamW
step. A method's step time is the median over the steps after warm-up, then the median over seeds;
its validation loss (mean cross-entropy per character, in nats) is taken after the last step, and
averaged over seeds.

Data: ``load_corpus("auto")`` (PTB when it can be had, else the pydoc help texts) turned into
characters (``char_corpus``): each split's words joined by spaces, ``<eos>`` as a newline, ``<unk>``
as ``?``. Training batches are random windows of the training characters (one seeded stream per
seed); the validation loss reads the whole validation split in non-overlapping windows. Run
``approxdrop bench-transformer --help``.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .._env import check_int, check_positive, check_rate, default_device, describe_machine
from ..data import Corpus, load_corpus
from ..data.corpus import EOS, UNK
from ..models import DecoderLM, convert
from ..training.race import History, Metric, RaceResult, check_race_settings, race_seed, run_race
from .options import Distinct, non_negative_int, positive_int, progress_bar, random_seed, rate, write_record

BASELINE = "nn.Dropout"
VALID_LOSS = Metric("valid loss (nats / char)", higher_is_better=False, digits=3)
UNKNOWN_CHAR = "?"  # <unk>, and validation characters the training text lacks


@dataclass(frozen=True)
class TransformerSize:
    """A DecoderLM's size and its batches: width, heads, blocks, context (= training window), batch."""

    d_model: int
    heads: int
    layers: int
    context: int
    batch: int


SIZES = {
    "tiny": TransformerSize(d_model=32, heads=2, layers=1, context=16, batch=4),
    "default": TransformerSize(d_model=128, heads=4, layers=2, context=64, batch=16),
}


@dataclass(frozen=True)
class CharCorpus:
    """A corpus as characters: ``train``, ``valid`` and ``test`` Long[N] ids into ``alphabet``."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    alphabet: str
    name: str


def char_corpus(corpus: Corpus) -> CharCorpus:
    """The three splits of a word corpus as characters (module docstring); the alphabet is the training
    text's characters and ``UNKNOWN_CHAR``, sorted."""
    spelled = {EOS: "\n", UNK: UNKNOWN_CHAR}

    def text(ids: torch.Tensor) -> str:
        spaced = " ".join(spelled.get(word, word) for word in corpus.vocab.decode(ids))
        return spaced.replace(" \n", "\n").replace("\n ", "\n")  # no space around a newline

    train_text = text(corpus.train)
    alphabet = "".join(sorted(set(train_text) | {UNKNOWN_CHAR}))
    index = {c: i for i, c in enumerate(alphabet)}

    def encode(s: str) -> torch.Tensor:
        return torch.tensor([index.get(c, index[UNKNOWN_CHAR]) for c in s], dtype=torch.long)  # [N]

    valid, test = encode(text(corpus.valid)), encode(text(corpus.test))
    return CharCorpus(encode(train_text), valid, test, alphabet, corpus.info.name)


@dataclass(frozen=True)
class TransformerRaceConfig:
    """One race's settings: the size (a key of ``SIZES``), the dropout rate, the budget of steps, AdamW's
    learning rate, the gradient-norm bound, the steps left out of the step time, the seed."""

    size: str = "default"
    p: float = 0.1
    steps: int = 400
    lr: float = 2e-3
    clip: float = 1.0
    warmup: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {list(SIZES)}, got {self.size!r}")
        check_rate(self.p)
        check_race_settings(self.steps, self.steps, self.warmup)
        check_positive("lr", self.lr)
        check_positive("clip", self.clip)

    @property
    def eval_every(self) -> int:
        """The race evaluates once, after the last step."""
        return self.steps


@torch.no_grad()
def valid_loss(model: nn.Module, data: torch.Tensor, context: int, batch: int = 64) -> float:
    """Mean cross-entropy per character of ``model`` in eval mode over data (Long[N]) read in
    non-overlapping windows of ``context`` characters, each predicting its next characters;
    restores the training mode."""
    windows = (len(data) - 1) // context
    if windows < 1:
        raise ValueError(f"{len(data)} validation characters make no window of {context} + 1")
    x = data[: windows * context].view(windows, context)  # [W, T]
    y = data[1 : windows * context + 1].view(windows, context)  # [W, T]
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, windows, batch):
        logits = model(x[i : i + batch])  # [b, T, V]
        total += float(F.cross_entropy(logits.flatten(0, 1), y[i : i + batch].flatten(), reduction="sum"))
    model.train(was_training)
    return total / y.numel()


class _Contestant:
    """One method of the race: its model, optimiser, gradient bound and the validation data."""

    def __init__(self, model: DecoderLM, config: TransformerRaceConfig, valid: torch.Tensor) -> None:
        self.model, self.clip, self.valid = model, config.clip, valid
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.99))

    def step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        x, y = batch  # [B, T] each
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)  # [B, T, V]
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        return float(loss.detach())

    def evaluate(self) -> float:
        return valid_loss(self.model, self.valid, self.model.context)


def linear_work(size: TransformerSize, vocab: int, p: float, method: str) -> float:
    """Multiply-adds of the Linear layers left relative to nn.Dropout's, ideally: row patterns skip
    the dropped hidden units in both GEMMs of every MLP (attention's own products not counted)."""
    d, h = size.d_model, 4 * size.d_model
    mlp = 2 * d * h * size.layers
    dense = 4 * d * d * size.layers + mlp + d * vocab  # qkv + proj, the MLPs, the head
    return 1.0 if method == BASELINE else (dense - p * mlp) / dense


def race_models(vocab: int, size: TransformerSize, p: float, groups: Sequence[int], seed: int) -> dict[str, DecoderLM]:
    """``{"nn.Dropout": model, "row G=g": converted copy, ...}``, all from the same initial weights;
    each converted copy draws its patterns from its own generator, seeded from ``seed`` and its label
    (``race_seed``: the same draws whatever the other copies)."""
    torch.manual_seed(seed)
    base = DecoderLM(vocab, size.d_model, size.heads, size.layers, size.context, p)
    models = {BASELINE: base}
    for g in groups:
        model = copy.deepcopy(base)
        gen = torch.Generator().manual_seed(race_seed(seed, f"row G={g}", "patterns"))
        report = convert(model, method="row", groups=g, generator=gen)
        if len(report.converted) != size.layers:
            raise RuntimeError(f"convert should turn every block's MLP into an ApproxDropoutFFN:\n{report}")
        models[f"row G={g}"] = model
    return models


def race(
    chars: CharCorpus,
    config: TransformerRaceConfig,
    groups: Sequence[int] = (1, 4),
    device: str | torch.device | None = None,
    progress: bool = True,
    callback: Callable[[RaceResult, int], None] | None = None,
    callback_every: int = 10,
) -> RaceResult:
    """Train nn.Dropout and one converted copy per G of ``groups`` side by side for ``config.steps``
    steps on the same random windows (module docstring); the validation loss after the last step.
    ``callback(result, step)`` runs every ``callback_every`` steps and after the last (live figures)."""
    size, dev = SIZES[config.size], default_device(device)
    vocab = len(chars.alphabet)
    if len(chars.train) <= size.context + 1:
        raise ValueError(f"{len(chars.train)} training characters make no window of {size.context} + 1")
    models = race_models(vocab, size, config.p, groups, config.seed)
    valid = chars.valid.to(dev)
    contestants = {label: _Contestant(model.to(dev).train(), config, valid) for label, model in models.items()}
    train = chars.train.to(dev)
    stream = torch.Generator().manual_seed(config.seed)
    offsets = torch.arange(size.context + 1, device=dev)  # [T + 1]

    def next_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(train) - size.context, (size.batch,), generator=stream).to(dev)  # [B]
        window = train[starts[:, None] + offsets]  # [B, T + 1]
        return window[:, :-1], window[:, 1:]  # [B, T] inputs, [B, T] next characters

    work = {label: linear_work(size, vocab, config.p, label) for label in models}
    result = RaceResult({m: History() for m in models}, VALID_LOSS, config, work, str(dev), (BASELINE,))
    return run_race(
        contestants, next_batch, result, steps=config.steps, eval_every=config.eval_every, progress=progress,
        callback=callback, callback_every=callback_every, seed=config.seed,
    )  # fmt: skip


@dataclass
class TransformerBenchRow:
    """One (method, p) cell over the seeds."""

    size: str
    method: str
    p: float
    ms_per_step: float  # median over seeds of each race's median step time
    ratio_to_dropout: float  # ms_per_step / nn.Dropout's
    linear_work: float
    valid_losses: list[float]  # one per seed, after the last step (nan where the method diverged)
    valid_loss_mean: float  # over the seeds that did not diverge (nan when every seed diverged)
    valid_loss_std: float  # likewise (0 with one such seed)
    gap_percent: float  # 100 * (valid_loss_mean / nn.Dropout's - 1); nan when either diverged everywhere
    diverged: int  # seeds whose loss became NaN or inf


def _distinct(name: str, values: Sequence) -> None:
    if not values or len(set(values)) != len(values):
        raise ValueError(f"{name} must be a non-empty list of distinct values, got {list(values)}")


def check_timed_steps(steps: int, warmup: int) -> None:
    """ValueError unless some steps are left after the warm-up: the step time is their median (a race
    alone would quietly time warm-up steps instead)."""
    if warmup >= steps:
        raise ValueError(
            f"warmup ({warmup}) must be below steps ({steps}): the step time is the median of the steps after it"
        )


def measure_transformer(
    size: str = "default",
    ps: Sequence[float] = (0.1, 0.2, 0.3),
    seeds: Sequence[int] = (0, 1, 2),
    steps: int = 400,
    groups: Sequence[int] = (1, 4),
    lr: float = 2e-3,
    warmup: int = 5,
    device: str | torch.device | None = None,
    progress: bool = True,
    corpus: Corpus | None = None,
) -> list[TransformerBenchRow]:
    """One race per p and seed (``race``) on ``corpus`` (default ``load_corpus("auto")``) -> one row
    per (p, method); one progress bar for all. ValueError for bad arguments, before any training."""
    _distinct("ps", ps)
    _distinct("seeds", seeds)
    _distinct("groups", groups)
    configs = {
        (p, seed): TransformerRaceConfig(size, p, steps, lr, warmup=warmup, seed=seed) for p in ps for seed in seeds
    }
    check_timed_steps(steps, warmup)
    for g in groups:
        check_int("groups", g, 1)
    chars = char_corpus(load_corpus("auto") if corpus is None else corpus)
    with progress_bar(len(configs) * steps, COMMAND, progress) as bar:
        races = {key: race(chars, config, groups, device, progress=False, callback=lambda *_: bar.update(),
                           callback_every=1) for key, config in configs.items()}  # fmt: skip
    return [row for p in ps for row in summarise(size, p, [races[(p, seed)] for seed in seeds])]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite ``values`` (a diverged seed's nan left out): nan
    and nan when none is finite, std 0 with one."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.mean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def summarise(size: str, p: float, races: Sequence[RaceResult]) -> list[TransformerBenchRow]:
    """One row per method of ``races`` (the races of one p, one per seed, with the same methods); the
    losses of diverged seeds are nan and left out of the mean and std (``diverged`` counts them)."""
    runs = [result.summary() for result in races]
    cells = {r.method: [run[i] for run in runs] for i, r in enumerate(runs[0])}  # method: [SummaryRow per seed]
    base_ms = statistics.median(r.ms_per_step for r in cells[BASELINE])
    losses = {m: [math.nan if r.diverged_at is not None else r.metric for r in cell] for m, cell in cells.items()}
    base_loss = mean_std(losses[BASELINE])[0]
    rows = []
    for method, cell in cells.items():
        ms = statistics.median(r.ms_per_step for r in cell)
        mean, std = mean_std(losses[method])
        rows.append(
            TransformerBenchRow(
                size, method, p, ms, ms / base_ms, cell[0].gemm_work, losses[method], mean, std,
                100 * (mean / base_loss - 1), sum(r.diverged_at is not None for r in cell),
            )
        )  # fmt: skip
    return rows


def format_table(rows: list[TransformerBenchRow]) -> str:
    """Markdown: per (p, method) the step time and its ratio to nn.Dropout (below 1 = faster), the
    ideal Linear work left, the validation loss (mean ± std over seeds) and its gap to nn.Dropout's."""
    lines = [
        "| p | method | ms / step (median) | ratio to nn.Dropout | Linear work left (ideal) "
        "| valid loss (mean ± std) | gap to nn.Dropout |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        warn = f" ({r.diverged} diverged)" if r.diverged else ""
        loss = "diverged" if math.isnan(r.valid_loss_mean) else f"{r.valid_loss_mean:.4f} ± {r.valid_loss_std:.4f}"
        gap = "-" if math.isnan(r.gap_percent) else f"{r.gap_percent:+.2f}%"
        lines.append(
            f"| {r.p:g} | {r.method} | {r.ms_per_step:.1f} | {r.ratio_to_dropout:.3f} | {r.linear_work:.3f} "
            f"| {loss}{warn} | {gap} |"
        )
    return "\n".join(lines)


COMMAND, HELP = "bench-transformer", "GPT-style character LM: nn.Dropout vs convert()ed row dropout, time and loss"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="default", choices=list(SIZES), help="model and batch size")
    parser.add_argument("--ps", type=rate, nargs="+", action=Distinct, default=[0.1, 0.2, 0.3], help="dropout rates")
    parser.add_argument("--seeds", type=random_seed, nargs="+", action=Distinct, default=[0, 1, 2])
    parser.add_argument("--steps", type=positive_int, default=400, help="training steps per race (the budget)")
    parser.add_argument(
        "--groups",
        type=positive_int,
        nargs="+",
        action=Distinct,
        default=[1, 4],
        help="one converted model per G batch groups",
    )
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (every method alike)")
    parser.add_argument("--warmup", type=non_negative_int, default=5, help="first steps left out of the step time")


def run(args: argparse.Namespace) -> int:
    size = SIZES[args.size]
    TransformerRaceConfig(args.size, args.ps[0], args.steps, args.lr, warmup=args.warmup)  # settings, before the corpus
    check_timed_steps(args.steps, args.warmup)
    corpus = load_corpus("auto")
    chars = char_corpus(corpus)
    rows = measure_transformer(
        args.size, args.ps, args.seeds, args.steps, args.groups, args.lr, args.warmup, args.device,
        progress=not args.no_progress, corpus=corpus,
    )  # fmt: skip
    print(
        f"DecoderLM {args.size}: d_model {size.d_model}, {size.heads} heads, {size.layers} block(s), context "
        f"{size.context}, batch {size.batch}; {args.steps} AdamW steps (lr {args.lr}, clip 1.0), seeds {args.seeds}; "
        f"characters of {chars.name}: {len(chars.train)} train / {len(chars.valid)} valid, alphabet "
        f"{len(chars.alphabet)}; {describe_machine(args.device)}"
    )
    print(format_table(rows))
    write_record(args, rows)
    return 0
