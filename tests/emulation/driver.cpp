// Command-line driver of the emulated kernels (tests/test_emulated_kernels.py builds it with g++ together
// with kernels/*.cu and cuda_emulation.h). It calls the kernels' launchers as kernels/binding.cpp does,
// on raw buffers that live in files:
//
//   driver DIR OP DTYPE ARCH SCHEDULE INT...
//
// DTYPE: float32 | float16 | bfloat16 | float64. ARCH: the emulated GPU (e.g. 900; below 700 the fp16
// GEMM falls back to the shared-memory kernel, below 800 the bf16 one). SCHEDULE: parallel | serial.
// Every buffer NAME is DIR/NAME.bin, row-major, of the size the integers imply. Outputs are read too (so
// a test can prefill them, e.g. with NaN to see which entries a kernel writes) and written back.
//
//   row_linear            rows n_out n_in in_dp in_offset in_keep out_dp out_offset out_keep has_bias
//                         x[rows, k_in] w[n_out, n_in] (b[n_out]) -> y[rows, k_out]
//   row_linear_backward   rows n_out n_in in_dp in_offset in_keep out_dp out_offset out_keep
//                         gy[rows, k_out] x w -> gx[rows, k_in] gw[n_out, n_in] gb[n_out]
//   tile_linear           rows n_out n_in dp offset keep tile has_bias: x[rows, n_in] w (b) -> y[rows, n_out]
//   tile_linear_backward  rows n_out n_in dp offset keep tile: gy[rows, n_out] x w -> gx gw gb
//   column_sum            rows cols dp offset keep n: g[rows, cols] -> out[n]
//   column_sum_split      rows cols dp offset keep n splits: g[rows, cols] -> out[n] (the driver owns the
//                         workspace, exactly splits * cols accumulators, NaN-filled)
//   column_sum_auto       rows cols dp offset keep n: column_sum_split with splits = column_sum_splits(rows,
//                         cols), the rule kernels/binding.cpp uses on a GPU
//   column_sum_splits     rows cols [rows cols ...] (DTYPE ignored, no buffers): one line "splits ROWS COLS S"
//                         per pair, S = column_sum_splits(rows, cols)
//   scatter_block         n_out n_in out_dp out_offset out_keep in_dp in_offset in_keep add:
//                         block[k_out, k_in] -> full[n_out, n_in] (add: the scatter-add kernel)
//   convert               n (DTYPE ignored): f[n] float32 -> h[n] (__float2half_rn bits), b[n]
//                         (__float2bfloat16_rn bits), hf[n], bf[n] (h and b back to float32)
//   selftest NAME         (no buffers) a small kernel of this file that checks the emulator itself:
//                         block_sum and async_groups must succeed; divergent_sync, wmma_misaligned,
//                         wmma_bad_ldm, trap, bad_config, async_misaligned and ldg_misaligned must fail their
//                         launch, and index_range must be refused by the pattern GEMM's launcher
//
// After a successful op, stdout has the emulator's report: one line per launch (grid, block) and the counts
// of cp.async copies and 128-bit loads (cuda_emulation::report).
//
// Exit status: 0 on success, 1 on bad arguments or buffers, 2 when a launch fails (message on stderr).
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_emulation.h"
#include "block_ops.h"
#include "pattern_gemm.h"

using namespace approxdrop;

namespace {

struct Usage : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The buffers of one run, read from DIR/NAME.bin and written back by save().
class Buffers {
 public:
  explicit Buffers(std::string dir) : dir_(std::move(dir)) {}

  void* load(const std::string& name, long long bytes) {
    std::ifstream in(path(name), std::ios::binary | std::ios::ate);
    if (!in) throw Usage("cannot read " + path(name));
    if (static_cast<long long>(in.tellg()) != bytes)
      throw Usage(path(name) + " holds " + std::to_string(static_cast<long long>(in.tellg())) + " bytes, expected " +
                  std::to_string(bytes));
    // at least one byte, so that an empty tensor still has a distinct address (ASan sees any access to it)
    auto& data = data_[name] = std::vector<char>(static_cast<std::size_t>(bytes > 0 ? bytes : 1));
    in.seekg(0);
    in.read(data.data(), bytes);
    sizes_[name] = bytes;
    return data.data();
  }

  void save(const std::string& name) const {
    std::ofstream out(path(name), std::ios::binary | std::ios::trunc);
    out.write(data_.at(name).data(), sizes_.at(name));
    if (!out) throw Usage("cannot write " + path(name));
  }

 private:
  std::string path(const std::string& name) const { return dir_ + "/" + name + ".bin"; }

  std::string dir_;
  std::map<std::string, std::vector<char>> data_;
  std::map<std::string, long long> sizes_;
};

int dtype_code(const std::string& name, long long* elem) {
  if (name == "float32") return *elem = 4, kFloat32;
  if (name == "float16") return *elem = 2, kFloat16;
  if (name == "bfloat16") return *elem = 2, kBFloat16;
  if (name == "float64") return *elem = 8, kFloat64;
  throw Usage("unknown dtype " + name);
}

Pattern pattern(const std::vector<long long>& v, std::size_t at) {
  const Pattern p{v[at], v[at + 1], v[at + 2]};
  if (p.dp < 1 || p.offset < 0 || p.offset >= p.dp || p.keep < 1 || p.keep > p.dp)
    throw Usage("invalid pattern (" + std::to_string(p.dp) + ", " + std::to_string(p.offset) + ", " +
                std::to_string(p.keep) + ")");
  return p;
}

void check(const char* error) {
  if (error != nullptr) throw std::runtime_error(std::string("launch failed: ") + error);
}

// ------------------------------------------------------------------ kernels that check the emulator
constexpr int kSumThreads = 64;

/// out[block] = sum over the block's threads of (thread rank + 1000 * block rank), through __shared__.
__global__ void block_sum(long long* out) {
  __shared__ long long s[kSumThreads];
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  s[t] = t + 1000LL * b;
  __syncthreads();
  if (t != 0) return;
  long long sum = 0;
  for (int i = 0; i < kSumThreads; ++i) sum += s[i];
  out[b] = sum;
}

__global__ void divergent_sync(long long* out) {
  if (threadIdx.x == 0) return;  // the others then wait at a barrier thread 0 never reaches
  __syncthreads();
  out[threadIdx.x] = 1;
}

template <int Shift, int Ldm>
__global__ void wmma_load(long long*) {
  __shared__ __align__(32) __half tile[16 * 32 + 16];
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major> a;
  nvcuda::wmma::load_matrix_sync(a, tile + Shift, Ldm);
}

__global__ void trap(long long*) { __trap(); }

alignas(16) const float kSource[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

/// One thread, two groups of cp.async copies: nothing lands before a wait, wait_prior(1) lands the older
/// group only, wait_prior(0) the rest (zfill bytes zeroed). out[0] = 1 if every check held.
__global__ void async_groups(long long* out) {
  __shared__ __align__(16) float s[8];
  for (float& v : s) v = -1;
  __pipeline_memcpy_async(s, kSource, 16);
  __pipeline_commit();
  __pipeline_memcpy_async(s + 4, kSource + 4, 16, 8);  // s[4..5] from the source, s[6..7] zero
  __pipeline_commit();
  bool ok = s[0] == -1 && s[4] == -1;
  __pipeline_wait_prior(1);
  ok = ok && s[0] == 1 && s[3] == 4 && s[4] == -1;
  __pipeline_wait_prior(0);
  out[0] = ok && s[4] == 5 && s[5] == 6 && s[6] == 0 && s[7] == 0;
}

__global__ void async_misaligned(long long*) {
  __shared__ __align__(16) float s[8];
  __pipeline_memcpy_async(s, kSource + 1, 16);  // 4 bytes past a 16-byte boundary
}

__global__ void ldg_misaligned(long long* out) { out[0] = __ldg(reinterpret_cast<const uint4*>(kSource + 2)).x; }

void selftest(const std::string& name) {
  std::vector<long long> out(12 * kSumThreads, 0);
  const dim3 grid(2, 3, 2), block(4, 4, 4);
  if (name == "block_sum") {
    APPROXDROP_LAUNCH(block_sum, grid, block, 0, nullptr, out.data());
  } else if (name == "divergent_sync") {
    APPROXDROP_LAUNCH(divergent_sync, 1, kSumThreads, 0, nullptr, out.data());
  } else if (name == "wmma_misaligned") {
    APPROXDROP_LAUNCH((wmma_load<1, 32>), 1, 32, 0, nullptr, out.data());  // 2 bytes past a 32-byte boundary
  } else if (name == "wmma_bad_ldm") {
    APPROXDROP_LAUNCH((wmma_load<0, 20>), 1, 32, 0, nullptr, out.data());  // 40 bytes per row
  } else if (name == "trap") {
    APPROXDROP_LAUNCH(trap, 1, 32, 0, nullptr, out.data());
  } else if (name == "bad_config") {
    APPROXDROP_LAUNCH(block_sum, 1, dim3(1024, 2), 0, nullptr, out.data());
  } else if (name == "async_groups") {
    APPROXDROP_LAUNCH(async_groups, 1, 1, 0, nullptr, out.data());
  } else if (name == "async_misaligned") {
    APPROXDROP_LAUNCH(async_misaligned, 1, 1, 0, nullptr, out.data());
  } else if (name == "ldg_misaligned") {
    APPROXDROP_LAUNCH(ldg_misaligned, 1, 1, 0, nullptr, out.data());
  } else if (name == "index_range") {  // K of 2^31 elements: refused before anything is read
    const Pattern all{1, 0, 1};
    check(launch_pattern_gemm(row_forward(kFloat32, nullptr, nullptr, nullptr, nullptr, 4, 8, 1LL << 31, all, all),
                              nullptr));
  } else {
    throw Usage("unknown self-test " + name);
  }
  const cudaError_t err = cudaGetLastError();
  check(err == cudaSuccess ? nullptr : cudaGetErrorString(err));
  if (name == "async_groups" && out[0] != 1) throw std::runtime_error("async_groups: cp.async landed out of order");
  if (name != "block_sum") return;
  for (int b = 0; b < 12; ++b)
    if (out[b] != kSumThreads * (kSumThreads - 1) / 2 + 1000LL * kSumThreads * b)
      throw std::runtime_error("block_sum: block " + std::to_string(b) + " got " + std::to_string(out[b]));
}

void run(const std::string& op, int dt, long long elem, const std::vector<long long>& v, Buffers& buf) {
  auto need = [&](std::size_t count) {
    if (v.size() != count) throw Usage(op + " takes " + std::to_string(count) + " integers");
  };
  auto load = [&](const char* name, long long count) { return buf.load(name, count * elem); };
  if (op == "row_linear" || op == "row_linear_backward") {
    const bool forward = op == "row_linear";
    need(forward ? 10 : 9);
    const long long rows = v[0], n_out = v[1], n_in = v[2];
    const Pattern in = pattern(v, 3), out = pattern(v, 6);
    const long long k_in = kept_count(in, n_in), k_out = kept_count(out, n_out);
    void* w = load("w", n_out * n_in);
    void* x = load("x", rows * k_in);
    if (forward) {
      void* b = v[9] ? load("b", n_out) : nullptr;
      void* y = load("y", rows * k_out);
      check(launch_pattern_gemm(row_forward(dt, x, w, b, y, rows, n_out, n_in, in, out), nullptr));
      buf.save("y");
      return;
    }
    void* gy = load("gy", rows * k_out);
    void* gx = load("gx", rows * k_in);
    void* gw = load("gw", n_out * n_in);
    void* gb = load("gb", n_out);
    check(launch_pattern_gemm(row_grad_input(dt, gy, w, gx, rows, n_out, n_in, in, out), nullptr));
    check(launch_pattern_gemm(row_grad_weight(dt, gy, x, gw, rows, n_out, n_in, in, out), nullptr));
    check(launch_column_sum(dt, gy, rows, k_out, gb, out, nullptr));
    for (const char* name : {"gx", "gw", "gb"}) buf.save(name);
  } else if (op == "tile_linear" || op == "tile_linear_backward") {
    const bool forward = op == "tile_linear";
    need(forward ? 8 : 7);
    const long long rows = v[0], n_out = v[1], n_in = v[2], dp = v[3], offset = v[4], keep = v[5], tile = v[6];
    pattern(v, 3);
    if (tile < 1) throw Usage("tile must be >= 1");
    void* w = load("w", n_out * n_in);
    void* x = load("x", rows * n_in);
    if (forward) {
      void* b = v[7] ? load("b", n_out) : nullptr;
      void* y = load("y", rows * n_out);
      check(launch_pattern_gemm(tile_forward(dt, x, w, b, y, rows, n_out, n_in, dp, offset, keep, tile), nullptr));
      buf.save("y");
      return;
    }
    void* gy = load("gy", rows * n_out);
    void* gx = load("gx", rows * n_in);
    void* gw = load("gw", n_out * n_in);
    void* gb = load("gb", n_out);
    check(launch_pattern_gemm(tile_grad_input(dt, gy, w, gx, rows, n_out, n_in, dp, offset, keep, tile), nullptr));
    check(launch_pattern_gemm(tile_grad_weight(dt, gy, x, gw, rows, n_out, n_in, dp, offset, keep, tile), nullptr));
    check(launch_column_sum(dt, gy, rows, n_out, gb, Pattern{1, 0, 1}, nullptr));
    for (const char* name : {"gx", "gw", "gb"}) buf.save(name);
  } else if (op == "column_sum") {
    need(6);
    const long long rows = v[0], cols = v[1], n = v[5];
    const Pattern map = pattern(v, 2);
    if (kept_count(map, n) < cols) throw Usage("out is too short for the map's first cols kept indices");
    void* g = load("g", rows * cols);
    void* out = load("out", n);
    check(launch_column_sum(dt, g, rows, cols, out, map, nullptr));
    buf.save("out");
  } else if (op == "column_sum_split" || op == "column_sum_auto") {
    const bool automatic = op == "column_sum_auto";
    need(automatic ? 6 : 7);
    const long long rows = v[0], cols = v[1], n = v[5], splits = automatic ? column_sum_splits(rows, cols) : v[6];
    const Pattern map = pattern(v, 2);
    if (kept_count(map, n) < cols) throw Usage("out is too short for the map's first cols kept indices");
    void* g = load("g", rows * cols);
    void* out = load("out", n);
    std::vector<char> workspace(static_cast<std::size_t>(splits > 1 ? splits * cols * (dt == kFloat64 ? 8 : 4) : 0),
                                static_cast<char>(0xff));  // NaN in float and double
    check(launch_column_sum_split(dt, g, rows, cols, out, map, splits > 1 ? workspace.data() : nullptr, splits,
                                  nullptr));
    buf.save("out");
  } else if (op == "column_sum_splits") {
    if (v.empty() || v.size() % 2 != 0) throw Usage(op + " takes pairs of integers (rows cols)");
    for (std::size_t i = 0; i < v.size(); i += 2)
      std::printf("splits %lld %lld %lld\n", v[i], v[i + 1], column_sum_splits(v[i], v[i + 1]));
  } else if (op == "scatter_block") {
    need(9);
    const long long n_out = v[0], n_in = v[1];
    const Pattern out = pattern(v, 2), in = pattern(v, 5);
    void* block = load("block", kept_count(out, n_out) * kept_count(in, n_in));
    void* full = load("full", n_out * n_in);
    check((v[8] ? launch_scatter_block_add : launch_scatter_block)(dt, block, full, n_out, n_in, out, in, nullptr));
    buf.save("full");
  } else if (op == "convert") {
    need(1);
    const long long n = v[0];
    const auto* f = static_cast<const float*>(buf.load("f", n * 4));
    auto* h = static_cast<__half*>(buf.load("h", n * 2));
    auto* b = static_cast<__nv_bfloat16*>(buf.load("b", n * 2));
    auto* hf = static_cast<float*>(buf.load("hf", n * 4));
    auto* bf = static_cast<float*>(buf.load("bf", n * 4));
    for (long long i = 0; i < n; ++i) {
      h[i] = __float2half_rn(f[i]);
      b[i] = __float2bfloat16_rn(f[i]);
      hf[i] = __half2float(h[i]);
      bf[i] = __bfloat162float(b[i]);
    }
    for (const char* name : {"h", "b", "hf", "bf"}) buf.save(name);
  } else {
    throw Usage("unknown op " + op);
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 6) throw Usage("usage: driver DIR OP DTYPE ARCH SCHEDULE INT...");
    long long elem = 0;
    const int dt = dtype_code(argv[3], &elem);
    cuda_emulation::device_arch = std::atoi(argv[4]);
    const std::string sched = argv[5];
    if (sched != "parallel" && sched != "serial") throw Usage("unknown schedule " + sched);
    using cuda_emulation::Schedule;
    cuda_emulation::schedule = sched == "serial" ? Schedule::serial : Schedule::parallel;
    if (std::string(argv[2]) == "selftest") {
      if (argc != 7) throw Usage("usage: driver DIR selftest DTYPE ARCH SCHEDULE NAME");
      selftest(argv[6]);
      return 0;
    }
    std::vector<long long> ints;
    for (int i = 6; i < argc; ++i) ints.push_back(std::stoll(argv[i]));
    Buffers buffers(argv[1]);
    run(argv[2], dt, elem, ints, buffers);
    std::fputs(cuda_emulation::report().c_str(), stdout);
    return 0;
  } catch (const Usage& e) {
    std::fprintf(stderr, "driver: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "driver: %s\n", e.what());
    return 2;
  }
}
