"""GPU benchmark of the approxdrop kernels: kernel level and end to end, written as a markdown table.

Kernel level: forward + backward (the three GEMMs) of one layer at 4096 x 4096 x 4096 and at the
layers of the MLPs 784-2048-2048-10 (batch 128) and 784-4096-4096-10 (batch 512), for each p, as
dense cuBLAS (F.linear and the two backward matmuls, same dtype), the approxdrop op with the CUDA
kernels, and the same op on its PyTorch path (kernels disabled). Patterns are the nominal ones of
rate p: (dp, keep) = (10, 7), (2, 1), (10, 3) for p = 0.3, 0.5, 0.7, on both sides of hidden layers.
End to end: one ApproxDropoutMLP training step (forward, cross-entropy, backward, SGD with momentum)
per method, eager with kernels, eager on the PyTorch path, and with the whole step captured in a
CUDA graph (kernels on; the graph replays the pattern drawn at capture, so it measures the step
without launch overhead, not the per-step pattern draw).

Times are medians over repeats of CUDA-event intervals after warm-up. Run on a GPU:
    python benchmarks/gpu_bench.py                     # writes benchmarks/results/gpu_bench_<gpu>_<date>.md
    python benchmarks/gpu_bench.py --dry-run --out x.md  # tiny sizes on CPU, PyTorch path only (a smoke test)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
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
from approxdrop.ops import cuda as kernels
from approxdrop.ops import row_linear, row_linear_backward, tile_linear, tile_linear_backward

RESULTS = Path(__file__).resolve().parent / "results"
NOMINAL = {0.3: (10, 7), 0.5: (2, 1), 0.7: (10, 3)}  # p -> (dp, keep) with 1 - keep/dp = p
OPS = (row_linear, row_linear_backward, tile_linear, tile_linear_backward)


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
def pytorch_path():
    """Run the approxdrop ops on their PyTorch implementation (CUDA kernels disabled)."""
    with contextlib.ExitStack() as stack:
        for op in OPS:
            stack.enter_context(op.set_kernel_enabled("cuda", False))
        yield


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
        ints = (dp, 0, keep, tile)

        def op():
            return tile_linear(x, w, b, *ints), tile_linear_backward(gy, x, w, *ints)

        return dense, op
    side_in = approxdrop.RowPattern(dp, 0, keep) if layer.drop_in else approxdrop.RowPattern(1, 0, 1)
    side_out = approxdrop.RowPattern(dp, 0, keep) if layer.drop_out else approxdrop.RowPattern(1, 0, 1)
    ints = (side_in.dp, side_in.offset, side_in.keep, side_out.dp, side_out.offset, side_out.keep)
    xk, gyk = rand(layer.batch, side_in.kept_count(layer.n_in)), rand(layer.batch, side_out.kept_count(layer.n_out))

    def op():
        return row_linear(xk, w, b, *ints), row_linear_backward(gyk, xk, w, *ints)

    return dense, op


def work_left(layer: Layer, p: float, method: str) -> float:
    """GEMM work of the pattern relative to dense (METHOD.md §6), the ideal bound."""
    dp, keep = NOMINAL[p]
    if method == "tile":
        return keep / dp
    return (keep / dp if layer.drop_in else 1.0) * (keep / dp if layer.drop_out else 1.0)


def bench_kernels(args, device, dtype) -> list[str]:
    rows = [
        "| layer | method | p | dense ms | kernels ms | PyTorch path ms | dense/kernels | dense/PyTorch | work left |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for layer in layers_for(args.dry_run):
        for p in args.ps:
            for method in ("row", "tile"):
                dense, op = kernel_steps(layer, p, method, args.tile, device, dtype)
                t_dense = time_ms(dense, device, args.warmup, args.repeats)
                t_kernel = time_ms(op, device, args.warmup, args.repeats) if device.type == "cuda" else float("nan")
                with pytorch_path():
                    t_torch = time_ms(op, device, args.warmup, args.repeats)
                rows.append(
                    f"| {layer.name} | {method} | {p:.1f} | {fmt(t_dense)} | {fmt(t_kernel)} | {fmt(t_torch)} | "
                    f"{fmt(t_dense / t_kernel)} | {fmt(t_dense / t_torch)} | {work_left(layer, p, method):.3f} |"
                )
    return rows


def training_step(sizes, batch: int, p: float, method: str, tile: int, device, dtype):
    torch.manual_seed(0)
    model = approxdrop.ApproxDropoutMLP(sizes, p, method=method, tile=tile).to(device, dtype).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, sizes[0], device=device, dtype=dtype)
    target = torch.randint(sizes[-1], (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()
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


def bench_end_to_end(args, device, dtype) -> list[str]:
    configs = [((20, 16, 16, 4), 8)] if args.dry_run else [((784, 2048, 2048, 10), 128), ((784, 4096, 4096, 10), 512)]
    rows = [
        "| MLP | batch | p | method | eager, kernels ms | eager, PyTorch path ms | CUDA graph, kernels ms |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for sizes, batch in configs:
        for p in args.ps:
            for method in METHODS:
                step = training_step(sizes, batch, p, method, args.tile, device, dtype)
                eager = time_ms(step, device, args.warmup, args.repeats) if device.type == "cuda" else float("nan")
                with pytorch_path():
                    eager_torch = time_ms(step, device, args.warmup, args.repeats)
                graph = "n/a"
                if device.type == "cuda" and method != "shared":  # shared copies its host-drawn indices
                    try:
                        graph = fmt(time_ms(graphed(step), device, args.warmup, args.repeats))
                    except RuntimeError as exc:
                        graph = f"failed: {str(exc).splitlines()[0][:60]}"
                rows.append(
                    f"| {'-'.join(map(str, sizes))} | {batch} | {p:.1f} | {method} | {fmt(eager)} | "
                    f"{fmt(eager_torch)} | {graph} |"
                )
    return rows


def describe(device: torch.device, dtype: torch.dtype, command: str) -> list[str]:
    """Header lines: GPU, driver, versions, kernel status, date, the exact command."""
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
    return [
        f"- GPU: {gpu}; driver {driver}",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}; dtype {str(dtype)[6:]}; "
        f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}",
        f"- kernels: built={st.built}, arch={st.arch}" + (f", reason: {st.reason}" if st.reason else ""),
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
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU through the PyTorch path")
    parser.add_argument("--out", type=Path, help="markdown file (default: results/gpu_bench_<gpu>_<date>.md)")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.warmup, args.repeats = min(args.warmup, 1), min(args.repeats, 2)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", __file__, *argv])
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_bench: no CUDA GPU visible; use --dry-run for the CPU smoke test", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype = torch.float32 if args.dry_run else getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    if device.type == "cuda" and kernels.load() is None:
        print(f"gpu_bench: kernels unavailable: {kernels.status().reason}", file=sys.stderr)
        return 1
    lines = ["# approxdrop GPU benchmark", "", *describe(device, dtype, command), "", "## Kernel level (fwd + bwd)", ""]
    lines += bench_kernels(args, device, dtype)
    if not args.skip_end_to_end:
        lines += ["", "## End to end (one training step)", "", *bench_end_to_end(args, device, dtype)]
    text = "\n".join(lines) + "\n"
    if args.out is None:
        gpu = torch.cuda.get_device_name(device).replace(" ", "-") if device.type == "cuda" else "cpu"
        args.out = RESULTS / f"gpu_bench_{gpu}_{datetime.date.today().isoformat()}.md"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
