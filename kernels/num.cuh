// Storage types of the kernels and their accumulators (device side only; included by the .cu files).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace approxdrop {

/// Storage type T <-> accumulator type (float, double for float64); min_wmma_arch: 0 = no tensor cores.
template <typename T>
struct Num;

template <>
struct Num<float> {
  using acc = float;
  static constexpr int min_wmma_arch = 0;
  __device__ static float in(float v) { return v; }
  __device__ static float out(float v) { return v; }
};

template <>
struct Num<double> {
  using acc = double;
  static constexpr int min_wmma_arch = 0;
  __device__ static double in(double v) { return v; }
  __device__ static double out(double v) { return v; }
};

template <>
struct Num<__half> {
  using acc = float;
  static constexpr int min_wmma_arch = 700;
  __device__ static float in(__half v) { return __half2float(v); }
  __device__ static __half out(float v) { return __float2half_rn(v); }
};

template <>
struct Num<__nv_bfloat16> {
  using acc = float;
  static constexpr int min_wmma_arch = 800;
  __device__ static float in(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 out(float v) { return __float2bfloat16_rn(v); }
};

}  // namespace approxdrop
