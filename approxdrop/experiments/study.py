"""The accuracy-parity study: does Approximate Random Dropout train as well as dropout?

``approxdrop study mlp`` trains ``ApproxDropoutMLP`` on a real data set (``load_dataset("auto")``:
MNIST when it can be had, else Fashion-MNIST, else digits) with every variant at every p, with the
same tuning effort for every variant:

1. **Pilot.** ``val_size`` images of the training set are held out as a validation split (one
   seeded split for every run). For every (variant, p), one short run (``pilot_epochs``, the first
   seed) per learning rate in ``lrs``; the rate with the best validation accuracy is chosen.
2. **Full runs.** Every (variant, p, seed) trains ``epochs`` epochs at its chosen rate on the rest of
   the training set, with the validation accuracy after each epoch. The test set is evaluated once,
   after the last epoch.

Every run writes its own JSON file atomically (``OUT/pilot/`` and ``OUT/runs/``), so an interrupted
study continues where it stopped; ``workers`` runs train in parallel processes (one torch thread
each). The summary (``results.json``, ``results.md``) and the figures (``accuracy.html``) are written
at the end, for the variants, ps and seeds of the study as run. A run file records only what its run
depends on (``run_settings``: the data, model and training settings, the rate grid and the pilot's
seed), so a study with more or fewer variants, ps or seeds reuses the runs it shares with the files
there; runs made with other settings are an error, not silently mixed. A run file also records where and
when its run was trained (the machine line of the process that trained it, the time it finished, the runs
trained in parallel), and the summary names those, not the machine that writes it: a resumed study that
reuses every run says where they were trained (runs from files written before this was recorded: "not
recorded"). Ctrl-C keeps every finished run; the same command resumes.

Variants: methods of the table (``models.methods``); by default ``bernoulli`` (nn.Dropout), ``row``
(searched paper family, one pattern per batch), ``row-g4`` / ``row-g16`` (4 / 16 batch groups with
complementary offsets, docs/method.md §9), ``shared`` (batch-shared random units) and ``tile``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import multiprocessing
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from math import inf
from pathlib import Path
from typing import NamedTuple

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
from ..models import METHODS, ApproxDropoutMLP, get_method
from ..search.problem import check_reached
from ..training import evaluate, sgd, training_step
from .options import (
    Distinct,
    check_json_apart,
    check_output_dir,
    positive_int,
    progress_bar,
    random_seed,
    rate,
    threads,
    write_record,
)

VARIANTS = METHODS  # a study can train any MLP method of the table
SPLIT_SEED = 1234  # the one validation split of every run
DEFAULT_OUT = Path("approxdrop-study")  # not benchmarks/study: run from the repository, that is the recorded study


@dataclass(frozen=True)
class StudyConfig:
    """What a study trains. Every run file records its ``run_settings`` (all but the lists of variants, ps
    and seeds), and resuming requires the same ones."""

    hidden: tuple[int, ...] = (2048, 2048)
    ps: tuple[float, ...] = (0.3, 0.5, 0.7)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 4
    batch: int = 128
    lrs: tuple[float, ...] = (0.01, 0.03, 0.1)  # SGD learning rates the pilot chooses from
    pilot_epochs: int = 1
    val_size: int = 10_000  # validation images held out of the training set
    clip: float | None = 2.0  # max gradient norm (all variants alike); None: no clipping
    tile: int = 32
    variants: tuple[str, ...] = ("bernoulli", "row", "row-g4", "row-g16", "shared", "tile")
    dataset: str = "auto"
    train_size: int | None = None
    test_size: int | None = None

    def __post_init__(self) -> None:
        """Check every setting (ValueError naming a bad one) and keep it as plain Python values (the
        run files record the config as JSON): sequences as tuples, numbers as int / float."""
        for name in ("hidden", "ps", "seeds", "lrs", "variants"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or not value:
                raise ValueError(f"{name} must be a non-empty tuple, got {value!r}")
        self._set("hidden", tuple(check_int("hidden width", width, 1) for width in self.hidden))
        self._set("ps", tuple(check_rate(p) for p in self.ps))
        self._set("seeds", tuple(check_int("seed", seed, 0) for seed in self.seeds))
        self._set("lrs", tuple(check_positive("lr", lr) for lr in self.lrs))
        self._set("variants", tuple(self.variants))
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"variants must be taken from {VARIANTS}, got {self.variants}")
        for name in ("ps", "seeds", "lrs", "variants"):  # a repeated one would train and count the same run twice
            value = getattr(self, name)
            if len(set(value)) != len(value):
                raise ValueError(f"{name} must not repeat a value, got {value}")
        for name in ("epochs", "pilot_epochs", "batch", "tile", "val_size"):
            self._set(name, check_int(name, getattr(self, name), 1))
        if self.clip is not None:
            self._set("clip", check_positive("clip (a gradient norm)", self.clip))
        if self.dataset not in NAMES:
            raise ValueError(f"dataset must be one of {NAMES}, got {self.dataset!r}")
        for name in ("train_size", "test_size"):
            if getattr(self, name) is not None:
                self._set(name, check_int(name, getattr(self, name), 1))
        if self.train_size is not None and self.val_size >= self.train_size:
            raise ValueError(f"val_size ({self.val_size}) must be smaller than train_size ({self.train_size})")
        for variant, family in ((v, get_method(v).family) for v in self.variants):
            for p in self.ps if family is not None else ():
                try:  # a rate the variant's family cannot reach: refused now, by the check of the model's search
                    check_reached(p, family)
                except ValueError as err:
                    raise ValueError(f"variant {variant}: {err}") from None

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # frozen: only __post_init__ normalises a field

    def pilots(self) -> list[tuple[str, float, float]]:
        """Every pilot (variant, p, lr), trained with the first seed."""
        return [(v, p, lr) for p in self.ps for v in self.variants for lr in self.lrs]

    def runs(self) -> list[tuple[str, float, int]]:
        """Every full (variant, p, seed), seed-major so a partial study already covers every variant."""
        return [(v, p, s) for s in self.seeds for p in self.ps for v in self.variants]


_STUDY_LISTS = ("variants", "ps", "seeds")  # a run has its own variant, p and seed; the lists are the study's


def run_settings(config: StudyConfig) -> dict:
    """What every pilot and run file of ``config`` records, and must match to be reused: the settings a run
    depends on beyond its own (variant, p, seed, lr), as JSON values. That is every field but the study's
    lists of variants, ps and seeds, plus ``pilot_seed`` (the first seed: its pilots choose every rate). The
    rates ``lrs`` are sorted: their order changes no run (``choose_lr`` does not depend on it)."""
    settings = {name: value for name, value in asdict(config).items() if name not in _STUDY_LISTS}
    return json.loads(json.dumps({**settings, "lrs": sorted(config.lrs), "pilot_seed": config.seeds[0]}))


def _sorted_rates(settings: object) -> object:
    """Recorded ``settings`` with their ``lrs`` sorted, as ``run_settings`` records them (files written before
    it did record the rates in the order given); anything else (not numbers: a spoilt file) as it is."""
    rates = settings.get("lrs") if isinstance(settings, dict) else None
    if not isinstance(rates, list) or any(isinstance(r, bool) or not isinstance(r, (int, float)) for r in rates):
        return settings
    return {**settings, "lrs": sorted(rates)}


def _recorded_settings(recorded: object) -> object:
    """A file's recorded settings in the form of ``run_settings``: files written before it record the whole
    ``StudyConfig`` (with ``variants``), read as its settings and the first of its ``seeds``; rates recorded
    in the order given, sorted (``_sorted_rates``)."""
    if not isinstance(recorded, dict) or "variants" not in recorded:
        return _sorted_rates(recorded)
    seeds = recorded.get("seeds")
    settings = {name: value for name, value in recorded.items() if name not in _STUDY_LISTS}
    return _sorted_rates({**settings, "pilot_seed": seeds[0] if isinstance(seeds, list) and seeds else seeds})


class StudyData(NamedTuple):
    """The training set split into train / validation, and the test set (Float[N, D], Long[N])."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    name: str
    classes: int


def split_validation(data: Dataset, val_size: int) -> StudyData:
    """Hold ``val_size`` training images out (one seeded split, ``SPLIT_SEED``) as the validation split."""
    n = len(data.train_y)
    if val_size >= n:
        raise ValueError(f"val_size ({val_size}) must be smaller than the training set ({n} images)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).to(data.train_x.device)
    val, train = order[:val_size], order[val_size:]
    return StudyData(data.train_x[train], data.train_y[train], data.train_x[val], data.train_y[val],
                     data.test_x, data.test_y, data.info.name, data.info.classes)  # fmt: skip


@dataclass
class RunResult:
    """One trained model: validation accuracy and wall time after every epoch, and (full runs only)
    the test accuracy after the last epoch; ``diverged`` when a loss was not finite."""

    variant: str
    p: float
    seed: int
    lr: float
    dataset: str
    val_accuracy: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    test_accuracy: float | None = None
    diverged: bool = False
    # where and when it was trained (set as its file is written; None in files written before they were recorded)
    machine: str | None = None  # the machine line of the process that trained it
    trained: str | None = None  # the date and time it finished
    workers: int | None = None  # the runs that trained in parallel with it (its own included)


def run_name(variant: str, p: float, seed: int) -> str:
    """The file name of one full run: p written exactly (``repr``), so distinct rates never share a file."""
    return f"{variant}-p{float(p)!r}-seed{seed}.json"


def pilot_name(variant: str, p: float, lr: float) -> str:
    """The file name of one pilot run."""
    return f"{variant}-p{float(p)!r}-lr{float(lr)!r}.json"


def build_model(config: StudyConfig, variant: str, p: float, sizes: list[int], seed: int) -> ApproxDropoutMLP:
    """The variant's MLP; the same initial weights for every variant of a seed."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(10_000 + seed)  # pattern draws
    return ApproxDropoutMLP(sizes, p, method=variant, tile=config.tile, generator=generator).train()


def train_run(
    config: StudyConfig,
    data: StudyData,
    variant: str,
    p: float,
    seed: int,
    lr: float,
    epochs: int,
    test: bool,
    on_epoch: Callable[[], object] | None = None,
) -> RunResult:
    """Train one variant for ``epochs`` epochs of shuffled mini-batches at ``lr``; the validation accuracy
    after each epoch, the test accuracy once at the end when ``test``."""
    dev = data.train_x.device
    sizes = [data.train_x.shape[1], *config.hidden, data.classes]
    model = build_model(config, variant, p, sizes, seed).to(dev)
    opt = sgd(model.parameters(), lr, momentum=0.9)
    order = torch.Generator().manual_seed(seed)  # the same batches for every variant of a seed
    result = RunResult(variant, p, seed, lr, data.name)
    finite = torch.ones((), dtype=torch.bool, device=dev)
    for _ in range(epochs):
        perm = torch.randperm(len(data.train_y), generator=order).to(dev)
        sync(dev)
        start = time.perf_counter()
        for i in range(0, len(perm), config.batch):
            index = perm[i : i + config.batch]
            loss, _ = training_step(model, opt, data.train_x[index], data.train_y[index], clip=config.clip)
            finite &= torch.isfinite(loss)
        sync(dev)
        result.epoch_seconds.append(time.perf_counter() - start)
        result.val_accuracy.append(evaluate(model, data.val_x, data.val_y))
        if on_epoch is not None:
            on_epoch()
    result.diverged = not bool(finite)
    if test:
        result.test_accuracy = evaluate(model, data.test_x, data.test_y)
    return result


def _run_problem(result: RunResult, key: tuple, epochs: int, full: bool) -> str | None:
    """Why ``result`` is not the finished run ``key`` = (variant, p, seed, lr) of ``epochs`` epochs, or None."""
    if (result.variant, result.p, result.seed, result.lr) != key:
        held = f"{result.variant} p={result.p!r} seed {result.seed!r} lr {result.lr!r}"
        return f"it holds {held}, not {key[0]} p={key[1]!r} seed {key[2]} lr {key[3]!r}"
    for name, values, high in (("val_accuracy", result.val_accuracy, 1), ("epoch_seconds", result.epoch_seconds, inf)):
        if not isinstance(values, list) or len(values) != epochs:
            size = f"has length {len(values)}" if isinstance(values, list) else f"is {values!r}"
            return f"its {name} {size}, not one value per epoch ({epochs})"
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= high]
        if bad:
            return f"its {name} holds {bad[:3]!r}, outside [0, {high}]"
    test = result.test_accuracy
    if full and (isinstance(test, bool) or not isinstance(test, (int, float)) or not 0 <= test <= 1):
        return f"its test_accuracy is {test!r}, not an accuracy in [0, 1]"
    return None


def _read_run(path: Path, config: StudyConfig, key: tuple, epochs: int, full: bool, dataset: str) -> RunResult | None:
    """The finished run ``key`` of this config on ``dataset``; None if missing, or (saying why) unreadable,
    another run or unfinished; ValueError for a run of other ``run_settings`` (naming the ones that differ)
    or of another data set."""
    try:
        payload = json.loads(path.read_text())
        result = RunResult(**payload["result"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as err:
        print(f"ignoring unreadable {path.name} ({err}); training it again", file=sys.stderr)
        return None
    recorded, settings = _recorded_settings(payload.get("config")), run_settings(config)
    if recorded != settings:
        if isinstance(recorded, dict):  # name the settings that differ, in the order of run_settings
            names = [*settings, *sorted(recorded.keys() - settings.keys())]
            recorded = ", ".join(f"{name} {recorded.get(name, 'missing')!r}, not {settings.get(name, 'missing')!r}"
                                 for name in names if recorded.get(name, ...) != settings.get(name, ...))  # fmt: skip
        raise ValueError(f"{path} was made with other settings ({recorded}); use another --out")
    problem = _run_problem(result, key, epochs, full)
    if problem is not None:
        print(f"ignoring {path.name}: {problem}; training it again", file=sys.stderr)
        return None
    if result.dataset != dataset:
        raise ValueError(f"{path} was trained on {result.dataset}, this study loads {dataset}; use another --out")
    return result


def choose_lr(pilots: Iterable[RunResult]) -> float:
    """The pilot rate with the best final validation accuracy; diverged pilots lose; ties go to the smaller rate."""
    return max(pilots, key=lambda r: (not r.diverged, r.val_accuracy[-1], -r.lr)).lr


_WORKER_DATA: StudyData | None = None  # a worker process's copy of the data


def _start_worker(data: StudyData) -> None:
    global _WORKER_DATA
    torch.set_num_threads(1)
    _WORKER_DATA = data


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ctrl-C ignored meanwhile (in the main thread, where signals are handled), so that the worker processes
    started meanwhile inherit that: a Ctrl-C reaching them (even while they import torch) prints no traceback
    in each, and the main process ends them (``_train_all``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if handler is None else handler)


def _train_in_worker(config: StudyConfig, args: tuple) -> tuple[RunResult, str]:
    """The run, and the machine line of the process that trained it."""
    return train_run(config, _WORKER_DATA, *args), describe_machine(_WORKER_DATA.train_x.device)


def _train_all(
    config: StudyConfig, data: StudyData, jobs: dict[Path, tuple], workers: int, bar: tqdm
) -> dict[Path, RunResult]:
    """Train ``jobs`` (file -> train_run arguments after the data), ``workers`` at a time, writing each file.
    A failed run stops the others from starting; every run that finishes is written, then its error raised.
    Each result records the machine line of the process that trained it, when it finished and ``workers``."""
    done = {}
    if not jobs:  # nothing to train (a resumed study): no worker processes either
        return done

    def finish(path: Path, result: RunResult, machine: str) -> None:
        result.machine, result.workers = machine, workers
        result.trained = datetime.datetime.now().isoformat(timespec="seconds")
        write_json_atomic(path, {"config": run_settings(config), "result": asdict(result)}, 1)
        done[path] = result

    if workers == 1:
        for path, args in jobs.items():
            bar.set_postfix_str(path.stem, refresh=False)  # a log gets one line per LOG_INTERVAL_S, not one per run
            result = train_run(config, data, *args, on_epoch=bar.update)
            finish(path, result, describe_machine(data.train_x.device))
        return done
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    error = None
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(data,)) as pool:
        with _sigint_ignored():  # the workers start (at submit) ignoring Ctrl-C: this process ends them
            futures = {pool.submit(_train_in_worker, config, args): path for path, args in jobs.items()}
        try:
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                if future.exception() is not None:  # no new run starts; the ones running are still written
                    error = error or future.exception()
                    for pending in futures:
                        pending.cancel()
                    continue
                finish(futures[future], *future.result())
                bar.update(jobs[futures[future]][4])  # its epochs
        except KeyboardInterrupt:  # Ctrl-C: no new run starts, the running ones end now (finished ones are written)
            processes = list((pool._processes or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()
            raise
    if error is not None:
        raise error
    return done


def run_study(
    config: StudyConfig,
    out: Path,
    data: Dataset | None = None,
    progress: bool = True,
    workers: int = 1,
    device: str | torch.device | None = None,
) -> list[RunResult]:
    """Pilot every (variant, p) at every rate, then train every full run not already in ``out`` (resumable),
    then write the summary and figures. Returns the full runs. The data (default: ``config.dataset``, loaded)
    is moved to ``device`` (default: the GPU when there is one, else the CPU; given data stays where it is)."""
    out = Path(out)
    workers = check_int("workers", workers, 1)
    dev = data.train_x.device if data is not None and device is None else default_device(device)
    if workers > 1 and dev.type != "cpu":
        raise ValueError(f"workers={workers}: parallel runs are for the CPU; on {dev} use workers=1")
    if data is None:
        data = load_dataset(config.dataset, train_size=config.train_size, test_size=config.test_size)
    data = Dataset(*(t.to(dev) for t in data[:4]), data.info)
    split = split_validation(data, config.val_size)
    pilot_keys = {out / "pilot" / pilot_name(v, p, lr): (v, p, config.seeds[0], lr) for v, p, lr in config.pilots()}
    total = len(pilot_keys) * config.pilot_epochs + len(config.runs()) * config.epochs
    with progress_bar(total, "study", progress, unit="epoch") as bar:  # ended on Ctrl-C too, before cli says so
        pilots = {
            path: _read_run(path, config, key, config.pilot_epochs, False, split.name)
            for path, key in pilot_keys.items()
        }
        todo = {path: (*key, config.pilot_epochs, False) for path, key in pilot_keys.items() if pilots[path] is None}
        bar.update(total - len(config.runs()) * config.epochs - len(todo) * config.pilot_epochs)
        pilots.update(_train_all(config, split, todo, workers, bar))
        chosen = {(v, p): choose_lr(pilots[path] for path, key in pilot_keys.items() if key[:2] == (v, p))
                  for v in config.variants for p in config.ps}  # fmt: skip
        run_keys = {out / "runs" / run_name(v, p, s): (v, p, s, chosen[(v, p)]) for v, p, s in config.runs()}
        runs = {path: _read_run(path, config, key, config.epochs, True, split.name) for path, key in run_keys.items()}
        todo = {path: (*key, config.epochs, True) for path, key in run_keys.items() if runs[path] is None}
        bar.update((len(run_keys) - len(todo)) * config.epochs)
        runs.update(_train_all(config, split, todo, workers, bar))
    results = [runs[path] for path in run_keys]
    write_summary(config, [pilots[path] for path in pilot_keys], results, out)
    return results


@dataclass(frozen=True)
class SummaryRow:
    """One (variant, p) cell over seeds."""

    variant: str
    p: float
    lr: float
    val_accuracy_mean: float
    accuracy_mean: float
    accuracy_std: float
    seconds_per_epoch: float
    seeds: int
    diverged: int


def summarise(results: list[RunResult]) -> list[SummaryRow]:
    """Per (variant, p): the rate, final validation accuracy mean, test accuracy mean / sample std over
    seeds, the median time per epoch, and how many runs diverged."""
    cells: dict[tuple[str, float], list[RunResult]] = {}
    for r in results:
        cells.setdefault((r.variant, r.p), []).append(r)
    rows = []
    for (variant, p), runs in cells.items():
        tests = [r.test_accuracy for r in runs]
        std = statistics.stdev(tests) if len(tests) > 1 else 0.0
        seconds = statistics.median(s for r in runs for s in r.epoch_seconds)
        val = statistics.mean(r.val_accuracy[-1] for r in runs)
        rows.append(SummaryRow(variant, p, runs[0].lr, val, statistics.mean(tests), std, seconds, len(runs),
                               sum(r.diverged for r in runs)))  # fmt: skip
    return rows


def best_p(rows: list[SummaryRow]) -> dict[str, SummaryRow]:
    """Each variant's row with the highest mean VALIDATION accuracy (the test set chooses nothing)."""
    best: dict[str, SummaryRow] = {}
    for row in rows:
        if row.variant not in best or row.val_accuracy_mean > best[row.variant].val_accuracy_mean:
            best[row.variant] = row
    return best


def _order(variant: str) -> int:
    return VARIANTS.index(variant)


def format_table(rows: list[SummaryRow], pilots: list[RunResult] = ()) -> str:
    """Markdown: per (variant, p) the chosen rate, validation and test accuracy (mean ± std, in %), the
    test gap to bernoulli at the same p in percentage points and the time per epoch; each variant's
    best p (by validation accuracy); then the pilot's validation accuracy at every rate."""
    base = {r.p: r.accuracy_mean for r in rows if r.variant == "bernoulli"}
    lines = [
        "| variant | p | lr | validation % | test accuracy % (mean ± std) | vs bernoulli (pp) | s / epoch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r.p, _order(r.variant))):
        gap = f"{100 * (r.accuracy_mean - base[r.p]):+.2f}" if r.p in base else "-"
        warn = f" ({r.diverged} diverged)" if r.diverged else ""
        lines.append(
            f"| {r.variant} | {r.p:g} | {r.lr:g} | {100 * r.val_accuracy_mean:.2f} | {100 * r.accuracy_mean:.2f} ± "
            f"{100 * r.accuracy_std:.2f}{warn} | {gap} | {r.seconds_per_epoch:.1f} |"
        )
    lines += ["", "| variant | best p (validation) | test accuracy % |", "|---|---:|---:|"]
    for variant, r in sorted(best_p(rows).items(), key=lambda kv: _order(kv[0])):
        lines.append(f"| {variant} | {r.p:g} | {100 * r.accuracy_mean:.2f} |")
    if pilots:
        lrs = sorted({r.lr for r in pilots})
        lines += ["", "Pilot (first seed, validation accuracy %; * = chosen, x = diverged):", "",
                  "| variant | p | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
                  "|---|---:|" + "---:|" * len(lrs)]  # fmt: skip
        cells: dict[tuple[str, float], dict[float, RunResult]] = {}
        for r in pilots:
            cells.setdefault((r.variant, r.p), {})[r.lr] = r
        for (variant, p), by_lr in sorted(cells.items(), key=lambda kv: (kv[0][1], _order(kv[0][0]))):
            chosen = choose_lr(by_lr.values())
            marks = [f"{100 * by_lr[lr].val_accuracy[-1]:.2f}{'x' if by_lr[lr].diverged else ''}"
                     f"{'*' if lr == chosen else ''}" if lr in by_lr else "-" for lr in lrs]  # fmt: skip
            lines.append(f"| {variant} | {p:g} | " + " | ".join(marks) + " |")
    return "\n".join(lines)


SUMMARY_FILES = ("results.json", "results.md", "accuracy.html")  # what write_summary writes in the study folder
RUN_FOLDERS = ("pilot", "runs")  # the folders of the run files in the study folder (run_study)


@dataclass(frozen=True)
class TrainedOn:
    """Runs (pilots and full runs) trained on one machine line with one number of parallel runs, and the
    first and last time one of them finished; ``machine`` None: runs whose files do not record it."""

    machine: str | None
    workers: int | None
    runs: int
    first: str | None
    last: str | None

    def describe(self, total: int) -> str:
        """One line of a summary: where and when these of the ``total`` runs were trained."""
        share = "every run" if self.runs == total else f"{self.runs} of the {total} runs"
        if self.machine is None:
            return f"not recorded ({share}: files written before run files recorded their machine)"
        when = self.first if self.first == self.last else f"{self.first} to {self.last}"
        parallel = "" if self.workers is None else f"; {self.workers} run(s) in parallel"
        return f"{self.machine}{parallel} ({share}, trained {when})"


def trained_on(runs: Iterable[RunResult]) -> list[TrainedOn]:
    """Where and when ``runs`` were trained, as their files record it: one entry per distinct (machine line,
    parallel runs), in the order they first finished; runs that record no machine last, as one entry."""
    cells: dict[tuple, list[RunResult]] = {}
    for r in runs:
        cells.setdefault((r.machine, r.workers) if r.machine is not None else (None, None), []).append(r)
    entries = []
    for (machine, workers), cell in cells.items():
        dates = sorted(r.trained for r in cell if r.trained is not None)
        entries.append(
            TrainedOn(machine, workers, len(cell), dates[0] if dates else None, dates[-1] if dates else None)
        )
    return sorted(entries, key=lambda e: (e.machine is None, e.first or ""))


def describe_trained_on(runs: list[RunResult]) -> str:
    """Where and when ``runs`` were trained, on one line: ``TrainedOn.describe`` of each, joined by " | "."""
    return " | ".join(entry.describe(len(runs)) for entry in trained_on(runs))


def write_summary(config: StudyConfig, pilots: list[RunResult], results: list[RunResult], out: Path) -> None:
    """results.json, results.md and accuracy.html under ``out``. The machine lines, parallel runs and dates
    are those the run files record (where and when each run was trained, not where the summary is written);
    runs from files that do not record them are counted as not recorded."""
    rows = summarise(results)
    entries = trained_on([*pilots, *results])
    total = len(pilots) + len(results)
    machines = "".join(f"- Machine: {entry.describe(total)}\n" for entry in entries)
    header = (
        f"# Accuracy-parity study\n\n- Data: {results[0].dataset} ({config.val_size} training images held out for "
        f"validation); MLP hidden {list(config.hidden)}, batch {config.batch}, SGD momentum 0.9 at a rate chosen "
        f"per (variant, p) from {list(config.lrs)} by a {config.pilot_epochs}-epoch pilot on the validation split, "
        f"gradient-norm clip {config.clip}, {config.epochs} epochs, seeds {list(config.seeds)}; test set evaluated "
        f"once, after the last epoch\n"
        f"{machines}"
        f"- Summary written: {datetime.datetime.now().isoformat(timespec='seconds')}\n\n"
    )
    write_atomic(out / "results.md", lambda f: f.write(header + format_table(rows, pilots) + "\n"))
    single = entries[0] if len(entries) == 1 else TrainedOn(None, None, total, None, None)  # one machine, or none
    write_json_atomic(
        out / "results.json",
        {"config": asdict(config), "machine": single.machine, "workers": single.workers,
         "trained_on": [asdict(e) for e in entries], "summary": [asdict(r) for r in rows],
         "pilots": [asdict(r) for r in pilots], "runs": [asdict(r) for r in results]},
        indent=1,
    )  # fmt: skip
    from .study_figure import study_figure  # plotly is optional (the lab extra): imported only to draw

    html = study_figure(results).to_html(include_plotlyjs="cdn")
    write_atomic(out / "accuracy.html", lambda f: f.write(html))


COMMAND, HELP = "study", "accuracy-parity study: train every method at every p on real data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = StudyConfig()
    parser.add_argument("model", choices=["mlp"], help="what to study")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="study directory; a rerun with the same settings resumes there, reusing its runs and rewriting its "
        f"summary (default: {DEFAULT_OUT} in the current directory; the recorded study is benchmarks/study, made "
        "by the command in its README)",
    )
    parser.add_argument("--hidden", type=positive_int, nargs="+", default=list(defaults.hidden), help="hidden widths")
    parser.add_argument("--ps", type=rate, nargs="+", action=Distinct, default=list(defaults.ps), help="dropout rates")
    parser.add_argument("--seeds", type=random_seed, nargs="+", action=Distinct, default=list(defaults.seeds))
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    parser.add_argument("--batch", type=positive_int, default=defaults.batch)
    parser.add_argument("--lrs", type=float, nargs="+", action=Distinct, default=list(defaults.lrs),
                        help="learning rates the pilot chooses from, per (variant, p)")  # fmt: skip
    parser.add_argument("--pilot-epochs", type=positive_int, default=defaults.pilot_epochs)
    parser.add_argument("--val-size", type=positive_int, default=defaults.val_size,
                        help="training images held out as the validation split")  # fmt: skip
    parser.add_argument("--clip", type=float, default=defaults.clip,
                        help="clip every variant's gradient norm to this (0: no clipping)")  # fmt: skip
    parser.add_argument("--variants", nargs="+", action=Distinct, default=list(defaults.variants), choices=VARIANTS)
    parser.add_argument("--dataset", default="auto", choices=NAMES)
    parser.add_argument("--train-size", type=positive_int, help="seeded subset of the training set")
    parser.add_argument("--test-size", type=positive_int, help="seeded subset of the test set")
    parser.add_argument("--workers", type=threads, default=1,
                        help="runs trained in parallel processes, one torch thread each (CPU), at most the CPU "
                        "count")  # fmt: skip


def check_outputs(args: argparse.Namespace) -> None:
    """Usage errors, before any work, for an --out that cannot be a study directory (a file, read-only,
    a full disk) and a --json that is the study directory, its summary, or in its folders of run files (it
    would overwrite a finished run, or be read as one)."""
    check_output_dir(args.parser, "--out", args.out)
    check_json_apart(args.parser, args.json, "--out", args.out, SUMMARY_FILES, RUN_FOLDERS)


def run(args: argparse.Namespace) -> int:
    check_outputs(args)
    try:
        config = StudyConfig(
            tuple(args.hidden), tuple(args.ps), tuple(args.seeds), args.epochs, args.batch, tuple(args.lrs),
            args.pilot_epochs, args.val_size, clip=args.clip or None, variants=tuple(args.variants),
            dataset=args.dataset, train_size=args.train_size, test_size=args.test_size,
        )  # fmt: skip
        results = run_study(config, args.out, progress=not args.no_progress, workers=args.workers, device=args.device)
    except OSError as err:  # the disk filled up or the folder went away mid-study: what finished is kept
        print(f"approxdrop study: error: {err}. The finished runs in {args.out} are kept: fix this and run "
              "the same command again to resume.", file=sys.stderr)  # fmt: skip
        return 1
    print((args.out / "results.md").read_text())
    write_record(args, summarise(results), machine=describe_trained_on(results))
    return 0


def interrupted(args: argparse.Namespace) -> str:
    """What ``approxdrop study`` says when Ctrl-C stops it (cli.run): what is kept and how to resume."""
    return (f"interrupted. The finished runs in {args.out} are kept: run the same command again to resume "
            "(unfinished runs train again).")  # fmt: skip
