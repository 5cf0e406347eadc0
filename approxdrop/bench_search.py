"""Time ``search_distribution`` (and the LP optimum, when scipy is there) on this machine.

Run: ``python -m approxdrop.bench_search [--repeat R] [--no-lp]``. Prints a Markdown table; times
are the best of R runs (the LP: one run) and cover the whole call, candidate laws included.
"""

from __future__ import annotations

import argparse
import platform
import time

from .search import exact_optimum, search_distribution


def timed(fn, repeat: int, *args):
    """``(fastest wall-clock seconds of repeat runs, last result)`` of ``fn(*args)``."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-lp", action="store_true", help="skip the LP optimum")
    args = parser.parse_args(argv)
    print(f"# {platform.machine()} {platform.processor()}, Python {platform.python_version()}")
    print("| n | p | family | kind | search (s) | LP (s) | W1 search | W1 LP |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in (64, 1024, 4096):
        for p in (0.1, 0.5, 0.7):
            for family in ("paper", "extended"):
                for kind in ("row", "tile"):
                    case = (p, n, kind, family)
                    t_search, dist = timed(search_distribution, args.repeat, *case)
                    if not args.no_lp:
                        t_lp, lp = timed(exact_optimum, 1, *case)
                        lp_cells = f"{t_lp:.3f} | {dist.distance:.5f} | {lp.distance:.5f}"
                    else:
                        lp_cells = f"- | {dist.distance:.5f} | -"
                    print(f"| {n} | {p} | {family} | {kind} | {t_search:.3f} | {lp_cells} |")


if __name__ == "__main__":
    main()
