"""The eager training path of the pattern linears: ``torch.autograd.Function``s around the same PyTorch
implementations that the registered ``approxdrop::`` ops run on a CPU.

A registered custom op pays for torch.library's Python machinery at every call (schema defaults,
redispatch through autograd, autocast and the backend, its own backward op): about 0.25 ms of host
time per layer and step, more than a tiny layer's GEMMs. Where nothing needs the registered op (no
torch.compile or export tracing, no autocast region, no CUDA kernels to dispatch to), the models call
these Functions instead: same forward and backward code, the same numbers bit for bit, no per-call
validation (the models check their patterns and shapes when they are built and at the forward's
entry). ``use_eager(x)`` says which path a call takes.
"""

from __future__ import annotations

import torch

from .._env import holds_values
from . import cuda, grouped, row, tile


def use_eager(x: torch.Tensor) -> bool:
    """Whether a call on ``x`` may skip the registered op: not while torch.compile or export traces, not in
    an autocast region (the op's autocast rule casts), and on CUDA only when the kernels are off
    (``APPROXDROP_KERNELS=torch`` or ``0``), since the registered op's CUDA kernel dispatches between paths."""
    if torch.compiler.is_compiling() or not holds_values(x):  # fake and meta: the op's fake kernel
        return False
    if x.is_cuda:
        return not torch.is_autocast_enabled("cuda") and not cuda.enabled()
    return not torch.is_autocast_enabled(x.device.type)


class RowLinear(torch.autograd.Function):
    """``approxdrop::row_linear``'s forward and backward: (weight, bias, ints, *xs) -> ys, with xs[g]
    (Tensor[*, k_in(g)]) and ys[g] (Tensor[*, k_out(g)]) the compact activations of group g; ints: the op's
    ``(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)``."""

    @staticmethod
    def forward(ctx, weight, bias, ints: tuple, *xs):
        stacks: list[torch.Tensor] = []  # each pair's input rows, stacked once: backward reads them
        ys, blocks = grouped.run_forward(list(xs), weight, bias, *ints, separate=False, stacks=stacks)
        ctx.save_for_backward(weight, *xs, *blocks, *stacks)
        ctx.ints, ctx.groups, ctx.blocks, ctx.has_bias = ints, len(xs), len(blocks), bias is not None
        return tuple(ys)

    @staticmethod
    def backward(ctx, *grads):
        weight, *rest = ctx.saved_tensors
        xs, rest = rest[: ctx.groups], rest[ctx.groups :]
        blocks, stacks = rest[: ctx.blocks], rest[ctx.blocks :]
        need_x = any(ctx.needs_input_grad[3:])
        if torch.is_grad_enabled():  # create_graph=True: a backward that is differentiable itself
            grad_xs, grad_w, grad_b = row.reference_backward(list(grads), xs, weight, ctx.has_bias, *ctx.ints)
        else:
            grad_xs, grad_w, grad_b = grouped.run_backward(
                list(grads), xs, weight, blocks, *ctx.ints, need_x, False, stacks=stacks
            )
        need = ctx.needs_input_grad
        grad_xs = grad_xs if need_x else [None] * ctx.groups
        return (grad_w if need[0] else None, grad_b if need[1] and ctx.has_bias else None, None, *grad_xs)


class TileLinear(torch.autograd.Function):
    """``approxdrop::tile_linear``'s forward and backward: x (Tensor[*, B, n_in]) -> Tensor[*, B, n_out];
    ints: the op's ``(dp, keep, tile, offsets)``."""

    @staticmethod
    def forward(ctx, x, weight, bias, ints: tuple):
        ctx.save_for_backward(x, weight)
        ctx.ints, ctx.has_bias = ints, bias is not None
        return tile.run_forward(x, weight, bias, *ints)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: a backward that is differentiable itself
            grad_x, grad_w, grad_b = tile.reference_backward(grad_y, x, weight, ctx.has_bias, *ctx.ints)
        else:
            grad_x, grad_w, grad_b = tile.run_backward(grad_y, x, weight, *ctx.ints, need[0])
        return grad_x if need[0] else None, grad_w if need[1] else None, grad_b if need[2] else None, None
