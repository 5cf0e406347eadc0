// Pattern GEMM kernels (see pattern_gemm.h): one thread block computes a kBlockM x kBlockN block of C for
// one class z. Kept indices come from the pattern integers: at the start the block writes the physical
// indices of its rows and columns into small shared tables, and at every K step those of the next
// kBlockK kept K indices. Tiles of A and B are then loaded through the tables, so a skipped row, column
// or tile is never read. Out-of-range entries of partial blocks are zero-filled and never stored.
//
// float32 / float64: classic shared-memory tiled GEMM, 4 x 4 outputs per thread.
// float16 / bfloat16: tensor cores (WMMA 16x16x16, float accumulators), 2 fragments per warp.
// Plain CUDA: no torch headers (binding.cpp does the torch side).
#include <cuda_runtime.h>
#include <mma.h>

#include "launch.cuh"
#include "num.cuh"
#include "pattern_gemm.h"

namespace approxdrop {
namespace {

constexpr int kThreads = 256;

#if defined(__CUDA_ARCH__)
constexpr int kDeviceArch = __CUDA_ARCH__;
#else
constexpr int kDeviceArch = 0;
#endif

/// table[i] = physical index of logical start + i (only i with start + i < extent are used).
__device__ void fill_table(int* table, int count, const Axis& ax, int z, long long start, long long extent) {
  for (int i = threadIdx.x; i < count; i += kThreads) {
    const long long j = start + i;
    table[i] = j < extent ? static_cast<int>(axis_index(ax, z, j)) : -1;
  }
}

/// S[r][c] = op(r0 + r, c0 + c) for a ROWS x COLS tile, zero outside [ext_r, ext_c). Consecutive threads
/// walk the buffer's contiguous axis, so global reads coalesce where the kept indices are consecutive.
template <typename T, int ROWS, int COLS, int LD>
__device__ void load_tile(T (*S)[LD], const Operand& op, const int* row_phys, const int* col_phys, long long r0,
                          long long c0, long long ext_r, long long ext_c) {
  const T* src = static_cast<const T*>(op.ptr);
  for (int e = threadIdx.x; e < ROWS * COLS; e += kThreads) {
    const int r = op.trans ? e % ROWS : e / COLS;
    const int c = op.trans ? e / ROWS : e % COLS;
    T v = Num<T>::out(0);
    if (r0 + r < ext_r && c0 + c < ext_c) v = src[operand_offset(op, r0 + r, c0 + c, row_phys[r], col_phys[c])];
    S[r][c] = v;
  }
}

/// C(m0 + r, n0 + c) = alpha * v + bias[physical n], skipping entries outside the extents.
template <typename T, typename A>
__device__ void store_out(const PatternGemm& g, int r, int c, A v, const int* m_phys, const int* n_phys,
                          long long m0, long long n0, long long ext_m, long long ext_n) {
  if (m0 + r >= ext_m || n0 + c >= ext_n) return;
  A out = static_cast<A>(g.alpha) * v;
  if (g.bias != nullptr) out += Num<T>::in(static_cast<const T*>(g.bias)[n_phys[c]]);
  static_cast<T*>(g.c.ptr)[operand_offset(g.c, m0 + r, n0 + c, m_phys[r], n_phys[c])] = Num<T>::out(out);
}

/// Where a block sits: class z, first logical row m0 and column n0, extents of the class.
struct Block {
  int z;
  long long m0, n0, ext_m, ext_n, ext_k;

  __device__ explicit Block(const PatternGemm& g)
      : z(blockIdx.z),
        m0(static_cast<long long>(blockIdx.x) * kBlockM),
        n0(static_cast<long long>(blockIdx.y) * kBlockN),
        ext_m(axis_extent(g.m, blockIdx.z)),
        ext_n(axis_extent(g.n, blockIdx.z)),
        ext_k(axis_extent(g.k, blockIdx.z)) {}

  __device__ bool empty() const { return m0 >= ext_m || n0 >= ext_n; }
};

// Minimum 1 block per SM: without it ptxas caps the fp64 and half instances at 128 and 64 registers and
// spills (tests/test_kernel_resources.py holds the register budgets).
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) gemm_simt(PatternGemm g) {
  using A = typename Num<T>::acc;
  __shared__ T As[kBlockM][kBlockK + 1];  // [m, k]
  __shared__ T Bs[kBlockK][kBlockN + 1];  // [k, n]
  __shared__ int m_phys[kBlockM], n_phys[kBlockN], k_phys[kBlockK];
  const Block blk(g);
  if (blk.empty()) return;  // uniform over the block
  fill_table(m_phys, kBlockM, g.m, blk.z, blk.m0, blk.ext_m);
  fill_table(n_phys, kBlockN, g.n, blk.z, blk.n0, blk.ext_n);
  __syncthreads();

  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // outputs (ty + 16 i, tx + 16 j)
  A acc[4][4] = {};
  for (long long k0 = 0; k0 < blk.ext_k; k0 += kBlockK) {
    fill_table(k_phys, kBlockK, g.k, blk.z, k0, blk.ext_k);
    __syncthreads();  // k table ready; the previous step's reads of As / Bs are done
    load_tile<T, kBlockM, kBlockK>(As, g.a, m_phys, k_phys, blk.m0, k0, blk.ext_m, blk.ext_k);
    load_tile<T, kBlockK, kBlockN>(Bs, g.b, k_phys, n_phys, k0, blk.n0, blk.ext_k, blk.ext_n);
    __syncthreads();
#pragma unroll 4
    for (int kk = 0; kk < kBlockK; ++kk) {
      A a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = Num<T>::in(As[ty + 16 * i][kk]);
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Num<T>::in(Bs[kk][tx + 16 * j]);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
      store_out<T>(g, ty + 16 * i, tx + 16 * j, acc[i][j], m_phys, n_phys, blk.m0, blk.n0, blk.ext_m, blk.ext_n);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gemm_wmma(PatternGemm g) {
  if constexpr (kDeviceArch >= Num<T>::min_wmma_arch) {
    namespace wmma = nvcuda::wmma;
    constexpr int kPad = 8;  // keeps every fragment pointer 32-byte aligned and ld a multiple of 8
    __shared__ __align__(32) T As[kBlockM][kBlockK + kPad];
    __shared__ __align__(32) T Bs[kBlockK][kBlockN + kPad];
    __shared__ __align__(32) float Cs[kBlockM][kBlockN + 4];
    __shared__ int m_phys[kBlockM], n_phys[kBlockN], k_phys[kBlockK];
    const Block blk(g);
    if (blk.empty()) return;
    fill_table(m_phys, kBlockM, g.m, blk.z, blk.m0, blk.ext_m);
    fill_table(n_phys, kBlockN, g.n, blk.z, blk.n0, blk.ext_n);
    __syncthreads();

    const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;  // rows 16 wm, cols 32 wn + 16 f
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2];
    wmma::fill_fragment(acc[0], 0.0f);
    wmma::fill_fragment(acc[1], 0.0f);
    for (long long k0 = 0; k0 < blk.ext_k; k0 += kBlockK) {
      fill_table(k_phys, kBlockK, g.k, blk.z, k0, blk.ext_k);
      __syncthreads();
      load_tile<T, kBlockM, kBlockK>(As, g.a, m_phys, k_phys, blk.m0, k0, blk.ext_m, blk.ext_k);
      load_tile<T, kBlockK, kBlockN>(Bs, g.b, k_phys, n_phys, k0, blk.n0, blk.ext_k, blk.ext_n);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kBlockK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, &As[16 * wm][kk], kBlockK + kPad);
#pragma unroll
        for (int f = 0; f < 2; ++f) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
          wmma::load_matrix_sync(fb, &Bs[kk][32 * wn + 16 * f], kBlockN + kPad);
          wmma::mma_sync(acc[f], fa, fb, acc[f]);
        }
      }
    }
    for (int f = 0; f < 2; ++f)
      wmma::store_matrix_sync(&Cs[16 * wm][32 * wn + 16 * f], acc[f], kBlockN + 4, wmma::mem_row_major);
    __syncthreads();
    for (int e = threadIdx.x; e < kBlockM * kBlockN; e += kThreads) {
      const int r = e / kBlockN, c = e % kBlockN;
      store_out<T>(g, r, c, Cs[r][c], m_phys, n_phys, blk.m0, blk.n0, blk.ext_m, blk.ext_n);
    }
  } else {
    __trap();  // the launcher never picks this kernel below min_wmma_arch
  }
}

int device_arch() {
  int device = 0, major = 0, minor = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  return 100 * major + 10 * minor;
}

template <typename T>
void launch(const PatternGemm& g, dim3 grid, cudaStream_t stream) {
  if constexpr (Num<T>::min_wmma_arch > 0) {
    if (device_arch() >= Num<T>::min_wmma_arch) {
      APPROXDROP_LAUNCH(gemm_wmma<T>, grid, kThreads, 0, stream, g);
      return;
    }
  }
  APPROXDROP_LAUNCH(gemm_simt<T>, grid, kThreads, 0, stream, g);  // float32, float64, and half types on older GPUs
}

}  // namespace

const char* launch_pattern_gemm(const PatternGemm& g, void* stream) {
  const long long blocks_m = (max_extent(g.m, g.classes) + kBlockM - 1) / kBlockM;
  const long long blocks_n = (max_extent(g.n, g.classes) + kBlockN - 1) / kBlockN;
  if (blocks_m == 0 || blocks_n == 0) return nullptr;  // empty output
  if (blocks_m > 2147483647LL || blocks_n > 65535 || g.classes > 65535) return "pattern GEMM too large for one grid";
  const dim3 grid(static_cast<unsigned>(blocks_m), static_cast<unsigned>(blocks_n), static_cast<unsigned>(g.classes));
  const auto s = static_cast<cudaStream_t>(stream);
  switch (g.dtype) {
    case kFloat32: launch<float>(g, grid, s); break;
    case kFloat64: launch<double>(g, grid, s); break;
    case kFloat16: launch<__half>(g, grid, s); break;
    case kBFloat16: launch<__nv_bfloat16>(g, grid, s); break;
    default: return "pattern GEMM: unknown dtype code";
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace approxdrop
