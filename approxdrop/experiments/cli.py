"""The ``approxdrop`` command. Each subcommand lives in its own module, which registers itself with
``COMMAND``, ``HELP``, ``add_arguments(parser)`` and ``run(args)``; the common options
(``--device``, ``--threads``, ``--json``, ``--no-progress``) come from ``options``: all of them, or those
of the module's ``COMMON_OPTIONS`` (a subcommand offers only the ones it honours).

``approxdrop --help`` lists them; ``approxdrop SUBCOMMAND --help`` gives each one's options.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..data.download import DataUnavailable
from . import (
    bench,
    bench_convert,
    bench_ffn,
    bench_graphs,
    bench_lstm,
    bench_overhead,
    bench_search,
    bench_transformer,
    gemm_timing,
    study,
)
from .options import COMMON_OPTIONS, HelpFormatter, apply_common, common_parser

SUBCOMMANDS = (
    bench,
    bench_convert,
    bench_ffn,
    bench_graphs,
    bench_lstm,
    bench_overhead,
    bench_search,
    bench_transformer,
    gemm_timing,
    study,
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``approxdrop`` command with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="approxdrop", description="Approximate Random Dropout: benchmarks, the accuracy study, GEMM timing."
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        sub = commands.add_parser(
            module.COMMAND,
            help=module.HELP,
            description=module.__doc__,
            parents=[common_parser(getattr(module, "COMMON_OPTIONS", COMMON_OPTIONS))],
            formatter_class=HelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run, parser=sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``approxdrop ARGS``; returns the exit status (2 for usage errors, as argparse does)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        apply_common(args, args.parser)
        return run(args)
    except SystemExit as stop:  # --help, or a usage error argparse has already explained
        return stop.code if isinstance(stop.code, int) else 1


def run(args: argparse.Namespace) -> int:
    """The subcommand, with the library's refusal of a setting (ValueError: a rate no pattern family reaches,
    a law that does not fit) as a usage error, and data it cannot get or memory it cannot have as one line."""
    try:
        return args.run(args)
    except ValueError as err:
        args.parser.error(str(err))
    except DataUnavailable as err:
        print(f"approxdrop {args.command}: error: {err}", file=sys.stderr)
    except RuntimeError as err:
        if not (isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)):
            raise
        first = str(err).strip().splitlines()[0]
        print(f"approxdrop {args.command}: error: out of memory ({first}): use smaller sizes", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
