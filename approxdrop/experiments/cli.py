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


INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C (128 + SIGINT), as a shell gives it


def main(argv: list[str] | None = None) -> int:
    """Run ``approxdrop ARGS``; returns the exit status (2 for usage errors, as argparse does)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        apply_common(args, args.parser)
        return run(args)
    except SystemExit as stop:  # --help, or a usage error argparse has already explained
        return stop.code if isinstance(stop.code, int) else 1
    except KeyboardInterrupt:  # Ctrl-C before the subcommand ran (run says it for the subcommand)
        print("\napproxdrop: interrupted", file=sys.stderr)
        return INTERRUPTED


def run(args: argparse.Namespace) -> int:
    """The subcommand, with the library's refusal of a setting (ValueError: a rate no pattern family reaches,
    a law that does not fit) as a usage error, and data it cannot get or memory it cannot have as one line.
    Ctrl-C is one line too, exit status 130, after the progress bar has ended (each command ends its bar on
    the way out): the module's ``interrupted(args)`` where it has one (a command that keeps what finished says
    what: the study, and how to resume; bench-lstm, the files it marked partial), else "interrupted"."""
    try:
        return args.run(args)
    except KeyboardInterrupt:
        module = next(m for m in SUBCOMMANDS if m.COMMAND == args.command)
        said = module.interrupted(args) if hasattr(module, "interrupted") else "interrupted"
        print(f"\napproxdrop {args.command}: {said}", file=sys.stderr)  # on a line of its own, after a progress bar
        return INTERRUPTED
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
