"""The CUDA implementations of the ``approxdrop::`` ops: one list of candidates per op, run by the GPU
dispatch.

Importing this module compiles nothing and touches no GPU: it only registers the CUDA implementations.
Each validates its operands like the PyTorch path (same ValueErrors), then hands the op's candidates
(``approxdrop.ops.candidates``) to the dispatcher of the tensors' GPU: the PyTorch implementation
(``torch``, the reference), the cuBLAS path (``cublas``, ``approxdrop.ops.cuda_cublas``: cuBLAS GEMMs plus
the extension's scatter and column-sum kernels; the row op) and the pattern-GEMM kernel (``pattern``). The
row op runs one (out, in) offset pair at a time on the chosen path (``approxdrop.ops.cuda_grouped``), the
tile op one distinct offset at a time. Which runs is chosen by measurement (``approxdrop.ops.dispatch``), or
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

from ..patterns import RowPattern
from . import cuda_cublas, cuda_grouped, grouped, tile
from .candidates import Candidate
from .common import check_linear_args
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
from .grouped import PairPath
from .row import (
    check_backward,
    check_forward,
    row_linear,
    row_linear_backward,
    row_linear_backward_torch,
    row_linear_torch,
)
from .tile import (
    check_tile,
    check_tile_backward,
    tile_linear,
    tile_linear_backward,
    tile_linear_backward_torch,
    tile_linear_torch,
)

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


def pattern(kernel: Callable, limits: Callable[[tuple], list[str]]) -> Candidate:
    """The pattern-GEMM kernel, ``kernel(extension, stream, *inputs)``, on the device's current stream, for the
    calls whose inputs are within its ``limits`` (the reasons it cannot run them)."""
    return Candidate(
        PATTERN,
        lambda call: _launch(call.device, lambda s: kernel(call.ext, s, *call.inputs)),
        lambda call: _built(call) + limits(call.inputs),
    )


KERNEL_MAX_WIDTH = 65535 * 64  # a GEMM's N axis (a weight side) spans at most 65535 grid blocks of 64 columns
KERNEL_MAX_DP = 2**30  # offset + keep, below 2 dp, stays an int32 (kernels/pattern_index.h)
KERNEL_MAX_TILE_CLASSES = 65535  # a tile pattern's dp classes are one grid axis (kernels/binding.cpp)


def _kernel_limits(weight: torch.Tensor, dps: tuple[int, ...], tile_: int | None = None) -> list[str]:
    """Why the pattern kernel cannot run a call with ``weight`` and the patterns' periods ``dps`` (a tile
    pattern's, with ``tile_``): what its launcher refuses, so the dispatch never hands it such a call."""
    reasons = []
    if max(weight.shape) > KERNEL_MAX_WIDTH:
        reasons.append(f"a weight side above {KERNEL_MAX_WIDTH} (W is {tuple(weight.shape)})")
    periods = dps if tile_ is None else (dps[0] * tile_,)
    if max(periods) > KERNEL_MAX_DP:
        reasons.append(f"a period above 2**30 (dp{' * tile' if tile_ else ''} {max(periods)})")
    if tile_ is not None and dps[0] > KERNEL_MAX_TILE_CLASSES:
        reasons.append(f"a tile dp above {KERNEL_MAX_TILE_CLASSES} (dp {dps[0]})")
    return reasons


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


def _row_key(op: str, xs, weight: torch.Tensor, in_dp, in_keep, out_dp, out_keep, extra: str) -> str:
    """A row op's key: shapes, dtype, the sides' classes and the group count, never the offsets, nor how many
    distinct pairs they make."""
    n_out, n_in = weight.shape
    rows = sum(math.prod(x.shape[:-1]) for x in xs)
    sides = f"in {_side(in_dp, in_keep)} out {_side(out_dp, out_keep)}"
    return f"{op} {_dtype(weight)} N={rows} W={n_out}x{n_in} {sides} G={len(xs)} {extra}"


def _tile_key(op: str, x: torch.Tensor, weight: torch.Tensor, dp, keep, tile, offsets, extra: str) -> str:
    n_out, n_in = weight.shape
    rows = math.prod(x.shape[:-1])
    pattern = "all" if keep == dp else f"{keep}/{dp} T={tile}"
    return f"{op} {_dtype(x)} N={rows} W={n_out}x{n_in} tiles {pattern} G={len(offsets)} {extra}"


# --------------------------------------------------------------------------- the candidates of each op


def _kernel_pairs(ext: ModuleType, stream: int) -> PairPath:
    """The row op's pairs on the pattern-GEMM kernel (the extension's one-pair row ops, on ``stream``)."""
    return cuda_grouped.kernel_path(
        lambda *args: ext.row_linear(*args, stream), lambda *args: tuple(ext.row_linear_backward(*args, stream))
    )


def _pairs(torch_impl: Callable, executor: Callable, at: int) -> list[Candidate]:
    """The row op's candidates: its PyTorch implementation, then the per-pair executor (``run_*`` of
    ``approxdrop.ops.grouped``, on checked operands) with the cuBLAS pairs, then with the kernel's. ``at``: where
    the weight is in the inputs; the two sides' dp are 2 and 5 places after it."""
    return [
        reference(torch_impl),
        cublas(lambda k, *inputs: executor(*inputs, path=cuda_grouped.cublas_path(k))),
        pattern(
            lambda ext, s, *inputs: executor(*inputs, path=_kernel_pairs(ext, s)),
            lambda inputs: _kernel_limits(inputs[at], (inputs[at + 2], inputs[at + 5])),
        ),
    ]


def _tile_kernel(ext, stream, x, weight, bias, dp, keep, tile_, offsets):
    """The tile executor with the kernel's one-pattern op."""
    return tile.run_forward(x, weight, bias, dp, keep, tile_, offsets, lambda *args: ext.tile_linear(*args, stream))


def _tile_backward_kernel(ext, stream, grad_y, x, weight, dp, keep, tile_, offsets, need_grad_x):
    one = lambda *args: tuple(ext.tile_linear_backward(*args, stream))  # noqa: E731
    return tile.run_backward(grad_y, x, weight, dp, keep, tile_, offsets, need_grad_x, one)


ROW_LINEAR = _pairs(row_linear_torch, grouped.run_forward, 1)  # (xs, weight, bias, in_dp, .., out_dp, ..)
ROW_LINEAR_BACKWARD = _pairs(row_linear_backward_torch, grouped.run_backward, 2)  # (grads, xs, weight, blocks, ..)
TILE_LINEAR = [  # (x, weight, bias, dp, keep, tile, offsets)
    reference(tile_linear_torch),
    pattern(_tile_kernel, lambda inputs: _kernel_limits(inputs[1], (inputs[3],), inputs[5])),
]
TILE_LINEAR_BACKWARD = [  # (grad_y, x, weight, dp, keep, tile, offsets, need_grad_x)
    reference(tile_linear_backward_torch),
    pattern(_tile_backward_kernel, lambda inputs: _kernel_limits(inputs[2], (inputs[3],), inputs[5])),
]


# --------------------------------------------------------------------------- CUDA implementations
# Each validates the pattern and shapes like the PyTorch path (same ValueErrors), then runs its candidates.


def _bias(bias) -> str:
    return "bias" if bias is not None else "no bias"


def _grad_x(need_grad_x: bool) -> str:
    return f"grad_x {'yes' if need_grad_x else 'no'}"


def _row_linear_cuda(xs, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets):
    args = (in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    check_forward("row_linear", xs, weight, bias, *args)
    key = _row_key("row_linear", xs, weight, in_dp, in_keep, out_dp, out_keep, _bias(bias))
    return _run(_cuda_device(*xs, weight, bias), key, ROW_LINEAR, (xs, weight, bias, *args))


def _row_linear_backward_cuda(
    grads, xs, weight, blocks, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets, need_grad_x=True
):
    args = (in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    check_backward("row_linear_backward", grads, xs, weight, blocks, *args)
    key = _row_key("row_linear_backward", xs, weight, in_dp, in_keep, out_dp, out_keep, _grad_x(need_grad_x))
    inputs = (grads, xs, weight, list(blocks), *args, need_grad_x)
    return _run(_cuda_device(*grads, *xs, weight), key, ROW_LINEAR_BACKWARD, inputs)


def _tile_linear_cuda(x, weight, bias, dp, keep, tile_, offsets):
    check_tile("tile_linear", x, weight, dp, keep, tile_, offsets)
    _check_tile_period(dp, tile_)
    check_linear_args("tile_linear", x, weight, bias, weight.shape[1])
    key = _tile_key("tile_linear", x, weight, dp, keep, tile_, offsets, _bias(bias))
    return _run(_cuda_device(x, weight, bias), key, TILE_LINEAR, (x, weight, bias, dp, keep, tile_, offsets))


def _tile_linear_backward_cuda(grad_y, x, weight, dp, keep, tile_, offsets, need_grad_x=True):
    check_tile_backward(grad_y, x, weight, dp, keep, tile_, offsets)
    _check_tile_period(dp, tile_)
    key = _tile_key("tile_linear_backward", x, weight, dp, keep, tile_, offsets, _grad_x(need_grad_x))
    inputs = (grad_y, x, weight, dp, keep, tile_, offsets, need_grad_x)
    return _run(_cuda_device(grad_y, x, weight), key, TILE_LINEAR_BACKWARD, inputs)


def _check_tile_period(dp: int, tile_: int) -> None:
    """ValueError on a period ``dp * tile`` past int32 (the kernels' element patterns have period ``dp * tile``)."""
    if dp * tile_ > INT32_MAX:
        raise ValueError(
            f"the CUDA kernels need dp * tile <= 2**31 - 1, got tile={tile_} with dp={dp} (dp * tile = {dp * tile_})"
        )


row_linear.register_kernel("cuda")(_row_linear_cuda)
row_linear_backward.register_kernel("cuda")(_row_linear_backward_cuda)
tile_linear.register_kernel("cuda")(_tile_linear_cuda)
tile_linear_backward.register_kernel("cuda")(_tile_linear_backward_cuda)
