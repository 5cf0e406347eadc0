"""GPU benchmark of the approxdrop kernels: kernel level, end to end and the dispatch, as markdown tables.

Kernel level: forward + backward (the three GEMMs) of one layer at 4096 x 4096 x 4096 and at the
layers of the MLPs 784-2048-2048-10 (batch 128) and 784-4096-4096-10 (batch 512), for each p, as
dense cuBLAS (F.linear and the two backward matmuls, same dtype), and the approxdrop op (row, row
with 4 batch groups, tile) on each path: the pattern-GEMM kernel (``APPROXDROP_KERNELS=pattern``;
per offset pair for the grouped op), the cuBLAS path (``cublas``: cuBLAS on strided views or one
gathered block, fused scatter; row ops only, n/a for tiles), the PyTorch implementation (``torch``),
and the measuring dispatch (``auto``). Patterns are the nominal ones of rate p:
(dp, keep) = (10, 7), (2, 1), (10, 3) for p = 0.3, 0.5, 0.7, on both sides of hidden layers.
End to end: one ApproxDropoutMLP training step (forward, cross-entropy, backward, SGD with momentum)
per method, eager on each path, and with the whole step captured in a CUDA graph (auto; the graph
replays the pattern drawn at capture, so it measures the step without launch overhead, not the
per-step pattern draw). Dispatch: the first call of each op step in ``auto`` (which measures every
path) against the next ones, and every choice the dispatcher made, with its times.

Precision: ``--dtype`` (tensors and model in that dtype), ``--tf32`` (TF32 matmuls for float32), or
``--autocast bfloat16`` (float32 model and tensors, the step under torch.autocast).

Times are medians over repeats of CUDA-event intervals after warm-up. Run on a GPU:
    python benchmarks/gpu_bench.py                     # writes benchmarks/results/gpu_bench_<gpu>_<date>.md
    python benchmarks/gpu_bench.py --dry-run --out x.md  # tiny sizes on CPU, PyTorch path only (a smoke test)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import approxdrop
from approxdrop.models.mlp import METHODS
from approxdrop.ops import (
    FULL,
    grouped_row_pattern_linear,
    row_linear,
    row_linear_backward,
    tile_linear,
    tile_linear_backward,
)
from approxdrop.ops import cuda as kernels
from approxdrop.ops.dispatch import ENV_SWITCH

RESULTS = Path(__file__).resolve().parent / "results"
NOMINAL = {0.3: (10, 7), 0.5: (2, 1), 0.7: (10, 3)}  # p -> (dp, keep) with 1 - keep/dp = p
KERNEL_METHODS = ("row", "row G=4", "tile")  # kernel level: row patterns, row with 4 batch groups, tile
SECTIONS = ("kernels", "end-to-end", "dispatch")
GROUPS = 4


@dataclass(frozen=True)
class Layer:
    """One GEMM shape: x [batch, n_in] @ W[n_out, n_in]^T; which sides carry a row-dropout site."""

    name: str
    batch: int
    n_in: int
    n_out: int
    drop_in: bool
    drop_out: bool


def mlp_layers(sizes, batch: int) -> list[Layer]:
    """The layers of an MLP with a dropout site after every hidden activation."""
    last = len(sizes) - 2
    return [
        Layer(f"{'-'.join(map(str, sizes))} b{batch} L{i}", batch, a, b, i > 0, i < last)
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
    ]


def layers_for(dry_run: bool) -> list[Layer]:
    if dry_run:
        return [Layer("48x40x36", 48, 40, 36, True, True), *mlp_layers((20, 16, 16, 4), 8)]
    return [
        Layer("4096x4096x4096", 4096, 4096, 4096, True, True),
        *mlp_layers((784, 2048, 2048, 10), 128),
        *mlp_layers((784, 4096, 4096, 10), 512),
    ]


def fmt(ms: float) -> str:
    """Milliseconds or a ratio with 3 decimals; n/a for what was not measured (NaN)."""
    return "n/a" if ms != ms else f"{ms:.3f}"


_failures: list[str] = []  # the cells that raised, reset by main(): reported, and the exit status is 1


def timed(what: str, fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """``time_ms``, or NaN with the error recorded in ``_failures``: one failing cell must not lose the table."""
    try:
        return time_ms(fn, device, warmup, repeats)
    except Exception as exc:  # noqa: BLE001 - recorded and reported
        _failures.append(f"{what}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}")
        return float("nan")


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of fn: CUDA events on a GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(samples)


@contextlib.contextmanager
def kernels_mode(mode: str):
    """Run the approxdrop ops with ``APPROXDROP_KERNELS=mode`` (torch, cublas, pattern, auto), then restore it."""
    saved = os.environ.get(ENV_SWITCH)
    os.environ[ENV_SWITCH] = mode
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(ENV_SWITCH, None)
        else:
            os.environ[ENV_SWITCH] = saved


def precision(args, device: torch.device):
    """The context of every timed step: autocast to ``--autocast``'s dtype, or nothing."""
    if args.autocast == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, args.autocast), cache_enabled=False)


def kernel_steps(layer: Layer, p: float, method: str, tile: int, device, dtype):
    """(dense step, op step): forward + backward of the layer, dense and with the pattern of rate p."""
    dp, keep = NOMINAL[p]
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype)

    w, b = rand(layer.n_out, layer.n_in), rand(layer.n_out)
    x, gy = rand(layer.batch, layer.n_in), rand(layer.batch, layer.n_out)

    def dense():
        return F.linear(x, w, b), gy @ w, gy.t() @ x, gy.sum(0)

    if method == "tile":
        ints = (dp, keep, tile, [0])

        def op():
            return tile_linear(x, w, b, *ints), tile_linear_backward(gy, x, w, *ints)

        return dense, op
    if method == "row G=4":  # full-width x and y, one offset per batch group (the row op composed with gathers)
        side = {True: [approxdrop.RowPattern(dp, g % dp, keep) for g in range(GROUPS)], False: [FULL] * GROUPS}
        xg, wg, bg = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()

        def op():
            y = grouped_row_pattern_linear(xg, wg, bg, side[layer.drop_in], side[layer.drop_out])
            return torch.autograd.grad(y, (xg, wg, bg), gy.to(y.dtype))

        return dense, op
    side_in = approxdrop.RowPattern(dp, 0, keep) if layer.drop_in else approxdrop.RowPattern(1, 0, 1)
    side_out = approxdrop.RowPattern(dp, 0, keep) if layer.drop_out else approxdrop.RowPattern(1, 0, 1)
    ints = (side_in.dp, side_in.keep, [side_in.offset], side_out.dp, side_out.keep, [side_out.offset])
    xk, gyk = rand(layer.batch, side_in.kept_count(layer.n_in)), rand(layer.batch, side_out.kept_count(layer.n_out))

    def op():
        ys, blocks = row_linear([xk], w, b, *ints)
        return ys[0], row_linear_backward([gyk], [xk], w, blocks, *ints)

    return dense, op


def work_left(layer: Layer, p: float, method: str) -> float:
    """GEMM work of the pattern relative to dense (docs/method.md §6), the ideal bound."""
    dp, keep = NOMINAL[p]
    if method == "tile":
        return keep / dp
    return (keep / dp if layer.drop_in else 1.0) * (keep / dp if layer.drop_out else 1.0)


def time_paths(what: str, op, args, device, have_kernels: bool, has_cublas: bool = True) -> dict[str, float]:
    """Milliseconds of ``op`` on each path: pattern (the kernel), cublas (the cuBLAS path), torch (the PyTorch
    implementation), auto (the dispatch); NaN where a path does not exist (CPU, no kernels, tiles' cuBLAS)."""
    nan = float("nan")
    times = {}
    for mode in ("pattern", "cublas", "torch", "auto"):
        if mode != "torch" and not (have_kernels and (has_cublas or mode != "cublas")):
            times[mode] = nan
            continue
        with kernels_mode(mode), precision(args, device):
            times[mode] = timed(f"{what}, {mode}", op, device, args.warmup, args.repeats)
    return times


def bench_kernels(args, device, dtype, have_kernels: bool) -> list[str]:
    rows = [
        "| layer | method | p | dense ms | pattern ms | cuBLAS path ms | PyTorch path ms | auto ms | dense/pattern "
        "| dense/cuBLAS | dense/PyTorch | dense/auto | work left |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for layer in layers_for(args.dry_run):
        t_dense = None  # the dense step does not depend on p or the method: timed once per layer
        for p in args.ps:
            for method in KERNEL_METHODS:
                dense, op = kernel_steps(layer, p, method, args.tile, device, dtype)
                what = f"{layer.name} {method} p={p}"
                if t_dense is None:
                    with precision(args, device):
                        t_dense = timed(f"{layer.name} dense", dense, device, args.warmup, args.repeats)
                t = time_paths(what, op, args, device, have_kernels, has_cublas=method != "tile")
                work = work_left(layer, p, "row" if method.startswith("row") else method)
                rows.append(
                    f"| {layer.name} | {method} | {p:.1f} | {fmt(t_dense)} | {fmt(t['pattern'])} | {fmt(t['cublas'])} "
                    f"| {fmt(t['torch'])} | {fmt(t['auto'])} | {fmt(t_dense / t['pattern'])} "
                    f"| {fmt(t_dense / t['cublas'])} | {fmt(t_dense / t['torch'])} | {fmt(t_dense / t['auto'])} "
                    f"| {work:.3f} |"
                )
    return rows


def bench_dispatch(args, device, dtype, have_kernels: bool) -> list[str]:
    """The first call of each op step in auto (the dispatcher measures every path then) against the next."""
    rows = [
        "| layer | method | p | first call ms (measures) | next calls ms | choices made by the first call |",
        "|---|---|---:|---:|---:|---|",
    ]
    for layer in layers_for(args.dry_run):
        for p in args.ps:
            for method in ("row", "tile"):
                _, op = kernel_steps(layer, p, method, args.tile, device, dtype)
                before = {c.key for c in kernels.status().choices}
                what = f"dispatch {layer.name} {method} p={p}"
                with kernels_mode("auto"), precision(args, device):
                    first = timed(f"{what}, first call", op, device, 0, 1)
                    steady = timed(what, op, device, args.warmup, args.repeats)
                made = [c for c in kernels.status().choices if c.key not in before]
                said = "; ".join(f"{c.key.split(' ')[0]}: {c.path} ({c.how})" for c in made)
                said = said or ("none (CPU: no dispatch)" if device.type != "cuda" else "none new")
                rows.append(f"| {layer.name} | {method} | {p:.1f} | {fmt(first)} | {fmt(steady)} | {said} |")
    return rows


def choices_table() -> list[str]:
    """Every dispatch choice made or used in this process, with the candidates' times."""
    choices = kernels.status().choices if torch.cuda.is_available() else ()
    if not choices:
        return ["none (no op ran on a GPU in auto mode)"]
    rows = [
        "| key | runs | how | PyTorch path ms | cuBLAS path ms | pattern ms | reason |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for c in choices:
        times = dict(c.times_ms)
        cells = " | ".join(fmt(math.nan if times.get(n) is None else times[n]) for n in ("torch", "cublas", "pattern"))
        rows.append(f"| {c.key} | {c.path} | {c.how} | {cells} | {c.reason.replace('|', '/')} |")
    return rows


def training_step(sizes, batch: int, p: float, method: str, args, device, dtype):
    torch.manual_seed(0)
    model = approxdrop.ApproxDropoutMLP(sizes, p, method=method, tile=args.tile).to(device, dtype).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, sizes[0], device=device, dtype=dtype)
    target = torch.randint(sizes[-1], (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with precision(args, device):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()

    return step


def graphed(step: Callable[[], None]) -> Callable[[], None]:
    """The step captured whole in a CUDA graph (after warm-up on a side stream), as its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def bench_end_to_end(args, device, dtype, have_kernels: bool) -> list[str]:
    configs = [((20, 16, 16, 4), 8)] if args.dry_run else [((784, 2048, 2048, 10), 128), ((784, 4096, 4096, 10), 512)]
    rows = [
        "| MLP | batch | p | method | eager auto ms | eager PyTorch path ms | eager cuBLAS path ms | eager pattern ms "
        "| CUDA graph auto ms |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for sizes, batch in configs:
        for p in args.ps:
            for method in METHODS:
                step = training_step(sizes, batch, p, method, args, device, dtype)
                t = {}
                for mode in ("auto", "torch", "cublas", "pattern"):
                    if mode == "torch" or have_kernels:
                        with kernels_mode(mode):
                            what = f"{'-'.join(map(str, sizes))} {method} p={p}, {mode}"
                            t[mode] = fmt(timed(what, step, device, args.warmup, args.repeats))
                    else:
                        t[mode] = "n/a"
                graph = "n/a"
                if device.type == "cuda" and method != "shared":  # shared copies its host-drawn indices
                    try:
                        with kernels_mode("auto"):
                            graph = fmt(time_ms(graphed(step), device, args.warmup, args.repeats))
                    except RuntimeError as exc:
                        graph = f"failed: {str(exc).splitlines()[0][:60]}"
                        _failures.append(f"{'-'.join(map(str, sizes))} {method} p={p}, CUDA graph: {graph}")
                rows.append(
                    f"| {'-'.join(map(str, sizes))} | {batch} | {p:.1f} | {method} | {t['auto']} | {t['torch']} "
                    f"| {t['cublas']} | {t['pattern']} | {graph} |"
                )
    return rows


def describe(device: torch.device, dtype: torch.dtype, args, command: str) -> list[str]:
    """Header lines: GPU, driver, versions, precision, kernel status, date, the exact command."""
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={device.index or 0}"]
            driver = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip() or "unknown"
        except (OSError, subprocess.SubprocessError):
            driver = "unknown"
    else:
        gpu, driver = "none (CPU dry run: PyTorch path only, tiny sizes)", "n/a"
    st = kernels.status()
    cudnn = torch.backends.cudnn.version() if device.type == "cuda" else None
    return [
        f"- GPU: {gpu}; driver {driver}",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}; dtype {str(dtype)[6:]}; "
        f"autocast {args.autocast}; TF32 matmul {torch.backends.cuda.matmul.allow_tf32}",
        f"- kernels: built={st.built}, arch={st.arch}, {ENV_SWITCH}={st.mode} outside the timed paths"
        + (f", reason: {st.reason}" if st.reason else ""),
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- command: `{command}`",
    ]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--ps", type=float, nargs="+", default=[0.3, 0.5, 0.7], choices=sorted(NOMINAL))
    parser.add_argument("--tile", type=int, default=32, help="tile size of the tile patterns")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (float32; both sides alike)")
    parser.add_argument(
        "--autocast",
        default="none",
        choices=["none", "bfloat16", "float16"],
        help="float32 tensors and model, every step under torch.autocast to this dtype (overrides --dtype)",
    )
    parser.add_argument("--sections", nargs="+", default=["kernels", "end-to-end"], choices=SECTIONS)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU through the PyTorch path")
    parser.add_argument("--out", type=Path, help="markdown file (default: results/gpu_bench_<gpu>_<date>.md)")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.warmup, args.repeats = min(args.warmup, 1), min(args.repeats, 2)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    _failures.clear()
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", __file__, *argv])
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_bench: no CUDA GPU visible; use --dry-run for the CPU smoke test", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype = torch.float32 if args.dry_run or args.autocast != "none" else getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    have_kernels = device.type == "cuda" and kernels.enabled() and kernels.load() is not None
    if device.type == "cuda" and not have_kernels:
        print(f"gpu_bench: kernels unavailable ({kernels.status().reason}): PyTorch path only", file=sys.stderr)
    if args.out is None:
        gpu = torch.cuda.get_device_name(device).replace(" ", "-") if device.type == "cuda" else "cpu"
        args.out = RESULTS / f"gpu_bench_{gpu}_{datetime.date.today().isoformat()}.md"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# approxdrop GPU benchmark", "", *describe(device, dtype, args, command)]
    sections = [  # the dispatch first: it sees the dispatcher before any other section has used it
        ("dispatch", "Dispatch: first call (measures) and next calls, auto", bench_dispatch),
        ("kernels", "Kernel level (fwd + bwd)", bench_kernels),
        ("end-to-end", "End to end (one training step)", bench_end_to_end),
    ]
    for name, title, bench in sections:
        if name in args.sections:
            lines += ["", f"## {title}", "", *bench(args, device, dtype, have_kernels)]
            args.out.write_text(
                "\n".join(lines) + "\n"
            )  # each finished section is kept, even if a later one is cut off
    lines += ["", "## Dispatch choices", "", *choices_table()]
    lines += ["", "## Failures", "", *(f"- {f}" for f in _failures or ["none"])]
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}; {len(_failures)} failed cell(s)", file=sys.stderr)
    return 1 if _failures else 0


if __name__ == "__main__":
    sys.exit(main())
