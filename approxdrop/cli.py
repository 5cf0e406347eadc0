"""The ``approxdrop`` command: ``approxdrop bench [...]`` (see ``approxdrop bench --help``)."""

from __future__ import annotations

import sys

COMMANDS = {"bench": "training-step benchmark of every dropout method (approxdrop.bench)"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        listing = "\n".join(f"  {name:8s} {text}" for name, text in COMMANDS.items())
        print(f"usage: approxdrop COMMAND [ARGS]\n\ncommands:\n{listing}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from . import bench

    return bench.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
