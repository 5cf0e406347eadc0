// Pattern GEMM kernels (see pattern_gemm.h): one thread block computes a BM x BN block of C for one class z
// (64 x 64, or 128 x 64 for large problems). Kept indices come from the pattern integers: at the start the
// block writes the physical indices of its rows and columns into small shared tables, and two K steps ahead
// those of each step's BK kept K indices. Tiles of A and B are then loaded through the tables, so a skipped
// row, column or tile is never read. Out-of-range entries of partial blocks are zero-filled, never stored.
//
// - Indices are 32-bit (Pattern32); 64-bit arithmetic only for the buffer offsets row * ld. The launcher
//   rejects problems whose indices do not fit (index_range_error).
// - Tiles sit in shared memory in the buffer's order (the contiguous axis contiguous), so a run of 16 bytes
//   whose kept indices are consecutive and aligned is copied as one 128-bit load; other entries one by one.
// - Double buffering: on sm_80+ the loads of K step s + 1 are cp.async copies (__pipeline_memcpy_async)
//   that land while step s computes; older GPUs load synchronously into the other buffer.
// - float32 / float64: shared-memory GEMM, (BM / 16) x (BN / 16) outputs per thread.
//   float16 / bfloat16: tensor cores (WMMA 16x16x16, float accumulators), 8 warps.
// Nothing is atomic: the same inputs give the same bits. Plain CUDA: no torch headers.
#include <cuda_pipeline_primitives.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <type_traits>

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
constexpr bool kAsyncCopy = kDeviceArch >= 800;  // cp.async exists from sm_80 on

// ------------------------------------------------------------------ the kernels' view of a PatternGemm
/// An axis with 32-bit integers (the launcher checked that they fit).
struct Axis32 {
  int length, dp, offset, step, keep;

  /// Pattern of class z: offset + z * step < 2^32, reduced mod dp in unsigned arithmetic.
  __device__ Pattern32 at(int z) const {
    const unsigned off = (static_cast<unsigned>(offset) + static_cast<unsigned>(z) * static_cast<unsigned>(step)) %
                         static_cast<unsigned>(dp);
    return Pattern32{dp, static_cast<int>(off), keep};
  }
};

/// vec: ptr and every row start (ld) are 16-byte aligned, so aligned runs may use 128-bit loads.
struct Operand32 {
  void* ptr;
  long long ld;
  bool map_rows, map_cols, vec;
};

struct Params {
  Axis32 m, n, k;
  Operand32 a, b, c;  // a.trans / b.trans are template parameters of the kernel body; C is never transposed
  const void* bias;
  double alpha;
};

/// Where a block sits: class z, first logical row m0 and column n0, extents of the class.
struct Block {
  int z, m0, n0, ext_m, ext_n, ext_k;
  Pattern32 pk;

  __device__ explicit Block(const Params& p, int block_m, int block_n)
      : z(blockIdx.z),
        m0(static_cast<int>(blockIdx.x) * block_m),
        n0(static_cast<int>(blockIdx.y) * block_n),
        ext_m(kept_count(p.m.at(z), p.m.length)),
        ext_n(kept_count(p.n.at(z), p.n.length)),
        ext_k(kept_count(p.k.at(z), p.k.length)),
        pk(p.k.at(z)) {}

  __device__ bool empty() const { return m0 >= ext_m || n0 >= ext_n; }
};

// ------------------------------------------------------------------ shared memory
/// A ROWS x COLS operand tile stored in its buffer's order: S[outer][inner], inner = the buffer's contiguous
/// axis (COLS, or ROWS when TRANS), rows padded by 16 bytes (each row start stays 16-byte aligned).
template <typename T, bool TRANS, int ROWS, int COLS>
struct TileShape {
  static constexpr int kVec = 16 / static_cast<int>(sizeof(T));  // elements per 128-bit load
  static constexpr int kOuter = TRANS ? COLS : ROWS, kInner = TRANS ? ROWS : COLS;
  static constexpr int kLd = kInner + kVec;
  static constexpr int kElems = kOuter * kLd;
  static_assert(kInner % kVec == 0, "tile rows must hold whole 16-byte runs");

  /// Element (r, c) of the logical tile.
  __device__ static int at(int r, int c) { return TRANS ? c * kLd + r : r * kLd + c; }
};

constexpr int max_int(int a, int b) { return a > b ? a : b; }

/// The shared memory of one block: two stages of the A and B tiles, and the index tables.
template <typename T, int BM, int BN>
struct Stages {
  static constexpr int kBK = kBlockKBytes / static_cast<int>(sizeof(T));  // the K step
  static constexpr int kA = max_int(TileShape<T, false, BM, kBK>::kElems, TileShape<T, true, BM, kBK>::kElems);
  static constexpr int kB = max_int(TileShape<T, false, kBK, BN>::kElems, TileShape<T, true, kBK, BN>::kElems);
  static_assert(kA * sizeof(T) % 32 == 0 && kB * sizeof(T) % 32 == 0, "stages must stay 32-byte aligned");
  alignas(32) T a[2][kA];
  alignas(32) T b[2][kB];
  int m_idx[BM], n_idx[BN], k_idx[2][kBK];  // physical indices, -1 past the class's extent
};

/// table[i] = physical index of logical start + i, or -1 past the extent.
__device__ void fill_table(int* table, int count, Pattern32 p, int start, int extent) {
  for (int i = threadIdx.x; i < count; i += kThreads) {
    const int j = start + i;
    table[i] = j < extent ? kept_index(p, j) : -1;
  }
}

// ------------------------------------------------------------------ global -> shared copies
/// 16 bytes, both addresses 16-byte aligned. sm_80+: a cp.async copy that lands at the next
/// __pipeline_wait_prior; older GPUs: a 128-bit load and store.
template <typename T>
__device__ void copy16(T* dst, const T* src) {
  if constexpr (kAsyncCopy) {
    __pipeline_memcpy_async(dst, src, 16);
  } else {
    *reinterpret_cast<uint4*>(dst) = __ldg(reinterpret_cast<const uint4*>(src));
  }
}

/// One element: cp.async for 4- and 8-byte types on sm_80+, else a plain load and store.
template <typename T>
__device__ void copy1(T* dst, const T* src) {
  if constexpr (kAsyncCopy && sizeof(T) >= 4) {
    __pipeline_memcpy_async(dst, src, sizeof(T));
  } else {
    *dst = *src;
  }
}

/// Marks the copies issued so far as one group (no-op without cp.async).
__device__ void commit_copies() {
  if constexpr (kAsyncCopy) __pipeline_commit();
}

/// Waits until this thread's copies have landed (its other threads' need a __syncthreads after).
__device__ void wait_copies() {
  if constexpr (kAsyncCopy) __pipeline_wait_prior(0);
}

/// S = op(r0 + r, c0 + c) for the ROWS x COLS tile at logical (r0, c0), zero outside [ext_r, ext_c).
/// Consecutive threads take consecutive 16-byte runs of the buffer's contiguous axis. A run is one 128-bit
/// copy when it lies inside the extent, the operand is aligned (vec) and its first index is a multiple of
/// kVec, and its kept indices are consecutive: kept indices increase strictly, so the run is consecutive
/// iff its first and last kept indices are kVec - 1 apart. Other runs are copied element by element.
template <typename T, bool TRANS, int ROWS, int COLS>
__device__ void load_tile(T* s, const Operand32& op, const int* row_idx, const int* col_idx, int r0, int c0,
                          int ext_r, int ext_c) {
  using Shape = TileShape<T, TRANS, ROWS, COLS>;
  constexpr int kVec = Shape::kVec, kRuns = Shape::kInner / kVec, kIters = Shape::kOuter * kRuns / kThreads;
  static_assert(Shape::kOuter * kRuns % kThreads == 0, "every thread copies the same number of runs");
  const T* src = static_cast<const T*>(op.ptr);
  const int o0 = TRANS ? c0 : r0, i0 = TRANS ? r0 : c0, ext_o = TRANS ? ext_c : ext_r, ext_i = TRANS ? ext_r : ext_c;
  const int* o_idx = TRANS ? col_idx : row_idx;
  const int* i_idx = TRANS ? row_idx : col_idx;
  const bool o_map = TRANS ? op.map_cols : op.map_rows, i_map = TRANS ? op.map_rows : op.map_cols;
  const T zero = Num<T>::out(0);
#pragma unroll 1
  for (int it = 0; it < kIters; ++it) {
    const int e = threadIdx.x + it * kThreads, o = e / kRuns, i = e % kRuns * kVec;
    T* dst = s + o * Shape::kLd + i;
    if (o0 + o >= ext_o) {
#pragma unroll
      for (int v = 0; v < kVec; ++v) dst[v] = zero;
      continue;
    }
    const T* row = src + static_cast<long long>(o_map ? o_idx[o] : o0 + o) * op.ld;  // the one 64-bit offset
    const int first = i_map ? i_idx[i] : i0 + i;
    const int last = i_map ? i_idx[i + kVec - 1] : i0 + i + kVec - 1;  // -1 past the extent
    if (op.vec && i0 + i + kVec <= ext_i && first % kVec == 0 && last - first == kVec - 1) {
      copy16(dst, row + first);
      continue;
    }
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      if (i0 + i + v < ext_i)
        copy1(dst + v, row + (i_map ? i_idx[i + v] : i0 + i + v));
      else
        dst[v] = zero;
    }
  }
}

/// The K loop shared by both kernels, double buffered: the loads of step s + 1 (and the index table of step
/// s + 2) are issued before step s is computed, so on sm_80+ they land while it computes. One barrier per
/// step. compute(a, b) reads the stage of the current step.
template <typename T, int BM, int BN, bool TA, bool TB, typename Compute>
__device__ void k_loop(const Params& p, const Block& blk, Stages<T, BM, BN>& sh, Compute compute) {
  constexpr int BK = Stages<T, BM, BN>::kBK;
  const int steps = (blk.ext_k + BK - 1) / BK;
  auto issue = [&](int step) {  // loads of K step `step` into stage step % 2, through k_idx[step % 2]
    const int k0 = step * BK, st = step % 2;
    load_tile<T, TA, BM, BK>(sh.a[st], p.a, sh.m_idx, sh.k_idx[st], blk.m0, k0, blk.ext_m, blk.ext_k);
    load_tile<T, TB, BK, BN>(sh.b[st], p.b, sh.k_idx[st], sh.n_idx, k0, blk.n0, blk.ext_k, blk.ext_n);
    commit_copies();
  };
  if (steps > 0) issue(0);  // the tables of step 0 were filled and synchronized by the caller
  if (steps > 1) fill_table(sh.k_idx[1], BK, blk.pk, BK, blk.ext_k);
  for (int s = 0; s < steps; ++s) {
    wait_copies();    // this thread's copies of step s have landed
    __syncthreads();  // everyone's; stage (s + 1) % 2 is no longer read; k_idx of step s + 1 is written
    if (s + 1 < steps) issue(s + 1);
    if (s + 2 < steps) fill_table(sh.k_idx[s % 2], BK, blk.pk, (s + 2) * BK, blk.ext_k);  // step s's is used
    compute(sh.a[s % 2], sh.b[s % 2]);
  }
}

/// Fills the m, n and k (step 0) tables of a block; a __syncthreads must follow.
template <typename T, int BM, int BN>
__device__ void fill_tables(const Params& p, const Block& blk, Stages<T, BM, BN>& sh) {
  fill_table(sh.m_idx, BM, p.m.at(blk.z), blk.m0, blk.ext_m);
  fill_table(sh.n_idx, BN, p.n.at(blk.z), blk.n0, blk.ext_n);
  fill_table(sh.k_idx[0], Stages<T, BM, BN>::kBK, blk.pk, 0, blk.ext_k);
}

/// C(m0 + r, n0 + c) = alpha * v + bias[physical n], skipping entries outside the extents.
template <typename T, typename A>
__device__ void store_out(const Params& p, const Block& blk, const int* m_idx, const int* n_idx, int r, int c, A v) {
  if (blk.m0 + r >= blk.ext_m || blk.n0 + c >= blk.ext_n) return;
  A out = static_cast<A>(p.alpha) * v;
  if (p.bias != nullptr) out += Num<T>::in(static_cast<const T*>(p.bias)[n_idx[c]]);
  const long long row = p.c.map_rows ? m_idx[r] : blk.m0 + r;
  const int col = p.c.map_cols ? n_idx[c] : blk.n0 + c;
  static_cast<T*>(p.c.ptr)[row * p.c.ld + col] = Num<T>::out(out);
}

// ------------------------------------------------------------------ shared-memory GEMM (float32, float64)
template <typename T, int BM, int BN, bool TA, bool TB>
__device__ void simt_body(const Params& p, const Block& blk, Stages<T, BM, BN>& sh) {
  using A = typename Num<T>::acc;
  using ShapeA = TileShape<T, TA, BM, Stages<T, BM, BN>::kBK>;
  using ShapeB = TileShape<T, TB, Stages<T, BM, BN>::kBK, BN>;
  constexpr int TM = BM / 16, TN = BN / 16;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // outputs (ty + 16 i, tx + 16 j)
  A acc[TM][TN] = {};
  k_loop<T, BM, BN, TA, TB>(p, blk, sh, [&](const T* sa, const T* sb) {
#pragma unroll 2
    for (int kk = 0; kk < Stages<T, BM, BN>::kBK; ++kk) {
      A a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = Num<T>::in(sa[ShapeA::at(ty + 16 * i, kk)]);
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = Num<T>::in(sb[ShapeB::at(kk, tx + 16 * j)]);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
    }
  });
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) store_out<T>(p, blk, sh.m_idx, sh.n_idx, ty + 16 * i, tx + 16 * j, acc[i][j]);
}

// Minimum 1 block per SM: a higher minimum makes ptxas cap the registers and spill (the budgets are in
// tests/test_kernel_resources.py).
template <typename T, int BM, int BN>
__global__ void __launch_bounds__(kThreads, 1) gemm_simt(Params p, bool trans_a, bool trans_b) {
  __shared__ Stages<T, BM, BN> sh;
  const Block blk(p, BM, BN);
  if (blk.empty()) return;  // uniform over the block
  fill_tables(p, blk, sh);
  __syncthreads();
  if (trans_a)
    simt_body<T, BM, BN, true, false>(p, blk, sh);
  else if (trans_b)
    simt_body<T, BM, BN, false, true>(p, blk, sh);
  else
    simt_body<T, BM, BN, false, false>(p, blk, sh);
}

// ------------------------------------------------------------------ tensor cores (float16, bfloat16)
constexpr int kStageLd = 20, kStageSize = 16 * kStageLd;  // a staged 16 x 16 fragment: ldm a multiple of 16 bytes

/// 8 warps in a 4 x 2 grid, each (BM / 4) x (BN / 2) outputs: FM x FN fragments of 16 x 16.
template <typename T, int BM, int BN, bool TA, bool TB>
__device__ void wmma_body(const Params& p, const Block& blk, Stages<T, BM, BN>& sh, float (*staged)[kStageSize]) {
  namespace wmma = nvcuda::wmma;
  constexpr int BK = Stages<T, BM, BN>::kBK, FM = BM / 64, FN = BN / 32;
  using ShapeA = TileShape<T, TA, BM, BK>;
  using ShapeB = TileShape<T, TB, BK, BN>;
  using LayoutA = std::conditional_t<TA, wmma::col_major, wmma::row_major>;
  using LayoutB = std::conditional_t<TB, wmma::col_major, wmma::row_major>;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = warp / 2 * 16 * FM, col0 = warp % 2 * 16 * FN;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[FM][FN];
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  k_loop<T, BM, BN, TA, TB>(p, blk, sh, [&](const T* sa, const T* sb) {
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LayoutA> fa[FM];
#pragma unroll
      for (int i = 0; i < FM; ++i) wmma::load_matrix_sync(fa[i], sa + ShapeA::at(row0 + 16 * i, kk), ShapeA::kLd);
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LayoutB> fb;
        wmma::load_matrix_sync(fb, sb + ShapeB::at(kk, col0 + 16 * j), ShapeB::kLd);
#pragma unroll
        for (int i = 0; i < FM; ++i) wmma::mma_sync(acc[i][j], fa[i], fb, acc[i][j]);
      }
    }
  });
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j) {
      wmma::store_matrix_sync(staged[warp], acc[i][j], kStageLd, wmma::mem_row_major);
      __syncthreads();  // the warp's lanes read each other's entries
      for (int e = lane; e < 256; e += 32)
        store_out<T>(p, blk, sh.m_idx, sh.n_idx, row0 + 16 * i + e / 16, col0 + 16 * j + e % 16,
                     staged[warp][e / 16 * kStageLd + e % 16]);
      __syncthreads();  // before the next fragment overwrites staged
    }
}

template <typename T, int BM, int BN>
__global__ void __launch_bounds__(kThreads, 1) gemm_wmma(Params p, bool trans_a, bool trans_b) {
  if constexpr (kDeviceArch >= Num<T>::min_wmma_arch) {
    __shared__ Stages<T, BM, BN> sh;
    __shared__ __align__(32) float staged[8][kStageSize];  // one fragment per warp on its way out
    const Block blk(p, BM, BN);
    if (blk.empty()) return;
    fill_tables(p, blk, sh);
    __syncthreads();
    if (trans_a)
      wmma_body<T, BM, BN, true, false>(p, blk, sh, staged);
    else if (trans_b)
      wmma_body<T, BM, BN, false, true>(p, blk, sh, staged);
    else
      wmma_body<T, BM, BN, false, false>(p, blk, sh, staged);
  } else {
    __trap();  // the launcher never picks this kernel below min_wmma_arch
  }
}

// ------------------------------------------------------------------ launcher
int device_attribute(cudaDeviceAttr attr) {
  int device = 0, value = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&value, attr, device);
  return value;
}

Axis32 axis32(const Axis& ax) {
  const ClassPattern& q = ax.pattern;
  return Axis32{static_cast<int>(ax.length), static_cast<int>(q.dp), static_cast<int>(q.offset),
                static_cast<int>(q.step), static_cast<int>(q.keep)};
}

template <typename T>
Operand32 operand32(const Operand& op) {
  const bool aligned = reinterpret_cast<unsigned long long>(op.ptr) % 16 == 0 && op.ld * sizeof(T) % 16 == 0;
  return Operand32{op.ptr, op.ld, op.map_rows, op.map_cols, aligned};
}

template <typename T, int BM, int BN>
void launch_tile(const PatternGemm& g, long long max_m, long long max_n, cudaStream_t stream) {
  const Params p{axis32(g.m),     axis32(g.n),     axis32(g.k), operand32<T>(g.a),
                 operand32<T>(g.b), operand32<T>(g.c), g.bias,      g.alpha};
  const dim3 grid(static_cast<unsigned>((max_m + BM - 1) / BM), static_cast<unsigned>((max_n + BN - 1) / BN),
                  static_cast<unsigned>(g.classes));
  if constexpr (Num<T>::min_wmma_arch > 0) {
    const int arch = 100 * device_attribute(cudaDevAttrComputeCapabilityMajor) +
                     10 * device_attribute(cudaDevAttrComputeCapabilityMinor);
    if (arch >= Num<T>::min_wmma_arch) {
      APPROXDROP_LAUNCH((gemm_wmma<T, BM, BN>), grid, kThreads, 0, stream, p, g.a.trans, g.b.trans);
      return;
    }
  }
  // float32, float64, and the half types below their tensor-core architecture
  APPROXDROP_LAUNCH((gemm_simt<T, BM, BN>), grid, kThreads, 0, stream, p, g.a.trans, g.b.trans);
}

/// The big block when it still gives every SM a block: kBigBlockM rows halve the loads of B per output.
template <typename T>
void launch(const PatternGemm& g, long long max_m, long long max_n, cudaStream_t stream) {
  const long long big_blocks = (max_m + kBigBlockM - 1) / kBigBlockM * ((max_n + kBigBlockN - 1) / kBigBlockN);
  if (max_m > kBlockM && big_blocks * g.classes >= device_attribute(cudaDevAttrMultiProcessorCount))
    launch_tile<T, kBigBlockM, kBigBlockN>(g, max_m, max_n, stream);
  else
    launch_tile<T, kBlockM, kBlockN>(g, max_m, max_n, stream);
}

}  // namespace

const char* launch_pattern_gemm(const PatternGemm& g, void* stream) {
  if (const char* error = index_range_error(g)) return error;
  if (g.c.trans) return "pattern GEMM: C cannot be transposed";
  if (g.a.trans && g.b.trans) return "pattern GEMM: A and B cannot both be transposed (no op needs it)";
  const long long max_m = max_extent(g.m, g.classes), max_n = max_extent(g.n, g.classes);
  if (max_m == 0 || max_n == 0) return nullptr;  // empty output
  if (max_n > 65535LL * kBlockN || g.classes > 65535) return "pattern GEMM too large for one grid";
  const auto s = static_cast<cudaStream_t>(stream);
  switch (g.dtype) {
    case kFloat32: launch<float>(g, max_m, max_n, s); break;
    case kFloat64: launch<double>(g, max_m, max_n, s); break;
    case kFloat16: launch<__half>(g, max_m, max_n, s); break;
    case kBFloat16: launch<__nv_bfloat16>(g, max_m, max_n, s); break;
    default: return "pattern GEMM: unknown dtype code";
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace approxdrop
