// Torch binding of the kernels (pattern GEMMs, block scatter, column sums): checks, contiguity, output
// allocation, launches.
// Includes only <torch/extension.h> (no ATen/cuda or c10/cuda headers, which the CPU torch wheel lacks),
// so it also compiles in CI against CPU torch. The caller (approxdrop/ops/cuda.py) passes the current
// CUDA stream as an integer and makes the tensors' device current.
#include <torch/extension.h>

#include <optional>
#include <vector>

#include "block_ops.h"
#include "pattern_gemm.h"

namespace {

using approxdrop::Pattern;
using torch::Tensor;

int dtype_code(const Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat: return approxdrop::kFloat32;
    case torch::kHalf: return approxdrop::kFloat16;
    case torch::kBFloat16: return approxdrop::kBFloat16;
    case torch::kDouble: return approxdrop::kFloat64;
    default: TORCH_CHECK(false, "approxdrop kernels support float32, float16, bfloat16 and float64, got ", t.scalar_type());
  }
}

/// Every tensor on the weight's CUDA device with the weight's dtype.
void check_like_weight(const char* op, const Tensor& weight, std::initializer_list<std::pair<const char*, const Tensor*>> ts) {
  TORCH_CHECK(weight.is_cuda(), op, ": weight must be a CUDA tensor, got device ", weight.device());
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be 2-D [n_out, n_in], got shape ", weight.sizes());
  for (const auto& [name, t] : ts) {
    TORCH_CHECK(t->device() == weight.device(), op, ": ", name, " is on ", t->device(), " but weight is on ",
                weight.device());
    TORCH_CHECK(t->scalar_type() == weight.scalar_type(), op, ": ", name, " has dtype ", t->scalar_type(),
                " but weight has dtype ", weight.scalar_type());
  }
  dtype_code(weight);
}

Pattern row_pattern(const char* op, const char* side, int64_t dp, int64_t offset, int64_t keep) {
  TORCH_CHECK(dp >= 1 && offset >= 0 && offset < dp && keep >= 1 && keep <= dp, op, ": invalid ", side,
              " pattern (dp=", dp, ", offset=", offset, ", keep=", keep, ")");
  return Pattern{dp, offset, keep};
}

void check_tile(const char* op, int64_t dp, int64_t offset, int64_t keep, int64_t tile) {
  TORCH_CHECK(dp >= 1 && dp <= 65535 && offset >= 0 && offset < dp && keep >= 1 && keep <= dp && tile >= 1, op,
              ": invalid tile pattern (dp=", dp, ", offset=", offset, ", keep=", keep, ", tile=", tile, ")");
}

/// t (Tensor[*, cols]) as a contiguous Tensor[rows, cols] (rows explicit, so cols = 0 works).
Tensor flat(const Tensor& t) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return t.reshape({rows, t.size(-1)}).contiguous();
}

/// Shape of t with its last dimension replaced by last.
std::vector<int64_t> with_last(const Tensor& t, int64_t last) {
  auto sizes = t.sizes().vec();
  sizes.back() = last;
  return sizes;
}

/// The kernels keep row and column indices in 32-bit shared-memory tables.
void check_index_range(const char* op, int64_t rows, const Tensor& weight) {
  constexpr int64_t kMax = 2147483647;
  TORCH_CHECK(rows <= kMax && weight.size(0) <= kMax && weight.size(1) <= kMax, op,
              ": sizes must stay below 2^31, got ", rows, " rows and weight ", weight.sizes());
}

void* as_stream(int64_t stream) { return reinterpret_cast<void*>(static_cast<intptr_t>(stream)); }

void run(const char* error) { TORCH_CHECK(error == nullptr, "approxdrop CUDA kernel failed: ", error); }

/// The bias made contiguous after the weight's device/dtype checks and a shape check; undefined if absent.
Tensor checked_bias(const char* op, const Tensor& weight, const std::optional<Tensor>& bias, int64_t n_out) {
  if (!bias) return Tensor();
  check_like_weight(op, weight, {{"bias", &*bias}});
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n_out, op, ": bias must have shape (", n_out, ",), got ",
              bias->sizes());
  return bias->contiguous();
}

/// out[kept_index(map, j)] = sum_i g2[i, j] for g2 [rows, cols] (contiguous): one pass, or split rows with a
/// workspace of partial sums in the accumulator type (column_sum_splits).
void column_sum_into(const Tensor& g2, Tensor& out, Pattern map, void* stream) {
  const int64_t rows = g2.size(0), cols = g2.size(1);
  const int64_t splits = approxdrop::column_sum_splits(rows, cols);
  const auto acc = g2.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  Tensor workspace = splits > 1 ? torch::empty({splits, cols}, g2.options().dtype(acc)) : Tensor();
  run(approxdrop::launch_column_sum_split(dtype_code(g2), g2.data_ptr(), rows, cols, out.data_ptr(), map,
                                          workspace.defined() ? workspace.data_ptr() : nullptr, splits, stream));
}

Tensor row_linear(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias, int64_t in_dp,
                  int64_t in_offset, int64_t in_keep, int64_t out_dp, int64_t out_offset, int64_t out_keep,
                  int64_t stream) {
  const char* op = "approxdrop::row_linear";
  check_like_weight(op, weight, {{"x", &x}});
  const Pattern in = row_pattern(op, "input", in_dp, in_offset, in_keep);
  const Pattern out = row_pattern(op, "output", out_dp, out_offset, out_keep);
  const int64_t n_out = weight.size(0), n_in = weight.size(1);
  const int64_t k_in = approxdrop::kept_count(in, n_in), k_out = approxdrop::kept_count(out, n_out);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == k_in, op, ": x must have last dimension ", k_in,
              " (the kept inputs of weight ", weight.sizes(), "), got shape ", x.sizes());
  const Tensor b = checked_bias(op, weight, bias, n_out);
  const Tensor x2 = flat(x), w = weight.contiguous();  // [N, k_in], [n_out, n_in]
  check_index_range(op, x2.size(0), w);
  Tensor y = torch::empty({x2.size(0), k_out}, x2.options());
  run(approxdrop::launch_pattern_gemm(
      approxdrop::row_forward(dtype_code(w), x2.data_ptr(), w.data_ptr(), b.defined() ? b.data_ptr() : nullptr,
                              y.data_ptr(), x2.size(0), n_out, n_in, in, out),
      as_stream(stream)));
  return y.reshape(with_last(x, k_out));  // [*, k_out]
}

std::vector<Tensor> row_linear_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, int64_t in_dp,
                                        int64_t in_offset, int64_t in_keep, int64_t out_dp, int64_t out_offset,
                                        int64_t out_keep, bool need_grad_x, int64_t stream) {
  const char* op = "approxdrop::row_linear_backward";
  check_like_weight(op, weight, {{"grad_y", &grad_y}, {"x", &x}});
  const Pattern in = row_pattern(op, "input", in_dp, in_offset, in_keep);
  const Pattern out = row_pattern(op, "output", out_dp, out_offset, out_keep);
  const int64_t n_out = weight.size(0), n_in = weight.size(1);
  const int64_t k_in = approxdrop::kept_count(in, n_in), k_out = approxdrop::kept_count(out, n_out);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == k_in, op, ": x must have last dimension ", k_in, ", got shape ", x.sizes());
  TORCH_CHECK(grad_y.sizes() == c10::IntArrayRef(with_last(x, k_out)), op, ": grad_y must have shape ",
              c10::IntArrayRef(with_last(x, k_out)), ", got ", grad_y.sizes());
  const Tensor g2 = flat(grad_y), x2 = flat(x), w = weight.contiguous();  // [N, k_out], [N, k_in]
  check_index_range(op, x2.size(0), w);
  const int64_t rows = x2.size(0);
  const int dt = dtype_code(w);
  void* s = as_stream(stream);
  Tensor grad_x = need_grad_x ? torch::empty_like(x2) : torch::empty({0}, x.options());  // empty: not needed
  Tensor grad_w = torch::zeros_like(w);
  Tensor grad_b = torch::zeros({n_out}, w.options());
  if (need_grad_x) {
    run(approxdrop::launch_pattern_gemm(
        approxdrop::row_grad_input(dt, g2.data_ptr(), w.data_ptr(), grad_x.data_ptr(), rows, n_out, n_in, in, out),
        s));
  }
  run(approxdrop::launch_pattern_gemm(
      approxdrop::row_grad_weight(dt, g2.data_ptr(), x2.data_ptr(), grad_w.data_ptr(), rows, n_out, n_in, in, out),
      s));
  column_sum_into(g2, grad_b, out, s);
  return {need_grad_x ? grad_x.reshape(x.sizes()) : grad_x, grad_w, grad_b};
}

Tensor tile_linear(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias, int64_t dp,
                   int64_t offset, int64_t keep, int64_t tile, int64_t stream) {
  const char* op = "approxdrop::tile_linear";
  check_like_weight(op, weight, {{"x", &x}});
  check_tile(op, dp, offset, keep, tile);
  const int64_t n_out = weight.size(0), n_in = weight.size(1);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == n_in, op, ": x must have last dimension ", n_in, " (weight ",
              weight.sizes(), "), got shape ", x.sizes());
  const Tensor b = checked_bias(op, weight, bias, n_out);
  const Tensor x2 = flat(x), w = weight.contiguous();  // [N, n_in], [n_out, n_in]
  check_index_range(op, x2.size(0), w);
  Tensor y = torch::empty({x2.size(0), n_out}, x2.options());
  run(approxdrop::launch_pattern_gemm(
      approxdrop::tile_forward(dtype_code(w), x2.data_ptr(), w.data_ptr(), b.defined() ? b.data_ptr() : nullptr,
                               y.data_ptr(), x2.size(0), n_out, n_in, dp, offset, keep, tile),
      as_stream(stream)));
  return y.reshape(with_last(x, n_out));  // [*, n_out]
}

std::vector<Tensor> tile_linear_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight, int64_t dp,
                                         int64_t offset, int64_t keep, int64_t tile, bool need_grad_x,
                                         int64_t stream) {
  const char* op = "approxdrop::tile_linear_backward";
  check_like_weight(op, weight, {{"grad_y", &grad_y}, {"x", &x}});
  check_tile(op, dp, offset, keep, tile);
  const int64_t n_out = weight.size(0), n_in = weight.size(1);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == n_in, op, ": x must have last dimension ", n_in, ", got shape ", x.sizes());
  TORCH_CHECK(grad_y.sizes() == c10::IntArrayRef(with_last(x, n_out)), op, ": grad_y must have shape ",
              c10::IntArrayRef(with_last(x, n_out)), ", got ", grad_y.sizes());
  const Tensor g2 = flat(grad_y), x2 = flat(x), w = weight.contiguous();  // [N, n_out], [N, n_in]
  check_index_range(op, x2.size(0), w);
  const int64_t rows = x2.size(0);
  const int dt = dtype_code(w);
  void* s = as_stream(stream);
  Tensor grad_x = need_grad_x ? torch::empty_like(x2) : torch::empty({0}, x.options());  // empty: not needed
  Tensor grad_w = torch::zeros_like(w);  // skipped tiles stay zero
  Tensor grad_b = torch::empty({n_out}, w.options());
  if (need_grad_x) {
    run(approxdrop::launch_pattern_gemm(approxdrop::tile_grad_input(dt, g2.data_ptr(), w.data_ptr(),
                                                                    grad_x.data_ptr(), rows, n_out, n_in, dp, offset,
                                                                    keep, tile),
                                        s));
  }
  run(approxdrop::launch_pattern_gemm(approxdrop::tile_grad_weight(dt, g2.data_ptr(), x2.data_ptr(), grad_w.data_ptr(),
                                                                   rows, n_out, n_in, dp, offset, keep, tile),
                                      s));
  column_sum_into(g2, grad_b, Pattern{1, 0, 1}, s);
  return {need_grad_x ? grad_x.reshape(x.sizes()) : grad_x, grad_w, grad_b};
}

// ------------------------------------------------------------------ the cuBLAS path's small kernels

/// A contiguous 2-D block of the weight's device and dtype, [k_out, k_in] of the patterns on (n_out, n_in).
Tensor checked_block(const char* op, const Tensor& block, const Tensor& like, int64_t n_out, int64_t n_in,
                     const Pattern& out, const Pattern& in) {
  check_like_weight(op, like, {{"block", &block}});
  const int64_t k_out = approxdrop::kept_count(out, n_out), k_in = approxdrop::kept_count(in, n_in);
  TORCH_CHECK(block.dim() == 2 && block.size(0) == k_out && block.size(1) == k_in, op, ": block must have shape (",
              k_out, ", ", k_in, "), the kept rows and columns of (", n_out, ", ", n_in, "), got ", block.sizes());
  return block.contiguous();
}

/// full [n_out, n_in] (new, contiguous): block at the kept (out row, in column) pairs, zero elsewhere; every
/// element written once by one kernel.
Tensor scatter_block(const Tensor& block, int64_t n_out, int64_t n_in, int64_t out_dp, int64_t out_offset,
                     int64_t out_keep, int64_t in_dp, int64_t in_offset, int64_t in_keep, int64_t stream) {
  const char* op = "approxdrop scatter_block";
  const Pattern out = row_pattern(op, "output", out_dp, out_offset, out_keep);
  const Pattern in = row_pattern(op, "input", in_dp, in_offset, in_keep);
  TORCH_CHECK(n_out >= 0 && n_in >= 0, op, ": sizes must be >= 0, got (", n_out, ", ", n_in, ")");
  const Tensor b = checked_block(op, block, block, n_out, n_in, out, in);
  Tensor full = torch::empty({n_out, n_in}, b.options());
  run(approxdrop::launch_scatter_block(dtype_code(b), b.data_ptr(), full.data_ptr(), n_out, n_in, out, in,
                                       as_stream(stream)));
  return full;
}

/// full[kept rows, kept columns] += block, in place (full: contiguous, the block's device and dtype).
void scatter_block_add_(Tensor& full, const Tensor& block, int64_t out_dp, int64_t out_offset, int64_t out_keep,
                        int64_t in_dp, int64_t in_offset, int64_t in_keep, int64_t stream) {
  const char* op = "approxdrop scatter_block_add_";
  const Pattern out = row_pattern(op, "output", out_dp, out_offset, out_keep);
  const Pattern in = row_pattern(op, "input", in_dp, in_offset, in_keep);
  TORCH_CHECK(full.dim() == 2 && full.is_contiguous(), op, ": full must be a contiguous 2-D tensor, got ",
              full.sizes(), " with strides ", full.strides());
  const Tensor b = checked_block(op, block, full, full.size(0), full.size(1), out, in);
  run(approxdrop::launch_scatter_block_add(dtype_code(b), b.data_ptr(), full.data_ptr(), full.size(0), full.size(1),
                                           out, in, as_stream(stream)));
}

/// The bias gradient [n] of g [*, k] (k = kept count of the pattern on n): column sums at the kept
/// entries, zero elsewhere.
Tensor column_sum(const Tensor& g, int64_t n, int64_t dp, int64_t offset, int64_t keep, int64_t stream) {
  const char* op = "approxdrop column_sum";
  TORCH_CHECK(g.is_cuda() && g.dim() >= 1, op, ": g must be a CUDA tensor [*, k], got ", g.sizes(), " on ",
              g.device());
  dtype_code(g);
  const Pattern map = row_pattern(op, "bias", dp, offset, keep);
  TORCH_CHECK(n >= 0 && g.size(-1) == approxdrop::kept_count(map, n), op, ": g must have last dimension ",
              approxdrop::kept_count(map, n), " (the kept entries of ", n, "), got ", g.sizes());
  const Tensor g2 = flat(g);
  Tensor out = torch::zeros({n}, g2.options());
  column_sum_into(g2, out, map, as_stream(stream));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "approxdrop CUDA kernels: pattern GEMMs, block scatter and column sums (see kernels/README.md)";
  m.def("row_linear", &row_linear, "approxdrop::row_linear on CUDA");
  m.def("row_linear_backward", &row_linear_backward, "approxdrop::row_linear_backward on CUDA");
  m.def("tile_linear", &tile_linear, "approxdrop::tile_linear on CUDA");
  m.def("tile_linear_backward", &tile_linear_backward, "approxdrop::tile_linear_backward on CUDA");
  m.def("scatter_block", &scatter_block, "weight-gradient block into a new full-size gradient (zero elsewhere)");
  m.def("scatter_block_add_", &scatter_block_add_, "weight-gradient block added into a full-size gradient");
  m.def("column_sum", &column_sum, "bias gradient: column sums at the kept entries, zero elsewhere");
}
