"""The command-line options every ``approxdrop`` subcommand shares, their checks, the format of the
subcommands' help, their progress bar, and the JSON record a subcommand writes: one place, so no
subcommand repeats them."""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .._env import describe_machine, regular_file_target, write_json_atomic


def reads_as(name: str) -> Callable[[Callable], Callable]:
    """Decorator of an argparse type: argparse names it by ``__name__`` in "invalid NAME value: 'x'", so it
    takes the name of the type it reads (``int``, ``float``), not the function's."""

    def rename(parse: Callable) -> Callable:
        parse.__name__ = name
        return parse

    return rename


@reads_as("int")
def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {value}")
    return value


@reads_as("int")
def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {value}")
    return value


SEED_MAX = 2**63 - 1  # torch.manual_seed takes a seed as a C++ int64


@reads_as("int")
def random_seed(text: str) -> int:
    """argparse type: a random seed, an int in [0, SEED_MAX]."""
    value = int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be a seed in [0, 2**63 - 1], got {value}")
    return value


def int_at_least(low: int, reason: str) -> Callable[[str], int]:
    """argparse type: an int >= ``low``; ``reason`` says in the error where the bound comes from."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an int >= {low} ({reason}), got {value}")
        return value

    return reads_as("int")(parse)


@reads_as("float")
def rate(text: str) -> float:
    """argparse type: a dropout rate in [0, 1)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a dropout rate in [0, 1), got {value}")
    return value


def max_threads() -> int:
    """The most CPU threads ``--threads`` takes: this machine's logical CPUs (torch crashes far above)."""
    return os.cpu_count() or 1


@reads_as("int")
def threads(text: str) -> int:
    """argparse type: an int in [1, ``max_threads()``]: CPU threads, or processes that run one thread each
    (``study --workers``: more than the CPUs only slow each other down, each with its own copy of the data)."""
    value = positive_int(text)
    if value > max_threads():
        raise argparse.ArgumentTypeError(f"must be at most {max_threads()} (this machine's CPUs), got {value}")
    return value


def compile_backend(text: str) -> str:
    """argparse type: a backend name ``torch.compile`` takes here: one of ``torch._dynamo.list_backends``, its
    debug and experimental ones included (``eager`` and ``aot_eager`` are debug backends)."""
    names = torch._dynamo.list_backends(exclude_tags=())
    if text not in names:
        shown = [*torch._dynamo.list_backends(), *(name for name in ("eager", "aot_eager") if name in names)]
        raise argparse.ArgumentTypeError(f"must be a torch.compile backend ({', '.join(shown)}, ...), got {text!r}")
    return text


class Distinct(argparse.Action):
    """argparse action of a list option whose values must differ: a repeat would run, or count, one thing
    twice, so it is a usage error naming the option."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        repeated = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if repeated is not None:
            raise argparse.ArgumentError(self, f"{repeated} is given twice, got {' '.join(map(str, values))}")
        setattr(namespace, self.dest, values)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The subcommands' help: the description as written, and each option's default after its help, unless
    the help gives it already (says "default") or there is none to give (None, a flag's False, an empty list)."""

    def _format_action(self, action: argparse.Action) -> str:
        default, text = action.default, action.help or ""
        nothing = default is None or default is False or default == [] or default == argparse.SUPPRESS
        if action.option_strings and not nothing and "default" not in text:
            shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
            action = copy.copy(action)
            action.help = f"{text} (default: {shown.replace('%', '%%')})".lstrip()
        return super()._format_action(action)


LOG_INTERVAL_S = 30.0  # the least seconds between two updates of a progress bar written to a file


def progress_bar(total: int, desc: str, enabled: bool = True, **options: Any) -> tqdm:
    """The progress bar of every subcommand, on stderr: live on a terminal; written to a file or a pipe (a
    log), an update every ``LOG_INTERVAL_S`` seconds at most; none unless ``enabled`` (--no-progress)."""
    live = sys.stderr.isatty()
    interval = {} if live else {"mininterval": LOG_INTERVAL_S, "maxinterval": LOG_INTERVAL_S}
    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, **interval, **options)


def _probe(folder: Path) -> None:
    """Write, sync and remove a small file in ``folder``; OSError when it takes none (read-only, full)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".approxdrop-probe-")
    try:
        os.write(fd, bytes(4096))
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(tmp)


def _unwritable_dir(path: Path) -> str | None:
    """Why no file can be written in ``path`` or in the directory it would become (its nearest existing
    parent, probed by ``_probe``: a file in the way, read-only, a full disk), or None. Nothing is created."""
    base = path
    try:
        base = next(p for p in (path, *path.absolute().parents) if p.exists())
        if not base.is_dir():
            return f"{base} is not a directory"
        _probe(base)
    except OSError as err:  # a parent we may not look into, a read-only folder, a full disk
        return f"{base} takes no file: {err.strerror or err}"
    return None


def check_output_dir(parser: argparse.ArgumentParser, option: str, path: Path) -> None:
    """A usage error, before any work, unless ``path`` is or can become a directory that takes files."""
    if why := _unwritable_dir(path):
        parser.error(f"{option} {path}: cannot write there ({why})")


def check_output_file(parser: argparse.ArgumentParser, option: str, path: Path) -> None:
    """A usage error, before any work, unless ``path`` can be written as a regular file: a symlink is
    written through to its target (``regular_file_target``), anything but a regular file there is
    refused, and the folder must exist and take a file."""
    try:
        target = regular_file_target(path)
        why = None if target.parent.is_dir() else f"{target.parent} is not a directory"
        why = why or _unwritable_dir(target.parent)
    except (ValueError, OSError) as err:  # not a regular file; a parent we may not look into
        why = str(err)
    if why:
        parser.error(f"{option} {path}: cannot write a file there ({why})")


def check_json_apart(
    parser: argparse.ArgumentParser,
    json_path: Path | None,
    option: str,
    folder: Path,
    names: Sequence[str],
    subfolders: Sequence[str] = (),
) -> None:
    """A usage error when ``--json`` is the output directory ``folder`` (given as ``option``), one of the
    files ``names`` the command writes there, or lies in one of its ``subfolders`` (whose files are the
    command's own: a study's run files): they would clash. Links are followed (``--json`` is written through)."""
    if json_path is None:
        return
    target, base = json_path.resolve(), folder.resolve()
    if target in {base, *(base / n for n in names)}:
        parser.error(f"--json {json_path}: is {option} {folder} or one of its files ({', '.join(names)})")
    for sub in subfolders:
        if target.is_relative_to(base / sub):
            parser.error(f"--json {json_path}: is in {option} {folder}'s {sub}/ folder, which holds the command's "
                         "own files")  # fmt: skip


COMMON_OPTIONS = ("--device", "--threads", "--json", "--no-progress")


def common_parser(options: Sequence[str] = COMMON_OPTIONS) -> argparse.ArgumentParser:
    """The common options a subcommand takes: ``options``, some of ``COMMON_OPTIONS`` (default all)."""
    specs = {
        "--device": {"default": None, "help": "cpu or cuda[:N] (default: cuda when available, else cpu)"},
        "--threads": {"type": threads, "help": "CPU threads for torch, at most the CPU count (default: torch's)"},
        "--json": {
            "type": Path,
            "help": "also write the results to this JSON file (a regular file; a symlink is written through)",
        },
        "--no-progress": {"action": "store_true", "help": "no progress bar"},
    }
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("common options")
    for option in options:
        group.add_argument(option, **specs[option])
    return parser


def apply_common(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Check the common options before any work (a bad --json path fails now, not after the run),
    set torch's threads, and resolve --device."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        parser.error(f"--device {device}: {err}")
    if dev.type not in ("cpu", "cuda"):
        parser.error(f"--device {device}: timings need a cpu or cuda device")
    if dev.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {device}: CUDA is not available in this torch ({torch.__version__})")
    args.device = device
    if args.json is not None:
        check_output_file(parser, "--json", args.json)
    if args.threads is not None:
        torch.set_num_threads(args.threads)


def write_record(
    args: argparse.Namespace, rows: list[Any], machine: str | None = None, partial: str | None = None
) -> None:
    """Write ``{"machine", "args", "rows"}`` to ``args.json`` (when given), atomically; a number that is
    not finite (a diverged run's loss) is written as null, so the file is strict JSON. ``machine``: where
    the rows were measured when that is not this machine now (default: ``describe_machine(args.device)``).
    ``partial``: a line saying what the rows lack, for a record written before the command has finished
    (as ``"partial"``; a finished record has none). Attributes of ``args`` named ``_...`` are the command's
    own state, not options: they are not recorded."""
    if args.json is None:
        return
    options = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("run", "parser") and not k.startswith("_")
    }
    payload = {
        "machine": describe_machine(args.device) if machine is None else machine,
        "args": options,
        "rows": [asdict(r) if is_dataclass(r) else r for r in rows],
        **({} if partial is None else {"partial": partial}),
    }
    write_json_atomic(args.json, finite_or_null(payload))


def finite_or_null(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite, in any dict, list or tuple, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value
