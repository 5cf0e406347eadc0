// Column sums for the bias gradient: out[kept_index(map, j)] = sum_i g[i, j] (see pattern_gemm.h).
// A block of 32 x 8 threads owns 32 columns; its 8 rows of threads stride over the rows of g, then
// reduce through shared memory. Plain CUDA: no torch headers.
#include <cuda_runtime.h>

#include "launch.cuh"
#include "num.cuh"
#include "pattern_gemm.h"

namespace approxdrop {
namespace {

template <typename T>
__global__ void column_sum(const T* g, long long rows, long long cols, T* out, Pattern map) {
  using A = typename Num<T>::acc;
  __shared__ A partial[8][33];
  const long long j = static_cast<long long>(blockIdx.x) * 32 + threadIdx.x;
  A sum = 0;
  if (j < cols)
    for (long long i = threadIdx.y; i < rows; i += 8) sum += Num<T>::in(g[i * cols + j]);
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y != 0 || j >= cols) return;
  for (int y = 1; y < 8; ++y) sum += partial[y][threadIdx.x];
  out[kept_index(map, j)] = Num<T>::out(sum);
}

template <typename T>
void launch(const void* g, long long rows, long long cols, void* out, Pattern map, cudaStream_t stream) {
  const dim3 block(32, 8), grid(static_cast<unsigned>((cols + 31) / 32));
  APPROXDROP_LAUNCH(column_sum<T>, grid, block, 0, stream, static_cast<const T*>(g), rows, cols, static_cast<T*>(out),
                    map);
}

}  // namespace

const char* launch_column_sum(int dtype, const void* g, long long rows, long long cols, void* out, Pattern map,
                              void* stream) {
  if (cols == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32: launch<float>(g, rows, cols, out, map, s); break;
    case kFloat64: launch<double>(g, rows, cols, out, map, s); break;
    case kFloat16: launch<__half>(g, rows, cols, out, map, s); break;
    case kBFloat16: launch<__nv_bfloat16>(g, rows, cols, out, map, s); break;
    default: return "column sum: unknown dtype code";
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace approxdrop
