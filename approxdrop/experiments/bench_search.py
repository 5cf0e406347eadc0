"""Time ``search_distribution`` (and the LP optimum, when scipy is there) on this machine.

Run: ``approxdrop bench-search [--repeat R] [--no-lp]``. Prints a Markdown table; times
are the best of R runs (the LP: one run) and cover the whole call, candidate laws included.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .._env import describe_machine
from ..search import exact_optimum, search_distribution
from .options import positive_int, write_record

_R = TypeVar("_R")  # what the timed function returns


def timed(fn: Callable[..., _R], repeat: int, *args: Any) -> tuple[float, _R]:
    """``(fastest wall-clock seconds of repeat runs, last result)`` of ``fn(*args)``."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


COMMAND, HELP = "bench-search", "time the pattern-law search (and its LP optimum) on this machine"
COMMON_OPTIONS = ("--threads", "--json")  # the search runs on the CPU and prints row by row: no --device, no bar


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=positive_int, default=3, help="runs per search (the time is the best)")
    parser.add_argument("--no-lp", action="store_true", help="skip the LP optimum")
    parser.set_defaults(device="cpu")


def lp_available() -> bool:
    """Whether scipy (the LP's solver, not a dependency of the library) imports."""
    try:
        import scipy.optimize  # noqa: F401
    except ImportError:
        return False
    return True


def run(args: argparse.Namespace) -> int:
    rows = []
    with_lp = not args.no_lp and lp_available()
    if not args.no_lp and not with_lp:
        print(f"{COMMAND}: scipy is not installed, so the LP columns are left out (pip install scipy)", file=sys.stderr)
    print(f"# {describe_machine(args.device)}; Python {platform.python_version()}")
    print("| n | p | family | kind | search (s) | LP (s) | W1 search | W1 LP |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in (64, 1024, 4096):
        for p in (0.1, 0.5, 0.7):
            for family in ("paper", "extended"):
                for kind in ("row", "tile"):
                    case = (p, n, kind, family)
                    t_search, dist = timed(search_distribution, args.repeat, *case)
                    row = {"n": n, "p": p, "family": family, "kind": kind, "search_s": t_search, "w1": dist.distance}
                    if with_lp:
                        t_lp, lp = timed(exact_optimum, 1, *case)
                        row.update(lp_s=t_lp, w1_lp=lp.distance)
                        lp_cells = f"{t_lp:.3f} | {dist.distance:.5f} | {lp.distance:.5f}"
                    else:
                        lp_cells = f"- | {dist.distance:.5f} | -"
                    rows.append(row)
                    print(f"| {n} | {p} | {family} | {kind} | {t_search:.3f} | {lp_cells} |")
    write_record(args, rows)
    return 0
