"""The kernels' index arithmetic and GEMM descriptions, checked on CPU.

tests/cpp/pattern_reference.cpp is built with g++ from the kernels' own headers (kernels/*.h) and
loaded with ctypes. It returns kept indices, tile masks and tile classes exactly as the kernels compute
them, and runs each op's pattern GEMMs element by element in float64 over the kernels' launch grid.
Everything is compared with approxdrop.patterns and the PyTorch implementations in approxdrop.ops.
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from approxdrop.patterns import RowPattern, TilePattern

OPS = torch.ops.approxdrop


def row_linear(x, w, b, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep):
    """The row op on one group, from one pair's integers (the kernel's arguments): (y, blocks)."""
    ys, blocks = OPS.row_linear([x], w, b, in_dp, in_keep, [in_offset], out_dp, out_keep, [out_offset])
    return ys[0], blocks


def row_linear_backward(gy, x, w, blocks, in_dp, in_offset, in_keep, out_dp, out_offset, out_keep):
    """The row backward op on one group: (grad_x, grad_w, grad_b)."""
    ints = (in_dp, in_keep, [in_offset], out_dp, out_keep, [out_offset])
    grad_xs, grad_w, grad_b = OPS.row_linear_backward([gy], [x], w, blocks, *ints)
    return grad_xs[0], grad_w, grad_b


def tile_linear(x, w, b, dp, offset, keep, tile):
    return OPS.tile_linear(x, w, b, dp, keep, tile, [offset])


def tile_linear_backward(gy, x, w, dp, offset, keep, tile):
    return OPS.tile_linear_backward(gy, x, w, dp, keep, tile, [offset])


ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "cpp" / "pattern_reference.cpp"
LL, PTR = ctypes.c_longlong, ctypes.c_void_p


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """The CPU reference library, built for this test session."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but no C++ compiler (g++ or $CXX) was found: the kernel index tests cannot run")
        pytest.skip("no C++ compiler (g++ or $CXX) found")
    out = tmp_path_factory.mktemp("kernel_index") / "libpattern_reference.so"
    cmd = [cxx, "-std=c++17", "-O1", "-Wall", "-Werror", "-shared", "-fPIC", f"-I{ROOT / 'kernels'}", str(SOURCE)]
    subprocess.run([*cmd, "-o", str(out)], check=True, capture_output=True, text=True)
    dll = ctypes.CDLL(str(out))
    dll.ad_kept_count.restype = LL
    dll.ad_kept_count.argtypes = [LL] * 4
    dll.ad_kept_indices.restype = LL
    dll.ad_kept_indices.argtypes = [LL] * 4 + [PTR]
    dll.ad_keep_mask.argtypes = [LL] * 4 + [PTR]
    dll.ad_tile_mask.argtypes = [LL] * 5 + [PTR]
    dll.ad_class_indices.restype = LL
    dll.ad_class_indices.argtypes = [ctypes.c_int] + [LL] * 6 + [PTR]
    dll.ad_row_linear.argtypes = [PTR] * 4 + [LL] * 9
    dll.ad_row_linear_backward.argtypes = [PTR] * 6 + [LL] * 9
    dll.ad_tile_linear.argtypes = [PTR] * 4 + [LL] * 7
    dll.ad_tile_linear_backward.argtypes = [PTR] * 6 + [LL] * 7
    dll.ad_row_index_error.restype = ctypes.c_char_p
    dll.ad_row_index_error.argtypes = [LL] * 9
    dll.ad_tile_index_error.restype = ctypes.c_char_p
    dll.ad_tile_index_error.argtypes = [LL] * 7
    return dll


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _kept(lib, p: RowPattern, n: int) -> torch.Tensor:
    out = torch.empty(max(n, 1), dtype=torch.int64)
    count = lib.ad_kept_indices(p.dp, p.offset, p.keep, n, _ptr(out))
    return out[:count]


def _class(lib, kind: int, p: TilePattern, z: int, length: int) -> torch.Tensor:
    out = torch.empty(max(length, 1), dtype=torch.int64)
    count = lib.ad_class_indices(kind, p.dp, p.offset, p.keep, p.tile, z, length, _ptr(out))
    return out[:count]


def _row_cases():
    """Every pattern with dp <= 8 on n in [0, 40], then random ones with larger periods and sizes."""
    for dp in range(1, 9):
        for offset in range(dp):
            for keep in range(1, dp + 1):
                for n in range(41):
                    yield RowPattern(dp, offset, keep), n
    rng = random.Random(0)
    for _ in range(2000):
        dp = rng.randint(1, 64)
        yield RowPattern(dp, rng.randrange(dp), rng.randint(1, dp)), rng.randint(0, 5000)


def _tile_cases(count: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(count):
        dp = rng.randint(1, 9)
        pattern = TilePattern(dp, rng.randrange(dp), rng.randint(1, 40), rng.randint(1, dp))
        yield pattern, rng.randint(1, 300), rng.randint(1, 300)


def test_row_pattern_index_math(lib):
    checked = 0
    for p, n in _row_cases():
        expected = p.kept_indices(n)
        assert lib.ad_kept_count(p.dp, p.offset, p.keep, n) == p.kept_count(n) == len(expected), (p, n)
        assert torch.equal(_kept(lib, p, n), expected), (p, n)
        mask = torch.empty(n, dtype=torch.uint8)
        lib.ad_keep_mask(p.dp, p.offset, p.keep, n, _ptr(mask))
        assert torch.equal(mask.bool(), p.keep_mask(n)), (p, n)
        checked += 1
    assert checked > 10_000


def test_tile_mask_and_classes(lib):
    """Tile masks, the dp classes of TilePattern.row_classes, and that both decompositions used by the
    kernels (forward / grad-weight by output-row class, grad-input by input-column class) cover exactly
    the kept weights, each once."""
    for p, n_out, n_in in _tile_cases(400):
        rows, cols = p.grid(n_out, n_in)
        tiles = torch.empty(rows, cols, dtype=torch.uint8)
        lib.ad_tile_mask(rows, cols, p.dp, p.offset, p.keep, _ptr(tiles))
        assert torch.equal(tiles.bool(), p.tile_mask(n_out, n_in)), p
        by_row = torch.zeros(n_out, n_in, dtype=torch.int64)
        by_col = torch.zeros(n_out, n_in, dtype=torch.int64)
        for z, (row_p, col_p) in enumerate(p.row_classes()):
            out_rows, in_cols = _class(lib, 0, p, z, n_out), _class(lib, 1, p, z, n_in)
            assert torch.equal(out_rows, row_p.kept_indices(n_out)), (p, z)
            assert torch.equal(in_cols, col_p.kept_indices(n_in)), (p, z)
            by_row[out_rows[:, None], in_cols[None, :]] += 1
            class_cols, read_rows = _class(lib, 0, p, z, n_in), _class(lib, 2, p, z, n_out)
            by_col[read_rows[:, None], class_cols[None, :]] += 1
        expected = p.keep_mask(n_out, n_in).long()
        assert torch.equal(by_row, expected), p
        assert torch.equal(by_col, expected), p


def _row_inputs(gen, lead, n_out, n_in, in_p, out_p, with_bias):
    k_in, k_out = in_p.kept_count(n_in), out_p.kept_count(n_out)
    x = torch.randn(*lead, k_in, generator=gen, dtype=torch.float64)
    w = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64)
    b = torch.randn(n_out, generator=gen, dtype=torch.float64) if with_bias else None
    gy = torch.randn(*lead, k_out, generator=gen, dtype=torch.float64)
    return x, w, b, gy


def _random_row_pattern(rng) -> RowPattern:
    dp = rng.choice([1, 1, 2, 3, 4, 5, 7, 10])
    return RowPattern(dp, rng.randrange(dp), rng.randint(1, dp))


def _assert_close(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12, msg=lambda m: f"{what}: {m}")


def test_row_gemm_descriptions_match_ops(lib):
    rng, gen = random.Random(1), torch.Generator().manual_seed(1)
    for case in range(120):
        in_p, out_p = _random_row_pattern(rng), _random_row_pattern(rng)
        lead = rng.choice([(0,), (1,), (rng.randint(1, 140),), (3, rng.randint(1, 30))])
        n_out, n_in = rng.randint(1, 150), rng.randint(1, 150)
        x, w, b, gy = _row_inputs(gen, lead, n_out, n_in, in_p, out_p, with_bias=case % 3 != 0)
        ints = (in_p.dp, in_p.offset, in_p.keep, out_p.dp, out_p.offset, out_p.keep)
        rows = x.reshape(-1, x.shape[-1]).shape[0]
        y = torch.full_like(gy, float("nan"))  # every output must be written
        lib.ad_row_linear(_ptr(x), _ptr(w), _ptr(b), _ptr(y), rows, n_out, n_in, *ints)
        _assert_close(y, row_linear(x, w, b, *ints)[0], f"row_linear {in_p} {out_p} {tuple(x.shape)} {tuple(w.shape)}")
        gx, gw, gb = torch.full_like(x, float("nan")), torch.zeros_like(w), torch.zeros(n_out, dtype=torch.float64)
        lib.ad_row_linear_backward(_ptr(gy), _ptr(x), _ptr(w), _ptr(gx), _ptr(gw), _ptr(gb), rows, n_out, n_in, *ints)
        want_grads = row_linear_backward(gy, x, w, row_linear(x, w, None, *ints)[1], *ints)
        for got, want, name in zip((gx, gw, gb), want_grads, ("grad_x", "grad_w", "grad_b")):
            _assert_close(got, want, f"row_linear_backward {name} {in_p} {out_p} {tuple(x.shape)} {tuple(w.shape)}")


def test_tile_gemm_descriptions_match_ops(lib):
    rng, gen = random.Random(2), torch.Generator().manual_seed(2)
    for case, (p, n_out, n_in) in enumerate(_tile_cases(80, seed=3)):
        lead = rng.choice([(1,), (rng.randint(1, 100),), (2, rng.randint(1, 20))])  # ops.tile_linear fails at N=0
        x = torch.randn(*lead, n_in, generator=gen, dtype=torch.float64)
        w = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64)
        b = torch.randn(n_out, generator=gen, dtype=torch.float64) if case % 3 else None
        gy = torch.randn(*lead, n_out, generator=gen, dtype=torch.float64)
        ints = (p.dp, p.offset, p.keep, p.tile)
        rows = x.reshape(-1, n_in).shape[0]
        y = torch.full_like(gy, float("nan"))
        lib.ad_tile_linear(_ptr(x), _ptr(w), _ptr(b), _ptr(y), rows, n_out, n_in, *ints)
        _assert_close(y, tile_linear(x, w, b, *ints), f"tile_linear {p} {tuple(x.shape)} {tuple(w.shape)}")
        gx, gw = torch.full_like(x, float("nan")), torch.zeros_like(w)
        gb = torch.full((n_out,), float("nan"), dtype=torch.float64)
        lib.ad_tile_linear_backward(_ptr(gy), _ptr(x), _ptr(w), _ptr(gx), _ptr(gw), _ptr(gb), rows, n_out, n_in, *ints)
        for got, want, name in zip((gx, gw, gb), tile_linear_backward(gy, x, w, *ints), ("grad_x", "grad_w", "grad_b")):
            _assert_close(got, want, f"tile_linear_backward {name} {p} {tuple(x.shape)} {tuple(w.shape)}")


def test_edge_patterns_match_ops(lib):
    """dp = 1, keep = dp, one tile, offsets at the end of the period, n < dp."""
    gen = torch.Generator().manual_seed(4)
    row_cases = [
        (RowPattern(1, 0, 1), RowPattern(1, 0, 1), 7, 9),
        (RowPattern(5, 0, 5), RowPattern(4, 3, 1), 13, 11),
        (RowPattern(6, 5, 2), RowPattern(7, 6, 3), 20, 19),  # offsets at the end, wrapping runs
        (RowPattern(9, 8, 1), RowPattern(10, 2, 1), 5, 8),  # n < dp: out keeps 1 of 5, in keeps none of 8
    ]
    for in_p, out_p, n_out, n_in in row_cases:
        x, w, b, gy = _row_inputs(gen, (6,), n_out, n_in, in_p, out_p, with_bias=True)
        ints = (in_p.dp, in_p.offset, in_p.keep, out_p.dp, out_p.offset, out_p.keep)
        y = torch.full_like(gy, float("nan"))
        lib.ad_row_linear(_ptr(x), _ptr(w), _ptr(b), _ptr(y), 6, n_out, n_in, *ints)
        _assert_close(y, row_linear(x, w, b, *ints)[0], f"row_linear {in_p} {out_p}")
    tile_cases = [
        (TilePattern(1, 0, 32, 1), 20, 30),  # one tile
        (TilePattern(3, 2, 8, 3), 17, 25),  # keep = dp
        (TilePattern(4, 3, 5, 1), 21, 9),  # offset at the end
        (TilePattern(7, 6, 16, 2), 20, 33),  # fewer tile rows than dp
    ]
    for p, n_out, n_in in tile_cases:
        x = torch.randn(6, n_in, generator=gen, dtype=torch.float64)
        w = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64)
        ints = (p.dp, p.offset, p.keep, p.tile)
        y = torch.full((6, n_out), float("nan"), dtype=torch.float64)
        lib.ad_tile_linear(_ptr(x), _ptr(w), None, _ptr(y), 6, n_out, n_in, *ints)
        _assert_close(y, tile_linear(x, w, None, *ints), f"tile_linear {p}")


def test_launcher_refuses_indices_past_32_bits(lib):
    """The kernels index in 32 bits: launch_pattern_gemm refuses (with a message naming the axis) any axis
    longer than 2^31 - 257 or a tile pattern with dp * tile past 2^31, before reading anything."""
    limit, all_kept = 2**31 - 257, (1, 0, 1, 1, 0, 1)
    assert lib.ad_row_index_error(4, 8, limit, *all_kept) is None
    assert b"axis K" in lib.ad_row_index_error(4, 8, limit + 1, *all_kept)
    assert b"axis M" in lib.ad_row_index_error(2**31, 8, 9, *all_kept)
    assert b"axis N" in lib.ad_row_index_error(4, 2**40, 9, 2, 1, 1, 1, 0, 1)
    assert lib.ad_row_index_error(4, 2**31 - 300, 2**31 - 300, 7, 6, 3, 10, 9, 4) is None
    assert lib.ad_tile_index_error(4, 100, 100, 2, 1, 1, 2**30 - 1) is None  # dp * tile = 2^31 - 2
    assert lib.ad_tile_index_error(4, 100, 100, 3, 2, 2, 2**30 - 1) is not None  # dp * tile > 2^31
    assert lib.ad_tile_index_error(4, 100, 100, 7, 6, 3, 16) is None
