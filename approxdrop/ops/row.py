"""``approxdrop::row_linear`` and its backward op: row patterns with one offset per group (see
``approxdrop.ops``; one group is the paper's method). The per-pair executor is ``ops.grouped``.

Where BLAS needs a kept block ``W[kept_out][:, kept_in]`` gathered (some inputs dropped: on a CPU, and on
the cuBLAS path of a GPU), forward gathers it once per offset pair and returns it, autograd saves it, and
backward reuses it; when every input is kept the GEMMs read W's kept rows in place and no block is returned.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..patterns import RowPattern, periodic_count
from .common import (
    bias_stand_in,
    check_backward_args,
    check_linear_args,
    check_operands,
    check_pattern_ints,
    check_weight,
    concrete,
    custom_op,
    reference_grads,
    register_autocast,
)
from .grouped import pair_keys, run_backward, run_forward


def row_linear_reference(
    xs: torch.Tensor | Sequence[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_patterns: RowPattern | Sequence[RowPattern],
    out_patterns: RowPattern | Sequence[RowPattern],
) -> torch.Tensor | list[torch.Tensor]:
    """Slow, obviously-correct twin of ``row_linear``: per group, a dense masked GEMM on full-size tensors,
    then compaction. One group: x (Tensor[*, k_in]) and one pattern per side -> Tensor[*, k_out]; else lists,
    one x and one pattern per side per group -> a list."""
    if isinstance(xs, torch.Tensor):
        return row_linear_reference([xs], weight, bias, [in_patterns], [out_patterns])[0]
    n_out, n_in = weight.shape
    ys = []
    for x, pin, pout in zip(xs, in_patterns, out_patterns):
        full_x = x.new_zeros(*x.shape[:-1], n_in)
        full_x[..., pin.keep_mask(n_in, x.device)] = x
        y = torch.nn.functional.linear(full_x * pin.scale, weight, bias)
        ys.append(y[..., pout.keep_mask(n_out, y.device)])
    return ys


def reference_backward(
    grads: list[torch.Tensor], xs: Sequence[torch.Tensor], weight: torch.Tensor, has_bias: bool, *ints
) -> tuple[list[torch.Tensor | None], torch.Tensor | None, torch.Tensor | None]:
    """(grad_xs, grad_w, grad_b) of ``row_linear`` from ``row_linear_reference`` with create_graph=True
    (``common.reference_grads``), ints: the op's ``(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)``.
    The backward under create_graph, differentiable itself: the fast one reads the forward's gathered blocks,
    which have no graph back to W, so second derivatives through it would miss terms."""
    in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets = ints
    ins = [RowPattern(in_dp, o, in_keep) for o in in_offsets]
    outs = [RowPattern(out_dp, o, out_keep) for o in out_offsets]

    def reference(w, b, *xs):
        return row_linear_reference(list(xs), w, b, ins, outs)

    grad_w, grad_b, *grad_xs = reference_grads(reference, [weight, bias_stand_in(weight, has_bias), *xs], grads)
    return grad_xs, grad_w, grad_b


def check_offsets(name: str, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets) -> None:
    """ValueError unless there is one in and one out offset per group, each a valid pattern."""
    if len(in_offsets) != len(out_offsets) or not in_offsets:
        raise ValueError(
            f"{name}: need one in and one out offset per group, got {len(in_offsets)} and {len(out_offsets)}"
        )
    if not concrete(in_dp, in_keep, out_dp, out_keep, *in_offsets, *out_offsets):
        return
    for side, dp, keep, offsets in (("in", in_dp, in_keep, in_offsets), ("out", out_dp, out_keep, out_offsets)):
        check_pattern_ints(name, dp, keep, offsets, f"{side}_")


def check_forward(name, xs, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets) -> None:
    """The row op's operands: one compact x per group, xs[g] (Tensor[*, k_in(g)])."""
    check_weight(name, weight)
    check_offsets(name, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    if len(xs) != len(in_offsets):
        raise ValueError(f"{name}: need one x per group ({len(in_offsets)}), got {len(xs)}")
    if len(xs) > 1:
        check_operands(name, weight=weight, bias=bias, **{f"xs[{g}]": x for g, x in enumerate(xs)})
    for g, (x, o) in enumerate(zip(xs, in_offsets)):
        where = name if len(xs) == 1 else f"{name} (xs[{g}])"
        check_linear_args(where, x, weight, bias, periodic_count(weight.shape[1], in_dp, o, in_keep))


def check_backward(name, grads, xs, weight, blocks, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets):
    """The row backward op's operands: forward's shapes, and no blocks or one per (out, in) offset pair."""
    check_weight(name, weight)
    check_offsets(name, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    if not len(grads) == len(xs) == len(in_offsets):
        raise ValueError(f"{name}: need one grad and one x per group ({len(in_offsets)}), got {len(grads)}, {len(xs)}")
    n_out, n_in = weight.shape
    for g, (grad, x) in enumerate(zip(grads, xs)):
        k_in = periodic_count(n_in, in_dp, in_offsets[g], in_keep)
        k_out = periodic_count(n_out, out_dp, out_offsets[g], out_keep)
        check_backward_args(name if len(xs) == 1 else f"{name} (group {g})", grad, x, weight, k_in, k_out)
    if not blocks:
        return
    pairs = pair_keys(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    if len(blocks) != len(pairs) or in_keep == in_dp:
        want = len(pairs) if in_keep != in_dp else 0
        raise ValueError(f"{name}: need no blocks or one per (out, in) offset pair ({want}), got {len(blocks)}")
    for block, (o_out, o_in) in zip(blocks, pairs):
        shape = (periodic_count(n_out, out_dp, o_out, out_keep), periodic_count(n_in, in_dp, o_in, in_keep))
        if tuple(block.shape) != shape:
            raise ValueError(
                f"{name}: block must have shape {shape} (what row_linear returned), got {tuple(block.shape)}"
            )


def row_linear_torch(
    xs: list[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The PyTorch implementation of ``approxdrop::row_linear``: the CPU path, the fallback on a GPU without
    kernels, and the oracle the CUDA paths are tested against."""
    args = (in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    check_forward("row_linear", xs, weight, bias, *args)
    return run_forward(xs, weight, bias, *args)


@custom_op("approxdrop::row_linear")
def row_linear(
    xs: list[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Row patterns with one (in, out) offset per group on compact activations (see ``approxdrop.ops``):
    ``(ys, blocks)``; blocks (the gathered kept weight blocks, one per offset pair when inputs are dropped,
    not differentiable) are for backward."""
    return row_linear_torch(xs, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)


@row_linear.register_fake
def _(xs, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets):
    # also the Meta kernel: a CPU x with meta weights lands here, so check like the real op
    check_forward("row_linear", xs, weight, bias, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    n_out, n_in = weight.shape
    ys = [x.new_empty(*x.shape[:-1], periodic_count(n_out, out_dp, o, out_keep)) for x, o in zip(xs, out_offsets)]
    pairs = pair_keys(in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets) if in_keep != in_dp else []
    blocks = [  # SymInt-safe counts
        weight.new_empty(periodic_count(n_out, out_dp, o_out, out_keep), periodic_count(n_in, in_dp, o_in, in_keep))
        for o_out, o_in in pairs
    ]
    return ys, blocks


def row_linear_backward_torch(
    grads: list[torch.Tensor],
    xs: list[torch.Tensor],
    weight: torch.Tensor,
    blocks: list[torch.Tensor],
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
    need_grad_x: bool = True,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The PyTorch implementation of ``approxdrop::row_linear_backward``: per pair, the groups' grad_x from the
    forward's kept weight block; per out offset, the weight gradient rows of its groups in one GEMM."""
    args = (in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    check_backward("row_linear_backward", grads, xs, weight, blocks, *args)
    return run_backward(grads, xs, weight, blocks, *args, need_grad_x)


@custom_op("approxdrop::row_linear_backward")
def row_linear_backward(
    grads: list[torch.Tensor],
    xs: list[torch.Tensor],
    weight: torch.Tensor,
    blocks: list[torch.Tensor],
    in_dp: int,
    in_keep: int,
    in_offsets: list[int],
    out_dp: int,
    out_keep: int,
    out_offsets: list[int],
    need_grad_x: bool = True,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Gradients (xs: like xs, empty without need_grad_x; weight: [n_out, n_in]; bias: [n_out]) of
    ``row_linear``; blocks: its forward's blocks, or empty (then gathered again). Weights outside every
    group's kept block get exactly zero."""
    return row_linear_backward_torch(
        grads, xs, weight, blocks, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets, need_grad_x
    )


@row_linear_backward.register_fake
def _(grads, xs, weight, blocks, in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets, need_grad_x=True):
    args = (in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets)
    check_backward("row_linear_backward", grads, xs, weight, blocks, *args)
    grad_xs = [x.new_empty(x.shape) for x in xs] if need_grad_x else []  # real outputs are contiguous
    return grad_xs, weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])


def _setup(ctx, inputs, output) -> None:
    xs, weight, bias, *ints = inputs
    ys, blocks = output
    ctx.mark_non_differentiable(*blocks)
    ctx.set_materialize_grads(False)  # no zero gradients for the blocks
    ctx.save_for_backward(weight, *xs, *blocks)
    ctx.y_shapes = [y.shape for y in ys]
    ctx.groups, ctx.ints, ctx.has_bias = len(xs), ints, bias is not None


def _backward(ctx, grads, _block_grads):
    weight, *rest = ctx.saved_tensors
    xs, blocks = rest[: ctx.groups], rest[ctx.groups :]
    need_x = any(ctx.needs_input_grad[0])
    grads = [weight.new_zeros(shape) if g is None else g for g, shape in zip(grads, ctx.y_shapes)]  # an unused y
    if torch.is_grad_enabled():  # create_graph=True: a backward that is differentiable itself
        grad_xs, grad_w, grad_b = reference_backward(grads, xs, weight, ctx.has_bias, *ctx.ints)
    else:
        grad_xs, grad_w, grad_b = row_linear_backward(grads, xs, weight, blocks, *ctx.ints, need_x)
    grad_xs = list(grad_xs) if need_x else [None] * len(xs)  # the structure of xs
    return (grad_xs, grad_w, grad_b if ctx.has_bias else None) + (None,) * len(ctx.ints)


row_linear.register_autograd(_backward, setup_context=_setup)
register_autocast("row_linear", row_linear)
register_autocast("row_linear_backward", row_linear_backward)
