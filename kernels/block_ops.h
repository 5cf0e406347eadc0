// The small kernels of the cuBLAS path (scatter.cu, column_sum.cu): launcher declarations and the inverse
// of kept_index. Plain C++ when not compiled by nvcc; no torch, no CUDA headers.
//
// A weight gradient computed as a compact block G[k_out, k_in] (one cuBLAS GEMM on the kept rows and
// columns) goes into the full-size gradient W'[n_out, n_in] by one scatter: W'[r, c] = G[compact(r),
// compact(c)] where row r and column c are kept, 0 elsewhere, every element of W' written once. The add
// variant adds a block into an existing gradient (the pairs of a grouped op), touching only its kept
// elements. The column sum writes bias gradients at the kept rows; with many rows it splits them over
// blocks (partial sums in a workspace, then a second kernel adds them in a fixed order: no atomics).
#pragma once

#include "pattern_index.h"

namespace approxdrop {

/// The compact index of a kept unit i (kept_index(p, compact_index(p, i)) == i): the kept units below it.
APPROXDROP_HD long long compact_index(const Pattern& p, long long i) { return kept_count(p, i); }

/// Threads (columns) per block of the scatter kernels, and the fewest rows each block walks.
constexpr int kScatterThreads = 256, kScatterRows = 32;

/// Column sum: 32 columns x 8 rows of threads per block; at least kColumnSumRows rows per split, and
/// splits until about kColumnSumBlocks blocks run (enough to fill a large GPU).
constexpr int kColumnSumRows = 128, kColumnSumBlocks = 1024, kColumnSumMaxSplits = 65535;

/// How many row splits column_sum uses for g[rows, cols] (1: one pass, no workspace).
inline long long column_sum_splits(long long rows, long long cols) {
  const long long col_blocks = (cols + 31) / 32;
  const long long by_rows = (rows + kColumnSumRows - 1) / kColumnSumRows;
  const long long by_blocks = col_blocks > 0 ? (kColumnSumBlocks + col_blocks - 1) / col_blocks : 1;
  long long splits = by_rows < by_blocks ? by_rows : by_blocks;
  if (splits > kColumnSumMaxSplits) splits = kColumnSumMaxSplits;
  return splits > 1 ? splits : 1;
}

/// full[n_out, n_in] = block[k_out, k_in] at the kept (out row, in column) pairs, 0 elsewhere
/// (k_out = kept_count(out, n_out), k_in = kept_count(in, n_in); both buffers row-major, contiguous).
const char* launch_scatter_block(int dtype, const void* block, void* full, long long n_out, long long n_in,
                                 Pattern out, Pattern in, void* stream);

/// full[kept r, kept c] += block[compact r, compact c]; every other element of full is left as it is.
const char* launch_scatter_block_add(int dtype, const void* block, void* full, long long n_out, long long n_in,
                                     Pattern out, Pattern in, void* stream);

/// out[kept_index(map, j)] = sum_i g[i, j] for g[rows, cols] (other entries of out untouched), summed in
/// the accumulator type. splits = column_sum_splits(rows, cols); when it is above 1, workspace holds
/// splits * cols accumulators (float; double for float64), else it may be null.
const char* launch_column_sum_split(int dtype, const void* g, long long rows, long long cols, void* out, Pattern map,
                                    void* workspace, long long splits, void* stream);

}  // namespace approxdrop
