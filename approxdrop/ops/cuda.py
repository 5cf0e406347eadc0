"""CUDA kernels for the ``approxdrop::`` ops: just-in-time build, status, dispatch.

Importing this module compiles nothing and touches no GPU: it only registers CUDA implementations of
the four ops. The first call of an op on CUDA tensors runs :func:`load` for the architecture of the
tensors' GPU, which builds the kernel sources with ``torch.utils.cpp_extension.load`` for that
architecture into a cache directory (``kernels/`` under the approxdrop cache directory,
``_env.cache_root``; one subdirectory per torch, CUDA and architecture), printing one line while it
compiles. Each architecture is built and loaded once per process (thread-safe), so two GPUs of
different architectures each get their own build. When the kernels cannot be built (no nvcc, a
CPU-only torch, a compile error), one warning gives the reason and the pure-PyTorch implementations
in ``approxdrop.ops`` run instead. :func:`status` reports what happened, or what would, and the
dispatch choices made.

Which path runs is chosen by measurement (``approxdrop.ops.dispatch``): on the first call of an op
with a given shape, dtype and pattern class on a GPU, its candidates run, are checked and timed, and
the fastest is kept, per GPU (:func:`dispatcher`), on disk under ``cache_root() / "gpu-dispatch"``.
The candidates: the PyTorch implementation (``torch``, the reference), the cuBLAS path (``cublas``,
``approxdrop.ops.cuda_cublas``: cuBLAS GEMMs plus this extension's scatter and column-sum kernels; row,
gathered and grouped ops) and the pattern-GEMM kernel (``pattern``). The grouped ops run one pair of
offsets at a time on the chosen path (``approxdrop.ops.cuda_grouped``). ``APPROXDROP_KERNELS`` =
``auto`` (default) | ``cublas`` | ``pattern`` | ``torch`` | ``0`` (the PyTorch path, silently, no build).

The sources are the checkout's top-level ``kernels/`` (editable install); a wheel ships them as
package data in ``approxdrop/_kernels/`` (see ``pyproject.toml``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import torch

from .._env import cache_root, write_json_atomic
from ..patterns import RowPattern, TilePattern, periodic_count
from . import cuda_cublas, cuda_grouped
from .common import check_backward_args, check_linear_args, check_weight
from .dispatch import (
    CUBLAS,
    ENV_SWITCH,
    PATTERN,
    REFERENCE,
    Choice,
    Dispatcher,
    cuda_event_timer,
    kernel_mode,
    outputs_agree,
)
from .grouped import _check as check_grouped
from .grouped import _check_compact as check_compact
from .grouped import _check_compact_backward as check_compact_backward
from .grouped import (
    grouped_row_linear,
    grouped_row_linear_backward,
    grouped_row_linear_backward_torch,
    grouped_row_linear_compact,
    grouped_row_linear_compact_backward,
    grouped_row_linear_compact_backward_torch,
    grouped_row_linear_compact_torch,
    grouped_row_linear_torch,
)
from .row import check_block as check_gathered_block
from .row import (
    row_linear,
    row_linear_backward,
    row_linear_backward_torch,
    row_linear_gathered,
    row_linear_gathered_backward,
    row_linear_gathered_backward_torch,
    row_linear_gathered_torch,
    row_linear_torch,
)
from .tile import tile_linear, tile_linear_backward, tile_linear_backward_torch, tile_linear_torch

SOURCES = ("binding.cpp", "pattern_gemm.cu", "column_sum.cu", "scatter.cu")
NAME = "approxdrop_kernels"
STAMP = "approxdrop_build.json"  # in each build directory: the source hash it was built from
INT32_MAX = 2**31 - 1
KERNEL_MODES = ("auto", "cublas", "pattern")  # the modes that build and may run the extension

T = TypeVar("T")


def _source_dir() -> Path:
    """``approxdrop/_kernels`` when installed from a wheel, else the checkout's top-level ``kernels/``."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "_kernels"
    return packaged if packaged.is_dir() else package.parent / "kernels"


SOURCE_DIR = _source_dir()


@dataclass(frozen=True)
class KernelStatus:
    """built: the extension is loaded in this process; arch: e.g. ``"sm_90"`` (None without a GPU);
    reason: why it is not built (None when built); path: the build directory or extension file;
    mode: the ``APPROXDROP_KERNELS`` mode; choices: the dispatch choices made or used on this GPU in
    this process (``dispatch.Choice``: key, path, how, reason, times)."""

    built: bool
    arch: str | None
    reason: str | None
    path: str | None
    mode: str = "auto"
    choices: tuple[Choice, ...] = ()


# Per architecture (None: no GPU), set by load(): the outcome (success or the reason of failure), and
# the extension module when built. load() holds _lock while it fills them.
_outcomes: dict[str | None, KernelStatus] = {}
_extensions: dict[str, ModuleType] = {}
_lock = threading.Lock()


def enabled() -> bool:
    """Whether the kernels may be built and run: the ``APPROXDROP_KERNELS`` mode is ``auto``, ``cublas`` or
    ``pattern`` (ValueError on an unknown mode)."""
    return kernel_mode() in KERNEL_MODES


def _arch(device: torch.device | int | None = None) -> str | None:
    """``"sm_XY"`` of ``device`` (default: the current GPU), None without a GPU."""
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def _cache_root() -> Path:
    return cache_root() / "kernels"


def _build_key(arch: str) -> str:
    """Build directory name: one per torch version, CUDA version and GPU architecture."""
    return f"torch{torch.__version__}-cuda{torch.version.cuda}-{arch}".replace("+", "_")


def _source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(SOURCE_DIR.glob("*.[ch]*")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _stamped_sources(stamp: Path) -> str | None:
    """The source hash recorded in a build stamp; None when it is missing, unreadable or corrupt."""
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):  # missing, unreadable, truncated or not UTF-8 / JSON
        return None
    return recorded.get("sources") if isinstance(recorded, dict) else None


def _missing_sources() -> list[str]:
    """The files of ``SOURCES`` that are not in ``SOURCE_DIR``."""
    return [s for s in SOURCES if not (SOURCE_DIR / s).is_file()]


def _blocker() -> str | None:
    """Why the kernels cannot be built here, or None."""
    mode = kernel_mode()
    if mode == "0":
        return f"disabled by {ENV_SWITCH}=0"
    if mode not in KERNEL_MODES:
        return f"not used: {ENV_SWITCH}={mode} selects the PyTorch implementation"
    if torch.version.cuda is None:
        return f"this torch build has no CUDA (torch {torch.__version__})"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        return "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    missing = _missing_sources()
    if missing:
        return f"kernel sources {missing} not found in {SOURCE_DIR} (reinstall approxdrop, or pip install -e .)"
    return None


def _unbuilt_reason(arch: str) -> str:
    """Reason for status() before load(): not built yet, built for another torch/CUDA, stale, or a bad stamp."""
    root, key = _cache_root(), _build_key(arch)
    stamp = root / key / STAMP
    if stamp.exists():
        recorded = _stamped_sources(stamp)
        if recorded is None:
            return f"the build stamp {stamp} is unreadable: it is rebuilt on first CUDA use"
        if recorded == _source_hash():
            return f"built in {root / key}, loads on first CUDA use (or call approxdrop.kernels.load())"
        return f"the build in {root / key} is for older sources: it is rebuilt on first CUDA use"
    others = sorted(p.parent.name for p in root.glob(f"*/{STAMP}") if p.parent.name != key)
    if others:
        return f"built for another torch/CUDA/GPU ({', '.join(others)}), not for {key}: it is rebuilt on first CUDA use"
    return "not built yet: builds on first CUDA use of an approxdrop op (or call approxdrop.kernels.load())"


def status(device: torch.device | int | None = None) -> KernelStatus:
    """Whether the kernels are built and loaded for ``device``'s architecture (default: the current GPU),
    and why not; the mode, and the dispatch choices made on that GPU. Never builds."""
    arch = _arch(device)
    outcome = _outcomes.get(arch)
    if outcome is None:
        outcome = KernelStatus(built=False, arch=arch, reason=_blocker() or _unbuilt_reason(arch), path=None)
    made = ()
    if torch.cuda.is_available():
        chooser = _dispatchers.get(torch.cuda.get_device_name(device))
        made = chooser.choices() if chooser is not None else ()
    return replace(outcome, mode=kernel_mode(), choices=made)


def _fail(arch: str | None, reason: str, path: str | None = None) -> None:
    _outcomes[arch] = KernelStatus(built=False, arch=arch, reason=reason, path=path)
    if enabled():
        warnings.warn(
            f"approxdrop: CUDA kernels unavailable ({reason}); using the PyTorch implementation",
            RuntimeWarning,
            stacklevel=4,
        )


def load(verbose: bool = False, device: torch.device | int | None = None) -> ModuleType | None:
    """The extension module for ``device``'s architecture (default: the current GPU), built if needed
    (once per process and architecture, whichever threads ask); None when it cannot be built."""
    arch = _arch(device)
    if arch not in _outcomes:
        with _lock:
            if arch not in _outcomes:  # another thread may have finished while this one waited
                _load(arch, verbose)
    return _extensions.get(arch)


def _load(arch: str | None, verbose: bool) -> None:
    """Build and import the extension for ``arch``; record the outcome in ``_outcomes`` (under ``_lock``)."""
    reason = _blocker()
    if reason is not None:
        _fail(arch, reason)
        return
    build_dir = _cache_root() / _build_key(arch)
    stamp = build_dir / STAMP
    sources = _source_hash()
    if _stamped_sources(stamp) != sources:  # not built, stale, or a corrupt stamp: cpp_extension (re)builds
        print(f"approxdrop: compiling CUDA kernels for {arch} into {build_dir} (once, about a minute)", file=sys.stderr)
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        module = _compile(arch, build_dir, verbose)
    except ImportError as exc:  # a stale binary the loader rejects, e.g. from another torch
        _fail(arch, f"built for another torch/CUDA, cannot load ({exc}); delete {build_dir}", str(build_dir))
        return
    except Exception as exc:  # noqa: BLE001 - any build failure means: fall back, with the reason
        _fail(arch, f"build failed: {_first_error(exc)}", str(build_dir))
        return
    write_json_atomic(stamp, {"sources": sources, "torch": torch.__version__, "cuda": torch.version.cuda})
    _extensions[arch] = module  # before the outcome: load()'s unlocked check reads the outcome first
    _outcomes[arch] = KernelStatus(built=True, arch=arch, reason=None, path=module.__file__)


def _compile(arch: str, build_dir: Path, verbose: bool) -> ModuleType:
    """``cpp_extension.load`` of the sources for ``arch`` only, as a module named after it (one per arch)."""
    from torch.utils import cpp_extension

    saved = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch[3:-1] + "." + arch[-1]  # "sm_90" -> "9.0"
    try:
        return cpp_extension.load(
            name=f"{NAME}_{arch}",
            sources=[str(SOURCE_DIR / s) for s in SOURCES],
            extra_include_paths=[str(SOURCE_DIR)],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "-lineinfo"],
            build_directory=str(build_dir),
            verbose=verbose,
        )
    finally:
        if saved is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = saved


def _first_error(exc: Exception) -> str:
    """The first compiler line reporting an error (else the last line), for the one-line warning."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    return next((line for line in lines if "error:" in line.lower()), lines[-1])[:300]


# --------------------------------------------------------------------------- dispatch

_dispatchers: dict[str, Dispatcher] = {}  # per GPU name
_dispatch_lock = threading.Lock()


def _dispatch_file(gpu: str) -> Path:
    """The dispatch cache of a GPU name and this torch version."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{gpu}_torch{torch.__version__}")
    return cache_root() / "gpu-dispatch" / f"{name}.json"


def dispatcher(device: torch.device | int | str | None = None) -> Dispatcher:
    """The dispatcher of ``device``'s GPU (default: the current one): CUDA-event timing, outputs checked
    against the PyTorch implementation, no timing while a CUDA graph is captured, choices cached in
    ``_dispatch_file``. One per GPU name, shared by GPUs of that name."""
    gpu = torch.cuda.get_device_name(device)
    with _dispatch_lock:
        if gpu not in _dispatchers:
            tag = {"gpu": gpu, "torch": torch.__version__, "cuda": str(torch.version.cuda), "kernels": _source_hash()}
            _dispatchers[gpu] = Dispatcher(
                _dispatch_file(gpu),
                timer=cuda_event_timer,
                check=outputs_agree,
                can_measure=lambda: not torch.cuda.is_current_stream_capturing(),
                tag=tag,
            )
        return _dispatchers[gpu]


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _launch(device: torch.device, call: Callable[[int], T]) -> T:
    """``call(stream)`` with ``device`` current and its current stream (as an integer, for the binding)."""
    with torch.cuda.device(device):
        return call(_stream(device))


def _cuda_device(*tensors) -> torch.device | None:
    """The device of the first CUDA tensor (None if there is none: then load() takes the current GPU)."""
    return next((t.device for t in tensors if t is not None and t.device.type == "cuda"), None)


def block_kernels(ext: ModuleType, stream: int) -> cuda_cublas.BlockKernels:
    """The cuBLAS path's small kernels from the extension (kernels/scatter.cu, column_sum.cu), on ``stream``."""

    def ints(p: RowPattern) -> tuple[int, int, int]:
        return p.dp, p.offset, p.keep

    return cuda_cublas.BlockKernels(
        scatter=lambda block, shape, out, inp: ext.scatter_block(block, *shape, *ints(out), *ints(inp), stream),
        scatter_add=lambda full, block, out, inp: ext.scatter_block_add_(full, block, *ints(out), *ints(inp), stream),
        column_sum=lambda g, n, p: ext.column_sum(g, n, *ints(p), stream),
    )


def _launch_cublas(device, path: Callable[[cuda_cublas.BlockKernels], T], ext: ModuleType) -> T:
    """The cuBLAS candidate: ``path(block_kernels)`` with ``device`` current and its current stream."""
    return _launch(device, lambda stream: path(block_kernels(ext, stream)))


def _launch_pattern(device, kernel: Callable[[ModuleType, int], T], ext: ModuleType) -> T:
    """The pattern-GEMM candidate: ``kernel(extension, stream)`` with ``device`` current."""
    return _launch(device, functools.partial(kernel, ext))


def _run(
    device,
    key: str,
    torch_path: Callable[[], T],
    cublas: Callable[[cuda_cublas.BlockKernels], T] | None,
    kernel: Callable[[ModuleType, int], T],
) -> T:
    """The op on CUDA tensors, by the mode: the PyTorch implementation (``torch_path()``), the cuBLAS path
    (``cublas(block_kernels)``; None for an op without one) or the pattern-GEMM kernel (``kernel(extension,
    stream)``), ``auto`` choosing by measurement (``dispatcher``)."""
    mode = kernel_mode()
    if mode == "0":
        return torch_path()
    ext = load(device=device) if mode in KERNEL_MODES else None
    if ext is None and mode in KERNEL_MODES:
        return torch_path()  # load() said why
    candidates = {REFERENCE: torch_path}
    if ext is not None:
        if cublas is not None:
            candidates[CUBLAS] = functools.partial(_launch_cublas, device, cublas, ext)
        candidates[PATTERN] = functools.partial(_launch_pattern, device, kernel, ext)
    return dispatcher(device).run(key, candidates, mode)


def _dtype(t: torch.Tensor) -> str:
    """The dtype in a dispatch key; float32 with TF32 matmuls allowed is its own (cuBLAS runs faster)."""
    name = str(t.dtype).removeprefix("torch.")
    return name + "+tf32" if t.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else name


def _side(dp: int, keep: int) -> str:
    """A row pattern's class: "all" when it keeps every unit, else keep/dp (the offset changes nothing)."""
    return "all" if keep == dp else f"{keep}/{dp}"


def _row_key(op: str, x: torch.Tensor, weight: torch.Tensor, ints, extra: str) -> str:
    in_dp, _, in_keep, out_dp, _, out_keep = ints
    return _grouped_key(op, x, math.prod(x.shape[:-1]), weight, in_dp, in_keep, out_dp, out_keep, None, extra)


def _grouped_key(
    op: str,
    like: torch.Tensor,
    rows: int,
    weight: torch.Tensor,
    in_dp,
    in_keep,
    out_dp,
    out_keep,
    groups: int | None,
    extra: str,
) -> str:
    """A row op's key (``groups`` None) or a grouped op's, which adds the group count: never the offsets, nor
    how many distinct pairs they make."""
    n_out, n_in = weight.shape
    sides = f"in {_side(in_dp, in_keep)} out {_side(out_dp, out_keep)}"
    grouped = "" if groups is None else f" G={groups}"
    return f"{op} {_dtype(like)} N={rows} W={n_out}x{n_in} {sides}{grouped} {extra}"


def _tile_key(op: str, x: torch.Tensor, weight: torch.Tensor, dp: int, keep: int, tile: int, extra: str) -> str:
    n_out, n_in = weight.shape
    rows = math.prod(x.shape[:-1])
    pattern = "all" if keep == dp else f"{keep}/{dp} T={tile}"
    return f"{op} {_dtype(x)} N={rows} W={n_out}x{n_in} tiles {pattern} {extra}"


# --------------------------------------------------------------------------- CUDA implementations
# Each validates the pattern and shapes like the PyTorch path (same ValueErrors), then runs the path
# the mode and the dispatcher choose: the PyTorch implementation, or the extension built for the
# architecture of the tensors' GPU, on that device and its current stream.


def _row_linear_cuda(x, weight, bias, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep):
    ints = (in_dp, in_offset, in_keep, out_dp, out_offset, out_keep)
    in_p, out_p = _row_patterns(ints)
    check_weight("row_linear", weight)
    check_linear_args("row_linear", x, weight, bias, periodic_count(weight.shape[1], in_dp, in_offset, in_keep))
    key = _row_key("row_linear", x, weight, ints, _bias(bias))
    return _run(
        _cuda_device(x, weight, bias),
        key,
        functools.partial(row_linear_torch, x, weight, bias, *ints),
        lambda _: cuda_cublas.forward(x, weight, bias, in_p, out_p)[0],
        lambda ext, stream: ext.row_linear(x, weight, bias, *ints, stream),
    )


def _row_linear_backward_cuda(
    grad_y, x, weight, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep, need_grad_x=True
):
    ints = (in_dp, in_offset, in_keep, out_dp, out_offset, out_keep)
    in_p, out_p = _row_patterns(ints)
    check_weight("row_linear_backward", weight)
    n_out, n_in = weight.shape
    k_in, k_out = periodic_count(n_in, in_dp, in_offset, in_keep), periodic_count(n_out, out_dp, out_offset, out_keep)
    check_backward_args("row_linear_backward", grad_y, x, weight, k_in, k_out)
    key = _row_key("row_linear_backward", x, weight, ints, _grad_x(need_grad_x))
    return _run(
        _cuda_device(grad_y, x, weight),
        key,
        functools.partial(row_linear_backward_torch, grad_y, x, weight, *ints, need_grad_x),
        lambda small: cuda_cublas.backward(grad_y, x, weight, None, in_p, out_p, need_grad_x, small),
        lambda ext, stream: tuple(ext.row_linear_backward(grad_y, x, weight, *ints, need_grad_x, stream)),
    )


def _row_linear_gathered_cuda(x, weight, bias, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep):
    ints = (in_dp, in_offset, in_keep, out_dp, out_offset, out_keep)
    in_p, out_p = _row_patterns(ints)
    check_weight("row_linear_gathered", weight)
    check_linear_args(
        "row_linear_gathered", x, weight, bias, periodic_count(weight.shape[1], in_dp, in_offset, in_keep)
    )
    key = _row_key("row_linear_gathered", x, weight, ints, _bias(bias))

    def kernel(ext, stream):  # the kernel reads W in place; the op still returns the block backward reuses
        block = (
            weight.new_empty(0) if cuda_cublas.kept_everything(in_p) else cuda_cublas.gather_block(weight, out_p, in_p)
        )
        return ext.row_linear(x, weight, bias, *ints, stream), block

    return _run(
        _cuda_device(x, weight, bias),
        key,
        functools.partial(row_linear_gathered_torch, x, weight, bias, *ints),
        lambda _: cuda_cublas.forward(x, weight, bias, in_p, out_p),
        kernel,
    )


def _row_linear_gathered_backward_cuda(
    grad_y, x, weight, block, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep, need_grad_x=True
):
    ints = (in_dp, in_offset, in_keep, out_dp, out_offset, out_keep)
    in_p, out_p = _row_patterns(ints)
    check_weight("row_linear_gathered_backward", weight)
    n_out, n_in = weight.shape
    k_in, k_out = periodic_count(n_in, in_dp, in_offset, in_keep), periodic_count(n_out, out_dp, out_offset, out_keep)
    check_backward_args("row_linear_gathered_backward", grad_y, x, weight, k_in, k_out)
    saved = block if check_gathered_block(block, in_dp, in_keep, k_out, k_in) else None
    key = _row_key("row_linear_gathered_backward", x, weight, ints, _grad_x(need_grad_x))
    return _run(
        _cuda_device(grad_y, x, weight),
        key,
        functools.partial(row_linear_gathered_backward_torch, grad_y, x, weight, block, *ints, need_grad_x),
        lambda small: cuda_cublas.backward(grad_y, x, weight, saved, in_p, out_p, need_grad_x, small),
        lambda ext, stream: tuple(ext.row_linear_backward(grad_y, x, weight, *ints, need_grad_x, stream)),
    )


def _tile_linear_cuda(x, weight, bias, dp, offset, keep, tile):
    _check_tile_ints(dp, offset, keep, tile)
    check_weight("tile_linear", weight)
    check_linear_args("tile_linear", x, weight, bias, weight.shape[1])
    key = _tile_key("tile_linear", x, weight, dp, keep, tile, _bias(bias))
    return _run(
        _cuda_device(x, weight, bias),
        key,
        functools.partial(tile_linear_torch, x, weight, bias, dp, offset, keep, tile),
        None,
        lambda ext, stream: ext.tile_linear(x, weight, bias, dp, offset, keep, tile, stream),
    )


def _tile_linear_backward_cuda(grad_y, x, weight, dp, offset, keep, tile, need_grad_x=True):
    _check_tile_ints(dp, offset, keep, tile)
    check_weight("tile_linear_backward", weight)
    check_backward_args("tile_linear_backward", grad_y, x, weight, weight.shape[1], weight.shape[0])
    key = _tile_key("tile_linear_backward", x, weight, dp, keep, tile, _grad_x(need_grad_x))
    return _run(
        _cuda_device(grad_y, x, weight),
        key,
        functools.partial(tile_linear_backward_torch, grad_y, x, weight, dp, offset, keep, tile, need_grad_x),
        None,
        lambda ext, stream: tuple(
            ext.tile_linear_backward(grad_y, x, weight, dp, offset, keep, tile, need_grad_x, stream)
        ),
    )


def _kernel_pairs(ext: ModuleType, stream: int) -> cuda_grouped.PairPath:
    """The grouped ops' pairs on the pattern-GEMM kernel (the extension's row ops, on ``stream``)."""
    return cuda_grouped.kernel_path(
        lambda *args: ext.row_linear(*args, stream), lambda *args: tuple(ext.row_linear_backward(*args, stream))
    )


def _bias(bias) -> str:
    return "bias" if bias is not None else "no bias"


def _grad_x(need_grad_x: bool) -> str:
    return f"grad_x {'yes' if need_grad_x else 'no'}"


def _grouped_row_linear_cuda(x, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets):
    args = (in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    check_grouped(x, weight, bias, *args)
    rows, groups = math.prod(x.shape[:-1]), len(in_offsets)
    key = _grouped_key("grouped_row_linear", x, rows, weight, in_dp, in_keep, out_dp, out_keep, groups, _bias(bias))
    return _run(
        _cuda_device(x, weight, bias),
        key,
        functools.partial(grouped_row_linear_torch, x, weight, bias, *args),
        lambda small: cuda_grouped.full_forward(cuda_grouped.cublas_path(small), x, weight, bias, *args),
        lambda ext, stream: cuda_grouped.full_forward(_kernel_pairs(ext, stream), x, weight, bias, *args),
    )


def _grouped_row_linear_backward_cuda(
    grad_y, x, weight, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets, need_grad_x=True
):
    args = (in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    check_weight("grouped_row_linear_backward", weight)
    check_backward_args("grouped_row_linear_backward", grad_y, x, weight, weight.shape[1], weight.shape[0])
    rows, groups = math.prod(x.shape[:-1]), len(in_offsets)
    key = _grouped_key(
        "grouped_row_linear_backward", x, rows, weight, in_dp, in_keep, out_dp, out_keep, groups, _grad_x(need_grad_x)
    )
    return _run(
        _cuda_device(grad_y, x, weight),
        key,
        functools.partial(grouped_row_linear_backward_torch, grad_y, x, weight, *args, need_grad_x),
        lambda small: cuda_grouped.full_backward(
            cuda_grouped.cublas_path(small), grad_y, x, weight, *args, need_grad_x
        ),
        lambda ext, stream: cuda_grouped.full_backward(
            _kernel_pairs(ext, stream), grad_y, x, weight, *args, need_grad_x
        ),
    )


def _compact_rows(xs) -> int:
    return sum(math.prod(x.shape[:-1]) for x in xs)


def _grouped_compact_cuda(xs, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets):
    args = (in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    check_compact(xs, weight, bias, *args)
    key = _grouped_key(
        "grouped_row_linear_compact", weight, _compact_rows(xs), weight, in_dp, in_keep, out_dp, out_keep, len(xs),
        _bias(bias),
    )  # fmt: skip
    return _run(
        _cuda_device(*xs, weight, bias),
        key,
        functools.partial(grouped_row_linear_compact_torch, xs, weight, bias, *args),
        lambda small: cuda_grouped.compact_forward(cuda_grouped.cublas_path(small), xs, weight, bias, *args),
        lambda ext, stream: cuda_grouped.compact_forward(_kernel_pairs(ext, stream), xs, weight, bias, *args),
    )


def _grouped_compact_backward_cuda(
    grads, xs, weight, blocks, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets, need_grad_x=True
):
    args = (in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    check_compact_backward(grads, xs, weight, blocks, *args)
    key = _grouped_key(
        "grouped_row_linear_compact_backward", weight, _compact_rows(xs), weight, in_dp, in_keep, out_dp, out_keep,
        len(xs), _grad_x(need_grad_x),
    )  # fmt: skip
    blocks = list(blocks)

    def run(path):
        return cuda_grouped.compact_backward(path, grads, xs, weight, blocks, *args, need_grad_x)

    return _run(
        _cuda_device(*grads, *xs, weight),
        key,
        functools.partial(grouped_row_linear_compact_backward_torch, grads, xs, weight, blocks, *args, need_grad_x),
        lambda small: run(cuda_grouped.cublas_path(small)),
        lambda ext, stream: run(_kernel_pairs(ext, stream)),
    )


def _row_patterns(ints) -> tuple[RowPattern, RowPattern]:
    """The (in, out) RowPatterns of (in_dp, in_offset, in_keep, out_dp, out_offset, out_keep); ValueError on
    bad integers, as on CPU."""
    return RowPattern(*ints[:3]), RowPattern(*ints[3:])


def _check_tile_ints(dp: int, offset: int, keep: int, tile: int) -> None:
    """ValueError on bad tile-pattern integers, as on CPU, and on a period ``dp * tile`` past int32 (the
    kernels' element patterns have period ``dp * tile``)."""
    TilePattern(dp, offset, tile, keep)
    if dp * tile > INT32_MAX:
        raise ValueError(
            f"the CUDA kernels need dp * tile <= 2**31 - 1, got tile={tile} with dp={dp} (dp * tile = {dp * tile})"
        )


row_linear.register_kernel("cuda")(_row_linear_cuda)
row_linear_backward.register_kernel("cuda")(_row_linear_backward_cuda)
row_linear_gathered.register_kernel("cuda")(_row_linear_gathered_cuda)
row_linear_gathered_backward.register_kernel("cuda")(_row_linear_gathered_backward_cuda)
grouped_row_linear.register_kernel("cuda")(_grouped_row_linear_cuda)
grouped_row_linear_backward.register_kernel("cuda")(_grouped_row_linear_backward_cuda)
grouped_row_linear_compact.register_kernel("cuda")(_grouped_compact_cuda)
grouped_row_linear_compact_backward.register_kernel("cuda")(_grouped_compact_backward_cuda)
tile_linear.register_kernel("cuda")(_tile_linear_cuda)
tile_linear_backward.register_kernel("cuda")(_tile_linear_backward_cuda)
