"""LSTM language-model benchmark: step time of every method at every p side by side, and
validation perplexity after a fixed budget of steps.

Step time: random tokens (the time does not depend on them), the protocol of ``experiments.bench``
(same initial weights, warm-up, rotating rounds, median). Sizes: ``paper`` = 2 x 650, vocabulary
10,000, 35 steps, batch 20 (Zaremba's medium model, the paper's setting); ``small`` = 2 x 200,
20 steps (Zaremba's small model). Perplexity: ``training.train_lm`` on
``load_corpus("auto")`` for ``--perplexity-steps`` steps per p and seed, at the small size, the
validation perplexity every ``--eval-every`` steps; ``--perplexity-out DIR`` writes every run with its
history (results.json), the table (results.md) and the figure (perplexity.html: perplexity against p
and against training time), updated after each race. ``--json FILE`` records the timing rows
(``LSTMBenchRow``, with ``size``), then the perplexity runs (``LMRun``, with ``seed``), also updated after
each race. Until the last race has finished, these files say they are partial (``partial_note``: the races
finished and those not run, a ``partial`` field in the JSON, a line in results.md), so the files a Ctrl-C
leaves cannot pass for the whole command's; it does not resume. Run ``approxdrop bench-lstm --help``.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import shlex
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .._env import describe_machine, write_atomic, write_json_atomic
from ..data import Corpus, load_corpus
from ..models import LM_METHODS, language_model, lstm_gemm_work
from ..models.lstm import State
from ..training import LMRaceConfig, lm_training_step, sgd, train_lm
from .bench import check_protocol, time_side_by_side, with_groups
from .options import (
    Distinct,
    check_json_apart,
    check_output_dir,
    int_at_least,
    non_negative_int,
    positive_int,
    progress_bar,
    random_seed,
    rate,
    write_record,
)


@dataclass(frozen=True)
class LSTMSize:
    """A language model's size and its batches: LSTM width and depth, vocabulary, BPTT steps, batch."""

    hidden: int
    layers: int
    vocab: int
    bptt: int
    batch: int


SIZES = {
    "paper": LSTMSize(hidden=650, layers=2, vocab=10_000, bptt=35, batch=20),
    "small": LSTMSize(hidden=200, layers=2, vocab=10_000, bptt=20, batch=20),
}
PERPLEXITY_SIZE = "small"  # the size of the command's perplexity runs


@dataclass
class LSTMBenchRow:
    """One measured (method, p) cell."""

    size: str
    method: str
    p: float
    ms_per_step: float
    ratio_to_bernoulli: float
    ratio_to_torch: float | None
    gemm_work: float


def lm_step(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float = 1.0
) -> Callable[[], tuple[torch.Tensor, State]]:
    """A zero-argument training step of ``model`` on one fixed batch (plain SGD, no state, no clipping)."""
    opt = sgd(model.parameters(), lr)
    return lambda: lm_training_step(model, opt, x, y, None, clip=None)


def measure_lstm(
    size: str = "paper",
    ps: Sequence[float] = (0.3, 0.5, 0.7),
    methods: Sequence[str] = LM_METHODS,
    device: str = "cpu",
    warmup: int = 2,
    rounds: int = 5,
    steps: int = 1,
    seed: int = 0,
    progress: bool = True,
    groups: Sequence[int] = (),
) -> list[LSTMBenchRow]:
    """Time one training step per method and p at ``SIZES[size]``; each G of ``groups`` adds ``row``
    with G batch groups (``"row G=4"``). ValueError for bad arguments (``bench.check_protocol``)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {list(SIZES)}, got {size!r}")
    dev = check_protocol(device, warmup, rounds, steps, ps, methods, LM_METHODS)
    shape = SIZES[size]
    hidden, layers, vocab, bptt, batch = shape.hidden, shape.layers, shape.vocab, shape.bptt, shape.batch
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(vocab, (bptt, batch), generator=gen).to(dev)  # [T, B]
    y = torch.randint(vocab, (bptt, batch), generator=gen).to(dev)  # [T, B]
    variants = with_groups(methods, groups)
    rows = []
    with progress_bar(len(ps) * len(variants) * (warmup + rounds), f"bench {size}", progress) as bar:  # on Ctrl-C too
        for p in ps:
            steps_by_method = {}
            for label, (method, g) in variants.items():
                torch.manual_seed(seed)
                extra = {} if g is None else {"groups": g}
                model = language_model(vocab, method, hidden, layers, p, **extra).to(dev).train()
                steps_by_method[label] = lm_step(model, x, y)
            times = time_side_by_side(steps_by_method, dev, warmup, rounds, steps, bar)
            median = {m: statistics.median(t) for m, t in times.items()}
            for label, (method, _) in variants.items():
                rows.append(
                    LSTMBenchRow(
                        size,
                        label,
                        p,
                        1e3 * median[label],
                        median[label] / median["bernoulli"],
                        median[label] / median["torch"] if "torch" in median else None,
                        lstm_gemm_work(hidden, layers, vocab, p, method),
                    )
                )
    return rows


def format_table(rows: list[LSTMBenchRow]) -> str:
    """Markdown: ms/step, time ratio to bernoulli and to nn.LSTM (below 1 = faster), speedups, bound."""
    lines = [
        "| size | p | method | ms / step | ratio to bernoulli | ratio to nn.LSTM | speedup vs nn.LSTM "
        "| GEMM work left |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        torch_ratio = "-" if r.ratio_to_torch is None else f"{r.ratio_to_torch:.3f}"
        speedup = "-" if r.ratio_to_torch is None else f"{1 / r.ratio_to_torch:.2f}x"
        lines.append(
            f"| {r.size} | {r.p:g} | {r.method} | {r.ms_per_step:.1f} | {r.ratio_to_bernoulli:.3f} | {torch_ratio} "
            f"| {speedup} | {r.gemm_work:.3f} |"
        )
    return "\n".join(lines)


@dataclass
class LMRun:
    """One perplexity run: a method at p from a seed. The validation perplexity after every ``eval_step``
    and the method's cumulative training time (seconds, the timed steps only) at that step."""

    method: str
    p: float
    seed: int
    perplexity: float | None  # the last evaluation; None when it diverged before the first
    ms_per_step: float  # median after warm-up
    eval_step: list[int]
    eval_perplexity: list[float]
    eval_seconds: list[float]
    diverged_at: int | None = None


def perplexity_runs(
    corpus: Corpus,
    size: str,
    ps: Sequence[float],
    methods: Sequence[str],
    steps: int,
    *,
    eval_tokens: int | None = None,
    seeds: Sequence[int] = (0,),
    eval_every: int | None = None,
    device: str | None = None,
    progress: bool = False,
    done: Callable[[list[LMRun]], None] | None = None,
) -> list[LMRun]:
    """Train every method for ``steps`` steps at ``SIZES[size]`` on ``corpus``: one interleaved race
    (``training.train_lm``) per p and seed, evaluated every ``eval_every`` steps (default: only after
    the last). ``done(runs so far)`` after each race (to save partial results); one progress bar for all."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {list(SIZES)}, got {size!r}")
    shape = SIZES[size]
    runs: list[LMRun] = []
    with progress_bar(len(ps) * len(seeds) * steps, "perplexity", progress) as bar:  # closed on an error too
        for p in ps:
            for seed in seeds:
                config = LMRaceConfig(
                    hidden=shape.hidden, layers=shape.layers, p=p, steps=steps, bptt=shape.bptt, batch=shape.batch,
                    eval_every=eval_every or steps, eval_tokens=eval_tokens, seed=seed,
                )  # fmt: skip
                result = train_lm(corpus, methods, config, device=device, progress=False,
                                  callback=lambda *_: bar.update(), callback_every=1)  # fmt: skip
                for row in result.summary():
                    hist = result.histories[row.method]
                    elapsed = dict(zip(hist.step, itertools.accumulate(hist.seconds)))  # step: seconds so far
                    last = hist.metric[-1] if hist.metric else None
                    seconds = [elapsed[s] for s in hist.eval_step]
                    runs.append(
                        LMRun(
                            row.method, p, seed, last, row.ms_per_step, list(hist.eval_step), list(hist.metric),
                            seconds, hist.diverged_at,
                        )
                    )  # fmt: skip
                if done is not None:
                    done(runs)
    return runs


def evaluated_tokens(corpus: Corpus, size: str, eval_tokens: int | None) -> int:
    """How many validation tokens the perplexity runs read: the first ``eval_tokens`` (all when None or more
    than the split has), in whole columns of the batch (``batchify`` drops the rest)."""
    batch = SIZES[size].batch
    available = len(corpus.valid) if eval_tokens is None else min(eval_tokens, len(corpus.valid))
    return available // batch * batch


def perplexity_header(corpus: Corpus, size: str, steps: int, eval_tokens: int | None, seeds: Sequence[int]) -> str:
    """One line saying what the perplexity runs trained on, and on how many validation tokens they were
    evaluated (those read, not those asked for: ``evaluated_tokens``)."""
    shape = SIZES[size]
    used, split = evaluated_tokens(corpus, size, eval_tokens), len(corpus.valid)
    if used == split:
        tokens = f"all {used} validation tokens"
    elif eval_tokens is not None and eval_tokens < split:
        tokens = f"the first {used} validation tokens (of {split})"
    else:  # all of them but the last few, which make no whole column
        tokens = f"the first {used} validation tokens (of {split}: all, in whole columns of {shape.batch})"
    return (
        f"Corpus: {corpus.info.name} ({corpus.info.source}), vocabulary {len(corpus.vocab)}; {size} size, "
        f"{steps} steps of {shape.bptt} x {shape.batch} tokens, SGD lr 20, clip 0.25, "
        f"{tokens}, seeds {list(seeds)}."
    )


def _mean_std(values: list[float]) -> tuple[float, float] | None:
    """(mean, sample std; 0 for one value) of values, None for none."""
    if not values:
        return None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def perplexity_table(runs: Sequence[LMRun]) -> str:
    """Markdown: per p and method (in run order), the last validation perplexity (mean ± std over the
    seeds that did not diverge), the ratio of the means to bernoulli's, the median step time, and the
    diverged seeds."""
    lines = [
        "| p | method | valid perplexity (mean ± std) | ratio to bernoulli | ms / step (median) | diverged |",
        "|---:|---|---:|---:|---:|---|",
    ]
    cells: dict[tuple[float, str], list[LMRun]] = {}
    for r in runs:
        cells.setdefault((r.p, r.method), []).append(r)
    means = {key: _mean_std([r.perplexity for r in cell if r.diverged_at is None]) for key, cell in cells.items()}
    for (p, method), cell in cells.items():
        stats, base = means[(p, method)], means.get((p, "bernoulli"))
        value = "-" if stats is None else f"{stats[0]:.1f} ± {stats[1]:.1f}"
        ratio = "-" if stats is None or base is None else f"{stats[0] / base[0]:.3f}"
        ms = statistics.median(r.ms_per_step for r in cell)
        diverged = ", ".join(f"seed {r.seed} at step {r.diverged_at}" for r in cell if r.diverged_at is not None)
        lines.append(f"| {p:g} | {method} | {value} | {ratio} | {ms:.1f} | {diverged or '-'} |")
    return "\n".join(lines)


PERPLEXITY_FILES = ("results.json", "results.md", "perplexity.html")  # what write_perplexity_study writes


def partial_note(runs: Sequence[LMRun], ps: Sequence[float], seeds: Sequence[int]) -> str | None:
    """None when ``runs`` hold every race (p, seed) of ``ps`` x ``seeds``; else one line saying the files are
    partial, naming the races finished and those not run (when the files were written)."""
    done = list(dict.fromkeys((r.p, r.seed) for r in runs))
    left = [(p, seed) for p in ps for seed in seeds if (p, seed) not in done]
    if not left:
        return None

    def names(races: list[tuple[float, int]]) -> str:
        return ", ".join(f"p={p:g} seed {seed}" for p, seed in races) or "none"

    count = f"{len(done)} of {len(done) + len(left)}"
    return f"partial: {count} perplexity races finished ({names(done)}); not run: {names(left)}"


def write_perplexity_study(
    out: Path, runs: Sequence[LMRun], header: str, machine: str, command: str, partial: str | None = None
) -> None:
    """``out``/results.json (every run with its history), results.md (the table) and perplexity.html (the
    figure: ``lstm_study_figure``), each written atomically. ``partial``: the ``partial_note`` of files written
    before the last race has finished (a line of results.md, ``partial`` in results.json; None: complete)."""
    out = Path(out)
    date = datetime.datetime.now().isoformat(timespec="seconds")
    mark = "" if partial is None else f"- {partial[0].upper()}{partial[1:]}\n"
    about = f"- Machine: {machine}\n- Written: {date}\n- Command: `{command}`\n{mark}\n{header}\n\n"
    write_atomic(out / "results.md", lambda f: f.write(about + perplexity_table(runs) + "\n"))
    payload = {
        "machine": machine,
        "date": date,
        "command": command,
        "partial": partial,
        "header": header,
        "runs": [asdict(r) for r in runs],
    }
    write_json_atomic(out / "results.json", payload, indent=1)
    from .lstm_study_figure import lstm_study_figure  # plotly is optional (the lab extra): imported only to draw

    html = lstm_study_figure(runs).to_html(include_plotlyjs="cdn")
    write_atomic(out / "perplexity.html", lambda f: f.write(html))


COMMAND, HELP = "bench-lstm", "LSTM language-model step time and perplexity of every method"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", nargs="*", action=Distinct, default=["paper", "small"], choices=list(SIZES), help="none: no timing"
    )
    parser.add_argument("--ps", type=rate, nargs="+", action=Distinct, default=[0.3, 0.5, 0.7], help="dropout rates")
    parser.add_argument("--methods", nargs="+", action=Distinct, default=list(LM_METHODS), choices=LM_METHODS)
    parser.add_argument(
        "--groups", type=positive_int, nargs="+", action=Distinct, default=[], help="also time row with G batch groups"
    )
    parser.add_argument("--warmup", type=non_negative_int, default=2)
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--steps", type=positive_int, default=1, help="timed steps per method per round")
    parser.add_argument(
        "--perplexity-steps",
        type=non_negative_int,
        default=0,
        help=f"also train this many steps per p and seed ({PERPLEXITY_SIZE} size)",
    )
    parser.add_argument(  # default None, read as 0: a --seeds given without --perplexity-steps is refused
        "--seeds", type=random_seed, nargs="+", action=Distinct, help="seeds of the perplexity runs (default: 0)"
    )
    batch = SIZES[PERPLEXITY_SIZE].batch  # the validation split is read in this many columns of 2 tokens or more
    parser.add_argument(
        "--eval-tokens",
        type=int_at_least(2 * batch, f"2 time steps per column at the evaluation batch {batch}"),
        help="the first this many validation tokens for the perplexity, in whole columns of the batch (default, "
        "or more than the split has: all of them); the recorded header gives the number read",
    )
    parser.add_argument(
        "--eval-every", type=positive_int, help="validation perplexity every this many steps (default: only at the end)"
    )
    parser.add_argument(
        "--perplexity-out", type=Path, help="write results.json, results.md and perplexity.html of the runs here"
    )


def perplexity_command(args: argparse.Namespace) -> str:
    """The ``approxdrop bench-lstm`` command line that repeats these perplexity runs (no timing)."""
    words = ["approxdrop", COMMAND, "--sizes", "--methods", *args.methods, "--ps", *map(str, args.ps)]
    words += ["--perplexity-steps", str(args.perplexity_steps), "--seeds", *map(str, args.seeds)]
    options = {
        "--eval-tokens": args.eval_tokens,
        "--eval-every": args.eval_every,
        "--threads": args.threads,
        "--device": args.device,
        "--perplexity-out": args.perplexity_out,
    }
    for flag, value in options.items():
        if value is not None:
            words += [flag, str(value)]
    return shlex.join(words)


PERPLEXITY_OPTIONS = {  # option: (its dest, what it is for) of the options only the perplexity runs read
    "--seeds": ("seeds", "seeds of the perplexity runs"),
    "--eval-tokens": ("eval_tokens", "tokens of their evaluation"),
    "--eval-every": ("eval_every", "when they are evaluated"),
    "--perplexity-out": ("perplexity_out", "runs to record"),
}


def check_perplexity_options(args: argparse.Namespace) -> None:
    """A usage error for an option of the perplexity runs given without ``--perplexity-steps`` (no runs to
    read it: it would be ignored without a word); then ``--seeds`` not given is seed 0."""
    for option, (dest, purpose) in PERPLEXITY_OPTIONS.items():
        value = getattr(args, dest)
        if value is not None and not args.perplexity_steps:
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            args.parser.error(f"{option} {shown}: needs --perplexity-steps ({purpose})")
    if args.seeds is None:
        args.seeds = [0]


def run(args: argparse.Namespace) -> int:
    if "bernoulli" not in args.methods:
        args.parser.error("--methods must include bernoulli (the baseline of the ratios)")
    check_perplexity_options(args)
    if not args.sizes and not args.perplexity_steps:
        args.parser.error("nothing to run: --sizes names no size to time and --perplexity-steps is 0")
    if args.perplexity_out is not None:
        check_output_dir(args.parser, "--perplexity-out", args.perplexity_out)
        check_json_apart(args.parser, args.json, "--perplexity-out", args.perplexity_out, PERPLEXITY_FILES)
    if args.sizes:
        with_groups(args.methods, args.groups)  # a --groups that repeats a method: refused before any output
    print(f"LSTM language model; {describe_machine(args.device)}")
    rows = []
    for size in args.sizes:
        rows += measure_lstm(
            size, args.ps, args.methods, args.device, args.warmup, args.rounds, args.steps,
            progress=not args.no_progress, groups=args.groups,
        )  # fmt: skip
    if rows:
        print(format_table(rows))
    save_record(args, rows, [])  # --json: the timing rows, then with the perplexity runs after each race
    if args.perplexity_steps:
        corpus = load_corpus("auto")
        header = perplexity_header(corpus, PERPLEXITY_SIZE, args.perplexity_steps, args.eval_tokens, args.seeds)
        machine = describe_machine(args.device)
        command = perplexity_command(args)

        def save(runs: list[LMRun]) -> None:
            partial = save_record(args, rows, runs)
            if args.perplexity_out is not None:
                write_perplexity_study(args.perplexity_out, runs, header, machine, command, partial)
                _note_written(args, args.perplexity_out)

        runs = perplexity_runs(
            corpus, PERPLEXITY_SIZE, args.ps, args.methods, args.perplexity_steps, eval_tokens=args.eval_tokens,
            seeds=args.seeds, eval_every=args.eval_every, device=args.device, progress=not args.no_progress, done=save,
        )  # fmt: skip
        print()
        print(header)
        print()
        print(perplexity_table(runs))
    return 0


def save_record(args: argparse.Namespace, rows: list[LSTMBenchRow], runs: list[LMRun]) -> str | None:
    """Write the --json record of the timing ``rows`` and the perplexity ``runs`` so far, marked partial
    (``partial_note``) while perplexity races are still to run; returns that mark (None: complete), which
    ``args._partial`` keeps for ``interrupted``."""
    args._partial = partial_note(runs, args.ps, args.seeds) if args.perplexity_steps else None
    write_record(args, [*rows, *runs], partial=args._partial)
    if args.json is not None:
        _note_written(args, args.json)
    return args._partial


def _note_written(args: argparse.Namespace, path: Path) -> None:
    """Note in ``args._written`` (the command's state, not recorded: ``write_record``) a file it has written."""
    written = vars(args).setdefault("_written", [])
    if str(path) not in written:
        written.append(str(path))


def interrupted(args: argparse.Namespace) -> str:
    """What ``approxdrop bench-lstm`` says when Ctrl-C stops it (cli.run): the files that keep the perplexity
    races that finished, which they say are partial; just "interrupted" when it wrote none, or all of them."""
    written, partial = vars(args).get("_written", []), vars(args).get("_partial")
    if not written or partial is None:
        return "interrupted"
    keep = "keeps" if len(written) == 1 else "keep"
    return (f"interrupted. {' and '.join(written)} {keep} what finished, marked {partial}; run the command again "
            "to start over (it does not resume).")  # fmt: skip
