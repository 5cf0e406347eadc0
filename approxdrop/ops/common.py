"""What the row and tile ops share: index selection, operand checks, and the autograd setup."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._env import check_int
from ..patterns import INT64_MAX


def take(t: torch.Tensor, dim: int, sel: slice | torch.Tensor) -> torch.Tensor:
    """``t`` restricted to ``sel`` along ``dim``: ``t`` itself for every unit, a view for a slice, a gather for
    indices."""
    if isinstance(sel, slice):
        if sel == slice(0, t.shape[dim]):
            return t
        return t[(slice(None),) * dim + (sel,)]
    return t.index_select(dim, sel)


def kept_weight(weight: torch.Tensor, rows: slice | torch.Tensor, cols: slice | torch.Tensor) -> torch.Tensor:
    """``weight[rows][:, cols]`` (Tensor[k_out, k_in]) for the GEMMs.

    Kept rows of a row-major weight are a strided view that BLAS reads in place. Kept columns
    are strided in the last dimension, which BLAS cannot read: gather them once, explicitly
    (measured 4-5x cheaper on CPU than the copy a GEMM makes of such a view by itself).
    """
    w = take(weight, 0, rows)  # [k_out, n_in] view
    if isinstance(cols, slice) and cols == slice(0, weight.shape[1]):
        return w
    return take(w, 1, cols).contiguous()  # [k_out, k_in]


def gather_block(weight: torch.Tensor, rows: slice | torch.Tensor, cols: slice | torch.Tensor) -> torch.Tensor:
    """``weight[rows][:, cols]`` as a fresh contiguous Tensor[k_out, k_in] made in one pass (a strided copy for
    slices, else one gather), never a view of ``weight``: what an op may return and backward reuses (an op's
    output may not alias its input, and a one-column slice would be a view)."""
    if isinstance(rows, slice) and isinstance(cols, slice):
        return strided_block(weight, rows, cols).clone(memory_format=torch.contiguous_format)
    if isinstance(rows, slice):
        return weight[rows].index_select(1, cols)
    return weight[rows[:, None], as_index(cols, weight.shape[1], weight.device)[None, :]]


def strided_block(t: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    """``t[rows][:, cols]`` (t: Tensor[n_r, n_c], non-negative slices) as one view op: two slices are two
    dispatched ops, and a step takes such a block of each weight and of its gradient."""
    r, c = range(t.shape[0])[rows], range(t.shape[1])[cols]
    (s_r, s_c), o = t.stride(), t.storage_offset()
    return t.as_strided((len(r), len(c)), (s_r * r.step, s_c * c.step), o + r.start * s_r + c.start * s_c)


def flat(t: torch.Tensor) -> torch.Tensor:
    """Tensor[*, k] -> Tensor[N, k] (explicit N, so k = 0 works); a 2-D t as it is."""
    return t if t.dim() == 2 else t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


def owned(t: torch.Tensor) -> torch.Tensor:
    """An op's output as a tensor autograd does not track as a view: a view of a buffer made inside the op
    (a reshape, a split) becomes the same memory through ``aten._unsafe_view``, as matmul returns its
    result, so an in-place op on the output works as on F.linear's."""
    return torch.ops.aten._unsafe_view(t, t.shape) if t._is_view() else t


def as_index(sel: slice | torch.Tensor, n: int, device: torch.device | str | None) -> torch.Tensor:
    return torch.arange(n, device=device)[sel] if isinstance(sel, slice) else sel


def put_block(full: torch.Tensor, block: torch.Tensor, rows: slice | torch.Tensor, cols: slice | torch.Tensor) -> None:
    """Write ``block`` (Tensor[k_r, k_c]) into ``full[rows][:, cols]`` in place."""
    if isinstance(rows, slice) and isinstance(cols, slice):
        strided_block(full, rows, cols).copy_(block)
        return
    r = as_index(rows, full.shape[0], full.device)
    c = as_index(cols, full.shape[1], full.device)
    full.index_put_((r[:, None], c[None, :]), block)


def scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: float,
    like: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``scale * a @ b`` (Tensor[M, N]) in one GEMM, the scale in its alpha: no pass to scale an operand or the
    product, and one dispatched op. With beta = 0 addmm does not read its input (documented: NaN and inf in
    it do not propagate), so ``like`` may be any tensor of the product's shape (else a new empty one), and
    ``out`` (a view BLAS writes in place) is written."""
    if scale == 1.0:
        return torch.mm(a, b, out=out)
    source = out if out is not None else like if like is not None else a.new_empty(a.shape[0], b.shape[1])
    return torch.addmm(source, a, b, beta=0, alpha=scale, out=out)


def block_product(
    a: torch.Tensor,
    b: torch.Tensor,
    shape: torch.Size,
    rows: slice | torch.Tensor,
    cols: slice | torch.Tensor,
    scale: float = 1.0,
    like: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tensor[n_r, n_c] (contiguous, ``shape``) holding ``scale * a @ b`` (a: Tensor[k_r, K], b: Tensor[K, k_c])
    at ``[rows][:, cols]`` and exactly zero elsewhere: a weight gradient. ``like``: as ``scaled_mm``'s.

    One zero fill of the whole tensor, then the block: where every column is kept the GEMM writes
    straight into the kept rows (a strided view BLAS writes in place), else the block is put. The one
    fill beats zeroing only the dropped rows and columns as strided views, though it writes the block's
    elements twice: a column-strided fill writes one element at a time (CPU, 2048 x 2048 at dp 3-4:
    1.4-2.6 ms against 2.5-5.0 ms, docs/design.md "Host cost"), and on a GPU it is one launch, not 2(dp - 1).
    """
    if rows == slice(0, shape[0]) and cols == slice(0, shape[1]):
        return scaled_mm(a, b, scale, like)
    full = a.new_zeros(shape)
    if isinstance(rows, slice) and cols == slice(0, shape[1]):
        scaled_mm(a, b, scale, out=full[rows])  # [k_r, n_c] view, row stride dp * n_c
    else:  # BLAS cannot write a column-strided view in place: the block, then one strided copy
        put_block(full, scaled_mm(a, b, scale, like), rows, cols)
    return full


def concrete(*values: Any) -> bool:
    """Whether every value is a Python int: under torch.compile a fake implementation may get SymInts for the
    pattern integers, which only the real op (on concrete values) checks."""
    return all(isinstance(v, int) for v in values)


def check_pattern_ints(name: str, dp: int, keep: int, offsets: Sequence[int], prefix: str = "") -> None:
    """ValueError naming the op and the argument (``{prefix}dp``, ``{prefix}keep``, ``{prefix}offsets[g]``) unless
    the integers make valid patterns, by RowPattern's rules: dp >= 1, 1 <= keep <= dp, 0 <= offset < dp."""
    dp = check_int(f"{name}: {prefix}dp", dp, 1, INT64_MAX)
    check_int(f"{name}: {prefix}keep", keep, 1, dp)
    for g, offset in enumerate(offsets):
        check_int(f"{name}: {prefix}offsets[{g}]: offset", offset, 0, dp - 1)


def check_tensors(name: str, x: object, weight: object, bias: object) -> None:
    """ValueError naming the first of x, weight and bias (which may be None) that is not a torch.Tensor: a
    NumPy array or a list would fail deeper with a message that names nothing (NumPy 2's arrays even have a
    ``device``)."""
    for key, value in (("x", x), ("weight", weight), ("bias", bias)):
        if not isinstance(value, torch.Tensor) and not (key == "bias" and value is None):
            raise ValueError(f"{name}: {key} must be a torch.Tensor, got {type(value).__name__}")


def check_weight(name: str, weight: torch.Tensor) -> None:
    if weight.dim() != 2:
        raise ValueError(f"{name}: weight must be 2-D [n_out, n_in], got shape {tuple(weight.shape)}")


def check_operands(name: str, **tensors: torch.Tensor | None) -> None:
    """The given tensors (None skipped) share one device and one floating dtype, as F.linear needs;
    else ValueError naming each one's (a mixed call would read another device's memory)."""
    given = {key: t for key, t in tensors.items() if t is not None}
    if len({t.device for t in given.values()}) > 1:
        where = ", ".join(f"{key} on {t.device}" for key, t in given.items())
        raise ValueError(f"{name}: every tensor must be on one device, got {where}")
    dtypes = {t.dtype for t in given.values()}
    if len(dtypes) > 1 or not all(dtype.is_floating_point for dtype in dtypes):
        kinds = ", ".join(f"{key} {t.dtype}" for key, t in given.items())
        raise ValueError(f"{name}: every tensor must have the same floating dtype, got {kinds}")


def check_linear_args(name: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k_in: int) -> None:
    """x (Tensor[*, k_in]), weight (Tensor[n_out, n_in]) and bias (Tensor[n_out] or None) of a forward op."""
    check_operands(name, x=x, weight=weight, bias=bias)
    if x.dim() < 1 or x.shape[-1] != k_in:
        inputs = "the inputs" if k_in == weight.shape[1] else "the kept inputs"  # a tile op reads every column
        raise ValueError(
            f"{name}: x must have last dimension {k_in} ({inputs} of weight {tuple(weight.shape)}), got shape "
            f"{tuple(x.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{name}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def check_backward_args(
    name: str, grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, k_in: int, k_out: int
) -> None:
    """grad_y (Tensor[*, k_out]), x (Tensor[*, k_in]) and weight (2-D, ``check_weight``) of a backward op:
    the forward's shapes."""
    check_operands(name, grad_y=grad_y, x=x, weight=weight)
    if x.dim() < 1 or x.shape[-1] != k_in:
        raise ValueError(f"{name}: x must have last dimension {k_in}, got shape {tuple(x.shape)}")
    if tuple(grad_y.shape) != (*x.shape[:-1], k_out):
        raise ValueError(
            f"{name}: grad_y must have shape {(*tuple(x.shape[:-1]), k_out)} (x's leading dimensions and the "
            f"{k_out} outputs), got {tuple(grad_y.shape)}"
        )


def empty_grads(
    x: torch.Tensor, weight: torch.Tensor, need_grad_x: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fake outputs of the tile backward op: grad_x (empty when not needed), grad_w, grad_b."""
    grad_x = x.new_empty(x.shape) if need_grad_x else x.new_empty(0)  # real outputs are contiguous
    return grad_x, weight.new_empty(weight.shape), weight.new_empty(weight.shape[0])


def save_inputs(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    """Autograd setup of a forward op ``(x, weight, bias, *ints)``: keep x and W, and the pattern as integers."""
    x, weight, bias, *ints = inputs
    ctx.save_for_backward(x, weight)
    ctx.ints = ints
    ctx.has_bias = bias is not None


def reference_grads(
    reference: Callable[..., Any], inputs: Sequence[torch.Tensor | None], grad_outputs: Any
) -> list[torch.Tensor | None]:
    """Gradients of ``reference(*inputs)`` (grad_outputs: like its output) with respect to the inputs that
    require grad (None for the others), built with create_graph=True: what an op's backward returns when the
    backward itself is differentiated (double backward, a gradient penalty). An op's fast backward is not
    differentiable: it reads blocks gathered in forward with no graph back to the weight, and writes through
    ``out=``; its reference twin, recomputed here, is plain differentiable PyTorch."""
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    found = iter(torch.autograd.grad(reference(*inputs), wanted, grad_outputs, create_graph=True, allow_unused=True))
    grads: list[torch.Tensor | None] = []
    for t in inputs:
        if t is None or not t.requires_grad:
            grads.append(None)
        else:
            g = next(found)  # None where the reference did not use t
            grads.append(torch.zeros_like(t) if g is None else g)
    return grads


def bias_stand_in(weight: torch.Tensor, has_bias: bool) -> torch.Tensor | None:
    """A zero bias (Tensor[n_out]) that requires grad, for ``reference_grads`` where the op had a bias: the
    bias gradient does not depend on the bias, which backward does not keep."""
    return weight.new_zeros(weight.shape[0], requires_grad=True) if has_bias else None


def custom_op(name: str) -> Callable[[Callable], torch.library.CustomOpDef]:
    """``torch.library.custom_op(name, mutates_args=())`` that keeps the function's docstring on the op, so
    ``help(ops.row_linear)`` shows it rather than torch's text about CustomOpDef."""

    def register(fn: Callable) -> torch.library.CustomOpDef:
        registered = torch.library.custom_op(name, mutates_args=())(fn)
        registered.__doc__ = fn.__doc__
        return registered

    return register


def register_backward(
    forward_op: torch.library.CustomOpDef,
    backward_op: torch.library.CustomOpDef,
    reference_backward: Callable[..., tuple[Any, Any, Any]],
) -> None:
    """Autograd of a forward op ``(x, weight, bias, *ints)`` whose backward is its own op
    ``(grad_y, x, weight, *ints, need_grad_x) -> (grad_x, grad_w, grad_b)``: x and W are saved, the
    pattern travels as the integers, grad_x is skipped when x needs none (a first layer). Under
    create_graph=True the gradients come from ``reference_backward(grad_y, x, weight, has_bias, *ints)``."""

    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        if torch.is_grad_enabled():  # create_graph=True: a backward that is differentiable itself
            grad_x, grad_w, grad_b = reference_backward(grad_y, x, weight, ctx.has_bias, *ctx.ints)
        else:
            grad_x, grad_w, grad_b = backward_op(grad_y, x, weight, *ctx.ints, need_x)
        return (grad_x if need_x else None, grad_w, grad_b if ctx.has_bias else None) + (None,) * len(ctx.ints)

    forward_op.register_autograd(backward, setup_context=save_inputs)


# Autocast rules of the approxdrop:: ops, registered in this library fragment (kept alive here).
_AUTOCAST = torch.library.Library("approxdrop", "IMPL")
AUTOCAST_DEVICES = ("cpu", "cuda")


def register_autocast(name: str, op: torch.library.CustomOpDef) -> None:
    """The autocast rule of ``approxdrop::name`` on CPU and CUDA, the one F.linear has: in an autocast
    region of a device type, the op's floating tensors on that device (float64 excepted) are cast to
    the region's dtype (``torch.get_autocast_dtype``), then the op runs with autocast off, so its
    output, its saved tensors and its backward all share that dtype."""
    for device_type in AUTOCAST_DEVICES:
        _AUTOCAST.impl(name, _autocast_kernel(op, device_type), "Autocast" + device_type.upper())


def _autocast_kernel(op, device_type: str):
    def kernel(*args):
        dtype = torch.get_autocast_dtype(device_type)
        cast = [_autocast_arg(a, device_type, dtype) for a in args]
        with torch.autocast(device_type, enabled=False):
            return op(*cast)

    return kernel


def _autocast_arg(arg, device_type: str, dtype: torch.dtype):
    if isinstance(arg, list):  # a Tensor[] argument
        return [_autocast_arg(a, device_type, dtype) for a in arg]
    eligible = (
        isinstance(arg, torch.Tensor)
        and arg.is_floating_point()
        and arg.device.type == device_type
        and arg.dtype != torch.float64
    )
    return arg.to(dtype) if eligible else arg
