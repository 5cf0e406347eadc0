"""The command-line options every ``approxdrop`` subcommand shares, their checks, and the JSON record
a subcommand writes: one place, so no subcommand repeats them."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch

from .._env import describe_machine, regular_file_target, write_json_atomic


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {value}")
    return value


def rate(text: str) -> float:
    """argparse type: a dropout rate in [0, 1)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a dropout rate in [0, 1), got {value}")
    return value


def max_threads() -> int:
    """The most CPU threads ``--threads`` takes: this machine's logical CPUs (torch crashes far above)."""
    return os.cpu_count() or 1


def threads(text: str) -> int:
    """argparse type: an int in [1, ``max_threads()``]."""
    value = positive_int(text)
    if value > max_threads():
        raise argparse.ArgumentTypeError(f"must be at most {max_threads()} (this machine's CPUs), got {value}")
    return value


def check_distinct(parser: argparse.ArgumentParser, option: str, values: Sequence) -> None:
    """A usage error naming ``option`` when ``values`` repeats one."""
    if len(set(values)) != len(values):
        repeated = next(v for i, v in enumerate(values) if v in values[:i])
        parser.error(f"{option}: {repeated} is given twice, got {' '.join(map(str, values))}")


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
    parser: argparse.ArgumentParser, json_path: Path | None, option: str, folder: Path, names: Sequence[str]
) -> None:
    """A usage error when ``--json`` is the output directory ``folder`` (given as ``option``) or one of the
    files ``names`` the command writes there: they would clash."""
    if json_path is not None and json_path.resolve() in {folder.resolve(), *(folder.resolve() / n for n in names)}:
        parser.error(f"--json {json_path}: is {option} {folder} or one of its files ({', '.join(names)})")


def common_parser() -> argparse.ArgumentParser:
    """The options of every subcommand: --device, --threads, --json, --no-progress."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("common options")
    group.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available, else cpu)")
    group.add_argument(
        "--threads", type=threads, help="CPU threads for torch, at most the CPU count (default: torch's)"
    )
    group.add_argument(
        "--json",
        type=Path,
        help="also write the results to this JSON file (a regular file; a symlink is written through)",
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
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


def write_record(args: argparse.Namespace, rows: list[Any]) -> None:
    """Write ``{"machine", "args", "rows"}`` to ``args.json`` (when given), atomically; a number that is
    not finite (a diverged run's loss) is written as null, so the file is strict JSON."""
    if args.json is None:
        return
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("run", "parser")}
    payload = {
        "machine": describe_machine(args.device),
        "args": options,
        "rows": [asdict(r) if is_dataclass(r) else r for r in rows],
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
