"""The CUDA implementations of the ``approxdrop::`` ops: one list of candidates per op, run by the GPU
dispatch.

Importing this module compiles nothing and touches no GPU: it only registers the CUDA implementations.
Each validates its operands like the PyTorch path (same ValueErrors), then hands the op's candidates
(``approxdrop.ops.candidates``) to the dispatcher of the tensors' GPU: the PyTorch implementation
(``torch``, the reference), the cuBLAS path (``cublas``, ``approxdrop.ops.cuda_cublas``: cuBLAS GEMMs plus
the extension's scatter and column-sum kernels; row, gathered and grouped ops) and the pattern-GEMM
kernel (``pattern``). The grouped ops run one pair of offsets at a time on the chosen path
(``approxdrop.ops.cuda_grouped``). Which runs is chosen by measurement (``approxdrop.ops.dispatch``), or
by ``APPROXDROP_KERNELS`` = ``auto`` (default) | ``cublas`` | ``pattern`` | ``torch`` | ``0`` (the
PyTorch path, silently, no build). The first call on a GPU builds the extension for its architecture
(``approxdrop.ops.cuda_build``, whose public names this module re-exports: status, load, enabled,
dispatcher, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from ..patterns import RowPattern, TilePattern, periodic_count
from . import cuda_cublas, cuda_grouped
from .candidates import Candidate
from .common import check_backward_args, check_linear_args, check_weight
from .cuda_build import (  # noqa: F401 - the public names of approxdrop.ops.cuda (ad.kernels)
    KERNEL_MODES,
    NAME,
    SOURCE_DIR,
    SOURCES,
    STAMP,
    KernelStatus,
    dispatcher,
    enabled,
    load,
    status,
)
from .dispatch import CUBLAS, ENV_SWITCH, PATTERN, REFERENCE, kernel_mode  # noqa: F401 - ENV_SWITCH: public
from .grouped import (
    PairPath,
    grouped_row_linear,
    grouped_row_linear_backward,
    grouped_row_linear_backward_torch,
    grouped_row_linear_compact,
    grouped_row_linear_compact_backward,
    grouped_row_linear_compact_backward_torch,
    grouped_row_linear_compact_torch,
    grouped_row_linear_torch,
    run_compact,
    run_compact_backward,
    run_full_width,
    run_full_width_backward,
)
from .grouped import _check as check_grouped
from .grouped import _check_compact as check_compact
from .grouped import _check_compact_backward as check_compact_backward
from .row import check_block as check_gathered_block
from .row import (
    row_linear,
    row_linear_backward,
    row_linear_backward_torch,
    row_linear_torch,
)
from .tile import tile_linear, tile_linear_backward, tile_linear_backward_torch, tile_linear_torch

INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Call:
    """One call of an op on CUDA tensors: the device (None: the current GPU), the extension built for it
    (None when not built or not wanted) and the op's own arguments, as its PyTorch implementation takes them."""

    device: torch.device | None
    ext: ModuleType | None
    inputs: tuple


def _launch(device: torch.device, call: Callable[[int], Any]) -> Any:
    """``call(stream)`` with ``device`` current and its current stream (as an integer, for the binding)."""
    with torch.cuda.device(device):
        return call(torch.cuda.current_stream(device).cuda_stream)


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


def _built(call: Call) -> list[str]:
    return [] if call.ext is not None else ["the kernels are not built"]


def reference(torch_impl: Callable) -> Candidate:
    """The PyTorch implementation, ``torch_impl(*inputs)``: the reference, first in every list."""
    return Candidate(REFERENCE, lambda call: torch_impl(*call.inputs))


def cublas(path: Callable) -> Candidate:
    """The cuBLAS path, ``path(block_kernels, *inputs)``, on the device's current stream."""
    return Candidate(
        CUBLAS, lambda call: _launch(call.device, lambda s: path(block_kernels(call.ext, s), *call.inputs)), _built
    )


def pattern(kernel: Callable) -> Candidate:
    """The pattern-GEMM kernel, ``kernel(extension, stream, *inputs)``, on the device's current stream."""
    return Candidate(PATTERN, lambda call: _launch(call.device, lambda s: kernel(call.ext, s, *call.inputs)), _built)


def _run(device, key: str, candidates: list[Candidate], inputs: tuple) -> Any:
    """The op on CUDA tensors, by the mode: the reference (``candidates[0]``) without the kernels, else the
    candidate the dispatcher of ``device``'s GPU chooses (``auto``: by measurement)."""
    mode = kernel_mode()
    ext = load(device=device) if mode in KERNEL_MODES else None
    if mode == "0" or (ext is None and mode in KERNEL_MODES):  # load() said why
        return candidates[0].run(Call(device, None, inputs))
    return dispatcher(device).run(key, candidates, Call(device, ext, inputs), mode)


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


# --------------------------------------------------------------------------- the candidates of each op


def _row_patterns(ints) -> tuple[RowPattern, RowPattern]:
    """The (in, out) RowPatterns of (in_dp, in_offset, in_keep, out_dp, out_offset, out_keep); ValueError on
    bad integers, as on CPU."""
    return RowPattern(*ints[:3]), RowPattern(*ints[3:])


def _gathered_kernel(ext, stream, x, weight, bias, *ints):
    """The kernel reads W in place; the op still returns the block backward reuses."""
    in_p, out_p = _row_patterns(ints)
    block = weight.new_empty(0) if cuda_cublas.kept_everything(in_p) else cuda_cublas.gather_block(weight, out_p, in_p)
    return ext.row_linear(x, weight, bias, *ints, stream), block


def _kernel_pairs(ext: ModuleType, stream: int) -> PairPath:
    """The grouped ops' pairs on the pattern-GEMM kernel (the extension's row ops, on ``stream``)."""
    return cuda_grouped.kernel_path(
        lambda *args: ext.row_linear(*args, stream), lambda *args: tuple(ext.row_linear_backward(*args, stream))
    )


def _row_backward_cublas(kernels, grad_y, x, weight, block, *ints_need):
    """``row_linear_backward`` on the cuBLAS path; block: what forward returned (shape (0,): nothing
    gathered, checked by the op)."""
    *ints, need_grad_x = ints_need
    saved = block if block.dim() == 2 else None
    return cuda_cublas.backward(grad_y, x, weight, saved, *_row_patterns(ints), need_grad_x, kernels)


ROW_LINEAR = [
    reference(row_linear_torch),
    cublas(lambda k, x, w, b, *ints: cuda_cublas.forward(x, w, b, *_row_patterns(ints))),
    pattern(_gathered_kernel),
]
ROW_LINEAR_BACKWARD = [  # the kernel reads W in place, not the block
    reference(row_linear_backward_torch),
    cublas(_row_backward_cublas),
    pattern(lambda ext, s, gy, x, w, block, *rest: tuple(ext.row_linear_backward(gy, x, w, *rest, s))),
]
TILE_LINEAR = [
    reference(tile_linear_torch),
    pattern(lambda ext, s, x, w, b, *ints: ext.tile_linear(x, w, b, *ints, s)),
]
TILE_LINEAR_BACKWARD = [
    reference(tile_linear_backward_torch),
    pattern(lambda ext, s, gy, x, w, *ints_need: tuple(ext.tile_linear_backward(gy, x, w, *ints_need, s))),
]


def _grouped(torch_impl: Callable, executor: Callable) -> list[Candidate]:
    """A grouped op's candidates: its PyTorch implementation, then the grouped executor (``run_*`` of
    ``approxdrop.ops.grouped``, on checked operands) with the cuBLAS pairs, then with the kernel's."""
    return [
        reference(torch_impl),
        cublas(lambda k, *inputs: executor(*inputs, path=cuda_grouped.cublas_path(k))),
        pattern(lambda ext, s, *inputs: executor(*inputs, path=_kernel_pairs(ext, s))),
    ]


GROUPED_ROW_LINEAR = _grouped(grouped_row_linear_torch, run_full_width)
GROUPED_ROW_LINEAR_BACKWARD = _grouped(grouped_row_linear_backward_torch, run_full_width_backward)
GROUPED_COMPACT = _grouped(grouped_row_linear_compact_torch, run_compact)
GROUPED_COMPACT_BACKWARD = _grouped(grouped_row_linear_compact_backward_torch, run_compact_backward)


# --------------------------------------------------------------------------- CUDA implementations
# Each validates the pattern and shapes like the PyTorch path (same ValueErrors), then runs its candidates.


def _bias(bias) -> str:
    return "bias" if bias is not None else "no bias"


def _grad_x(need_grad_x: bool) -> str:
    return f"grad_x {'yes' if need_grad_x else 'no'}"


def _row_linear_cuda(x, weight, bias, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep):
    ints = (in_dp, in_offset, in_keep, out_dp, out_offset, out_keep)
    _row_patterns(ints)
    check_weight("row_linear", weight)
    check_linear_args("row_linear", x, weight, bias, periodic_count(weight.shape[1], in_dp, in_offset, in_keep))
    key = _row_key("row_linear", x, weight, ints, _bias(bias))
    return _run(_cuda_device(x, weight, bias), key, ROW_LINEAR, (x, weight, bias, *ints))


def _row_linear_backward_cuda(
    grad_y, x, weight, block, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep, need_grad_x=True
):
    ints = (in_dp, in_offset, in_keep, out_dp, out_offset, out_keep)
    in_p, out_p = _row_patterns(ints)
    check_weight("row_linear_backward", weight)
    k_in, k_out = in_p.kept_count(weight.shape[1]), out_p.kept_count(weight.shape[0])
    check_backward_args("row_linear_backward", grad_y, x, weight, k_in, k_out)
    check_gathered_block(block, in_dp, in_keep, k_out, k_in)
    key = _row_key("row_linear_backward", x, weight, ints, _grad_x(need_grad_x))
    inputs = (grad_y, x, weight, block, *ints, need_grad_x)
    return _run(_cuda_device(grad_y, x, weight), key, ROW_LINEAR_BACKWARD, inputs)


def _tile_linear_cuda(x, weight, bias, dp, offset, keep, tile):
    _check_tile_ints(dp, offset, keep, tile)
    check_weight("tile_linear", weight)
    check_linear_args("tile_linear", x, weight, bias, weight.shape[1])
    key = _tile_key("tile_linear", x, weight, dp, keep, tile, _bias(bias))
    return _run(_cuda_device(x, weight, bias), key, TILE_LINEAR, (x, weight, bias, dp, offset, keep, tile))


def _tile_linear_backward_cuda(grad_y, x, weight, dp, offset, keep, tile, need_grad_x=True):
    _check_tile_ints(dp, offset, keep, tile)
    check_weight("tile_linear_backward", weight)
    check_backward_args("tile_linear_backward", grad_y, x, weight, weight.shape[1], weight.shape[0])
    key = _tile_key("tile_linear_backward", x, weight, dp, keep, tile, _grad_x(need_grad_x))
    inputs = (grad_y, x, weight, dp, offset, keep, tile, need_grad_x)
    return _run(_cuda_device(grad_y, x, weight), key, TILE_LINEAR_BACKWARD, inputs)


def _grouped_row_linear_cuda(x, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets):
    args = (in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    check_grouped(x, weight, bias, *args)
    rows, groups = math.prod(x.shape[:-1]), len(in_offsets)
    key = _grouped_key("grouped_row_linear", x, rows, weight, in_dp, in_keep, out_dp, out_keep, groups, _bias(bias))
    return _run(_cuda_device(x, weight, bias), key, GROUPED_ROW_LINEAR, (x, weight, bias, *args))


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
    inputs = (grad_y, x, weight, *args, need_grad_x)
    return _run(_cuda_device(grad_y, x, weight), key, GROUPED_ROW_LINEAR_BACKWARD, inputs)


def _compact_rows(xs) -> int:
    return sum(math.prod(x.shape[:-1]) for x in xs)


def _grouped_compact_cuda(xs, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets):
    args = (in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    check_compact(xs, weight, bias, *args)
    key = _grouped_key(
        "grouped_row_linear_compact", weight, _compact_rows(xs), weight, in_dp, in_keep, out_dp, out_keep, len(xs),
        _bias(bias),
    )  # fmt: skip
    return _run(_cuda_device(*xs, weight, bias), key, GROUPED_COMPACT, (xs, weight, bias, *args))


def _grouped_compact_backward_cuda(
    grads, xs, weight, blocks, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets, need_grad_x=True
):
    args = (in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    check_compact_backward(grads, xs, weight, blocks, *args)
    key = _grouped_key(
        "grouped_row_linear_compact_backward", weight, _compact_rows(xs), weight, in_dp, in_keep, out_dp, out_keep,
        len(xs), _grad_x(need_grad_x),
    )  # fmt: skip
    inputs = (grads, xs, weight, list(blocks), *args, need_grad_x)
    return _run(_cuda_device(*grads, *xs, weight), key, GROUPED_COMPACT_BACKWARD, inputs)


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
grouped_row_linear.register_kernel("cuda")(_grouped_row_linear_cuda)
grouped_row_linear_backward.register_kernel("cuda")(_grouped_row_linear_backward_cuda)
grouped_row_linear_compact.register_kernel("cuda")(_grouped_compact_cuda)
grouped_row_linear_compact_backward.register_kernel("cuda")(_grouped_compact_backward_cuda)
tile_linear.register_kernel("cuda")(_tile_linear_cuda)
tile_linear_backward.register_kernel("cuda")(_tile_linear_backward_cuda)
