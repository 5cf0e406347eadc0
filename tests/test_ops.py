"""The approxdrop:: ops against dense masked references: forward, backward, gradcheck, opcheck,
exact unbiasedness by enumeration, what autograd saves, and errors."""

import inspect

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import approxdrop as ad
from approxdrop import PatternDistribution, RowPattern, TilePattern, ops, row_pattern_linear, tile_pattern_linear
from approxdrop.ops import row_linear_reference, tile_linear_reference
from approxdrop.ops.tile_layout import _TileLayout

F64 = torch.float64
OPS_NS = torch.ops.approxdrop


def row_linear(x, w, b, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep):
    """``approxdrop::row_linear`` on one group: (y, blocks)."""
    ys, blocks = OPS_NS.row_linear([x], w, b, in_dp, in_keep, [in_offset], out_dp, out_keep, [out_offset])
    return ys[0], blocks


def row_linear_backward(grad_y, x, w, blocks, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep, need=True):
    """``approxdrop::row_linear_backward`` on one group: (grad_x, empty without ``need``; grad_w; grad_b)."""
    ints = (in_dp, in_keep, [in_offset], out_dp, out_keep, [out_offset])
    grad_xs, grad_w, grad_b = OPS_NS.row_linear_backward([grad_y], [x], w, blocks, *ints, need)
    return (grad_xs[0] if grad_xs else x.new_empty(0)), grad_w, grad_b


def tile_linear(x, w, b, dp, offset, keep, tile):
    """``approxdrop::tile_linear`` on one group."""
    return OPS_NS.tile_linear(x, w, b, dp, keep, tile, [offset])


def tile_linear_backward(grad_y, x, w, dp, offset, keep, tile, need=True):
    return OPS_NS.tile_linear_backward(grad_y, x, w, dp, keep, tile, [offset], need)


@st.composite
def row_patterns(draw):
    dp = draw(st.integers(1, 7))
    return RowPattern(dp, draw(st.integers(0, dp - 1)), draw(st.integers(1, dp)))


@st.composite
def tile_patterns(draw):
    dp = draw(st.integers(1, 5))
    return TilePattern(dp, draw(st.integers(0, dp - 1)), draw(st.integers(1, 7)), draw(st.integers(1, dp)))


def _assert_same_forward_backward(op, reference, inputs):
    """Same output and same gradients (for a random upstream gradient) as the reference."""
    y = op(*inputs)
    expected = reference(*inputs)
    torch.testing.assert_close(y, expected)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    upstream = torch.randn_like(y)
    got = torch.autograd.grad(y, leaves, upstream, allow_unused=True)
    want = torch.autograd.grad(expected, leaves, upstream, allow_unused=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@given(row_patterns(), row_patterns(), st.integers(1, 40), st.integers(1, 40), st.booleans(), st.integers(0, 2**16))
def test_row_linear_matches_dense_masked_reference(in_p, out_p, n_in, n_out, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(n_out, n_in, generator=gen, dtype=F64, requires_grad=True)
    bias = torch.randn(n_out, generator=gen, dtype=F64, requires_grad=True) if with_bias else None
    x = torch.randn(2, 3, in_p.kept_count(n_in), generator=gen, dtype=F64, requires_grad=True)  # leading dims
    _assert_same_forward_backward(row_pattern_linear, row_linear_reference, (x, weight, bias, in_p, out_p))


@given(tile_patterns(), st.integers(1, 40), st.integers(1, 40), st.booleans(), st.integers(0, 2**16))
def test_tile_linear_matches_dense_masked_reference(pattern, n_in, n_out, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(n_out, n_in, generator=gen, dtype=F64, requires_grad=True)
    bias = torch.randn(n_out, generator=gen, dtype=F64, requires_grad=True) if with_bias else None
    x = torch.randn(2, 3, n_in, generator=gen, dtype=F64, requires_grad=True)
    _assert_same_forward_backward(tile_pattern_linear, tile_linear_reference, (x, weight, bias, pattern))


def test_backward_skips_grad_x_when_the_input_needs_none():
    """A first layer's input needs no gradient: the grad_x GEMM is skipped, grad_w is unchanged."""
    x, weight = torch.randn(4, 10), torch.randn(6, 10, requires_grad=True)
    for call in (
        lambda x: row_pattern_linear(x, weight, None, RowPattern(1, 0), RowPattern(2, 1)),
        lambda x: tile_pattern_linear(x, weight, None, TilePattern(2, 1, tile=3)),
    ):
        call(x).square().sum().backward()
        skipped, weight.grad = weight.grad, None
        x_grad = x.clone().requires_grad_()
        call(x_grad).square().sum().backward()
        assert x_grad.grad is not None and torch.equal(weight.grad, skipped)
        weight.grad = None
    grads = row_linear_backward(torch.randn(4, 3), x, weight.detach(), [], 1, 0, 1, 2, 1, 1, False)
    assert grads[0].numel() == 0 and grads[1].shape == (6, 10)


def test_empty_batch_works_for_both_ops():
    weight = torch.randn(9, 12, requires_grad=True)
    y = tile_pattern_linear(torch.randn(0, 12), weight, None, TilePattern(2, 1, tile=4))
    z = row_pattern_linear(torch.randn(0, 6), weight, None, RowPattern(2, 0), RowPattern(3, 1))
    assert y.shape == (0, 9) and z.shape == (0, 3)
    (y.sum() + z.sum()).backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_float32_row_and_tile_match_their_float64_reference():
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(70, 90, generator=gen), torch.randn(70, generator=gen)
    in_p, out_p, tile_p = RowPattern(3, 2), RowPattern(4, 1, 3), TilePattern(3, 1, tile=8, keep=2)
    x = torch.randn(16, in_p.kept_count(90), generator=gen)
    ref = row_linear_reference(x.double(), weight.double(), bias.double(), in_p, out_p)
    torch.testing.assert_close(row_pattern_linear(x, weight, bias, in_p, out_p), ref.float(), rtol=1e-5, atol=1e-4)
    x = torch.randn(16, 90, generator=gen)
    ref = tile_linear_reference(x.double(), weight.double(), bias.double(), tile_p)
    torch.testing.assert_close(tile_pattern_linear(x, weight, bias, tile_p), ref.float(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "in_p, out_p, n_in, n_out",
    [
        (RowPattern(2, 1), RowPattern(3, 0), 11, 13),  # paper family, sizes not divisible
        (RowPattern(4, 3, 2), RowPattern(5, 4, 3), 17, 9),  # extended, runs that wrap the period
        (RowPattern(1, 0), RowPattern(1, 0), 5, 4),  # dp = 1: no dropout
        (RowPattern(6, 5), RowPattern(2, 0), 4, 6),  # n < dp: the input keeps nothing
    ],
)
def test_row_linear_gradcheck(in_p, out_p, n_in, n_out):
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(n_out, n_in, generator=gen, dtype=F64, requires_grad=True)
    bias = torch.randn(n_out, generator=gen, dtype=F64, requires_grad=True)
    x = torch.randn(3, in_p.kept_count(n_in), generator=gen, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: row_pattern_linear(*t, in_p, out_p), (x, weight, bias))


@pytest.mark.parametrize("n_out, n_in", [(4, 6), (6, 4)])
def test_tile_linear_never_reads_a_skipped_tile(n_out, n_in):
    """NaN in every skipped tile changes nothing: a skipped tile is never read (2 x 3 and 3 x 2 tile grids, dp 2
    not dividing 3 tile columns or rows, so the layout pads them)."""
    torch.manual_seed(0)
    q = TilePattern(2, 0, 2, 1)  # dp 2, offset 0, tile 2, keep 1
    w, x = torch.randn(n_out, n_in), torch.randn(5, n_in, requires_grad=True)
    mask = q.keep_mask(n_out, n_in)
    y = torch.ops.approxdrop.tile_linear(x, w.masked_fill(~mask, float("nan")), None, 2, 1, 2, [0])
    torch.testing.assert_close(y, x @ (w * mask * q.scale).T)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (w * mask * q.scale).sum(0).expand(5, n_in))


@pytest.mark.parametrize(
    "pattern, n_in, n_out",
    [
        (TilePattern(2, 1, tile=3), 11, 7),  # partial tiles
        (TilePattern(3, 2, tile=2, keep=2), 9, 10),
        (TilePattern(4, 3, tile=16), 5, 6),  # one tile
        (TilePattern(1, 0, tile=4), 6, 5),  # dp = 1
    ],
)
def test_tile_linear_gradcheck(pattern, n_in, n_out):
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(n_out, n_in, generator=gen, dtype=F64, requires_grad=True)
    bias = torch.randn(n_out, generator=gen, dtype=F64, requires_grad=True)
    x = torch.randn(3, n_in, generator=gen, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: tile_pattern_linear(*t, pattern), (x, weight, bias))


def test_opcheck_all_ops():
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(13, 11, generator=gen, dtype=F64, requires_grad=True)
    bias = torch.randn(13, generator=gen, dtype=F64, requires_grad=True)
    x_row = torch.randn(5, RowPattern(3, 1, 2).kept_count(11), generator=gen, dtype=F64, requires_grad=True)
    x_tile = torch.randn(5, 11, generator=gen, dtype=F64, requires_grad=True)
    torch.library.opcheck(OPS_NS.row_linear, ([x_row], weight, bias, 3, 2, [1], 4, 1, [3]))
    torch.library.opcheck(OPS_NS.row_linear, ([x_row], weight, None, 3, 2, [1], 1, 1, [0]))
    torch.library.opcheck(OPS_NS.tile_linear, (x_tile, weight, bias, 3, 2, 4, [2]))
    torch.library.opcheck(OPS_NS.tile_linear, (x_tile, weight, bias, 3, 2, 4, [2, 0, 2]))  # 3 groups of rows
    grad_tile = torch.randn(5, 13, dtype=F64)
    torch.library.opcheck(OPS_NS.tile_linear_backward, (grad_tile, x_tile.detach(), weight.detach(), 3, 1, 4, [1, 0]))
    grad_row = torch.randn(5, RowPattern(4, 3).kept_count(13), dtype=F64)
    blocks = row_linear(x_row.detach(), weight.detach(), None, 3, 1, 2, 4, 3, 1)[1]
    args = ([grad_row], [x_row.detach()], weight.detach(), blocks, 3, 2, [1], 4, 1, [3])
    torch.library.opcheck(OPS_NS.row_linear_backward, args)
    torch.library.opcheck(
        OPS_NS.tile_linear_backward, (torch.randn(5, 13, dtype=F64), x_tile.detach(), weight.detach(), 3, 2, 4, [2])
    )


def _expand(compact, pattern, n):
    full = compact.new_zeros(*compact.shape[:-1], n)
    full[..., pattern.keep_mask(n)] = compact
    return full


@pytest.mark.parametrize(
    "dist",
    [
        PatternDistribution(((2, 1), (3, 1)), (0.4, 0.6)),
        PatternDistribution(((1, 1), (4, 3), (5, 2), (7, 1)), (0.1, 0.3, 0.4, 0.2)),
    ],
)
def test_row_dropout_is_exactly_unbiased(dist):
    """Sum over every pattern and offset, weighted by its probability, of the layer's output with
    dropout on its input equals the no-dropout output (docs/method.md §4b)."""
    gen = torch.Generator().manual_seed(4)
    weight, bias = torch.randn(9, 23, generator=gen, dtype=F64), torch.randn(9, generator=gen, dtype=F64)
    x = torch.randn(4, 23, generator=gen, dtype=F64)
    expected = torch.zeros(4, 9, dtype=F64)
    for pattern, prob in dist.enumerate():
        kept_x = x[:, pattern.keep_mask(23)]
        expected += prob * row_pattern_linear(kept_x, weight, bias, pattern, RowPattern(1, 0))
    torch.testing.assert_close(expected, torch.nn.functional.linear(x, weight, bias), rtol=1e-12, atol=1e-12)
    # and a dropped output site keeps every unit's expectation: E[mask * scale * y] = y
    y = torch.nn.functional.linear(x, weight, bias)
    mean = sum(
        prob * pattern.scale * _expand(y[:, pattern.keep_mask(9)], pattern, 9) for pattern, prob in dist.enumerate()
    )
    torch.testing.assert_close(mean, y, rtol=1e-12, atol=1e-12)


def test_tile_dropout_is_exactly_unbiased():
    dist = PatternDistribution(((2, 1), (3, 2), (4, 1)), (0.3, 0.3, 0.4), kind="tile", tile=3)
    gen = torch.Generator().manual_seed(5)
    weight, bias = torch.randn(10, 14, generator=gen, dtype=F64), torch.randn(10, generator=gen, dtype=F64)
    x = torch.randn(4, 14, generator=gen, dtype=F64)
    mean = sum(prob * tile_pattern_linear(x, weight, bias, pattern) for pattern, prob in dist.enumerate())
    torch.testing.assert_close(mean, torch.nn.functional.linear(x, weight, bias), rtol=1e-12, atol=1e-12)


def test_dropped_weights_get_exactly_zero_gradient():
    weight = torch.randn(12, 10, requires_grad=True)
    bias = torch.randn(12, requires_grad=True)
    in_p, out_p = RowPattern(2, 1), RowPattern(3, 2)
    row_pattern_linear(torch.randn(4, 5), weight, bias, in_p, out_p).square().sum().backward()
    kept = out_p.keep_mask(12)[:, None] & in_p.keep_mask(10)[None, :]
    assert (weight.grad[~kept] == 0).all() and (weight.grad[kept] != 0).all()
    assert (bias.grad[~out_p.keep_mask(12)] == 0).all()
    weight.grad = None
    tile_p = TilePattern(2, 0, tile=4)
    tile_pattern_linear(torch.randn(4, 10), weight, None, tile_p).square().sum().backward()
    assert torch.equal(weight.grad != 0, tile_p.keep_mask(12, 10))


@pytest.mark.parametrize(
    "call",
    [
        lambda x, w, b: row_linear(x[:, :5], w, b, 2, 1, 1, 3, 0, 1)[0],
        lambda x, w, b: tile_pattern_linear(x, w, b, TilePattern(3, 1, tile=4, keep=2)),
    ],
)
def test_backward_saves_only_x_and_weight(call):
    """No mask or index tensor is kept for backward: the pattern travels as integers (row also saves the
    kept weight block it gathered, [3, 5] here)."""
    saved = []
    x, w, b = torch.randn(3, 11), torch.randn(7, 11, requires_grad=True), torch.randn(7, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = call(x, w, b)
    assert len(saved) in (2, 3) and {tuple(t.shape) for t in saved} <= {tuple(w.shape), (3, 5), (3, 11)}
    y.sum().backward()
    assert w.grad is not None


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: row_pattern_linear(torch.randn(2, 7), torch.randn(4, 10), None, RowPattern(2, 0), RowPattern(1, 0)),
            "last dimension 5",
        ),
        (
            lambda: row_pattern_linear(torch.randn(2, 5), torch.randn(10), None, RowPattern(2, 0), RowPattern(1, 0)),
            "weight must be 2-D",
        ),
        (
            lambda: row_pattern_linear(
                torch.randn(2, 5), torch.randn(4, 10), torch.randn(3), RowPattern(2, 0), RowPattern(1, 0)
            ),
            "bias must have shape \\(4,\\)",
        ),
        (lambda: row_linear(torch.randn(2, 5), torch.randn(4, 10), None, 0, 0, 1, 1, 0, 1), "dp must be in"),
        (lambda: row_linear(torch.randn(2, 5), torch.randn(4, 10), None, 2, 0, 1, 2, 5, 1), "offset must be in"),
        (
            lambda: tile_pattern_linear(torch.randn(2, 9), torch.randn(4, 10), None, TilePattern(2, 0)),
            "last dimension 10",
        ),
        (lambda: tile_linear(torch.randn(2, 10), torch.randn(4, 10), None, 2, 0, 3, 4), "keep must be in"),
        (lambda: tile_linear(torch.randn(2, 10), torch.randn(4, 10), None, 2, 0, 1, 0), "tile must be in"),
    ],
)
def test_bad_input_raises_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x, w: row_pattern_linear(x, w, None, RowPattern(1, 0), RowPattern(1, 0)), "row_linear: x"),
        (lambda x, w: tile_pattern_linear(x, w, None, TilePattern(2, 0)), "tile_linear: x"),
        (lambda x, w: ops.grouped_row_pattern_linear(x, w, None, [RowPattern(1, 0)], [RowPattern(1, 0)]), "x"),
        (lambda x, w: ops.grouped_tile_pattern_linear(x, w, None, [TilePattern(2, 0)]), "x"),
        (
            lambda x, w: ops.grouped_row_pattern_linear_compact([x], w, None, [RowPattern(1, 0)], [RowPattern(1, 0)]),
            "x",
        ),
        (
            lambda x, w: ops.grouped_row_pattern_linear_compact(x, w, None, [RowPattern(1, 0)], [RowPattern(1, 0)]),
            "row_linear: xs?",
        ),
    ],
)
@pytest.mark.parametrize("as_given", [np.asarray, lambda t: t.tolist()], ids=["numpy", "list"])
def test_an_operand_that_is_not_a_tensor_is_named_at_entry(call, message, as_given):
    """NumPy 2's arrays have a device too: the device check said every operand was on cpu and named none."""
    x, w = torch.randn(3, 10), torch.randn(4, 10)
    with pytest.raises(ValueError, match=f"{message}.* must be a (torch.Tensor|list of tensors)"):
        call(as_given(x), w)
    with pytest.raises(ValueError, match="weight must be a torch.Tensor, got NoneType"):
        row_pattern_linear(x, None, None, RowPattern(1, 0), RowPattern(1, 0))
    with pytest.raises(ValueError, match="bias must be a torch.Tensor, got ndarray"):
        tile_pattern_linear(x, w, np.zeros(4), TilePattern(2, 0))


def test_a_tile_pattern_that_keeps_every_tile_is_the_dense_layer_with_no_layout(monkeypatch):
    """keep == dp keeps every tile at scale 1 whatever dp: no per-class layout (its size grew with keep)."""
    from approxdrop.ops import tile_layout

    monkeypatch.setattr(tile_layout, "_layout", lambda *a: pytest.fail("a layout was built"))
    x, w, b = torch.randn(3, 10, requires_grad=True), torch.randn(4, 10, requires_grad=True), torch.randn(4)
    y = tile_pattern_linear(x, w, b, TilePattern(10**7, 5, 4, 10**7))
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w, b))
    got = torch.autograd.grad(y.square().sum(), (x, w))
    want = torch.autograd.grad(torch.nn.functional.linear(x, w, b).square().sum(), (x, w))
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r)


OPS = (
    "row_linear",
    "row_linear_backward",
    "tile_linear",
    "tile_linear_backward",
)


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_an_autocast_rule_on_cpu_and_cuda(op):
    """Registered through the dispatcher for both device types (the CUDA one is checked without a GPU)."""
    for key in ("AutocastCPU", "AutocastCUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"approxdrop::{op}", key)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "call",
    [
        lambda x, w, b: row_linear(x[:, :5], w, b, 2, 1, 1, 3, 0, 1)[0],
        lambda x, w, b: row_pattern_linear(x[:, :5], w, b, RowPattern(2, 1), RowPattern(3, 0)),
        lambda x, w, b: tile_pattern_linear(x, w, b, TilePattern(3, 1, tile=4, keep=2)),
    ],
)
def test_autocast_casts_like_linear_and_backward_agrees(call, dtype):
    """In a CPU autocast region the op runs in the region's dtype (as F.linear does): the same result
    as the op on inputs cast by hand, and a backward that gives float32 leaves float32 gradients."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(5, 11, generator=gen, requires_grad=True)
    w = torch.randn(9, 11, generator=gen, requires_grad=True)
    b = torch.randn(9, generator=gen, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        y = call(x, w, b)
    assert y.dtype == dtype
    torch.testing.assert_close(y, call(x.to(dtype), w.to(dtype), b.to(dtype)), rtol=0, atol=0)
    y.float().square().sum().backward()
    for leaf in (x, w, b):
        assert leaf.grad.dtype == torch.float32 and torch.isfinite(leaf.grad).all()
    with torch.autocast("cpu", dtype=dtype):  # float64 is left alone, as F.linear leaves it
        assert call(x.double(), w.double(), b.double()).dtype == torch.float64


def _row_call(x, w, b):
    return row_linear(x, w, b, 2, 0, 1, 1, 0, 1)[0]


def _tile_call(x, w, b):
    return tile_linear(x, w, b, 2, 0, 1, 4)


@pytest.mark.parametrize("call, width", [(_row_call, 5), (_tile_call, 10)])
@pytest.mark.parametrize(
    "x_kind, w_kind, b_kind, message",
    [
        ("cpu", "meta", None, "every tensor must be on one device, got x on cpu, weight on meta"),
        ("meta", "cpu", "cpu", "every tensor must be on one device"),
        ("cpu", "cpu", "meta", "bias on meta"),
        ("f64", "f32", None, "same floating dtype, got x torch.float64, weight torch.float32"),
        ("f32", "f32", "f64", "bias torch.float64"),
        ("i64", "i64", None, "same floating dtype"),
    ],
)
def test_mixed_devices_or_dtypes_raise_instead_of_reading_garbage(call, width, x_kind, w_kind, b_kind, message):
    def make(kind, *shape):
        if kind is None:
            return None
        if kind == "meta":
            return torch.empty(*shape, device="meta")
        return torch.ones(
            *shape, dtype={"cpu": torch.float32, "f32": torch.float32, "f64": torch.float64}.get(kind, torch.long)
        )

    with pytest.raises(ValueError, match=message):
        call(make(x_kind, 2, width), make(w_kind, 4, 10), make(b_kind, 4))


W13, BLOCK = torch.randn(13, 11), [torch.empty(4, 6)]  # W and its kept block [k_out, k_in] in the cases below


@pytest.mark.parametrize(
    "call, message",
    [
        (  # k_out of RowPattern(3, 1) on 13 rows is 4
            lambda: row_linear_backward(torch.randn(5, 3), torch.randn(5, 6), W13, BLOCK, 2, 0, 1, 3, 1, 1),
            r"grad_y must have shape \(5, 4\).*got \(5, 3\)",
        ),
        (
            lambda: row_linear_backward(torch.randn(4, 4), torch.randn(5, 6), W13, BLOCK, 2, 0, 1, 3, 1, 1),
            r"grad_y must have shape \(5, 4\)",
        ),
        (
            lambda: row_linear_backward(torch.randn(5, 4), torch.randn(5, 7), W13, BLOCK, 2, 0, 1, 3, 1, 1),
            "x must have last dimension 6",
        ),
        (
            lambda: tile_linear_backward(torch.randn(5, 12), torch.randn(5, 11), torch.randn(13, 11), 3, 2, 2, 4),
            r"grad_y must have shape \(5, 13\).*got \(5, 12\)",
        ),
        (
            lambda: tile_linear_backward(torch.randn(5, 13), torch.randn(5, 10), torch.randn(13, 11), 3, 2, 2, 4),
            "x must have last dimension 11",
        ),
        (
            lambda: tile_linear_backward(
                torch.randn(5, 13), torch.randn(5, 11), torch.randn(13, 11).double(), 3, 2, 2, 4
            ),
            "same floating dtype",
        ),
        (
            lambda: tile_linear_backward(
                torch.randn(5, 13), torch.randn(5, 11), torch.randn(13, 11, device="meta"), 3, 2, 2, 4
            ),
            "one device",
        ),
    ],
)
def test_backward_ops_check_grad_y_and_x_against_the_forward_shapes(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    "pattern, n_out, n_in",
    [
        (TilePattern(4, 1, tile=32), 10, 300),  # one partial tile row: 10 rows, not dp * T
        (TilePattern(16, 3, tile=64), 128, 128),  # a 2 x 2 tile grid, dp >> grid
        (TilePattern(16, 15, tile=64, keep=9), 128, 128),  # kept tile columns that wrap
        (TilePattern(3, 2, tile=8, keep=2), 4 * 8 + 5, 7 * 8 + 1),  # 5 x 8 grid: dp + 2 rows, partial tiles
        (TilePattern(5, 4, tile=6, keep=1), 100, 9),  # two tile columns, 17 tile rows
        (TilePattern(7, 6, tile=5, keep=3), 3, 70),  # one tile row narrower than the tile
    ],
)
def test_tile_linear_on_grids_smaller_than_a_period(pattern, n_out, n_in):
    gen = torch.Generator().manual_seed(7)
    weight = torch.randn(n_out, n_in, generator=gen, dtype=F64, requires_grad=True)
    bias = torch.randn(n_out, generator=gen, dtype=F64, requires_grad=True)
    x = torch.randn(2, 3, n_in, generator=gen, dtype=F64, requires_grad=True)
    _assert_same_forward_backward(tile_pattern_linear, tile_linear_reference, (x, weight, bias, pattern))


@pytest.mark.parametrize(
    "pattern, n_out, n_in",
    [
        (TilePattern(4, 1, tile=32), 10, 2048),
        (TilePattern(16, 1, tile=32), 10, 2048),
        (TilePattern(16, 5, tile=1024), 2048, 2048),
        (TilePattern(4, 0, tile=1024, keep=3), 2048, 2048),
        (TilePattern(5, 2, tile=16, keep=2), 250, 130),
    ],
)
def test_tile_blocks_are_bounded_by_the_weight_not_by_a_period(pattern, n_out, n_in):
    """The batched GEMM's weight blocks hold at most the weight plus one tile row per class (before:
    a 10-row layer computed dp * T rows, and tile 1024 on a 2048^2 weight padded it to (dp * T)^2)."""
    weight = torch.zeros(n_out, n_in)
    blocks = _TileLayout(pattern, n_out, n_in, weight.device).weight_blocks(weight)
    classes = min(pattern.dp, -(-n_out // pattern.tile))
    assert blocks.shape[0] == classes and blocks.shape[1] <= -(-n_out // classes) + pattern.tile
    assert blocks.numel() <= (n_out + classes * pattern.tile) * n_in
    if n_out < pattern.tile:
        assert blocks.shape[1] == n_out  # a one-tile-row layer computes exactly its rows


def test_torch_compile_traces_the_ops():
    in_p, out_p, tile_p = RowPattern(2, 1), RowPattern(3, 0), TilePattern(2, 1, tile=4)

    def f(x, w, b):
        return tile_pattern_linear(row_pattern_linear(x, w, b, in_p, out_p), w[:4, :3], None, tile_p)

    x, w, b = torch.randn(4, 6), torch.randn(9, 12), torch.randn(9)
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(x, w, b), f(x, w, b))


# The CPU training path: row_linear gathers the kept weight block once and backward reuses it.

GATHERED_CASES = [
    (RowPattern(2, 1), RowPattern(3, 0), 11, 13),  # strided rows and columns, sizes not divisible
    (RowPattern(4, 3, 2), RowPattern(5, 4, 3), 17, 9),  # extended: index selectors
    (RowPattern(1, 0), RowPattern(1, 0), 5, 4),  # nothing dropped: no block, the GEMMs read W
    (RowPattern(1, 0), RowPattern(3, 2), 7, 8),  # every input kept (a first layer): kept rows read in place
    (RowPattern(3, 1), RowPattern(1, 0), 7, 8),  # every output kept, strided columns
    (RowPattern(6, 5), RowPattern(2, 0), 4, 6),  # n < dp: the input keeps nothing
]


@given(row_patterns(), row_patterns(), st.integers(1, 40), st.integers(1, 40), st.booleans(), st.integers(0, 2**16))
def test_gathered_row_linear_matches_dense_masked_reference(in_p, out_p, n_in, n_out, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(n_out, n_in, generator=gen, dtype=F64, requires_grad=True)
    bias = torch.randn(n_out, generator=gen, dtype=F64, requires_grad=True) if with_bias else None
    x = torch.randn(2, 3, in_p.kept_count(n_in), generator=gen, dtype=F64, requires_grad=True)
    _assert_same_forward_backward(row_pattern_linear, row_linear_reference, (x, weight, bias, in_p, out_p))


@pytest.mark.parametrize("in_p, out_p, n_in, n_out", GATHERED_CASES)
def test_gathered_row_linear_gradcheck(in_p, out_p, n_in, n_out):
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(n_out, n_in, generator=gen, dtype=F64, requires_grad=True)
    bias = torch.randn(n_out, generator=gen, dtype=F64, requires_grad=True)
    x = torch.randn(3, in_p.kept_count(n_in), generator=gen, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: row_pattern_linear(*t, in_p, out_p), (x, weight, bias))


@pytest.mark.parametrize("in_p, out_p, n_in, n_out", GATHERED_CASES)
def test_opcheck_gathered_ops(in_p, out_p, n_in, n_out):
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(n_out, n_in, generator=gen, dtype=F64, requires_grad=True)
    bias = torch.randn(n_out, generator=gen, dtype=F64, requires_grad=True)
    x = torch.randn(5, in_p.kept_count(n_in), generator=gen, dtype=F64, requires_grad=True)
    ints = (in_p.dp, in_p.keep, [in_p.offset], out_p.dp, out_p.keep, [out_p.offset])
    torch.library.opcheck(OPS_NS.row_linear, ([x], weight, bias, *ints))
    torch.library.opcheck(OPS_NS.row_linear, ([x], weight, None, *ints))
    _, blocks = OPS_NS.row_linear([x.detach()], weight.detach(), None, *ints)
    grad_y = torch.randn(5, out_p.kept_count(n_out), generator=gen, dtype=F64)
    for need_grad_x in (True, False):
        args = ([grad_y], [x.detach()], weight.detach(), blocks, *ints, need_grad_x)
        torch.library.opcheck(OPS_NS.row_linear_backward, args)


def test_gathered_block_is_the_kept_weight_block_or_empty_when_every_input_is_kept():
    weight = torch.randn(12, 10)
    _, (block,) = row_linear(torch.randn(3, 5), weight, None, 2, 1, 1, 3, 2, 1)
    assert torch.equal(block, weight[2::3, 1::2]) and block.is_contiguous()
    block.zero_()  # a copy, never a view of W (an op output may not alias an input)
    assert weight.abs().sum() > 0
    _, blocks = row_linear(torch.randn(3, 10), weight, None, 1, 0, 1, 3, 2, 1)
    assert blocks == []


def test_gathered_backward_reads_the_saved_block_not_the_weight():
    """Backward reuses the block forward gathered: given another block, grad_x follows that block."""
    x, weight, grad_y = torch.randn(4, 5), torch.randn(9, 10), torch.randn(4, 3)
    other = torch.randn(3, 5)  # not W[0::3, 1::2]
    grad_x, _, _ = row_linear_backward(grad_y, x, weight, [other], 2, 1, 1, 3, 0, 1)
    torch.testing.assert_close(grad_x, RowPattern(2, 1).scale * grad_y @ other)
    with pytest.raises(ValueError, match=r"need no blocks or one per \(out, in\) offset pair \(1\), got 2"):
        row_linear_backward(grad_y, x, weight, [other, other], 2, 1, 1, 3, 0, 1)


def test_gathered_autograd_saves_x_weight_and_the_block():
    saved = []
    x, w, b = torch.randn(3, 5), torch.randn(7, 11, requires_grad=True), torch.randn(7, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = row_pattern_linear(x, w, b, RowPattern(2, 1), RowPattern(3, 0))
    assert sorted(tuple(t.shape) for t in saved) == [(3, 5), (3, 5), (7, 11)]  # x, W, the [k_out, k_in] block
    y.sum().backward()
    assert w.grad is not None and b.grad is not None


def test_gathered_block_is_not_stale_after_an_optimizer_step():
    """The block is gathered anew by every forward: a second step uses the updated weight, and an
    in-place change of W between forward and backward is refused, as autograd refuses it for F.linear."""
    in_p, out_p = RowPattern(2, 0), RowPattern(2, 1)
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(8, 6, generator=gen, dtype=F64, requires_grad=True)
    opt = torch.optim.SGD([weight], lr=0.5, momentum=0.9)
    x = torch.randn(4, 3, generator=gen, dtype=F64, requires_grad=True)
    for _ in range(2):
        opt.zero_grad()
        y = row_pattern_linear(x, weight, None, in_p, out_p)
        got = torch.autograd.grad(y.square().sum(), (x, weight))
        want = torch.autograd.grad(row_linear_reference(x, weight, None, in_p, out_p).square().sum(), (x, weight))
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
        weight.grad = got[1]
        opt.step()
    y = row_pattern_linear(x, weight, None, in_p, out_p)
    with torch.no_grad():
        weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.parametrize(
    "in_p, out_p",
    [
        (RowPattern(2, 1), RowPattern(3, 2)),
        (RowPattern(1, 0), RowPattern(4, 1)),
        (RowPattern(3, 0), RowPattern(1, 0)),
        (RowPattern(4, 3, 2), RowPattern(3, 1)),  # index columns
        (RowPattern(2, 1), RowPattern(5, 4, 3)),  # index rows
    ],
)
@pytest.mark.parametrize("batch", [6, 0])
def test_gathered_gradient_is_exactly_zero_outside_the_kept_block(in_p, out_p, batch):
    """grad_w is written without a zero fill of the whole tensor: what lies outside the kept block is
    still exactly zero, also when the allocator hands back memory full of NaN (and for an empty batch)."""
    n_out, n_in = 48, 40
    weight, bias = torch.randn(n_out, n_in, requires_grad=True), torch.randn(n_out, requires_grad=True)
    x = torch.randn(batch, in_p.kept_count(n_in), requires_grad=True)
    y = row_pattern_linear(x, weight, bias, in_p, out_p)
    for _ in range(4):  # freed blocks of grad_w's size, full of NaN, for the allocator to reuse
        torch.full((n_out, n_in), float("nan"))
    y.square().sum().backward()
    kept = out_p.keep_mask(n_out)[:, None] & in_p.keep_mask(n_in)[None, :]
    assert (weight.grad[~kept] == 0).all() and (weight.grad[kept] != 0).all() == (batch > 0)
    assert weight.grad.is_contiguous() and (bias.grad[~out_p.keep_mask(n_out)] == 0).all()


def test_torch_compile_traces_the_gathered_op_forward_and_backward():
    in_p, out_p = RowPattern(2, 1), RowPattern(3, 0)
    x, b = torch.randn(4, 6), torch.randn(9, requires_grad=True)
    w = torch.randn(9, 12, requires_grad=True)
    compiled = torch.compile(lambda x, w, b: row_pattern_linear(x, w, b, in_p, out_p), fullgraph=True)
    y = compiled(x, w, b)
    torch.testing.assert_close(y, row_linear_reference(x, w, b, in_p, out_p))
    got = torch.autograd.grad(y.square().sum(), (w, b))
    want = torch.autograd.grad(row_linear_reference(x, w, b, in_p, out_p).square().sum(), (w, b))
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e)


def test_the_row_mlp_trains_through_the_gathered_op_on_cpu():
    """ApproxDropoutMLP's row path saves each layer's kept block in forward (no gather in backward)."""
    from approxdrop.models import ApproxDropoutMLP

    model = ApproxDropoutMLP(
        [8, 12, 12, 2], 0.5, method="row", executor="compact", generator=torch.Generator().manual_seed(0)
    )
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        y = model(torch.randn(4, 8))
    k = [d.kept_count(12) for d in model.last_patterns[1:]]  # 6 and 6
    assert (k[1], k[0]) in saved and (2, k[1]) in saved  # layer 2's and layer 3's blocks
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_torch_export_keeps_the_registered_ops():
    """torch.export traces the pattern linears to the registered ops (one row op, one tile op with groups),
    and the exported program computes what eager does."""
    from approxdrop.ops import grouped_tile_pattern_linear

    in_p, out_p = RowPattern(2, 1), RowPattern(3, 0)
    tiles = [TilePattern(2, o, tile=2) for o in (1, 0, 1)]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.w2 = torch.nn.Parameter(torch.randn(9, 12)), torch.nn.Parameter(torch.randn(5, 3))

        def forward(self, x):  # x [B, 6]: the kept inputs of in_p on 12 units
            h = row_pattern_linear(x, self.w1, None, in_p, out_p)  # [B, 3]
            return grouped_tile_pattern_linear(h, self.w2, None, tiles)  # [B, 5]

    net, x = Net(), torch.randn(7, 6)
    program = torch.export.export(net, (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"approxdrop.row_linear.default", "approxdrop.tile_linear.default"} <= targets, targets
    torch.testing.assert_close(program.module()(x), net(x))


@given(
    tile_patterns(), st.integers(1, 6), st.integers(1, 9), st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**16)
)
def test_grouped_tile_matches_dense_masked_reference(pattern, groups, batch, n_in, n_out, seed):
    """One offset per batch group (fewer rows than groups too): each group's rows get its pattern's DropConnect."""
    from approxdrop.ops import grouped_tile_pattern_linear

    gen = torch.Generator().manual_seed(seed)
    offsets = torch.randint(pattern.dp, (groups,), generator=gen).tolist()
    patterns = [TilePattern(pattern.dp, o, pattern.tile, pattern.keep) for o in offsets]
    weight = torch.randn(n_out, n_in, generator=gen, dtype=F64, requires_grad=True)
    bias = torch.randn(n_out, generator=gen, dtype=F64, requires_grad=True)
    x = torch.randn(2, batch, n_in, generator=gen, dtype=F64, requires_grad=True)
    _assert_same_forward_backward(grouped_tile_pattern_linear, tile_linear_reference, (x, weight, bias, patterns))


def _converted_encoder_layer() -> nn.Module:
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=32, dropout=0.3, batch_first=True)
    ad.convert(layer, p=0.5, method="row-g4")
    return layer


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize(
    "make, x",
    [
        (lambda: ad.ApproxDropoutMLP([8, 32, 4], 0.5, "row-g4"), torch.randn(16, 8)),
        (_converted_encoder_layer, torch.randn(4, 5, 8)),  # export's copies of its modules: no identity test
    ],
    ids=["mlp", "converted torch layer"],
)
def test_exporting_a_training_mode_model_says_to_export_it_in_eval_mode(make, x, strict):
    """An exported program would replay one draw forever (after draw_patterns it did, silently): refused, with
    the advice; the eval-mode model exports and computes what eager does."""
    model = make()
    ad.draw_patterns(model)
    with pytest.raises(Exception, match=r"export it in eval mode \(model.eval\(\)\)"):
        torch.export.export(model, (x,), strict=strict)
    model.eval()
    torch.testing.assert_close(torch.export.export(model, (x,), strict=strict).module()(x), model(x))


def test_the_registered_ops_keep_their_own_docstrings():
    """help(ops.row_linear) shows what the op computes, not torch's text about CustomOpDef."""
    for op in (ops.row_linear, ops.row_linear_backward, ops.tile_linear, ops.tile_linear_backward):
        doc = inspect.getdoc(op)
        assert doc and not doc.startswith("CustomOpDef"), doc


FAKE_CASES = [  # (op, x shape, weight shape, patterns): keep > 1 builds its kept index with nonzero
    (ad.row_pattern_linear, (5, 8), (9, 13), (RowPattern(3, 1, 2), RowPattern(3, 0, 2))),
    (ad.tile_pattern_linear, (5, 13), (7, 13), (TilePattern(2, 1, 4),)),
    (ops.grouped_row_pattern_linear, (6, 13), (9, 13), ([RowPattern(3, o, 2) for o in (0, 1, 2)],) * 2),
    (ops.grouped_tile_pattern_linear, (6, 13), (7, 13), ([TilePattern(2, o, 4) for o in (0, 1)],)),
]


@pytest.mark.parametrize("op, x_shape, w_shape, patterns", FAKE_CASES)
def test_the_public_ops_infer_shapes_on_meta_and_fake_tensors_and_cache_no_fake_tensor(op, x_shape, w_shape, patterns):
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    def run(make):
        return op(make(x_shape), make(w_shape), make(w_shape[:1]), *patterns)

    real = run(torch.randn)
    assert run(lambda s: torch.empty(s, device="meta")).shape == real.shape
    with FakeTensorMode():
        fake = run(torch.empty)
    assert isinstance(fake, FakeTensor) and fake.shape == real.shape
    again = run(torch.randn)  # the index caches hold real tensors still
    assert type(again) is torch.Tensor and again.shape == real.shape


def test_a_one_group_tile_op_takes_a_vmapped_sample_and_double_backward_on_1d_x():
    """Per-sample gradients (``vmap(grad(loss))`` hands the op a 1-D sample) and create_graph on a 1-D x."""
    pattern = TilePattern(2, 1, 4)
    x, w = torch.randn(5, 13, dtype=torch.float64), torch.randn(7, 13, dtype=torch.float64, requires_grad=True)

    def loss(w, sample):
        return ad.tile_pattern_linear(sample, w, None, pattern).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(w, x)  # [5, 7, 13]
    expected = torch.stack([torch.autograd.grad(loss(w, sample), w)[0] for sample in x])
    torch.testing.assert_close(per_sample, expected)
    (g,) = torch.autograd.grad(loss(w, x[0]), w, create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), w)
    masked = w * pattern.keep_mask(7, 13).double() * pattern.scale  # the dense reference
    (g_ref,) = torch.autograd.grad((masked @ x[0]).square().sum(), w, create_graph=True)
    torch.testing.assert_close(gg, torch.autograd.grad(g_ref.square().sum(), w)[0])


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: ops.row_linear([torch.ones(2, 5)] * 2, torch.randn(7, 10), None, 2, 1, [0, 5], 1, 1, [0, 0]),
            r"^row_linear: in_offsets\[1\]: offset must be in \[0, 1\], got 5$",
        ),
        (
            lambda: ops.row_linear([torch.ones(2, 5)], torch.randn(7, 10), None, 2, 1, [0], 3, 1, [-1]),
            r"^row_linear: out_offsets\[0\]: offset must be in \[0, 2\], got -1$",
        ),
        (
            lambda: ops.row_linear([torch.ones(2, 5)], torch.randn(7, 10), None, 2, 3, [0], 1, 1, [0]),
            r"^row_linear: in_keep must be in \[1, 2\], got 3$",
        ),
        (
            lambda: ops.row_linear([torch.ones(2, 10)], torch.randn(7, 10), None, 1, 1, [0], 0, 1, [0]),
            r"^row_linear: out_dp must be in \[1, ",
        ),
        (
            lambda: ops.row_linear_backward(
                [torch.ones(2, 7)], [torch.ones(2, 5)], torch.randn(7, 10), [], 2, 1, [2], 1, 1, [0]
            ),
            r"^row_linear_backward: in_offsets\[0\]: offset must be in \[0, 1\], got 2$",
        ),
        (
            lambda: ops.tile_linear(torch.ones(2, 10), torch.randn(7, 10), None, 2, 3, 4, [0]),
            r"^tile_linear: keep must be in \[1, 2\], got 3$",
        ),
        (
            lambda: ops.tile_linear(torch.ones(4, 10), torch.randn(7, 10), None, 2, 1, 4, [0, 2]),
            r"^tile_linear: offsets\[1\]: offset must be in \[0, 1\], got 2$",
        ),
        (
            lambda: ops.tile_linear(torch.ones(2, 10), torch.randn(7, 10), None, 2, 1, 0, [0]),
            r"^tile_linear: tile must be in \[1, ",
        ),
        (  # the tile op reads every input column: not "the kept inputs"
            lambda: tile_pattern_linear(torch.ones(2, 9), torch.randn(7, 10), None, TilePattern(2, 0, 4)),
            r"^tile_linear: x must have last dimension 10 \(the inputs of weight \(7, 10\)\), got shape \(2, 9\)$",
        ),
        (
            lambda: row_pattern_linear(torch.ones(2, 4), torch.randn(7, 10), None, RowPattern(2, 0), ops.FULL),
            r"^row_linear: x must have last dimension 5 \(the kept inputs of weight \(7, 10\)\), got shape \(2, 4\)$",
        ),
    ],
)
def test_registered_ops_name_the_op_and_the_argument_in_integer_errors(call, message):
    """The ops' integer checks said only "offset must be in [0, 1], got 5": not which op, nor which offset of
    which side."""
    with pytest.raises(ValueError, match=message):
        call()
