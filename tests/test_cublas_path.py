"""The cuBLAS path of the row and grouped ops (approxdrop.ops.cuda_cublas, cuda_grouped) on CPU tensors.

On a GPU its GEMMs are cuBLAS and its small kernels come from kernels/scatter.cu and column_sum.cu; here
the same Python logic runs with the kernels' PyTorch definitions (``TORCH_BLOCK_KERNELS``, themselves the
oracle of tests/test_emulated_small_kernels.py) and is checked against the ops' PyTorch implementations
and dense masked references: which operand is a view and which a gather, the F.linear shortcut, the
single gather reused by backward, grad-input skipped, and the grouped ops' gradient assembly.
"""

from __future__ import annotations

import itertools
import random
import types

import pytest
import torch
import torch.nn.functional as F

from approxdrop.ops import cuda_cublas as cublas
from approxdrop.ops import cuda_grouped
from approxdrop.ops import row as row_ops
from approxdrop.ops.grouped import (
    grouped_row_linear_backward_torch,
    grouped_row_linear_compact_backward_torch,
    grouped_row_linear_compact_torch,
    grouped_row_linear_reference,
    grouped_row_linear_torch,
    run_compact,
    run_compact_backward,
    run_full_width,
    run_full_width_backward,
)
from approxdrop.patterns import RowPattern

KERNELS = cublas.TORCH_BLOCK_KERNELS
PATTERNS = [
    RowPattern(1, 0, 1),  # dp = 1
    RowPattern(3, 1, 3),  # keep = dp
    RowPattern(2, 1, 1),  # keep = 1: slice selector
    RowPattern(4, 3, 1),  # keep = 1, offset at the end
    RowPattern(3, 2, 2),  # keep > 1, wrapping: index selector
    RowPattern(5, 1, 3),
]
F64 = torch.float64


def _y_ref(x, w, b, *ints):
    """What the pattern kernel returns: row_linear's y."""
    return row_ops.row_linear_torch(x, w, b, *ints)[0]


def _grads_ref(gy, x, w, *ints_need):
    """row_linear_backward's gradients, from the block forward returns."""
    return row_ops.row_linear_backward_torch(
        gy, x, w, row_ops.row_linear_torch(x, w, None, *ints_need[:6])[1], *ints_need
    )


class Recording:
    """BlockKernels that run TORCH_BLOCK_KERNELS and record each call (name, shapes, patterns)."""

    def __init__(self):
        self.calls: list[tuple] = []

        def scatter(block, shape, out, inp):
            self.calls.append(("scatter", tuple(block.shape), out, inp))
            return KERNELS.scatter(block, shape, out, inp)

        def scatter_add(full, block, out, inp):
            self.calls.append(("scatter_add", tuple(block.shape), out, inp))
            KERNELS.scatter_add(full, block, out, inp)

        def column_sum(g, n, p):
            self.calls.append(("column_sum", tuple(g.shape), p))
            return KERNELS.column_sum(g, n, p)

        self.kernels = cublas.BlockKernels(scatter, scatter_add, column_sum)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def _ints(inp: RowPattern, out: RowPattern) -> tuple[int, ...]:
    return inp.dp, inp.offset, inp.keep, out.dp, out.offset, out.keep


def _args(gen, inp, out, lead=(5,), n_out=11, n_in=13):
    x = torch.randn(*lead, inp.kept_count(n_in), generator=gen, dtype=F64)
    w = torch.randn(n_out, n_in, generator=gen, dtype=F64)
    b = torch.randn(n_out, generator=gen, dtype=F64)
    gy = torch.randn(*lead, out.kept_count(n_out), generator=gen, dtype=F64)
    return x, w, b, gy


# --------------------------------------------------------------------------- row ops


@pytest.mark.parametrize("inp, out", list(itertools.product(PATTERNS, PATTERNS)), ids=str)
def test_row_path_matches_the_pytorch_implementation(inp, out):
    gen = torch.Generator().manual_seed(0)
    x, w, b, gy = _args(gen, inp, out, lead=(2, 3))
    for bias in (b, None):
        y, block = cublas.forward(x, w, bias, inp, out)
        torch.testing.assert_close(y, _y_ref(x, w, bias, *_ints(inp, out)))
        assert y.is_contiguous()
    want = (out.kept_count(11), inp.kept_count(13)) if inp.keep < inp.dp else (0,)
    assert tuple(block.shape) == want
    for saved, need_grad_x in itertools.product((None, block if block.numel() else None), (True, False)):
        got = cublas.backward(gy, x, w, saved, inp, out, need_grad_x, KERNELS)
        ref = _grads_ref(gy, x, w, *_ints(inp, out), need_grad_x)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r)
            assert g.is_contiguous()


def test_edge_shapes():
    """No rows, no kept input (K = 0) and no kept output."""
    gen = torch.Generator().manual_seed(1)
    for inp, out, rows, n_out, n_in in [
        (RowPattern(2, 1, 1), RowPattern(3, 0, 2), 0, 9, 7),
        (RowPattern(9, 8, 1), RowPattern(4, 3, 1), 5, 13, 5),
        (RowPattern(1, 0, 1), RowPattern(10, 2, 1), 6, 2, 11),
    ]:
        x, w, b, gy = _args(gen, inp, out, (rows,), n_out, n_in)
        y, block = cublas.forward(x, w, b, inp, out)
        torch.testing.assert_close(y, _y_ref(x, w, b, *_ints(inp, out)))
        got = cublas.backward(gy, x, w, block if block.numel() else None, inp, out, True, KERNELS)
        for g, r in zip(got, _grads_ref(gy, x, w, *_ints(inp, out))):
            torch.testing.assert_close(g, r)


def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(2)
    inp, out = RowPattern(3, 1, 2), RowPattern(2, 0, 1)
    w = torch.randn(13, 11, generator=gen, dtype=F64).t()  # [11, 13], transposed
    x = torch.randn(inp.kept_count(13), 5, generator=gen, dtype=F64).t()  # [5, k_in]
    gy = torch.randn(out.kept_count(11), 5, generator=gen, dtype=F64).t()
    y, block = cublas.forward(x, w, None, inp, out)
    torch.testing.assert_close(y, _y_ref(x, w, None, *_ints(inp, out)))
    for g, r in zip(cublas.backward(gy, x, w, block, inp, out, True, KERNELS), _grads_ref(gy, x, w, *_ints(inp, out))):
        torch.testing.assert_close(g, r)
        assert g.is_contiguous()


@pytest.fixture
def linear_spy(monkeypatch):
    """Records the weight each F.linear call of the cuBLAS path gets (then runs the real one)."""
    weights = []

    def linear(x, weight, bias=None):
        weights.append(weight)
        return F.linear(x, weight, bias)

    monkeypatch.setattr(cublas, "F", types.SimpleNamespace(linear=linear))
    return weights


def test_every_input_kept_reads_w_in_place(linear_spy, monkeypatch):
    """in side whole: F.linear on W itself (out side whole too) or on the strided view of its kept rows
    (keep = 1: leading dimension dp * n_in); nothing is gathered."""
    monkeypatch.setattr(cublas, "gather_block", lambda *a: pytest.fail("gathered W"))
    gen = torch.Generator().manual_seed(3)
    x, w, b, _ = _args(gen, RowPattern(1, 0, 1), RowPattern(1, 0, 1))
    cublas.forward(x, w, b, RowPattern(1, 0, 1), RowPattern(3, 2, 3))
    whole = linear_spy[-1]
    assert whole.data_ptr() == w.data_ptr() and whole.stride() == w.stride() and whole.shape == w.shape
    y, block = cublas.forward(x, w, b, RowPattern(2, 0, 2), RowPattern(4, 3, 1))
    view = linear_spy[-1]
    assert view.data_ptr() == w[3].data_ptr() and view.stride() == (4 * 13, 1) and view.shape == (2, 13)
    assert block.numel() == 0
    torch.testing.assert_close(y, _y_ref(x, w, b, 2, 0, 2, 4, 3, 1))


def test_dropped_inputs_gather_once_and_backward_reuses_the_block(monkeypatch, linear_spy):
    gathers = []
    real = cublas.gather_block

    def counting(*args):
        gathers.append(args)
        return real(*args)

    monkeypatch.setattr(cublas, "gather_block", counting)
    gen = torch.Generator().manual_seed(4)
    inp, out = RowPattern(2, 1, 1), RowPattern(3, 0, 1)
    x, w, b, gy = _args(gen, inp, out)
    y, block = cublas.forward(x, w, b, inp, out)
    assert len(gathers) == 1 and linear_spy == []  # scaled: one addmm on the block, not F.linear
    assert block.is_contiguous() and block.untyped_storage().data_ptr() != w.untyped_storage().data_ptr()
    torch.testing.assert_close(block, w[0::3, 1::2])
    cublas.backward(gy, x, w, block, inp, out, True, KERNELS)
    assert len(gathers) == 1  # reused, not gathered again
    other = torch.randn_like(block)  # backward's grad_x reads the given block, not W
    grad_x = cublas.backward(gy, x, w, other, inp, out, True, KERNELS)[0]
    torch.testing.assert_close(grad_x, 2.0 * gy @ other)
    cublas.backward(gy, x, w, None, inp, out, True, KERNELS)
    assert len(gathers) == 2  # the plain backward op gathers again


def test_gather_block_is_one_fresh_copy_for_every_selector_kind():
    w = torch.arange(11 * 13, dtype=F64).reshape(11, 13)
    for out, inp in itertools.product(PATTERNS[2:], PATTERNS[2:]):
        block = cublas.gather_block(w, out, inp)
        assert torch.equal(block, w[out.keep_mask(11)][:, inp.keep_mask(13)]) and block.is_contiguous()
        assert block.untyped_storage().data_ptr() != w.untyped_storage().data_ptr()


def test_backward_without_grad_x_runs_no_grad_input_gemm(monkeypatch):
    monkeypatch.setattr(cublas, "kept_weight_for", lambda *a: pytest.fail("grad-input GEMM operand built"))
    gen = torch.Generator().manual_seed(5)
    inp, out = RowPattern(3, 2, 2), RowPattern(2, 1, 1)
    x, w, _, gy = _args(gen, inp, out)
    grad_x, grad_w, grad_b = cublas.backward(gy, x, w, None, inp, out, False, KERNELS)
    assert grad_x.numel() == 0
    ref = _grads_ref(gy, x, w, *_ints(inp, out), False)
    torch.testing.assert_close(grad_w, ref[1])
    torch.testing.assert_close(grad_b, ref[2])


def test_nothing_dropped_is_f_linear_backward_without_a_scatter():
    gen = torch.Generator().manual_seed(6)
    whole = RowPattern(2, 1, 2)
    x, w, _, gy = _args(gen, whole, whole)
    rec = Recording()
    got = cublas.backward(gy, x, w, None, whole, whole, True, rec.kernels)
    assert rec.names() == ["column_sum"]
    ref = _grads_ref(gy, x, w, *_ints(whole, whole))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r)


def test_weight_gradient_is_one_compact_gemm_and_one_scatter():
    gen = torch.Generator().manual_seed(7)
    inp, out = RowPattern(1, 0, 1), RowPattern(4, 1, 1)  # every input kept, a quarter of the outputs
    x, w, _, gy = _args(gen, inp, out)
    rec = Recording()
    cublas.backward(gy, x, w, None, inp, out, True, rec.kernels)
    assert rec.calls == [("column_sum", (5, 3), out), ("scatter", (3, 13), out, inp)]


# --------------------------------------------------------------------------- grouped ops

GROUPED = [  # (in_dp, in_keep, out_dp, out_keep)
    (2, 1, 3, 1),  # keep = 1: disjoint blocks
    (3, 2, 2, 1),  # keep > 1 on the in side: overlapping blocks, added
    (4, 3, 3, 2),  # overlapping on both sides
    (4, 4, 2, 2),  # both sides whole, distinct offsets: one block
    (1, 1, 3, 1),  # in side dp = 1
]


def _offsets(rng: random.Random, dp: int, groups: int) -> list[int]:
    return [rng.randrange(dp) for _ in range(groups)]


def _grouped_case(seed: int, config, groups: int):
    rng = random.Random(seed)
    in_dp, in_keep, out_dp, out_keep = config
    return (in_dp, in_keep, _offsets(rng, in_dp, groups), out_dp, out_keep, _offsets(rng, out_dp, groups))


@pytest.mark.parametrize("config", GROUPED, ids=str)
@pytest.mark.parametrize("groups, batch", [(5, 7), (3, 2)])  # batch < G: a group without samples
def test_grouped_full_width_matches_the_dense_reference(config, groups, batch):
    gen = torch.Generator().manual_seed(8)
    args = _grouped_case(9, config, groups)
    in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets = args
    w = torch.randn(11, 13, generator=gen, dtype=F64, requires_grad=True)
    b = torch.randn(11, generator=gen, dtype=F64, requires_grad=True)
    x = torch.randn(2, batch, 13, generator=gen, dtype=F64, requires_grad=True)
    gy = torch.randn(2, batch, 11, generator=gen, dtype=F64)
    ins = [RowPattern(in_dp, o, in_keep) for o in in_offsets]
    outs = [RowPattern(out_dp, o, out_keep) for o in out_offsets]
    ref = grouped_row_linear_reference(x, w, b, ins, outs)
    ref.backward(gy)
    path = cuda_grouped.cublas_path(KERNELS)
    y = run_full_width(x.detach(), w.detach(), b.detach(), *args, path=path)
    torch.testing.assert_close(y, ref.detach())
    torch.testing.assert_close(y, grouped_row_linear_torch(x.detach(), w.detach(), b.detach(), *args))
    grad_x, grad_w, grad_b = run_full_width_backward(gy, x.detach(), w.detach(), *args, True, path=path)
    torch.testing.assert_close(grad_x, x.grad)  # zero at each group's dropped inputs, as the mask makes it
    torch.testing.assert_close(grad_w, w.grad)
    torch.testing.assert_close(grad_b, b.grad)
    torch_grads = grouped_row_linear_backward_torch(gy, x.detach(), w.detach(), *args, True)
    for g, r in zip((grad_x, grad_w, grad_b), torch_grads):  # the PyTorch implementation agrees too
        torch.testing.assert_close(g, r)
    grad_x, _, _ = run_full_width_backward(gy, x.detach(), w.detach(), *args, False, path=path)
    assert grad_x.numel() == 0


@pytest.mark.parametrize("config", GROUPED, ids=str)
def test_grouped_compact_matches_the_pytorch_implementation(config):
    gen = torch.Generator().manual_seed(10)
    args = _grouped_case(11, config, groups=6)
    in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets = args
    w, b = torch.randn(11, 13, generator=gen, dtype=F64), torch.randn(11, generator=gen, dtype=F64)
    xs = [torch.randn(3, RowPattern(in_dp, o, in_keep).kept_count(13), generator=gen, dtype=F64) for o in in_offsets]
    xs[2] = xs[2][:0]  # a group without samples
    ys, blocks = run_compact(xs, w, b, *args, path=cuda_grouped.cublas_path(KERNELS))
    ref_ys, ref_blocks = grouped_row_linear_compact_torch(xs, w, b, *args)
    torch.testing.assert_close(ys, ref_ys)
    torch.testing.assert_close(blocks, ref_blocks)
    grads = [torch.randn(y.shape, generator=gen, dtype=F64) for y in ys]
    for saved, need_grad_x in itertools.product((blocks, []), (True, False)):
        rec = Recording()
        got = run_compact_backward(grads, xs, w, saved, *args, need_grad_x, path=cuda_grouped.cublas_path(rec.kernels))
        ref = grouped_row_linear_compact_backward_torch(grads, xs, w, saved, *args, need_grad_x)
        torch.testing.assert_close(got, ref)
        pairs = len(set(zip(out_offsets, in_offsets))) if in_keep < in_dp and out_keep < out_dp else None
        scatters = [n for n in rec.names() if n != "column_sum"]
        assert scatters[0] == "scatter" and set(scatters[1:]) <= {"scatter_add"}  # first writes all, others add
        if pairs is not None:
            assert len(scatters) == pairs


def test_grouped_disjoint_pairs_cover_the_gradient_once():
    """keep = 1 with every offset pair present: the first pair's scatter zero-fills, the others add onto
    zeros, and every kept weight gets exactly its one pair's gradient."""
    gen = torch.Generator().manual_seed(12)
    in_offsets, out_offsets = [0, 1, 0, 1], [0, 0, 1, 1]
    args = (2, 1, in_offsets, 2, 1, out_offsets)
    w = torch.randn(6, 8, generator=gen, dtype=F64, requires_grad=True)
    x = torch.randn(8, 8, generator=gen, dtype=F64)
    gy = torch.randn(8, 6, generator=gen, dtype=F64)
    ins, outs = [RowPattern(2, o, 1) for o in in_offsets], [RowPattern(2, o, 1) for o in out_offsets]
    grouped_row_linear_reference(x, w, None, ins, outs).backward(gy)
    _, grad_w, _ = run_full_width_backward(gy, x, w.detach(), *args, True, path=cuda_grouped.cublas_path(KERNELS))
    torch.testing.assert_close(grad_w, w.grad)


@pytest.mark.parametrize("config", GROUPED[:3], ids=str)
def test_grouped_on_the_kernel_path_adds_full_size_gradients(config):
    """The pattern-GEMM path per pair (here its PyTorch equivalents) gives the same outputs."""
    gen = torch.Generator().manual_seed(13)
    args = _grouped_case(14, config, groups=4)
    path = cuda_grouped.kernel_path(_y_ref, _grads_ref)
    w, b = torch.randn(11, 13, generator=gen, dtype=F64), torch.randn(11, generator=gen, dtype=F64)
    x, gy = torch.randn(9, 13, generator=gen, dtype=F64), torch.randn(9, 11, generator=gen, dtype=F64)
    torch.testing.assert_close(run_full_width(x, w, b, *args, path=path), grouped_row_linear_torch(x, w, b, *args))
    got = run_full_width_backward(gy, x, w, *args, True, path=path)
    torch.testing.assert_close(got, grouped_row_linear_backward_torch(gy, x, w, *args, True))
    in_dp, in_keep, in_offsets = args[:3]
    xs = [torch.randn(2, RowPattern(in_dp, o, in_keep).kept_count(13), generator=gen, dtype=F64) for o in in_offsets]
    ys, blocks = run_compact(xs, w, b, *args, path=path)
    ref = grouped_row_linear_compact_torch(xs, w, b, *args)
    torch.testing.assert_close((ys, blocks), ref)
    grads = [torch.randn(y.shape, generator=gen, dtype=F64) for y in ys]
    torch.testing.assert_close(
        run_compact_backward(grads, xs, w, blocks, *args, True, path=path),
        grouped_row_linear_compact_backward_torch(grads, xs, w, blocks, *args, True),
    )


def test_grad_sum_with_no_pair_is_zero():
    w = torch.randn(4, 5)
    grad_w, grad_b = cuda_grouped.GradSum(w, KERNELS).result()
    assert torch.equal(grad_w, torch.zeros(4, 5)) and torch.equal(grad_b, torch.zeros(4))
