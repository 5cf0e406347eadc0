"""The cuBLAS path of the row op (approxdrop.ops.cuda_cublas, cuda_grouped) on CPU tensors.

On a GPU its GEMMs are cuBLAS and its small kernels come from kernels/scatter.cu and column_sum.cu; here
the same Python logic runs, through the one per-pair executor (``ops.grouped.run_forward`` /
``run_backward``), with the kernels' PyTorch definitions (``TORCH_BLOCK_KERNELS``, themselves the oracle of
tests/test_emulated_small_kernels.py) and is checked against the registered op (``torch.ops.approxdrop``,
whose CPU path is the PyTorch implementation) and the dense masked reference: which operand is a view and
which a gather, the single gather reused by backward, grad-input skipped, and the gradient assembly.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from approxdrop.ops import cuda_cublas as cublas
from approxdrop.ops import cuda_grouped, row_linear_reference
from approxdrop.ops.grouped import run_backward, run_forward
from approxdrop.patterns import RowPattern

OPS = torch.ops.approxdrop
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


def _ints(inp: RowPattern, out: RowPattern) -> tuple:
    """The row op's pattern integers for one group."""
    return inp.dp, inp.keep, [inp.offset], out.dp, out.keep, [out.offset]


def forward(x, w, b, inp, out, kernels=KERNELS):
    """One group on the cuBLAS path: (y, blocks)."""
    ys, blocks = run_forward([x], w, b, *_ints(inp, out), path=cuda_grouped.cublas_path(kernels))
    return ys[0], blocks


def backward(gy, x, w, blocks, inp, out, need_grad_x, kernels=KERNELS):
    """One group's gradients on the cuBLAS path: (grad_x, empty without need_grad_x; grad_w; grad_b)."""
    path = cuda_grouped.cublas_path(kernels)
    grad_xs, grad_w, grad_b = run_backward([gy], [x], w, blocks, *_ints(inp, out), need_grad_x, path=path)
    return (grad_xs[0] if need_grad_x else x.new_empty(0)), grad_w, grad_b


def _y_ref(x, w, b, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep):
    """What the pattern kernel returns for one pair (its arguments): the registered op's y."""
    return OPS.row_linear([x], w, b, in_dp, in_keep, [in_offset], out_dp, out_keep, [out_offset])[0][0]


def _grads_ref(gy, x, w, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep, need_grad_x=True):
    """The registered backward op's gradients for one pair, grad_x empty without need_grad_x."""
    ints = (in_dp, in_keep, [in_offset], out_dp, out_keep, [out_offset])
    grad_xs, grad_w, grad_b = OPS.row_linear_backward([gy], [x], w, [], *ints, need_grad_x)
    return (grad_xs[0] if need_grad_x else x.new_empty(0)), grad_w, grad_b


def _one(inp, out):
    return inp.dp, inp.offset, inp.keep, out.dp, out.offset, out.keep


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


def _args(gen, inp, out, lead=(5,), n_out=11, n_in=13):
    x = torch.randn(*lead, inp.kept_count(n_in), generator=gen, dtype=F64)
    w = torch.randn(n_out, n_in, generator=gen, dtype=F64)
    b = torch.randn(n_out, generator=gen, dtype=F64)
    gy = torch.randn(*lead, out.kept_count(n_out), generator=gen, dtype=F64)
    return x, w, b, gy


# --------------------------------------------------------------------------- one group


@pytest.mark.parametrize("inp, out", list(itertools.product(PATTERNS, PATTERNS)), ids=str)
def test_row_path_matches_the_pytorch_implementation(inp, out):
    gen = torch.Generator().manual_seed(0)
    x, w, b, gy = _args(gen, inp, out, lead=(2, 3))
    for bias in (b, None):
        y, blocks = forward(x, w, bias, inp, out)
        torch.testing.assert_close(y, _y_ref(x, w, bias, *_one(inp, out)))
        assert y.is_contiguous()
    want = [(out.kept_count(11), inp.kept_count(13))] if inp.keep < inp.dp else []
    assert [tuple(block.shape) for block in blocks] == want
    for saved, need_grad_x in itertools.product((blocks, []), (True, False)):
        got = backward(gy, x, w, saved, inp, out, need_grad_x)
        ref = _grads_ref(gy, x, w, *_one(inp, out), need_grad_x)
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
        y, blocks = forward(x, w, b, inp, out)
        torch.testing.assert_close(y, _y_ref(x, w, b, *_one(inp, out)))
        got = backward(gy, x, w, blocks, inp, out, True)
        for g, r in zip(got, _grads_ref(gy, x, w, *_one(inp, out))):
            torch.testing.assert_close(g, r)


def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(2)
    inp, out = RowPattern(3, 1, 2), RowPattern(2, 0, 1)
    w = torch.randn(13, 11, generator=gen, dtype=F64).t()  # [11, 13], transposed
    x = torch.randn(inp.kept_count(13), 5, generator=gen, dtype=F64).t()  # [5, k_in]
    gy = torch.randn(out.kept_count(11), 5, generator=gen, dtype=F64).t()
    y, blocks = forward(x, w, None, inp, out)
    torch.testing.assert_close(y, _y_ref(x, w, None, *_one(inp, out)))
    for g, r in zip(backward(gy, x, w, blocks, inp, out, True), _grads_ref(gy, x, w, *_one(inp, out))):
        torch.testing.assert_close(g, r)
        assert g.is_contiguous()


@pytest.fixture
def gemm_spy(monkeypatch):
    """Records the kept weight each pair's forward GEMM reads (then runs the real one)."""
    weights = []
    real = cublas.pair_forward

    def pair_forward(x2, w_kept, *rest):
        weights.append(w_kept)
        return real(x2, w_kept, *rest)

    monkeypatch.setattr(cublas, "pair_forward", pair_forward)
    return weights


def test_every_input_kept_reads_w_in_place(gemm_spy, monkeypatch):
    """in side whole: the GEMM reads W itself (out side whole too) or the strided view of its kept rows
    (keep = 1: leading dimension dp * n_in); nothing is gathered."""
    monkeypatch.setattr(cublas, "gather_block", lambda *a: pytest.fail("gathered W"))
    gen = torch.Generator().manual_seed(3)
    x, w, b, _ = _args(gen, RowPattern(1, 0, 1), RowPattern(1, 0, 1))
    forward(x, w, b, RowPattern(1, 0, 1), RowPattern(3, 2, 3))
    whole = gemm_spy[-1]
    assert whole.data_ptr() == w.data_ptr() and whole.stride() == w.stride() and whole.shape == w.shape
    y, blocks = forward(x, w, b, RowPattern(2, 0, 2), RowPattern(4, 3, 1))
    view = gemm_spy[-1]
    assert view.data_ptr() == w[3].data_ptr() and view.stride() == (4 * 13, 1) and view.shape == (2, 13)
    assert blocks == []
    torch.testing.assert_close(y, _y_ref(x, w, b, 2, 0, 2, 4, 3, 1))


def test_dropped_inputs_gather_once_and_backward_reuses_the_block(monkeypatch):
    gathers = []
    real = cublas.gather_block

    def counting(*args):
        gathers.append(args)
        return real(*args)

    monkeypatch.setattr(cublas, "gather_block", counting)
    gen = torch.Generator().manual_seed(4)
    inp, out = RowPattern(2, 1, 1), RowPattern(3, 0, 1)
    x, w, b, gy = _args(gen, inp, out)
    y, blocks = forward(x, w, b, inp, out)
    (block,) = blocks
    assert len(gathers) == 1
    assert block.is_contiguous() and block.untyped_storage().data_ptr() != w.untyped_storage().data_ptr()
    torch.testing.assert_close(block, w[0::3, 1::2])
    backward(gy, x, w, blocks, inp, out, True)
    assert len(gathers) == 1  # reused, not gathered again
    other = torch.randn_like(block)  # backward's grad_x reads the given block, not W
    grad_x = backward(gy, x, w, [other], inp, out, True)[0]
    torch.testing.assert_close(grad_x, 2.0 * gy @ other)
    backward(gy, x, w, [], inp, out, True)
    assert len(gathers) == 2  # without forward's blocks, backward gathers again


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
    grad_x, grad_w, grad_b = backward(gy, x, w, [], inp, out, False)
    assert grad_x.numel() == 0
    ref = _grads_ref(gy, x, w, *_one(inp, out), False)
    torch.testing.assert_close(grad_w, ref[1])
    torch.testing.assert_close(grad_b, ref[2])


def test_nothing_dropped_is_f_linear_backward_without_a_scatter():
    gen = torch.Generator().manual_seed(6)
    whole = RowPattern(2, 1, 2)
    x, w, _, gy = _args(gen, whole, whole)
    rec = Recording()
    got = backward(gy, x, w, [], whole, whole, True, rec.kernels)
    assert rec.names() == ["column_sum"]
    ref = _grads_ref(gy, x, w, *_one(whole, whole))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r)


def test_weight_gradient_is_one_compact_gemm_and_one_scatter():
    gen = torch.Generator().manual_seed(7)
    inp, out = RowPattern(1, 0, 1), RowPattern(4, 1, 1)  # every input kept, a quarter of the outputs
    x, w, _, gy = _args(gen, inp, out)
    rec = Recording()
    backward(gy, x, w, [], inp, out, True, rec.kernels)
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


def _xs(gen, in_dp, in_keep, in_offsets, rows=3, n_in=13):
    return [
        torch.randn(rows, RowPattern(in_dp, o, in_keep).kept_count(n_in), generator=gen, dtype=F64) for o in in_offsets
    ]


@pytest.mark.parametrize("config", GROUPED, ids=str)
@pytest.mark.parametrize("groups", [5, 3])
def test_grouped_matches_the_dense_reference(config, groups):
    gen = torch.Generator().manual_seed(8)
    args = _grouped_case(9, config, groups)
    in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets = args
    w = torch.randn(11, 13, generator=gen, dtype=F64, requires_grad=True)
    b = torch.randn(11, generator=gen, dtype=F64, requires_grad=True)
    xs = [x.requires_grad_() for x in _xs(gen, in_dp, in_keep, in_offsets)]
    xs[1] = xs[1][:0].detach().requires_grad_()  # a group without samples
    ins = [RowPattern(in_dp, o, in_keep) for o in in_offsets]
    outs = [RowPattern(out_dp, o, out_keep) for o in out_offsets]
    refs = row_linear_reference(xs, w, b, ins, outs)
    gys = [torch.randn(r.shape, generator=gen, dtype=F64) for r in refs]
    want = torch.autograd.grad(refs, (*xs, w, b), gys)
    path = cuda_grouped.cublas_path(KERNELS)
    detached = [x.detach() for x in xs]
    ys, blocks = run_forward(detached, w.detach(), b.detach(), *args, path=path)
    torch.testing.assert_close(ys, [r.detach() for r in refs])
    grad_xs, grad_w, grad_b = run_backward(gys, detached, w.detach(), blocks, *args, True, path=path)
    torch.testing.assert_close([*grad_xs, grad_w, grad_b], list(want))
    grad_xs, _, _ = run_backward(gys, detached, w.detach(), blocks, *args, False, path=path)
    assert grad_xs == []


@pytest.mark.parametrize("config", GROUPED, ids=str)
def test_grouped_compact_matches_the_pytorch_implementation(config):
    gen = torch.Generator().manual_seed(10)
    args = _grouped_case(11, config, groups=6)
    in_dp, in_keep, in_offsets, out_dp, out_keep, out_offsets = args
    w, b = torch.randn(11, 13, generator=gen, dtype=F64), torch.randn(11, generator=gen, dtype=F64)
    xs = _xs(gen, in_dp, in_keep, in_offsets)
    xs[2] = xs[2][:0]  # a group without samples
    ys, blocks = run_forward(xs, w, b, *args, path=cuda_grouped.cublas_path(KERNELS))
    ref_ys, ref_blocks = OPS.row_linear(xs, w, b, *args)
    torch.testing.assert_close(ys, ref_ys)
    torch.testing.assert_close(blocks, ref_blocks)
    grads = [torch.randn(y.shape, generator=gen, dtype=F64) for y in ys]
    for saved, need_grad_x in itertools.product((blocks, []), (True, False)):
        rec = Recording()
        got = run_backward(grads, xs, w, saved, *args, need_grad_x, path=cuda_grouped.cublas_path(rec.kernels))
        ref = OPS.row_linear_backward(grads, xs, w, saved, *args, need_grad_x)
        torch.testing.assert_close(got, ref)
        pairs = len(set(zip(out_offsets, in_offsets))) if in_keep < in_dp and out_keep < out_dp else None
        scatters = [n for n in rec.names() if n != "column_sum"]
        if in_keep == in_dp and out_keep == out_dp:  # nothing dropped: F.linear's gradient, no scatter
            assert scatters == []
            continue
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
    xs = _xs(gen, 2, 1, in_offsets, rows=2, n_in=8)
    gys = [torch.randn(2, 3, generator=gen, dtype=F64) for _ in xs]
    ins, outs = [RowPattern(2, o, 1) for o in in_offsets], [RowPattern(2, o, 1) for o in out_offsets]
    torch.autograd.backward(row_linear_reference(xs, w, None, ins, outs), gys)
    _, grad_w, _ = run_backward(gys, xs, w.detach(), [], *args, True, path=cuda_grouped.cublas_path(KERNELS))
    torch.testing.assert_close(grad_w, w.grad)


@pytest.mark.parametrize("config", GROUPED[:3], ids=str)
def test_grouped_on_the_kernel_path_adds_full_size_gradients(config):
    """The pattern-GEMM path per pair (here the registered op on one pair, for the kernel) gives the same
    outputs."""
    gen = torch.Generator().manual_seed(13)
    args = _grouped_case(14, config, groups=4)
    path = cuda_grouped.kernel_path(_y_ref, _grads_ref)
    w, b = torch.randn(11, 13, generator=gen, dtype=F64), torch.randn(11, generator=gen, dtype=F64)
    xs = _xs(gen, *args[:3], rows=2)
    ys, blocks = run_forward(xs, w, b, *args, path=path)
    torch.testing.assert_close((ys, blocks), OPS.row_linear(xs, w, b, *args))
    grads = [torch.randn(y.shape, generator=gen, dtype=F64) for y in ys]
    torch.testing.assert_close(
        run_backward(grads, xs, w, blocks, *args, True, path=path),
        OPS.row_linear_backward(grads, xs, w, blocks, *args, True),
    )


def test_grad_sum_with_no_pair_is_zero():
    w = torch.randn(4, 5)
    grad_w, grad_b = cuda_grouped.GradSum(w, KERNELS).result()
    assert torch.equal(grad_w, torch.zeros(4, 5)) and torch.equal(grad_b, torch.zeros(4))
