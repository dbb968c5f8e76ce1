// CUDA kernels of mixed_sum: forward and the fused backward, on the current stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "../common/element_math.h"
#include "../common/launch.cuh"
#include "../common/reduce_cuda.cuh"
#include "../common/tensor_lists.h"
#include "mixed_sum.h"

namespace fastdnas {
namespace {

using namespace cuda_reduce;

// Inputs handled per sweep of the backward kernel: their partial sums live in registers.
constexpr int kGroup = 8;

template <typename T>
struct PointerTable {
  T ptr[kMaxMixedSumInputs];
};

template <typename T>
PointerTable<T> pointer_table(const std::vector<at::Tensor>& tensors) {
  PointerTable<T> table{};
  for (size_t k = 0; k < tensors.size(); ++k) table.ptr[k] = static_cast<T>(tensors[k].data_ptr());
  return table;
}

template <typename scalar_t, typename acc_t>
__global__ void mixed_sum_forward_kernel(PointerTable<const scalar_t*> inputs, const acc_t* __restrict__ weights,
                                         int K, int64_t n, scalar_t* __restrict__ out) {
  __shared__ acc_t w[kMaxMixedSumInputs];
  for (int k = threadIdx.x; k < K; k += blockDim.x) w[k] = weights[k];
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    acc_t acc = 0;
    for (int k = 0; k < K; ++k) acc = accumulate_product(acc, w[k], inputs.ptr[k][i]);
    out[i] = static_cast<scalar_t>(acc);
  }
}

// grad_inputs[k] = w[k] * grad (if need_inputs), and per block partial sums of grad * inputs[k]
// into partials[block, k] (if need_weights); grad is read once per group of kGroup inputs.
template <typename scalar_t, typename acc_t>
__global__ void mixed_sum_backward_kernel(const scalar_t* __restrict__ grad, PointerTable<const scalar_t*> inputs,
                                          PointerTable<scalar_t*> grad_inputs, const acc_t* __restrict__ weights,
                                          int K, int64_t n, acc_t* __restrict__ partials, bool need_inputs,
                                          bool need_weights) {
  __shared__ acc_t w[kMaxMixedSumInputs];
  for (int k = threadIdx.x; k < K; k += blockDim.x) w[k] = weights[k];
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int k0 = 0; k0 < K; k0 += kGroup) {
    acc_t acc[kGroup];
#pragma unroll
    for (int j = 0; j < kGroup; ++j) acc[j] = 0;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
      const acc_t g = static_cast<acc_t>(grad[i]);
#pragma unroll
      for (int j = 0; j < kGroup; ++j) {
        const int k = k0 + j;
        if (k < K) {
          if (need_inputs) grad_inputs.ptr[k][i] = scaled_gradient<scalar_t>(w[k], g);
          if (need_weights) acc[j] = accumulate_product(acc[j], g, inputs.ptr[k][i]);
        }
      }
    }
    // need_weights is the same for the whole grid: every thread of a block reaches the barriers or none.
    if (need_weights) block_sums(acc, min(kGroup, K - k0), partials + static_cast<int64_t>(blockIdx.x) * K + k0, 1);
  }
}

at::Tensor mixed_sum_cuda(at::TensorList inputs_arg, const at::Tensor& weights_arg) {
  check_mixed_sum_args(inputs_arg, weights_arg);
  const c10::cuda::CUDAGuard device_guard(inputs_arg[0].device());
  const auto inputs = contiguous_all(inputs_arg);
  at::Tensor out = at::empty_like(inputs[0], at::MemoryFormat::Contiguous);
  const int64_t n = out.numel();
  const int K = static_cast<int>(inputs.size());
  if (n == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "mixed_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor weights = weights_arg.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    FASTDNAS_LAUNCH((mixed_sum_forward_kernel<scalar_t, acc_t>), forward_grid_for(n), kThreads, 0, stream)(
        pointer_table<const scalar_t*>(inputs), weights.const_data_ptr<acc_t>(), K, n,
        out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cuda(const at::Tensor& grad_arg,
                                                                         at::TensorList inputs_arg,
                                                                         const at::Tensor& weights_arg,
                                                                         std::array<bool, 2> output_mask) {
  check_mixed_sum_backward_args(grad_arg, inputs_arg, weights_arg);
  const auto [need_inputs, need_weights] = output_mask;
  const c10::cuda::CUDAGuard device_guard(grad_arg.device());
  const auto inputs = contiguous_all(inputs_arg);
  const at::Tensor grad = grad_arg.contiguous();
  auto grad_inputs = need_inputs ? empty_like_all(inputs) : std::vector<at::Tensor>{};
  if (!need_inputs && !need_weights) return {grad_inputs, at::Tensor()};
  const int64_t n = grad.numel();
  const int K = static_cast<int>(inputs.size());
  at::Tensor grad_weights;
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "mixed_sum_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor weights = weights_arg.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    at::Tensor sums = need_weights ? at::zeros({K}, weights.options()) : at::Tensor();
    if (n > 0) {
      const int64_t blocks = grid_for(n, kMaxBackwardBlocks);
      at::Tensor partials = at::empty({need_weights ? blocks : 0, K}, weights.options());
      FASTDNAS_LAUNCH((mixed_sum_backward_kernel<scalar_t, acc_t>), blocks, kThreads, 0, stream)(
          grad.const_data_ptr<scalar_t>(), pointer_table<const scalar_t*>(inputs),
          pointer_table<scalar_t*>(grad_inputs), weights.const_data_ptr<acc_t>(), K, n,
          partials.mutable_data_ptr<acc_t>(), need_inputs, need_weights);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (need_weights) {
        FASTDNAS_LAUNCH((sum_partials_kernel<acc_t>), K, kThreads, 0, stream)(partials.const_data_ptr<acc_t>(), blocks,
                                                                              K, sums.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    if (need_weights) grad_weights = sums.to(weights_arg.scalar_type());
  });
  return {grad_inputs, grad_weights};
}

}  // namespace

FASTDNAS_CUDA_LIBRARY_IMPL(m) {
  m.impl("mixed_sum", &mixed_sum_cuda);
  m.impl("_mixed_sum_backward", &mixed_sum_backward_cuda);
}

}  // namespace fastdnas
