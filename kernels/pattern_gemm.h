// The pattern GEMM: one description of every GEMM the approxdrop:: ops need, shared by the CUDA kernels
// (pattern_gemm.cu), the torch binding (binding.cpp) and the CPU reference in tests/cpp/. Plain C++ when
// not compiled by nvcc; no torch, no CUDA headers.
//
// C[M, N] = alpha * A[M, K] @ B[K, N] (+ bias), computed for every class z in [0, classes). Each axis
// (M, N, K) maps its logical index j of class z to a physical index: the j-th kept index of
// axis.pattern.at(z) in [0, axis.length). The logical extent is the kept count. Each operand reads a
// row-major buffer at either the logical or the physical index of each of its two axes, so kept rows
// and columns are addressed in place: no gather, no index tensor, no mask.
#pragma once

#include "pattern_index.h"

namespace approxdrop {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

/// Output block of one thread block: kBlockM x kBlockN, or kBigBlockM x kBigBlockN for problems with enough
/// blocks to fill the GPU (pattern_gemm.cu). Each K step loads kBlockKBytes of every row of A and column of
/// B: 16 floats, 32 halves, 8 doubles.
constexpr int kBlockM = 64, kBlockN = 64, kBigBlockM = 128, kBigBlockN = 64, kBlockKBytes = 64;

/// The kernels index each axis in 32 bits: logical and physical indices, and the block starts plus a block,
/// stay below 2^31 (64-bit arithmetic only for the buffer offsets row * ld).
constexpr long long kMaxAxisLength = 2147483647LL - 256;

struct Axis {
  long long length;      // physical extent
  ClassPattern pattern;  // logical j of class z -> kept_index(pattern.at(z), j)
};

/// A logical [rows, cols] matrix in a row-major buffer (trans: the buffer holds its transpose).
/// map_rows / map_cols: address that axis by its physical (kept) index instead of the logical one.
struct Operand {
  void* ptr;
  long long ld;
  bool trans, map_rows, map_cols;
};

struct PatternGemm {
  int dtype;
  int classes;
  Axis m, n, k;
  Operand a, b, c;   // A [M, K], B [K, N], C [M, N]
  const void* bias;  // nullable; bias[physical n] is added to C
  double alpha;
};

APPROXDROP_HD long long axis_extent(const Axis& ax, long long z) { return kept_count(ax.pattern.at(z), ax.length); }

APPROXDROP_HD long long axis_index(const Axis& ax, long long z, long long j) { return kept_index(ax.pattern.at(z), j); }

/// Buffer offset of logical element (r, c) whose physical indices are (pr, pc).
APPROXDROP_HD long long operand_offset(const Operand& op, long long r, long long c, long long pr, long long pc) {
  const long long row = op.map_rows ? pr : r, col = op.map_cols ? pc : c;
  return op.trans ? col * op.ld + row : row * op.ld + col;
}

/// Largest logical extent of an axis over the classes (sizes the launch grid).
inline long long max_extent(const Axis& ax, int classes) {
  long long best = 0;
  for (int z = 0; z < classes; ++z) {
    const long long e = axis_extent(ax, z);
    best = e > best ? e : best;
  }
  return best;
}

/// nullptr if every index of g fits the kernels' 32-bit arithmetic, else why not: each axis at most
/// kMaxAxisLength long, its pattern's integers below 2^31, and the class offsets offset + z * step
/// (z < classes) below 2^32 (the kernels reduce them mod dp in unsigned 32-bit arithmetic).
inline const char* index_range_error(const PatternGemm& g) {
  const Axis* axes[3] = {&g.m, &g.n, &g.k};
  const char* names[3] = {
      "pattern GEMM: axis M does not fit 32-bit indices (length at most 2^31 - 257, pattern below 2^31)",
      "pattern GEMM: axis N does not fit 32-bit indices (length at most 2^31 - 257, pattern below 2^31)",
      "pattern GEMM: axis K does not fit 32-bit indices (length at most 2^31 - 257, pattern below 2^31)"};
  if (g.classes < 1) return "pattern GEMM: classes must be >= 1";
  for (int i = 0; i < 3; ++i) {
    const Axis& ax = *axes[i];
    const ClassPattern& p = ax.pattern;
    const long long int_max = 2147483647LL, last_offset = p.offset + (g.classes - 1LL) * p.step;
    if (ax.length < 0 || ax.length > kMaxAxisLength || p.dp < 1 || p.dp > int_max || p.keep < 1 || p.keep > p.dp ||
        p.offset < 0 || p.step < 0 || p.offset > int_max || p.step > int_max || last_offset > 4294967295LL)
      return names[i];
  }
  return nullptr;
}

// ------------------------------------------------------------------ the six GEMMs of the two ops
// rows = N (flattened batch). Row ops: in = in pattern on n_in, out = out pattern on n_out,
// k_in / k_out their kept counts. Tile ops: TilePattern(dp, offset, tile, keep) on W [n_out, n_in].

/// row_linear: y[N, k_out] = in_scale * x[N, k_in] @ W[kept_out][:, kept_in]^T + b[kept_out].
inline PatternGemm row_forward(int dtype, const void* x, const void* w, const void* bias, void* y, long long rows,
                               long long n_out, long long n_in, Pattern in, Pattern out) {
  const long long k_in = kept_count(in, n_in), k_out = kept_count(out, n_out);
  PatternGemm g{};
  g.dtype = dtype;
  g.classes = 1;
  g.m = {rows, identity_pattern()};
  g.n = {n_out, fixed_pattern(out.dp, out.offset, out.keep)};
  g.k = {n_in, fixed_pattern(in.dp, in.offset, in.keep)};
  g.a = {const_cast<void*>(x), k_in, false, false, false};  // x[m, k]
  g.b = {const_cast<void*>(w), n_in, true, true, true};      // W[kept_out(n), kept_in(k)]
  g.c = {y, k_out, false, false, false};                     // y[m, n]
  g.bias = bias;
  g.alpha = static_cast<double>(in.dp) / static_cast<double>(in.keep);
  return g;
}

/// row_linear_backward, grad_x[N, k_in] = in_scale * grad_y[N, k_out] @ W[kept_out][:, kept_in].
inline PatternGemm row_grad_input(int dtype, const void* grad_y, const void* w, void* grad_x, long long rows,
                                  long long n_out, long long n_in, Pattern in, Pattern out) {
  const long long k_in = kept_count(in, n_in), k_out = kept_count(out, n_out);
  PatternGemm g{};
  g.dtype = dtype;
  g.classes = 1;
  g.m = {rows, identity_pattern()};
  g.n = {n_in, fixed_pattern(in.dp, in.offset, in.keep)};
  g.k = {n_out, fixed_pattern(out.dp, out.offset, out.keep)};
  g.a = {const_cast<void*>(grad_y), k_out, false, false, false};  // grad_y[m, k]
  g.b = {const_cast<void*>(w), n_in, false, true, true};           // W[kept_out(k), kept_in(n)]
  g.c = {grad_x, k_in, false, false, false};
  g.alpha = static_cast<double>(in.dp) / static_cast<double>(in.keep);
  return g;
}

/// row_linear_backward, grad_w[kept_out, kept_in] = in_scale * grad_y^T @ x (grad_w zeroed beforehand).
inline PatternGemm row_grad_weight(int dtype, const void* grad_y, const void* x, void* grad_w, long long rows,
                                   long long n_out, long long n_in, Pattern in, Pattern out) {
  const long long k_in = kept_count(in, n_in), k_out = kept_count(out, n_out);
  PatternGemm g{};
  g.dtype = dtype;
  g.classes = 1;
  g.m = {n_out, fixed_pattern(out.dp, out.offset, out.keep)};
  g.n = {n_in, fixed_pattern(in.dp, in.offset, in.keep)};
  g.k = {rows, identity_pattern()};
  g.a = {const_cast<void*>(grad_y), k_out, true, false, false};  // grad_y[k, m]
  g.b = {const_cast<void*>(x), k_in, false, false, false};       // x[k, n]
  g.c = {grad_w, n_in, false, true, true};                       // grad_w[kept_out(m), kept_in(n)]
  g.alpha = static_cast<double>(in.dp) / static_cast<double>(in.keep);
  return g;
}

/// tile_linear: class z = output tile rows a = z (mod dp), reading only the input columns of its kept tiles.
/// y[N, n_out] = scale * x @ (W * mask)^T + b.
inline PatternGemm tile_forward(int dtype, const void* x, const void* w, const void* bias, void* y, long long rows,
                                long long n_out, long long n_in, long long dp, long long offset, long long keep,
                                long long tile) {
  PatternGemm g{};
  g.dtype = dtype;
  g.classes = static_cast<int>(dp);
  g.m = {rows, identity_pattern()};
  g.n = {n_out, tile_class(dp, tile)};
  g.k = {n_in, tile_cols_of_row_class(dp, offset, keep, tile)};
  g.a = {const_cast<void*>(x), n_in, false, false, true};  // x[m, kept(k)]
  g.b = {const_cast<void*>(w), n_in, true, true, true};    // W[row(n), kept(k)]
  g.c = {y, n_out, false, false, true};                    // y[m, row(n)]
  g.bias = bias;
  g.alpha = static_cast<double>(dp) / static_cast<double>(keep);
  return g;
}

/// tile_linear_backward, grad_x[N, n_in] = scale * grad_y @ (W * mask): class z = input tile columns
/// b = z (mod dp), reading only the output rows of its kept tiles.
inline PatternGemm tile_grad_input(int dtype, const void* grad_y, const void* w, void* grad_x, long long rows,
                                   long long n_out, long long n_in, long long dp, long long offset, long long keep,
                                   long long tile) {
  PatternGemm g{};
  g.dtype = dtype;
  g.classes = static_cast<int>(dp);
  g.m = {rows, identity_pattern()};
  g.n = {n_in, tile_class(dp, tile)};
  g.k = {n_out, tile_rows_of_col_class(dp, offset, keep, tile)};
  g.a = {const_cast<void*>(grad_y), n_out, false, false, true};  // grad_y[m, kept(k)]
  g.b = {const_cast<void*>(w), n_in, false, true, true};         // W[kept(k), col(n)]
  g.c = {grad_x, n_in, false, false, true};                      // grad_x[m, col(n)]
  g.alpha = static_cast<double>(dp) / static_cast<double>(keep);
  return g;
}

/// tile_linear_backward, grad_w = scale * grad_y^T @ x on kept tiles only (grad_w zeroed beforehand):
/// class z = output tile rows a = z (mod dp) times the input columns of their kept tiles.
inline PatternGemm tile_grad_weight(int dtype, const void* grad_y, const void* x, void* grad_w, long long rows,
                                    long long n_out, long long n_in, long long dp, long long offset, long long keep,
                                    long long tile) {
  PatternGemm g{};
  g.dtype = dtype;
  g.classes = static_cast<int>(dp);
  g.m = {n_out, tile_class(dp, tile)};
  g.n = {n_in, tile_cols_of_row_class(dp, offset, keep, tile)};
  g.k = {rows, identity_pattern()};
  g.a = {const_cast<void*>(grad_y), n_out, true, true, false};  // grad_y[k, row(m)]
  g.b = {const_cast<void*>(x), n_in, false, false, true};       // x[k, kept(n)]
  g.c = {grad_w, n_in, false, true, true};                      // grad_w[row(m), kept(n)]
  g.alpha = static_cast<double>(dp) / static_cast<double>(keep);
  return g;
}

// ------------------------------------------------------------------ launchers (pattern_gemm.cu, column_sum.cu)
// Each returns nullptr on success, else the CUDA error message. stream is a cudaStream_t.

/// Runs g on the current device.
const char* launch_pattern_gemm(const PatternGemm& g, void* stream);

/// out[kept_index(map, j)] = sum_i g[i, j] for g [rows, cols] row-major, accumulated in float (double for
/// float64). Entries of out outside the map are not touched.
const char* launch_column_sum(int dtype, const void* g, long long rows, long long cols, void* out, Pattern map,
                              void* stream);

}  // namespace approxdrop
