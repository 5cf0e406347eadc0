"""The shared helpers under the row op's PyTorch path (``approxdrop.ops.common``) against plain indexing: the
one-op strided block view, the scaled GEMM that never reads its ``like`` or ``out`` input, and the weight
gradient block with exact zeros around it."""

from __future__ import annotations

import pytest
import torch

from approxdrop.ops.common import block_product, scaled_mm, strided_block
from approxdrop.patterns import periodic_selector

SELECTORS = [(1, 0, 1), (2, 1, 1), (3, 2, 1), (4, 1, 3)]  # (dp, offset, keep): all, slices, an index


@pytest.mark.parametrize("rows", [slice(0, 7), slice(1, 7, 2), slice(2, 7, 3), slice(6, 7, 4), slice(7, 7, 2)])
@pytest.mark.parametrize("cols", [slice(0, 5), slice(0, 5, 2), slice(4, 5, 3), slice(3, 5, 5)])
def test_strided_block_is_the_indexed_view(rows, cols):
    base = torch.randn(3, 9, 11)
    t = base[1, 1:8, 2:7]  # [7, 5], a storage offset and a row stride of 11
    view = strided_block(t, rows, cols)
    assert torch.equal(view, t[rows][:, cols])
    if view.numel():
        assert view.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()  # a view, no copy


@pytest.mark.parametrize("scale", [1.0, 2.0, 10 / 3])
def test_scaled_mm_never_reads_like_or_out(scale):
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    want = scale * (a @ b)
    like = torch.full((5, 4), float("nan"), dtype=torch.float64)
    assert torch.allclose(scaled_mm(a, b, scale, like=like), want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(scaled_mm(a, b, scale), want, rtol=1e-12, atol=1e-12)
    full = torch.full((10, 4), float("nan"), dtype=torch.float64)
    scaled_mm(a, b, scale, out=full[1::2])  # a row-strided view, written in place
    assert torch.allclose(full[1::2], want, rtol=1e-12, atol=1e-12)
    assert torch.isnan(full[0::2]).all()


@pytest.mark.parametrize("out_side", SELECTORS)
@pytest.mark.parametrize("in_side", SELECTORS)
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_block_product_is_the_block_with_exact_zeros_around_it(out_side, in_side, scale):
    n_r, n_c = 13, 11
    rows, cols = periodic_selector(n_r, *out_side), periodic_selector(n_c, *in_side)
    k_r, k_c = len(torch.arange(n_r)[rows]), len(torch.arange(n_c)[cols])
    a, b = torch.randn(k_r, 6, dtype=torch.float64), torch.randn(6, k_c, dtype=torch.float64)
    like = torch.full((k_r, k_c), float("nan"), dtype=torch.float64)
    got = block_product(a, b, torch.Size((n_r, n_c)), rows, cols, scale, like=like)
    want = torch.zeros(n_r, n_c, dtype=torch.float64)
    want[torch.arange(n_r)[rows][:, None], torch.arange(n_c)[cols][None, :]] = scale * (a @ b)
    assert got.is_contiguous() and got.shape == (n_r, n_c)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(got == 0, want == 0)  # exact zeros outside the block
