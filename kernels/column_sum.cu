// Column sums for the bias gradient: out[kept_index(map, j)] = sum_i g[i, j] (see block_ops.h).
// A block of 32 x 8 threads owns 32 columns of one row split; its 8 rows of threads stride over the split's
// rows (each warp reads 32 consecutive columns of a row), then reduce through shared memory. With one split
// the block writes out; with several, the splits' partial sums go to a workspace and column_sum_finish adds
// them in split order, so the bits never depend on scheduling. Splitting the rows is what fills the GPU
// (one split gives only cols / 32 blocks). Plain CUDA: no torch headers.
#include <cuda_runtime.h>

#include "block_ops.h"
#include "launch.cuh"
#include "num.cuh"
#include "pattern_gemm.h"

namespace approxdrop {
namespace {

template <typename T>
__global__ void column_sum(const T* g, long long rows, long long cols, T* out, Pattern map,
                           typename Num<T>::acc* partial, long long rows_per_split) {
  using A = typename Num<T>::acc;
  __shared__ A sums[8][33];
  const long long j = static_cast<long long>(blockIdx.x) * 32 + threadIdx.x;
  const long long first = static_cast<long long>(blockIdx.y) * rows_per_split;
  const long long last = first + rows_per_split < rows ? first + rows_per_split : rows;
  A sum = 0;
  if (j < cols) {
#pragma unroll 4
    for (long long i = first + threadIdx.y; i < last; i += 8) sum += Num<T>::in(g[i * cols + j]);
  }
  sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y != 0 || j >= cols) return;
  for (int y = 1; y < 8; ++y) sum += sums[y][threadIdx.x];
  if (partial == nullptr) {
    out[kept_index(map, j)] = Num<T>::out(sum);
  } else {
    partial[blockIdx.y * cols + j] = sum;
  }
}

/// out[kept_index(map, j)] = the splits' partial sums of column j, added in split order.
template <typename T>
__global__ void column_sum_finish(const typename Num<T>::acc* partial, long long splits, long long cols, T* out,
                                  Pattern map) {
  const long long j = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  typename Num<T>::acc sum = 0;
  for (long long s = 0; s < splits; ++s) sum += partial[s * cols + j];
  out[kept_index(map, j)] = Num<T>::out(sum);
}

template <typename T>
void launch(const void* g, long long rows, long long cols, void* out, Pattern map, void* workspace, long long splits,
            cudaStream_t stream) {
  using A = typename Num<T>::acc;
  A* partial = splits > 1 ? static_cast<A*>(workspace) : nullptr;
  const long long per_split = (rows + splits - 1) / splits;
  const dim3 block(32, 8), grid(static_cast<unsigned>((cols + 31) / 32), static_cast<unsigned>(splits));
  APPROXDROP_LAUNCH(column_sum<T>, grid, block, 0, stream, static_cast<const T*>(g), rows, cols, static_cast<T*>(out),
                    map, partial, per_split);
  if (partial != nullptr) {
    APPROXDROP_LAUNCH(column_sum_finish<T>, static_cast<unsigned>((cols + 255) / 256), 256, 0, stream, partial, splits,
                      cols, static_cast<T*>(out), map);
  }
}

}  // namespace

const char* launch_column_sum_split(int dtype, const void* g, long long rows, long long cols, void* out, Pattern map,
                                    void* workspace, long long splits, void* stream) {
  if (cols == 0) return nullptr;
  if (splits < 1 || splits > kColumnSumMaxSplits || (splits > 1 && workspace == nullptr))
    return "column sum: splits must be in [1, 65535], with a workspace when above 1";
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32: launch<float>(g, rows, cols, out, map, workspace, splits, s); break;
    case kFloat64: launch<double>(g, rows, cols, out, map, workspace, splits, s); break;
    case kFloat16: launch<__half>(g, rows, cols, out, map, workspace, splits, s); break;
    case kBFloat16: launch<__nv_bfloat16>(g, rows, cols, out, map, workspace, splits, s); break;
    default: return "column sum: unknown dtype code";
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

const char* launch_column_sum(int dtype, const void* g, long long rows, long long cols, void* out, Pattern map,
                              void* stream) {
  return launch_column_sum_split(dtype, g, rows, cols, out, map, nullptr, 1, stream);
}

}  // namespace approxdrop
