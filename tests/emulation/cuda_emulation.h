// CUDA on the CPU, for tests: the project's unmodified kernels/*.cu compile with g++ against this header
// (through the shims in include/, which stand in for <cuda_runtime.h>, <mma.h>, <cuda_fp16.h> and
// <cuda_bf16.h>) and run on the CPU.
//
// - A launch (APPROXDROP_LAUNCH, kernels/launch.cuh) runs the blocks one after another. Each block runs
//   one std::thread per CUDA thread; __syncthreads is a std::barrier over the block's threads.
// - __shared__ is `static`: one array per kernel instantiation, seen by every thread of the running block
//   and reused by the next block (blocks never overlap). It starts zeroed and then holds the previous
//   block's values, where CUDA leaves it undefined.
// - Two schedules. parallel: the threads run freely between barriers (what ThreadSanitizer checks).
//   serial: blocks run in reverse order and, between two barriers, the threads of a block run one at a
//   time in reverse order, so a missing __syncthreads reads stale data deterministically.
// - A thread that returns or faults leaves the barrier (arrive_and_drop); when the block ends, every thread
//   must have called __syncthreads equally often, else the launch fails ("divergent __syncthreads").
// - WMMA m16n16k16 fragments (fp16 / bf16 inputs, fp32 accumulators) are emulated: a / b fragments hold the
//   whole tile in every lane; each accumulator lane holds 8 elements spread over the tile as on sm_80 (lane
//   l: rows l / 4 and l / 4 + 8, columns 2 (l % 4) + {0, 1} and + 8; detail::element), so stores do not
//   race, and a lane that reads the stored tile back reads what other lanes wrote: a missing barrier
//   between the store and the read shows. Pointers must be 256-bit aligned and ldm a multiple of 16 bytes,
//   as the CUDA programming guide requires; a violation fails the launch.
// - __half / __nv_bfloat16 store 16 bits and convert with round-to-nearest-even.
// - cp.async (__pipeline_memcpy_async / __pipeline_commit / __pipeline_wait_prior) is deferred per thread:
//   a copy lands only when __pipeline_wait_prior retires its group (wait_prior(N) leaves the newest N
//   committed groups pending), so shared memory read before the wait holds stale data; copies never waited
//   for never land. Addresses must be aligned to the copy's size (4, 8 or 16 bytes).
// - 128-bit loads (__ldg of a uint4) must be 16-byte aligned. Counters of both, and the launches' grids,
//   are in cuda_emulation::stats (report()).
// - Warp intrinsics and atomics are not emulated: using one is a compile error naming it.
// Kernel faults (failed checks, __trap) end the launch with cudaErrorLaunchFailure and a message that
// cudaGetErrorString returns. Launches are synchronous; streams are ignored.
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <semaphore>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

// Device code is compiled as for sm_90 (so the WMMA kernels are built); which kernel a launcher picks
// follows the runtime architecture, cuda_emulation::device_arch.
#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 900
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

/// The kernels' launch seam (kernels/launch.cuh): kernel<<<grid, block, smem, stream>>>(args...) on nvcc.
#define APPROXDROP_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::cuda_emulation::launch(kernel, grid, block, smem, stream __VA_OPT__(, ) __VA_ARGS__)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
using uint3 = dim3;

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

// ------------------------------------------------------------------ runtime API (the part the kernels use)
using cudaStream_t = struct CUstream_st*;

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorNotSupported = 801,
  cudaErrorLaunchFailure = 719,
};

enum cudaDeviceAttr : int {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
};

namespace cuda_emulation {

enum class Schedule { parallel, serial };

inline int device_arch = 900;  // what cudaDeviceGetAttribute reports: 100 * major + 10 * minor
inline int sm_count = 2;       // multiprocessors: few, so that small test problems reach the big-tile paths
inline Schedule schedule = Schedule::parallel;
inline cudaError_t last_error = cudaSuccess;
inline std::string last_message;

/// What the kernels did, for tests that check which path ran (report() prints it).
struct Stats {
  std::atomic<long long> async_copies{0}, async_copies16{0}, loads128{0};
  std::vector<std::string> launches;  // "grid (x, y, z) block (x, y, z)"; launches come from one host thread
};
inline Stats stats;

/// One line per launch, then the copy counters.
inline std::string report() {
  std::string out;
  for (const std::string& launch : stats.launches) out += "launch " + launch + "\n";
  out += "copies async " + std::to_string(stats.async_copies.load()) + " async16 " +
         std::to_string(stats.async_copies16.load()) + " load128 " + std::to_string(stats.loads128.load()) + "\n";
  return out;
}

/// A failed check inside a kernel: ends the calling CUDA thread and fails the launch.
struct KernelFault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline cudaError_t fail(cudaError_t code, std::string message) {
  last_error = code;
  last_message = std::move(message);
  return code;
}

}  // namespace cuda_emulation

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = cuda_emulation::last_error;
  cuda_emulation::last_error = cudaSuccess;
  return e;
}

/// The message of the last failure (the emulator keeps one, with the details), or "no error".
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : cuda_emulation::last_message.c_str();
}

inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cuda_emulation::fail(cudaErrorInvalidValue, "emulation: only device 0 exists");
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *value = cuda_emulation::device_arch / 100; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = cuda_emulation::device_arch / 10 % 10; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = cuda_emulation::sm_count; return cudaSuccess;
  }
  return cuda_emulation::fail(cudaErrorNotSupported, "emulation: device attribute " + std::to_string(attr) +
                                                         " is not emulated");
}

[[noreturn]] inline void __trap() { throw cuda_emulation::KernelFault("__trap() was called"); }

// ------------------------------------------------------------------ blocks, barriers, launches
namespace cuda_emulation {

class Block;
inline thread_local Block* current_block = nullptr;
inline thread_local int current_thread = -1;  // linear thread index in the block

/// The state of the running block: its barrier, the serial schedule's turn, faults, barrier counts.
class Block {
 public:
  Block(int threads, Schedule sched)
      : serial_(sched == Schedule::serial), live_(threads, true), syncs_(threads, 0), barrier_(threads, Phase{this}) {
    if (serial_)
      for (int t = 0; t < threads; ++t) turns_.push_back(std::make_unique<std::binary_semaphore>(0));
    start_phase();
  }

  /// Serial schedule: wait until it is thread t's turn.
  void wait_turn(int t) {
    if (serial_) turns_[t]->acquire();
  }

  void sync(int t) {
    ++syncs_[t];
    pass_turn();
    barrier_.arrive_and_wait();
    wait_turn(t);
  }

  /// Thread t returned (or faulted): it leaves the barrier.
  void exit(int t) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      live_[t] = false;
    }
    pass_turn();
    barrier_.arrive_and_drop();
  }

  void fault(int t, const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    if (fault_.empty()) fault_ = "thread " + std::to_string(t) + ": " + what;
  }

  /// After every thread has joined: the first fault, else a divergent-barrier report, else "".
  std::string verdict() const {
    if (!fault_.empty()) return fault_;
    const auto [lo, hi] = std::minmax_element(syncs_.begin(), syncs_.end());
    if (*lo == *hi) return "";
    return "divergent __syncthreads: thread " + std::to_string(lo - syncs_.begin()) + " called it " +
           std::to_string(*lo) + " times, thread " + std::to_string(hi - syncs_.begin()) + " " + std::to_string(*hi) +
           " times (every thread of a block must reach each __syncthreads)";
  }

 private:
  struct Phase {
    Block* block;
    void operator()() noexcept { block->start_phase(); }
  };

  /// Serial schedule: the live threads take turns in reverse order until the next barrier.
  void start_phase() {
    if (!serial_) return;
    std::lock_guard<std::mutex> lock(mu_);
    order_.clear();
    for (int t = static_cast<int>(live_.size()) - 1; t >= 0; --t)
      if (live_[t]) order_.push_back(t);
    turn_ = 0;
    if (!order_.empty()) turns_[order_[0]]->release();
  }

  /// Serial schedule: the running thread stops (at a barrier or its end); the next one in order runs.
  void pass_turn() {
    if (!serial_) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (++turn_ < order_.size()) turns_[order_[turn_]]->release();
  }

  const bool serial_;
  std::mutex mu_;
  std::vector<std::unique_ptr<std::binary_semaphore>> turns_;  // serial schedule: released on a thread's turn
  std::vector<int> order_;
  std::size_t turn_ = 0;
  std::vector<bool> live_;
  std::vector<int> syncs_;  // __syncthreads calls per thread
  std::string fault_;
  std::barrier<Phase> barrier_;
};

/// Linear index of the calling thread in its block (throws outside a kernel).
inline int thread_rank() {
  if (current_block == nullptr) throw KernelFault("a device function was called outside a kernel launch");
  return current_thread;
}

inline std::string dims(dim3 d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

/// kernel<<<grid, block, smem, stream>>>(args...), run to completion before returning.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  const unsigned long long threads = 1ULL * block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 2147483647U || grid.y > 65535 || grid.z > 65535) {
    fail(cudaErrorInvalidConfiguration, "invalid launch configuration: grid " + dims(grid) + ", block " + dims(block));
    return;
  }
  if (smem != 0) {
    fail(cudaErrorNotSupported,
         "emulation: dynamic shared memory is not emulated (smem = " + std::to_string(smem) + ")");
    return;
  }
  stats.launches.push_back("grid " + dims(grid) + " block " + dims(block));
  const std::tuple<std::decay_t<P>...> params(static_cast<P>(std::forward<A>(args))...);  // copied once, like CUDA
  const unsigned long long blocks = 1ULL * grid.x * grid.y * grid.z;
  const int n = static_cast<int>(threads);
  for (unsigned long long i = 0; i < blocks; ++i) {
    const unsigned long long b = schedule == Schedule::serial ? blocks - 1 - i : i;
    const dim3 bid(static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                   static_cast<unsigned>(b / (1ULL * grid.x * grid.y)));
    Block state(n, schedule);
    std::vector<std::thread> workers;
    workers.reserve(n);
    for (int t = 0; t < n; ++t)
      workers.emplace_back([&, t] {
        threadIdx = uint3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
        blockIdx = bid;
        blockDim = block;
        gridDim = grid;
        current_block = &state;
        current_thread = t;
        state.wait_turn(t);
        try {
          std::apply(kernel, params);
        } catch (const std::exception& e) {
          state.fault(t, e.what());
        }
        state.exit(t);
        current_block = nullptr;
      });
    for (auto& w : workers) w.join();
    if (const std::string verdict = state.verdict(); !verdict.empty()) {
      fail(cudaErrorLaunchFailure, "kernel failed in block " + dims(bid) + ", " + verdict);
      return;
    }
  }
}

}  // namespace cuda_emulation

inline void __syncthreads() {
  const int t = cuda_emulation::thread_rank();
  cuda_emulation::current_block->sync(t);
}

// ------------------------------------------------------------------ cp.async and 128-bit loads
namespace cuda_emulation {

struct AsyncCopy {
  void* dst;
  const void* src;
  std::size_t bytes, zfill;  // the last zfill bytes of dst become zero, the others come from src
};

/// The calling CUDA thread's copies: not yet committed, and committed groups oldest first. Each CUDA thread
/// is a std::thread of its own, so copies never waited for vanish with it (they never land).
struct AsyncQueue {
  std::vector<AsyncCopy> open;
  std::deque<std::vector<AsyncCopy>> committed;
};
inline thread_local AsyncQueue async_queue;

inline void check_aligned(const char* what, const void* p, std::size_t bytes) {
  if (reinterpret_cast<std::uintptr_t>(p) % bytes != 0)
    throw KernelFault(std::string(what) + ": " + std::to_string(bytes) + "-byte access at an address that is not " +
                      std::to_string(bytes) + "-byte aligned");
}

}  // namespace cuda_emulation

/// cp.async: queued, lands when __pipeline_wait_prior retires its group (see the header comment).
inline void __pipeline_memcpy_async(void* dst, const void* src, std::size_t size, std::size_t zfill = 0) {
  using namespace cuda_emulation;
  thread_rank();  // only inside a kernel
  if (size != 4 && size != 8 && size != 16)
    throw KernelFault("__pipeline_memcpy_async: size " + std::to_string(size) + " is not 4, 8 or 16 bytes");
  if (zfill > size) throw KernelFault("__pipeline_memcpy_async: zfill is larger than the copy");
  check_aligned("__pipeline_memcpy_async (shared)", dst, size);
  check_aligned("__pipeline_memcpy_async (global)", src, size);
  async_queue.open.push_back({dst, src, size, zfill});
  ++stats.async_copies;
  if (size == 16) ++stats.async_copies16;
}

/// Closes the calling thread's group of copies.
inline void __pipeline_commit() {
  using namespace cuda_emulation;
  thread_rank();
  async_queue.committed.push_back(std::move(async_queue.open));
  async_queue.open.clear();
}

/// Lands the calling thread's committed groups but the newest `prior`, oldest first.
inline void __pipeline_wait_prior(std::size_t prior) {
  using namespace cuda_emulation;
  thread_rank();
  while (async_queue.committed.size() > prior) {
    for (const AsyncCopy& c : async_queue.committed.front()) {
      std::memcpy(c.dst, c.src, c.bytes - c.zfill);
      std::memset(static_cast<char*>(c.dst) + (c.bytes - c.zfill), 0, c.zfill);
    }
    async_queue.committed.pop_front();
  }
}

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

/// A 128-bit load through the read-only path: the address must be 16-byte aligned.
inline uint4 __ldg(const uint4* p) {
  cuda_emulation::check_aligned("__ldg", p, 16);
  ++cuda_emulation::stats.loads128;
  return *p;
}

// ------------------------------------------------------------------ not emulated: a compile error naming it
namespace cuda_emulation {
template <typename... T>
inline constexpr bool not_emulated = false;
}  // namespace cuda_emulation

#define APPROXDROP_NOT_EMULATED(name)                                                                      \
  template <typename... T>                                                                                 \
  void name(T...) {                                                                                        \
    static_assert(cuda_emulation::not_emulated<T...>, #name " is not emulated (tests/emulation/cuda_emulation.h)"); \
  }
APPROXDROP_NOT_EMULATED(__syncwarp)
APPROXDROP_NOT_EMULATED(__shfl_sync)
APPROXDROP_NOT_EMULATED(__shfl_up_sync)
APPROXDROP_NOT_EMULATED(__shfl_down_sync)
APPROXDROP_NOT_EMULATED(__shfl_xor_sync)
APPROXDROP_NOT_EMULATED(__ballot_sync)
APPROXDROP_NOT_EMULATED(__any_sync)
APPROXDROP_NOT_EMULATED(__all_sync)
APPROXDROP_NOT_EMULATED(__activemask)
APPROXDROP_NOT_EMULATED(atomicAdd)
APPROXDROP_NOT_EMULATED(atomicCAS)
APPROXDROP_NOT_EMULATED(atomicMax)
APPROXDROP_NOT_EMULATED(atomicMin)
APPROXDROP_NOT_EMULATED(atomicExch)
#undef APPROXDROP_NOT_EMULATED

// ------------------------------------------------------------------ half and bfloat16
struct __half {
  std::uint16_t bits;
};
struct __nv_bfloat16 {
  std::uint16_t bits;
};

namespace cuda_emulation {

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// q rounded to nearest, ties to even, given the dropped bits rem out of 2^shift.
inline std::uint32_t round_even(std::uint32_t q, std::uint32_t rem, int shift) {
  const std::uint32_t half = 1U << (shift - 1);
  return q + (rem > half || (rem == half && (q & 1U)) ? 1U : 0U);
}

}  // namespace cuda_emulation

inline __half __float2half_rn(float f) {
  using namespace cuda_emulation;
  const std::uint32_t u = float_bits(f), sign = (u >> 16) & 0x8000U, a = u & 0x7fffffffU;
  if (a > 0x7f800000U) return {static_cast<std::uint16_t>(sign | 0x7e00U)};  // NaN
  const int exp = static_cast<int>(a >> 23);                                   // biased float exponent
  if (exp >= 143) return {static_cast<std::uint16_t>(sign | 0x7c00U)};          // >= 2^16 (and inf): inf
  if (exp < 102) return {static_cast<std::uint16_t>(sign)};                     // < 2^-25: rounds to zero
  const std::uint32_t mant = (a & 0x7fffffU) | 0x800000U;                       // 24 bits, value mant * 2^(exp - 150)
  std::uint32_t h;
  if (exp < 113) {  // half subnormal (units of 2^-24); rounding up to 0x400 gives the smallest normal
    const int shift = 126 - exp;
    h = round_even(mant >> shift, mant & ((1U << shift) - 1), shift);
  } else {  // normal; a carry out of the mantissa bumps the exponent, up to inf
    h = round_even((static_cast<std::uint32_t>(exp - 112) << 10) | ((mant >> 13) & 0x3ffU), mant & 0x1fffU, 13);
  }
  return {static_cast<std::uint16_t>(sign | h)};
}

inline __half __float2half(float f) { return __float2half_rn(f); }

inline float __half2float(__half h) {
  using namespace cuda_emulation;
  const std::uint32_t sign = static_cast<std::uint32_t>(h.bits & 0x8000U) << 16;
  const std::uint32_t exp = (h.bits >> 10) & 0x1fU, mant = h.bits & 0x3ffU;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000U | (mant << 13));  // inf, NaN
  if (exp == 0) {                                                          // zero, subnormal: mant * 2^-24
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112) << 23) | (mant << 13));
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  using namespace cuda_emulation;
  const std::uint32_t u = float_bits(f);
  if ((u & 0x7fffffffU) > 0x7f800000U) return {static_cast<std::uint16_t>((u >> 16) | 0x40U)};  // quiet NaN
  return {static_cast<std::uint16_t>(round_even(u >> 16, u & 0xffffU, 16))};  // carries reach inf correctly
}

inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

inline float __bfloat162float(__nv_bfloat16 b) {
  return cuda_emulation::bits_float(static_cast<std::uint32_t>(b.bits) << 16);
}

// ------------------------------------------------------------------ WMMA (nvcuda::wmma, m16n16k16)
namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace detail {

inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

constexpr int kLanes = 32, kTile = 16 * 16, kPerLane = kTile / kLanes;

/// Checks what every WMMA load / store requires, and returns the calling thread's lane.
inline int lane_checked(const char* op, const void* ptr, unsigned ldm, std::size_t elem) {
  const int rank = cuda_emulation::thread_rank();
  if (1ULL * blockDim.x * blockDim.y * blockDim.z % kLanes != 0)
    throw cuda_emulation::KernelFault(std::string(op) + ": the block is not made of whole warps");
  if (reinterpret_cast<std::uintptr_t>(ptr) % 32 != 0)
    throw cuda_emulation::KernelFault(std::string(op) + ": pointer is not 256-bit aligned");
  if (ldm * elem % 16 != 0)
    throw cuda_emulation::KernelFault(std::string(op) + ": ldm = " + std::to_string(ldm) +
                                      " elements is not a multiple of 16 bytes");
  return rank % kLanes;
}

/// The element (row-major index in the 16 x 16 tile) that accumulator lane ``lane`` holds as x[i]: sm_80's
/// layout, two 16 x 8 halves (i / 4), in each rows lane / 4 and lane / 4 + 8 (i % 4 / 2), columns 2 (lane % 4)
/// and the next (i % 2). A bijection of (lane, i) onto 0..255; real hardware's layout is opaque, this one
/// only has to differ from any read-back loop a kernel uses.
constexpr int element(int lane, int i) {
  const int row = lane / 4 + 8 * (i % 4 / 2), col = 8 * (i / 4) + 2 * (lane % 4) + i % 2;
  return row * 16 + col;
}

/// Offset of element (r, c) of a 16 x 16 tile stored with leading dimension ldm.
inline std::size_t offset(int r, int c, unsigned ldm, bool row_major_layout) {
  return row_major_layout ? std::size_t(r) * ldm + c : std::size_t(c) * ldm + r;
}

}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "emulated WMMA supports m16n16k16 only");
  static_assert(std::is_same_v<Use, matrix_a> || std::is_same_v<Use, matrix_b>, "unknown fragment use");
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>,
                "emulated WMMA matrix_a / matrix_b fragments hold __half or __nv_bfloat16");
  static_assert(std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>,
                "matrix_a / matrix_b fragments need a row_major or col_major layout");
  static constexpr int num_elements = detail::kTile;
  T x[detail::kTile];  // the whole tile, row-major
};

template <int M, int N, int K, typename T>
struct fragment<accumulator, M, N, K, T, void> {
  static_assert(M == 16 && N == 16 && K == 16, "emulated WMMA supports m16n16k16 only");
  static_assert(std::is_same_v<T, float>, "emulated WMMA accumulators are float");
  static constexpr int num_elements = detail::kPerLane;
  float x[detail::kPerLane];  // x[i] is element detail::element(lane, i) of the tile, row-major
};

template <typename Use, int M, int N, int K, typename T, typename Layout, typename V>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, const V& v) {
  for (auto& e : f.x) e = v;
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  detail::lane_checked("load_matrix_sync", p, ldm, sizeof(T));
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = p[detail::offset(r, c, ldm, std::is_same_v<Layout, row_major>)];
}

template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ldm, layout_t layout) {
  const int lane = detail::lane_checked("load_matrix_sync", p, ldm, sizeof(float));
  for (int i = 0; i < detail::kPerLane; ++i) {
    const int e = detail::element(lane, i);
    f.x[i] = p[detail::offset(e / 16, e % 16, ldm, layout == mem_row_major)];
  }
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  const int lane = detail::lane_checked("store_matrix_sync", p, ldm, sizeof(float));
  for (int i = 0; i < detail::kPerLane; ++i) {
    const int e = detail::element(lane, i);
    p[detail::offset(e / 16, e % 16, ldm, layout == mem_row_major)] = f.x[i];
  }
}

/// d = a @ b + c in fp32, products of the 16-bit inputs exact, summed in k order.
template <int M, int N, int K, typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
              const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  const int lane = cuda_emulation::thread_rank() % detail::kLanes;
  for (int i = 0; i < detail::kPerLane; ++i) {
    const int e = detail::element(lane, i), r = e / 16, col = e % 16;
    float acc = c.x[i];
    for (int k = 0; k < 16; ++k) acc += detail::to_float(a.x[r * 16 + k]) * detail::to_float(b.x[k * 16 + col]);
    d.x[i] = acc;
  }
}

}  // namespace nvcuda::wmma
