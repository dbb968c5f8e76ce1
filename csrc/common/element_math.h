// Per-element arithmetic shared by the CPU and CUDA kernels, so the CPU tests exercise the
// exact expressions the GPU runs.
#pragma once

#if defined(__CUDACC__)
#define FASTDNAS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTDNAS_HOST_DEVICE inline
#endif

namespace fastdnas {

// acc + a * x, with x converted to the accumulation type first (half types accumulate in float).
template <typename acc_t, typename scalar_t>
FASTDNAS_HOST_DEVICE acc_t accumulate_product(acc_t acc, acc_t a, scalar_t x) {
  return acc + a * static_cast<acc_t>(x);
}

// The gradient of one input element of a weighted sum: weight * upstream gradient.
template <typename scalar_t, typename acc_t>
FASTDNAS_HOST_DEVICE scalar_t scaled_gradient(acc_t weight, acc_t grad) {
  return static_cast<scalar_t>(weight * grad);
}

}  // namespace fastdnas
