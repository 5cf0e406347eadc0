// Weight-gradient blocks into the full-size gradient (see block_ops.h). A block of kScatterThreads threads
// owns as many consecutive columns; each thread computes its column's pattern arithmetic once, then walks
// the block's rows keeping the row's residue and compact index incrementally (no division per element).
// Plain CUDA: no torch headers.
#include <cuda_runtime.h>

#include "block_ops.h"
#include "launch.cuh"
#include "num.cuh"
#include "pattern_gemm.h"

namespace approxdrop {
namespace {

/// (i - offset) mod dp, in [0, dp).
__device__ __forceinline__ long long residue(const Pattern& p, long long i) {
  long long r = (i - p.offset) % p.dp;
  return r < 0 ? r + p.dp : r;
}

/// full[r, c] for rows [r0, r0 + rows_per_block) and this thread's column: the block's element at kept
/// (r, c), zero elsewhere. Every element of full is written by exactly one thread.
template <typename T>
__global__ void scatter_block(const T* block, T* full, long long n_out, long long n_in, Pattern out, Pattern in,
                              long long rows_per_block) {
  const long long c = static_cast<long long>(blockIdx.x) * kScatterThreads + threadIdx.x;
  if (c >= n_in) return;
  const long long k_in = kept_count(in, n_in);
  const bool col_kept = is_kept(in, c);
  const long long cc = compact_index(in, c);
  const long long r0 = static_cast<long long>(blockIdx.y) * rows_per_block;
  const long long r1 = r0 + rows_per_block < n_out ? r0 + rows_per_block : n_out;
  long long res = residue(out, r0), rc = compact_index(out, r0);  // row r's residue and compact index
  const T zero = Num<T>::out(0);
  for (long long r = r0; r < r1; ++r) {
    const bool kept = res < out.keep;
    full[r * n_in + c] = kept && col_kept ? block[rc * k_in + cc] : zero;
    rc += kept;
    if (++res == out.dp) res = 0;
  }
}

/// full[kept_index(out, j), kept_index(in, cc)] += block[j, cc] for the compact rows j of this block and
/// this thread's compact column cc; nothing else of full is touched.
template <typename T>
__global__ void scatter_block_add(const T* block, T* full, long long n_out, long long n_in, Pattern out, Pattern in,
                                  long long rows_per_block) {
  const long long k_in = kept_count(in, n_in), k_out = kept_count(out, n_out);
  const long long cc = static_cast<long long>(blockIdx.x) * kScatterThreads + threadIdx.x;
  if (cc >= k_in) return;
  const long long c = kept_index(in, cc);
  const long long j0 = static_cast<long long>(blockIdx.y) * rows_per_block;
  const long long j1 = j0 + rows_per_block < k_out ? j0 + rows_per_block : k_out;
  long long period = j0 / out.keep, t = j0 % out.keep;  // kept_index(out, j) = period * dp + kept_residue(t)
  for (long long j = j0; j < j1; ++j) {
    T& dst = full[(period * out.dp + kept_residue(out, t)) * n_in + c];
    dst = Num<T>::out(Num<T>::in(dst) + Num<T>::in(block[j * k_in + cc]));
    if (++t == out.keep) t = 0, ++period;
  }
}

/// Rows per block so that the grid's y extent stays within CUDA's 65535.
long long rows_per_block(long long rows) {
  const long long least = (rows + 65534) / 65535;
  return least > kScatterRows ? least : kScatterRows;
}

template <typename T>
void launch(bool add, const void* block, void* full, long long n_out, long long n_in, Pattern out, Pattern in,
            cudaStream_t stream) {
  const long long cols = add ? kept_count(in, n_in) : n_in, rows = add ? kept_count(out, n_out) : n_out;
  if (cols == 0 || rows == 0) return;
  const long long per_block = rows_per_block(rows);
  const dim3 grid(static_cast<unsigned>((cols + kScatterThreads - 1) / kScatterThreads),
                  static_cast<unsigned>((rows + per_block - 1) / per_block));
  const auto* b = static_cast<const T*>(block);
  auto* f = static_cast<T*>(full);
  if (add) {
    APPROXDROP_LAUNCH(scatter_block_add<T>, grid, kScatterThreads, 0, stream, b, f, n_out, n_in, out, in, per_block);
  } else {
    APPROXDROP_LAUNCH(scatter_block<T>, grid, kScatterThreads, 0, stream, b, f, n_out, n_in, out, in, per_block);
  }
}

const char* dispatch(bool add, int dtype, const void* block, void* full, long long n_out, long long n_in, Pattern out,
                     Pattern in, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32: launch<float>(add, block, full, n_out, n_in, out, in, s); break;
    case kFloat64: launch<double>(add, block, full, n_out, n_in, out, in, s); break;
    case kFloat16: launch<__half>(add, block, full, n_out, n_in, out, in, s); break;
    case kBFloat16: launch<__nv_bfloat16>(add, block, full, n_out, n_in, out, in, s); break;
    default: return "scatter: unknown dtype code";
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

const char* launch_scatter_block(int dtype, const void* block, void* full, long long n_out, long long n_in,
                                 Pattern out, Pattern in, void* stream) {
  return dispatch(false, dtype, block, full, n_out, n_in, out, in, stream);
}

const char* launch_scatter_block_add(int dtype, const void* block, void* full, long long n_out, long long n_in,
                                     Pattern out, Pattern in, void* stream) {
  return dispatch(true, dtype, block, full, n_out, n_in, out, in, stream);
}

}  // namespace approxdrop
