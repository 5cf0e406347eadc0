"""Live GEMM timing for the labs: median time of a dense GEMM against pattern GEMMs at one size.

Each function returns ``Timing`` rows (name, median ms, GEMM work left as a fraction of the dense
GEMM, the ideal bound). Times are medians over ``repeats`` calls after ``warmup`` calls; on CUDA
every call is synchronised. Forward GEMM only: ``y = x @ W.T`` with x [batch, n_in], W [n_out, n_in].
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._env import sync
from ..ops import FULL, row_pattern_linear, tile_linear_reference, tile_pattern_linear
from ..patterns import RowPattern, TilePattern
from .options import positive_int, rate, write_record


@dataclass(frozen=True)
class Timing:
    """One measured method: median milliseconds and the GEMM work it has left (dense = 1)."""

    name: str
    ms: float
    work: float


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA-synchronised around every call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _operands(batch: int, n_in: int, n_out: int, device, dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n_in, generator=gen).to(device, dtype)  # [B, n_in]
    w = torch.randn(n_out, n_in, generator=gen).to(device, dtype)  # [n_out, n_in]
    return x, w


def dropout_timings(
    batch: int,
    n_in: int,
    n_out: int,
    p: float,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    repeats: int = 10,
) -> list[Timing]:
    """Dense GEMM; dense GEMM + per-element Bernoulli mask; dense GEMM + batch-shared mask; and the
    smaller dense GEMM on the ``round((1-p) n_out)`` kept rows that shared dropout could run instead."""
    device = torch.device(device)
    x, w = _operands(batch, n_in, n_out, device, dtype)
    kept = max(1, round((1 - p) * n_out))
    w_small = w[:kept].contiguous()  # [kept, n_in]
    scale = 1.0 / (1.0 - p)

    def per_element():
        y = x @ w.t()  # [B, n_out]
        return y * (torch.rand_like(y) >= p) * scale

    def shared():
        y = x @ w.t()  # [B, n_out]
        return y * (torch.rand(n_out, device=device) >= p) * scale  # one mask row for the whole batch

    return [
        Timing("dense GEMM", median_ms(lambda: x @ w.t(), device, repeats=repeats), 1.0),
        Timing("dense + Bernoulli mask", median_ms(per_element, device, repeats=repeats), 1.0),
        Timing("dense + shared mask", median_ms(shared, device, repeats=repeats), 1.0),
        Timing("smaller dense GEMM", median_ms(lambda: x @ w_small.t(), device, repeats=repeats), kept / n_out),
    ]


def row_timings(
    batch: int,
    n: int,
    pattern: RowPattern,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    repeats: int = 10,
) -> list[Timing]:
    """A hidden layer W [n, n] under one RowPattern: dense GEMM; kept output rows only (a strided
    view, this layer); kept input columns only (a gather, the next layer); both sides."""
    device = torch.device(device)
    x, w = _operands(batch, n, n, device, dtype)
    x_kept = x[:, pattern.keep_mask(n, device)]  # [B, k]
    k = pattern.kept_count(n) / n

    def run(in_p: RowPattern, out_p: RowPattern, xs: torch.Tensor) -> float:
        return median_ms(lambda: row_pattern_linear(xs, w, None, in_p, out_p), device, repeats=repeats)

    return [
        Timing("dense GEMM", median_ms(lambda: x @ w.t(), device, repeats=repeats), 1.0),
        Timing("kept rows", run(FULL, pattern, x), k),
        Timing("kept columns", run(pattern, FULL, x_kept), k),
        Timing("rows and columns", run(pattern, pattern, x_kept), k * k),
    ]


def tile_timings(
    batch: int,
    n_in: int,
    n_out: int,
    pattern: TilePattern,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    repeats: int = 10,
) -> list[Timing]:
    """Dense GEMM, masked dense GEMM (DropConnect with the element mask), and ``tile_pattern_linear``."""
    device = torch.device(device)
    x, w = _operands(batch, n_in, n_out, device, dtype)
    work = pattern.kept_count(n_out, n_in) / (n_out * n_in)

    def run(fn) -> float:
        return median_ms(lambda: fn(x, w, None, pattern), device, repeats=repeats)

    return [
        Timing("dense GEMM", median_ms(lambda: x @ w.t(), device, repeats=repeats), 1.0),
        Timing("masked dense", run(tile_linear_reference), 1.0),
        Timing("tile pattern", run(tile_pattern_linear), work),
    ]


COMMAND, HELP = "gemm-timing", "time one dense GEMM against its dropout and pattern variants (labs 01-03)"
COMMON_OPTIONS = ("--device", "--threads", "--json")  # no progress bar to turn off


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=positive_int, default=128)
    parser.add_argument("--n", type=positive_int, default=2048, help="layer width (n_in = n_out)")
    parser.add_argument("--p", type=rate, default=0.5, help="dropout rate of the dropout timings")
    parser.add_argument("--dp", type=positive_int, default=2, help="period of the row and tile patterns")
    parser.add_argument("--tile", type=positive_int, default=32, help="tile side of the tile pattern, below --n")
    parser.add_argument("--repeats", type=positive_int, default=10)


def run(args: argparse.Namespace) -> int:
    if args.tile >= args.n:  # one tile (0, 0) per side: kept at offset 0, whatever dp is
        args.parser.error(f"--tile {args.tile}: must be smaller than --n {args.n} (a layer of one tile keeps it: "
                          "the tile pattern would drop nothing)")  # fmt: skip
    device = torch.device(args.device)
    groups = {
        "dropout": dropout_timings(args.batch, args.n, args.n, args.p, device, repeats=args.repeats),
        f"row pattern dp={args.dp}": row_timings(
            args.batch, args.n, RowPattern(args.dp, 0), device, repeats=args.repeats
        ),
        f"tile pattern dp={args.dp}": tile_timings(
            args.batch, args.n, args.n, TilePattern(args.dp, 0, args.tile), device, repeats=args.repeats
        ),
    }
    print(f"GEMM [{args.batch} x {args.n}] @ [{args.n} x {args.n}], float32, {device}, median of {args.repeats}")
    print("| group | what | ms | GEMM work left |\n|---|---|---:|---:|")
    for group, timings in groups.items():
        for t in timings:
            print(f"| {group} | {t.name} | {t.ms:.3f} | {t.work:.3f} |")
    write_record(args, [{"group": g, **vars(t)} for g, ts in groups.items() for t in ts])
    return 0
