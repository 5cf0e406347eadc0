// Kept-index arithmetic of row and tile dropout patterns (docs/method.md §3), shared by the CUDA kernels,
// the host launchers and the CPU tests. Plain C++ when not compiled by nvcc; no torch, no CUDA headers.
//
// RowPattern(dp, offset, keep) keeps unit i iff (i - offset) mod dp < keep. Its kept residues, sorted,
// are R[t] = t for t < w and offset + (t - w) otherwise, with w = max(0, offset + keep - dp) the residues
// that wrap past dp. The j-th kept unit (increasing order) is (j / keep) * dp + R[j % keep].
#pragma once

#if defined(__CUDACC__)
#define APPROXDROP_HD __host__ __device__ __forceinline__
#else
#define APPROXDROP_HD inline
#endif

namespace approxdrop {

/// RowPattern(dp, offset, keep); {1, 0, 1} keeps everything (the identity map j -> j). The index type I is
/// long long on the host (Pattern) and int in the kernels' inner loops (Pattern32: no 64-bit division on
/// the GPU; the launchers check that every index of a problem fits).
template <typename I>
struct BasicPattern {
  I dp, offset, keep;
};
using Pattern = BasicPattern<long long>;
using Pattern32 = BasicPattern<int>;

/// NoDeduce<I>: the pattern alone fixes I, so kept_index(pattern, j) takes any integer j.
template <typename I>
struct SameType {
  using type = I;
};
template <typename I>
using NoDeduce = typename SameType<I>::type;

/// How many kept residues wrap past dp to [0, w): offset + keep - dp, computed without the sum (which can pass
/// the type's range where offset and keep both near dp).
template <typename I>
APPROXDROP_HD I wrapped(const BasicPattern<I>& p) {
  const I w = p.keep - (p.dp - p.offset);
  return w > 0 ? w : 0;
}

/// R[t]: the t-th smallest kept residue, t in [0, keep).
template <typename I>
APPROXDROP_HD I kept_residue(const BasicPattern<I>& p, NoDeduce<I> t) {
  const I w = wrapped(p);
  return t < w ? t : p.offset + (t - w);
}

/// The j-th kept index (increasing order), j >= 0.
template <typename I>
APPROXDROP_HD I kept_index(const BasicPattern<I>& p, NoDeduce<I> j) {
  if (p.dp == 1) return j;
  return (j / p.keep) * p.dp + kept_residue(p, j % p.keep);
}

/// Number of kept indices in [0, n): whole periods, plus the kept residues below n mod dp.
template <typename I>
APPROXDROP_HD I kept_count(const BasicPattern<I>& p, NoDeduce<I> n) {
  if (n <= 0) return 0;
  const I rem = n % p.dp, w = wrapped(p);
  const I low = rem < w ? rem : w;    // residues [0, w) below rem
  const I end = w > 0 ? p.dp : p.offset + p.keep;  // the unwrapped run is [offset, end); no wrap: the sum <= dp
  const I high = (rem < end ? rem : end) - p.offset;
  return (n / p.dp) * p.keep + low + (high > 0 ? high : 0);
}

/// (i - offset) mod dp < keep.
APPROXDROP_HD bool is_kept(const Pattern& p, long long i) {
  long long r = (i - p.offset) % p.dp;
  if (r < 0) r += p.dp;
  return r < p.keep;
}

/// Tile (a, b) of TilePattern(dp, offset, keep) is kept iff (b - a - offset) mod dp < keep.
APPROXDROP_HD bool tile_kept(long long a, long long b, long long dp, long long offset, long long keep) {
  return is_kept(Pattern{dp, offset, keep}, b - a);
}

/// A family of row patterns indexed by a class z: Pattern{dp, (offset + z * step) mod dp, keep}.
/// step = 0 gives one fixed pattern for every class.
struct ClassPattern {
  long long dp, offset, step, keep;

  APPROXDROP_HD Pattern at(long long z) const { return Pattern{dp, (offset + z * step) % dp, keep}; }
};

APPROXDROP_HD ClassPattern fixed_pattern(long long dp, long long offset, long long keep) {
  return ClassPattern{dp, offset, 0, keep};
}

APPROXDROP_HD ClassPattern identity_pattern() { return ClassPattern{1, 0, 0, 1}; }

// A tile pattern's kept work is dp dense blocks (TilePattern.row_classes). Class z of tile rows (or, by
// symmetry, of tile columns) is the tiles a = z (mod dp): on elements, RowPattern(dp*T, z*T, T).

/// Elements of the tile rows (or tile columns) a = z (mod dp).
APPROXDROP_HD ClassPattern tile_class(long long dp, long long tile) {
  return ClassPattern{dp * tile, 0, tile, tile};
}

/// Input columns kept by output tile-row class z: tile columns b = z + offset + t (mod dp), t < keep.
APPROXDROP_HD ClassPattern tile_cols_of_row_class(long long dp, long long offset, long long keep, long long tile) {
  return ClassPattern{dp * tile, offset * tile, tile, keep * tile};
}

/// Output rows that read input tile-column class z: tile rows a = z - offset - keep + 1 + t (mod dp), t < keep.
APPROXDROP_HD ClassPattern tile_rows_of_col_class(long long dp, long long offset, long long keep, long long tile) {
  const long long first = ((-offset - keep + 1) % dp + dp) % dp;
  return ClassPattern{dp * tile, first * tile, tile, keep * tile};
}

}  // namespace approxdrop
