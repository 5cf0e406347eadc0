"""The accuracy-parity study: does Approximate Random Dropout train as well as dropout?

``approxdrop study mlp`` trains ``ApproxDropoutMLP`` on a real data set (``load_dataset("auto")``:
MNIST when it can be had, else Fashion-MNIST, else digits) with every variant at every p for
several seeds and a fixed budget of epochs. Every run writes its own JSON file atomically under
``OUT/runs/``, so an interrupted study continues where it stopped; the summary (``results.json``,
``results.md``: test accuracy mean and spread, time per epoch, best p of each variant) and the
figures (``accuracy.html``) are written at the end. A study directory belongs to one setting: runs
made with other settings are an error, not silently mixed.

Variants: methods of the table (``models.methods``): by default ``bernoulli`` (nn.Dropout), ``shared``
(batch-shared random units), ``row`` (searched paper family), ``row-extended`` (searched extended
family), ``tile``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from math import inf
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._env import (
    check_int,
    check_positive,
    check_rate,
    default_device,
    describe_machine,
    sync,
    write_atomic,
    write_json_atomic,
)
from ..data import NAMES, Dataset, load_dataset
from ..models import METHODS, ApproxDropoutMLP
from ..training import evaluate, training_step
from .options import positive_int, rate, write_record

VARIANTS = METHODS  # a study can train any MLP method of the table


@dataclass(frozen=True)
class StudyConfig:
    """What a study trains; every run file records it, and resuming requires the same one."""

    hidden: tuple[int, ...] = (2048, 2048)
    ps: tuple[float, ...] = (0.3, 0.5, 0.7)
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 5
    batch: int = 128
    lr: float = 0.03
    clip: float | None = None  # max gradient norm (all variants alike); None: no clipping
    tile: int = 32
    variants: tuple[str, ...] = ("bernoulli", "shared", "row", "row-extended", "tile")
    dataset: str = "auto"
    train_size: int | None = None
    test_size: int | None = None

    def __post_init__(self) -> None:
        """Check every setting (ValueError naming a bad one) and keep it as plain Python values (the
        run files record the config as JSON): sequences as tuples, numbers as int / float."""
        for name in ("hidden", "ps", "seeds", "variants"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or not value:
                raise ValueError(f"{name} must be a non-empty tuple, got {value!r}")
        self._set("hidden", tuple(check_int("hidden width", width, 1) for width in self.hidden))
        self._set("ps", tuple(check_rate(p) for p in self.ps))
        self._set("seeds", tuple(check_int("seed", seed, 0) for seed in self.seeds))
        self._set("variants", tuple(self.variants))
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"variants must be taken from {VARIANTS}, got {self.variants}")
        for name in ("ps", "seeds", "variants"):  # a repeated one would train and count the same run twice
            value = getattr(self, name)
            if len(set(value)) != len(value):
                raise ValueError(f"{name} must not repeat a value, got {value}")
        for name in ("epochs", "batch", "tile"):
            self._set(name, check_int(name, getattr(self, name), 1))
        self._set("lr", check_positive("lr", self.lr))
        if self.clip is not None:
            self._set("clip", check_positive("clip (a gradient norm)", self.clip))
        if self.dataset not in NAMES:
            raise ValueError(f"dataset must be one of {NAMES}, got {self.dataset!r}")
        for name in ("train_size", "test_size"):
            if getattr(self, name) is not None:
                self._set(name, check_int(name, getattr(self, name), 1))

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # frozen: only __post_init__ normalises a field

    def runs(self) -> list[tuple[str, float, int]]:
        """Every (variant, p, seed), seed-major so a partial study already covers every variant."""
        return [(v, p, s) for s in self.seeds for p in self.ps for v in self.variants]


@dataclass
class RunResult:
    """One trained model: test accuracy and wall time after every epoch."""

    variant: str
    p: float
    seed: int
    dataset: str
    test_accuracy: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)


def run_name(variant: str, p: float, seed: int) -> str:
    """The file name of one run: p written exactly (``repr``), so distinct rates never share a file."""
    return f"{variant}-p{float(p)!r}-seed{seed}.json"


def build_model(config: StudyConfig, variant: str, p: float, sizes: list[int], seed: int) -> ApproxDropoutMLP:
    """The variant's MLP; the same initial weights for every variant of a seed."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(10_000 + seed)  # pattern draws
    return ApproxDropoutMLP(sizes, p, method=variant, tile=config.tile, generator=generator).train()


def train_run(
    config: StudyConfig, data: Dataset, variant: str, p: float, seed: int, on_epoch: Callable[[], object] | None = None
) -> RunResult:
    """Train one variant for ``config.epochs`` epochs of shuffled mini-batches; evaluate after each."""
    dev = data.train_x.device
    sizes = [data.train_x.shape[1], *config.hidden, data.info.classes]
    model = build_model(config, variant, p, sizes, seed).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    order = torch.Generator().manual_seed(seed)  # the same batches for every variant of a seed
    result = RunResult(variant, p, seed, data.info.name)
    for _ in range(config.epochs):
        perm = torch.randperm(len(data.train_y), generator=order).to(dev)
        sync(dev)
        start = time.perf_counter()
        for i in range(0, len(perm), config.batch):
            index = perm[i : i + config.batch]
            training_step(model, opt, data.train_x[index], data.train_y[index], clip=config.clip)
        sync(dev)
        result.epoch_seconds.append(time.perf_counter() - start)
        result.test_accuracy.append(evaluate(model, data.test_x, data.test_y))
        if on_epoch is not None:
            on_epoch()
    return result


def _run_problem(result: RunResult, key: tuple[str, float, int], epochs: int) -> str | None:
    """Why ``result`` is not the finished run ``key`` of ``epochs`` epochs, or None when it is."""
    if (result.variant, result.p, result.seed) != key:
        return f"it holds {result.variant} p={result.p!r} seed {result.seed!r}, not {key[0]} p={key[1]!r} seed {key[2]}"
    for name, values, high in (
        ("test_accuracy", result.test_accuracy, 1),
        ("epoch_seconds", result.epoch_seconds, inf),
    ):
        if not isinstance(values, list) or len(values) != epochs:
            size = f"has length {len(values)}" if isinstance(values, list) else f"is {values!r}"
            return f"its {name} {size}, not one value per epoch ({epochs})"
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= high]
        if bad:
            return f"its {name} holds {bad[:3]!r}, outside [0, {high}]"
    return None


def _read_run(path: Path, config: StudyConfig, key: tuple[str, float, int], dataset: str) -> RunResult | None:
    """The finished run ``key`` of this config on ``dataset``; None if missing, or (saying why) unreadable,
    another run or unfinished; ValueError for a run of another config or data set."""
    try:
        payload = json.loads(path.read_text())
        result = RunResult(**payload["result"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as err:
        print(f"ignoring unreadable {path.name} ({err}); training it again", file=sys.stderr)
        return None
    if payload.get("config") != json.loads(json.dumps(asdict(config))):
        raise ValueError(f"{path} was made with other settings ({payload.get('config')}); use another --out")
    problem = _run_problem(result, key, config.epochs)
    if problem is not None:
        print(f"ignoring {path.name}: {problem}; training it again", file=sys.stderr)
        return None
    if result.dataset != dataset:
        raise ValueError(f"{path} was trained on {result.dataset}, this study loads {dataset}; use another --out")
    return result


def run_study(config: StudyConfig, out: Path, data: Dataset | None = None, progress: bool = True) -> list[RunResult]:
    """Train every run not already in ``out/runs`` (resumable), then write the summary and figures."""
    out = Path(out)
    if data is None:
        data = load_dataset(config.dataset, train_size=config.train_size, test_size=config.test_size)
        dev = default_device()
        data = Dataset(*(t.to(dev) for t in data[:4]), data.info)
    runs = config.runs()
    done = {key: _read_run(out / "runs" / run_name(*key), config, key, data.info.name) for key in runs}
    todo = [key for key in runs if done[key] is None]
    bar = tqdm(total=len(runs) * config.epochs, initial=(len(runs) - len(todo)) * config.epochs, desc="study",
               unit="epoch", disable=not progress, file=sys.stderr)  # fmt: skip
    for key in todo:
        bar.set_postfix_str(run_name(*key)[:-5])
        done[key] = train_run(config, data, *key, on_epoch=bar.update)
        write_json_atomic(out / "runs" / run_name(*key), {"config": asdict(config), "result": asdict(done[key])}, 1)
    bar.close()
    results = [done[key] for key in runs]
    write_summary(config, results, out)
    return results


@dataclass(frozen=True)
class SummaryRow:
    """One (variant, p) cell over seeds."""

    variant: str
    p: float
    accuracy_mean: float
    accuracy_std: float
    seconds_per_epoch: float
    seeds: int


def summarise(results: list[RunResult]) -> list[SummaryRow]:
    """Final test accuracy mean / sample std over seeds and the median time per epoch, per (variant, p)."""
    cells: dict[tuple[str, float], list[RunResult]] = {}
    for r in results:
        cells.setdefault((r.variant, r.p), []).append(r)
    rows = []
    for (variant, p), runs in cells.items():
        finals = [r.test_accuracy[-1] for r in runs]
        std = statistics.stdev(finals) if len(finals) > 1 else 0.0
        seconds = statistics.median(s for r in runs for s in r.epoch_seconds)
        rows.append(SummaryRow(variant, p, statistics.mean(finals), std, seconds, len(runs)))
    return rows


def best_p(rows: list[SummaryRow]) -> dict[str, SummaryRow]:
    """Each variant's row with the highest mean accuracy."""
    best: dict[str, SummaryRow] = {}
    for row in rows:
        if row.variant not in best or row.accuracy_mean > best[row.variant].accuracy_mean:
            best[row.variant] = row
    return best


def format_table(rows: list[SummaryRow]) -> str:
    """Markdown: accuracy (mean ± std, in %) and time per epoch, one line per (variant, p); the gap
    to bernoulli at the same p in percentage points; then each variant's best p."""
    base = {r.p: r.accuracy_mean for r in rows if r.variant == "bernoulli"}
    lines = [
        "| variant | p | test accuracy % (mean ± std) | vs bernoulli (pp) | s / epoch |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r.p, VARIANTS.index(r.variant))):
        gap = f"{100 * (r.accuracy_mean - base[r.p]):+.2f}" if r.p in base else "-"
        lines.append(
            f"| {r.variant} | {r.p:g} | {100 * r.accuracy_mean:.2f} ± {100 * r.accuracy_std:.2f} | {gap} "
            f"| {r.seconds_per_epoch:.1f} |"
        )
    lines += ["", "| variant | best p | test accuracy % |", "|---|---:|---:|"]
    for variant, r in sorted(best_p(rows).items(), key=lambda kv: VARIANTS.index(kv[0])):
        lines.append(f"| {variant} | {r.p:g} | {100 * r.accuracy_mean:.2f} |")
    return "\n".join(lines)


def write_summary(config: StudyConfig, results: list[RunResult], out: Path) -> None:
    """results.json, results.md and accuracy.html under ``out``."""
    rows = summarise(results)
    machine = describe_machine(default_device())
    header = (
        f"# Accuracy-parity study\n\n- Data: {results[0].dataset}; MLP hidden {list(config.hidden)}, batch "
        f"{config.batch}, SGD lr {config.lr} momentum 0.9, gradient-norm clip {config.clip}, {config.epochs} epochs, "
        f"seeds {list(config.seeds)}\n"
        f"- Machine: {machine}\n- Written: {datetime.datetime.now().isoformat(timespec='seconds')}\n\n"
    )
    write_atomic(out / "results.md", lambda f: f.write(header + format_table(rows) + "\n"))
    write_json_atomic(
        out / "results.json",
        {"config": asdict(config), "machine": machine, "summary": [asdict(r) for r in rows],
         "runs": [asdict(r) for r in results]},
        indent=1,
    )  # fmt: skip
    from .study_figure import study_figure  # plotly is optional (the lab extra): imported only to draw

    html = study_figure(results).to_html(include_plotlyjs="cdn")
    write_atomic(out / "accuracy.html", lambda f: f.write(html))


COMMAND, HELP = "study", "accuracy-parity study: train every method at every p on real data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=["mlp"], help="what to study")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/study"), help="study directory (resumable)")
    parser.add_argument("--hidden", type=positive_int, nargs="+", default=[2048, 2048])
    parser.add_argument("--ps", type=rate, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=positive_int, default=5)
    parser.add_argument("--batch", type=positive_int, default=128)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--clip", type=float, help="clip every variant's gradient norm to this (default: none)")
    parser.add_argument("--variants", nargs="+", default=list(StudyConfig.variants), choices=VARIANTS)
    parser.add_argument("--dataset", default="auto", choices=NAMES)
    parser.add_argument("--train-size", type=positive_int, help="seeded subset of the training set")
    parser.add_argument("--test-size", type=positive_int, help="seeded subset of the test set")


def run(args: argparse.Namespace) -> int:
    try:
        config = StudyConfig(
            tuple(args.hidden), tuple(args.ps), tuple(args.seeds), args.epochs, args.batch, args.lr,
            clip=args.clip, variants=tuple(args.variants), dataset=args.dataset, train_size=args.train_size,
            test_size=args.test_size,
        )  # fmt: skip
    except ValueError as err:
        args.parser.error(str(err))
    results = run_study(config, args.out, progress=not args.no_progress)
    print((args.out / "results.md").read_text())
    write_record(args, summarise(results))
    return 0
