"""The ``approxdrop`` command: ``approxdrop bench [...]``, ``approxdrop bench-lstm [...]``,
``approxdrop study mlp [...]`` (each has ``--help``)."""

from __future__ import annotations

import sys

COMMANDS = {
    "bench": "training-step benchmark of every dropout method (approxdrop.bench)",
    "bench-lstm": "LSTM language-model step time and perplexity of every method (approxdrop.bench_lstm)",
    "study": "accuracy-parity study: train every method at every p on real data (approxdrop.study)",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        listing = "\n".join(f"  {name:10s} {text}" for name, text in COMMANDS.items())
        print(f"usage: approxdrop COMMAND [ARGS]\n\ncommands:\n{listing}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "bench":
        from . import bench

        return bench.main(argv[1:])
    if argv[0] == "bench-lstm":
        from . import bench_lstm

        return bench_lstm.main(argv[1:])
    from . import study

    return study.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
