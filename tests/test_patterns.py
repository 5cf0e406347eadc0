"""RowPattern / TilePattern against a slow loop spec of docs/method.md §3, on random sizes."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from approxdrop import ApproxDropoutMLP, RowPattern, TilePattern
from approxdrop._env import check_int, check_rate
from approxdrop.patterns import periodic_count, periodic_selector


@st.composite
def row_args(draw):
    dp = draw(st.integers(1, 12))
    return dp, draw(st.integers(0, dp - 1)), draw(st.integers(1, dp))


def spec_row_kept(n, dp, offset, keep):
    """The definition, one unit at a time."""
    return [i for i in range(n) if (i - offset) % dp < keep]


def spec_tile_kept(n_out, n_in, dp, offset, tile, keep):
    """Element (i, j) is kept iff its tile (i // T, j // T) is kept."""
    return [[(j // tile - i // tile - offset) % dp < keep for j in range(n_in)] for i in range(n_out)]


@given(row_args(), st.integers(0, 70))
def test_row_pattern_matches_spec(args, n):
    dp, offset, keep = args
    pattern = RowPattern(dp, offset, keep)
    kept = spec_row_kept(n, dp, offset, keep)
    assert pattern.kept_indices(n).tolist() == kept
    assert pattern.keep_mask(n).nonzero().flatten().tolist() == kept
    assert pattern.kept_count(n) == len(kept)
    assert torch.arange(n)[pattern.selector(n)].tolist() == kept
    assert pattern.rate == pytest.approx(1 - keep / dp)
    assert pattern.scale == pytest.approx(dp / keep)


@given(row_args(), st.integers(1, 9), st.integers(0, 40), st.integers(0, 40))
def test_tile_pattern_matches_spec(args, tile, n_out, n_in):
    dp, offset, keep = args
    pattern = TilePattern(dp, offset, tile, keep)
    expected = torch.tensor(spec_tile_kept(n_out, n_in, dp, offset, tile, keep), dtype=torch.bool).reshape(n_out, n_in)
    assert torch.equal(pattern.keep_mask(n_out, n_in), expected)
    assert pattern.kept_count(n_out, n_in) == int(expected.sum())
    grid = pattern.tile_mask(n_out, n_in)
    assert grid.shape == (-(-n_out // tile), -(-n_in // tile))


@given(row_args(), st.integers(1, 6), st.integers(1, 30), st.integers(1, 30))
def test_tile_row_classes_cover_exactly_the_kept_tiles(args, tile, n_out, n_in):
    dp, offset, keep = args
    pattern = TilePattern(dp, offset, tile, keep)
    covered = torch.zeros(n_out, n_in, dtype=torch.int64)
    for rows, cols in pattern.row_classes():
        covered[rows.keep_mask(n_out)[:, None] & cols.keep_mask(n_in)[None, :]] += 1
    assert torch.equal(covered, pattern.keep_mask(n_out, n_in).long())


def test_every_tile_row_and_column_keeps_the_same_share():
    mask = TilePattern(4, 1, tile=8, keep=1).tile_mask(64, 128)  # 8 x 16 tiles
    assert mask.sum(1).tolist() == [4] * 8
    assert mask.sum(0).tolist() == [2] * 16


def test_paper_pattern_rows_are_one_strided_view():
    weight = torch.arange(24.0).reshape(8, 3)
    sel = RowPattern(3, 1).selector(8)
    view = weight[sel]
    assert view.data_ptr() == weight[1].data_ptr() and view.stride() == (9, 1)
    assert view[:, 0].tolist() == [3.0, 12.0, 21.0]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: RowPattern(0, 0), "dp must be in"),
        (lambda: RowPattern(3, 3), "offset must be in \\[0, 2\\], got 3"),
        (lambda: RowPattern(3, -1), "offset must be in"),
        (lambda: RowPattern(3, 0, keep=0), "keep must be in \\[1, 3\\], got 0"),
        (lambda: RowPattern(3, 0, keep=4), "keep must be in"),
        (lambda: RowPattern(2.0, 0), "dp must be an int, got 2.0"),
        (lambda: RowPattern(True, 0), "dp must be an int"),
        (lambda: RowPattern(np.float64(2.0), 0), r"dp must be an int, got np.float64\(2.0\)"),
        (lambda: RowPattern(np.bool_(True), 0), "dp must be an int"),
        (lambda: TilePattern(2, 0, tile="8"), "tile must be an int, got '8'"),
        (lambda: TilePattern(2, 0, tile=0), "tile must be in"),
        (lambda: TilePattern(2, 2), "offset must be in"),
        (lambda: RowPattern(2**70, 0), r"dp must be in \[1, 9223372036854775807\]"),  # not an OverflowError later
        (lambda: TilePattern(2**70, 1, 2), "dp must be in"),
        (lambda: TilePattern(2, 1, tile=2**63), "tile must be in"),
        (lambda: RowPattern(2, 0).keep_mask(-1), "n must be in"),
        (lambda: TilePattern(2, 0).keep_mask(-3, 4), "n_out must be in"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_numpy_integers_are_accepted_and_stored_as_ints():
    row = RowPattern(np.int64(3), np.int32(1), np.uint8(2))
    assert row == RowPattern(3, 1, 2) and hash(row) == hash(RowPattern(3, 1, 2))
    assert all(type(v) is int for v in (row.dp, row.offset, row.keep))
    tile = TilePattern(np.int64(4), np.int64(0), tile=np.int16(8))
    assert tile == TilePattern(4, 0, tile=8) and all(type(v) is int for v in (tile.dp, tile.offset, tile.tile))


@pytest.mark.parametrize("n", [-1, 2.0, True, None, "8"])
@pytest.mark.parametrize("keep", [1, 2])
def test_selector_refuses_a_width_that_is_not_a_count(n, keep):
    """keep_mask, kept_indices and kept_count refused these; selector returned slices like slice(1, -1, 3)."""
    with pytest.raises(ValueError, match="n must be"):
        RowPattern(3, 1, keep).selector(n)


def test_selector_under_compile_is_an_index_of_static_length():
    """Under torch.compile an index of keep > 1 is built without nonzero (whose data-dependent length a model's
    compiled backward could not guard on: test_compile_training) and without sorting a symbolic offset: with a
    symbolic width, offset and keep it selects exactly the kept units in order, forward and backward."""

    def kept_gemm(x, w, dp, offset, keep):  # x [B, n], w [k, 1] -> [B, 1]
        return x[..., periodic_selector(x.shape[-1], dp, offset, keep, x.device)] @ w

    compiled = torch.compile(kept_gemm, fullgraph=True, backend="aot_eager", dynamic=True)
    for n, dp, offset, keep in [(13, 4, 3, 3), (13, 4, 0, 3), (12, 4, 2, 2), (14, 4, 1, 3), (7, 5, 4, 4), (3, 5, 1, 2)]:
        kept = spec_row_kept(n, dp, offset, keep)
        x = torch.randn(2, n, requires_grad=True)
        w = torch.randn(len(kept), 1, requires_grad=True)
        y = compiled(x, w, dp, offset, keep)
        y.sum().backward()
        torch.testing.assert_close(y, x[:, kept] @ w)
        torch.testing.assert_close(x.grad[:, kept], w.detach().t().expand(2, -1))


def test_tile_keep_mask_memory_follows_the_weight_not_the_tile():
    """A tile far larger than the weight (one partial tile): keep_mask and kept_count build no tile-padded grid
    (it was (ceil(n / T) * T)^2 elements, 10^10 here)."""
    pattern = TilePattern(2, 1, tile=100_000)
    mask = pattern.keep_mask(7, 10)
    assert mask.shape == (7, 10) and not mask.any()  # tile (0, 0): (0 - 0 - 1) mod 2 = 1, dropped
    assert TilePattern(2, 0, tile=100_000).keep_mask(7, 10).all()
    assert pattern.kept_count(7, 10) == 0 and TilePattern(3, 0, tile=10**12, keep=2).kept_count(5, 9) == 45


@given(n=st.integers(0, 60), dp=st.integers(1, 12), data=st.data())
def test_periodic_count_in_closed_form_counts_the_kept_units(n, dp, data):
    offset, keep = data.draw(st.integers(0, dp - 1)), data.draw(st.integers(1, dp))
    assert periodic_count(n, dp, offset, keep) == sum((i - offset) % dp < keep for i in range(n))
    assert len(RowPattern(dp, offset, keep).kept_indices(n)) == periodic_count(n, dp, offset, keep)


def test_a_huge_period_costs_no_loop_over_keep():
    """keep = 10**6 on 8 units: the count is arithmetic and the kept index has at most n entries (the one
    dropped residue, (offset + keep) mod dp = 2, wraps around)."""
    q = RowPattern(10**6 + 1, 3, 10**6)
    assert q.kept_count(8) == periodic_count(8, q.dp, q.offset, q.keep) == 7
    assert q.kept_indices(8).tolist() == [0, 1, 3, 4, 5, 6, 7]


def test_zero_dim_tensors_and_float32_numbers_are_read_as_the_numbers_they_hold():
    """A 0-d tensor was refused where a NumPy scalar was taken, and np.float32(0.3) became 0.30000001192092896:
    a rate for which no law was searched."""
    assert RowPattern(torch.tensor(3), torch.tensor(1)) == RowPattern(3, 1)
    assert ApproxDropoutMLP([8, 16, 4], p=torch.tensor(0.3)).p == 0.3
    assert check_rate(np.float32(0.3)) == 0.3 and check_rate(np.float16(0.1)) == 0.1
    assert check_rate(torch.tensor(0.3, dtype=torch.bfloat16)) == 0.30078125  # bfloat16's own value
    for bad in (torch.tensor(True), torch.tensor([0.5]), torch.tensor(0.5 + 0j), torch.tensor(1.0)):
        with pytest.raises(ValueError, match=r"must be a number in \[0, 1\), got tensor"):
            check_rate(bad)
    with pytest.raises(ValueError, match=r"must be an int, got tensor\(2\.\)"):
        check_int("n", torch.tensor(2.0), 1)
