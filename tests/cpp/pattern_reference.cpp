// CPU twin of the CUDA kernels for tests/test_kernel_index.py, built with g++ and loaded with ctypes.
// It uses the kernels' own headers: the same kept-index arithmetic, the same GEMM descriptions (which
// operand is read at which index) and a grid of kBlockM x kBlockN blocks per class (the kernels' big
// blocks cover the same elements), evaluated one element at a time in double. The tiling inside a block,
// shared memory, cp.async and tensor cores are left to tests/test_emulated_kernels.py and the GPU tests.
#include "pattern_gemm.h"

using namespace approxdrop;

namespace {

/// What one launch of a pattern GEMM computes, block by block like the kernel grid (float64 only).
void run_gemm(const PatternGemm& g) {
  const long long blocks_m = (max_extent(g.m, g.classes) + kBlockM - 1) / kBlockM;
  const long long blocks_n = (max_extent(g.n, g.classes) + kBlockN - 1) / kBlockN;
  const double* a = static_cast<const double*>(g.a.ptr);
  const double* b = static_cast<const double*>(g.b.ptr);
  const double* bias = static_cast<const double*>(g.bias);
  double* c = static_cast<double*>(g.c.ptr);
  for (int z = 0; z < g.classes; ++z) {
    const long long ext_m = axis_extent(g.m, z), ext_n = axis_extent(g.n, z), ext_k = axis_extent(g.k, z);
    for (long long bx = 0; bx < blocks_m; ++bx)
      for (long long by = 0; by < blocks_n; ++by)
        for (long long m = bx * kBlockM; m < (bx + 1) * kBlockM && m < ext_m; ++m)
          for (long long n = by * kBlockN; n < (by + 1) * kBlockN && n < ext_n; ++n) {
            const long long pm = axis_index(g.m, z, m), pn = axis_index(g.n, z, n);
            double acc = 0;
            for (long long k = 0; k < ext_k; ++k) {
              const long long pk = axis_index(g.k, z, k);
              acc += a[operand_offset(g.a, m, k, pm, pk)] * b[operand_offset(g.b, k, n, pk, pn)];
            }
            c[operand_offset(g.c, m, n, pm, pn)] = g.alpha * acc + (bias ? bias[pn] : 0.0);
          }
  }
}

void column_sum(const double* g, long long rows, long long cols, double* out, Pattern map) {
  for (long long j = 0; j < cols; ++j) {
    double s = 0;
    for (long long i = 0; i < rows; ++i) s += g[i * cols + j];
    out[kept_index(map, j)] = s;
  }
}

ClassPattern class_pattern(int kind, long long dp, long long offset, long long keep, long long tile) {
  if (kind == 0) return tile_class(dp, tile);
  if (kind == 1) return tile_cols_of_row_class(dp, offset, keep, tile);
  return tile_rows_of_col_class(dp, offset, keep, tile);
}

}  // namespace

extern "C" {

long long ad_kept_count(long long dp, long long offset, long long keep, long long n) {
  return kept_count(Pattern{dp, offset, keep}, n);
}

/// Writes the kept indices of [0, n) via kept_index; returns how many (kept_count).
long long ad_kept_indices(long long dp, long long offset, long long keep, long long n, long long* out) {
  const Pattern p{dp, offset, keep};
  const long long count = kept_count(p, n);
  for (long long j = 0; j < count; ++j) out[j] = kept_index(p, j);
  return count;
}

void ad_keep_mask(long long dp, long long offset, long long keep, long long n, unsigned char* out) {
  for (long long i = 0; i < n; ++i) out[i] = is_kept(Pattern{dp, offset, keep}, i);
}

void ad_tile_mask(long long rows, long long cols, long long dp, long long offset, long long keep, unsigned char* out) {
  for (long long a = 0; a < rows; ++a)
    for (long long b = 0; b < cols; ++b) out[a * cols + b] = tile_kept(a, b, dp, offset, keep);
}

/// Indices of class z of a tile ClassPattern (kind 0: tile_class, 1: tile_cols_of_row_class,
/// 2: tile_rows_of_col_class) in [0, length); returns how many.
long long ad_class_indices(int kind, long long dp, long long offset, long long keep, long long tile, long long z,
                           long long length, long long* out) {
  const Axis ax{length, class_pattern(kind, dp, offset, keep, tile)};
  const long long count = axis_extent(ax, z);
  for (long long j = 0; j < count; ++j) out[j] = axis_index(ax, z, j);
  return count;
}

void ad_row_linear(const double* x, const double* w, const double* bias, double* y, long long rows, long long n_out,
                   long long n_in, long long in_dp, long long in_offset, long long in_keep, long long out_dp,
                   long long out_offset, long long out_keep) {
  const Pattern in{in_dp, in_offset, in_keep}, out{out_dp, out_offset, out_keep};
  run_gemm(row_forward(kFloat64, x, w, bias, y, rows, n_out, n_in, in, out));
}

/// grad_w and grad_b must come zeroed (the binding allocates them with zeros).
void ad_row_linear_backward(const double* grad_y, const double* x, const double* w, double* grad_x, double* grad_w,
                            double* grad_b, long long rows, long long n_out, long long n_in, long long in_dp,
                            long long in_offset, long long in_keep, long long out_dp, long long out_offset,
                            long long out_keep) {
  const Pattern in{in_dp, in_offset, in_keep}, out{out_dp, out_offset, out_keep};
  run_gemm(row_grad_input(kFloat64, grad_y, w, grad_x, rows, n_out, n_in, in, out));
  run_gemm(row_grad_weight(kFloat64, grad_y, x, grad_w, rows, n_out, n_in, in, out));
  column_sum(grad_y, rows, kept_count(out, n_out), grad_b, out);
}

void ad_tile_linear(const double* x, const double* w, const double* bias, double* y, long long rows, long long n_out,
                    long long n_in, long long dp, long long offset, long long keep, long long tile) {
  run_gemm(tile_forward(kFloat64, x, w, bias, y, rows, n_out, n_in, dp, offset, keep, tile));
}

/// What launch_pattern_gemm says of the forward GEMM's indices before launching: nullptr if they fit the
/// kernels' 32-bit arithmetic, else why not (index_range_error). No buffer is touched.
const char* ad_row_index_error(long long rows, long long n_out, long long n_in, long long in_dp, long long in_offset,
                               long long in_keep, long long out_dp, long long out_offset, long long out_keep) {
  const Pattern in{in_dp, in_offset, in_keep}, out{out_dp, out_offset, out_keep};
  return index_range_error(row_forward(kFloat32, nullptr, nullptr, nullptr, nullptr, rows, n_out, n_in, in, out));
}

const char* ad_tile_index_error(long long rows, long long n_out, long long n_in, long long dp, long long offset,
                                long long keep, long long tile) {
  const PatternGemm gemms[3] = {
      tile_forward(kFloat32, nullptr, nullptr, nullptr, nullptr, rows, n_out, n_in, dp, offset, keep, tile),
      tile_grad_input(kFloat32, nullptr, nullptr, nullptr, rows, n_out, n_in, dp, offset, keep, tile),
      tile_grad_weight(kFloat32, nullptr, nullptr, nullptr, rows, n_out, n_in, dp, offset, keep, tile)};
  for (const PatternGemm& g : gemms)
    if (const char* error = index_range_error(g)) return error;
  return nullptr;
}

/// grad_w must come zeroed.
void ad_tile_linear_backward(const double* grad_y, const double* x, const double* w, double* grad_x, double* grad_w,
                             double* grad_b, long long rows, long long n_out, long long n_in, long long dp,
                             long long offset, long long keep, long long tile) {
  run_gemm(tile_grad_input(kFloat64, grad_y, w, grad_x, rows, n_out, n_in, dp, offset, keep, tile));
  run_gemm(tile_grad_weight(kFloat64, grad_y, x, grad_w, rows, n_out, n_in, dp, offset, keep, tile));
  column_sum(grad_y, rows, n_out, grad_b, Pattern{1, 0, 1});
}

}  // extern "C"
