"""The command-line options every ``approxdrop`` subcommand shares, their checks, and the JSON record
a subcommand writes: one place, so no subcommand repeats them."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch

from .._env import describe_machine, write_json_atomic


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


def common_parser() -> argparse.ArgumentParser:
    """The options of every subcommand: --device, --threads, --json, --no-progress."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("common options")
    group.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available, else cpu)")
    group.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    group.add_argument("--json", type=Path, help="also write the results to this JSON file")
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
        folder = args.json.parent if str(args.json.parent) else Path(".")
        if args.json.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
            parser.error(f"--json {args.json}: cannot write a file there")
    if args.threads is not None:
        torch.set_num_threads(args.threads)


def write_record(args: argparse.Namespace, rows: list[Any]) -> None:
    """Write ``{"machine", "args", "rows"}`` to ``args.json`` (when given), atomically."""
    if args.json is None:
        return
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("run", "parser")}
    payload = {
        "machine": describe_machine(args.device),
        "args": options,
        "rows": [asdict(r) if is_dataclass(r) else r for r in rows],
    }
    write_json_atomic(args.json, payload)
