// Stand-in for <cuda_pipeline_primitives.h> when kernels/*.cu compile with g++ (see ../cuda_emulation.h).
#pragma once
#include "../cuda_emulation.h"
