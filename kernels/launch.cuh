// The kernels' one launch seam: APPROXDROP_LAUNCH(kernel, grid, block, smem, stream, args...) is
// kernel<<<grid, block, smem, stream>>>(args...) under nvcc. The CPU emulation of the tests
// (tests/emulation/cuda_emulation.h, which stands in for <cuda_runtime.h>) defines it as its own launcher,
// so the same sources also compile with g++ and run in CI without a GPU.
#pragma once

#include <cuda_runtime.h>

#if defined(__CUDACC__)
#define APPROXDROP_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#elif !defined(APPROXDROP_LAUNCH)
#error "kernels/*.cu compile with nvcc, or with g++ against tests/emulation/cuda_emulation.h"
#endif
