// CUDA kernels of resize_sum: forward and the fused backward, on the current stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "../common/element_math.h"
#include "../common/launch.cuh"
#include "../common/reduce_cuda.cuh"
#include "../common/tensor_lists.h"
#include "bilinear.h"
#include "resize_sum.h"

namespace fastdnas {
namespace {

using namespace cuda_reduce;

// Every input's data and its two axes, passed by value to the forward kernel.
template <typename scalar_t, typename acc_t>
struct ResizeInputTable {
  const scalar_t* data[kMaxResizeSumInputs];
  ResizeAxis<acc_t> rows[kMaxResizeSumInputs];
  ResizeAxis<acc_t> cols[kMaxResizeSumInputs];
};

template <typename scalar_t, typename acc_t>
__global__ void resize_sum_forward_kernel(ResizeInputTable<scalar_t, acc_t> inputs, const acc_t* __restrict__ weights,
                                          int K, int64_t out_h, int64_t out_w, int64_t n,
                                          scalar_t* __restrict__ out) {
  __shared__ acc_t w[kMaxResizeSumInputs];
  for (int k = threadIdx.x; k < K; k += blockDim.x) w[k] = weights[k];
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t ox = i % out_w;
    const int64_t oy = (i / out_w) % out_h;
    const int64_t plane = i / (out_w * out_h);
    acc_t acc = 0;
    for (int k = 0; k < K; ++k) {
      const ResizeAxis<acc_t> rows = inputs.rows[k], cols = inputs.cols[k];
      const scalar_t* x_plane = inputs.data[k] + plane * rows.input_size * cols.input_size;
      acc = accumulate_product(acc, w[k],
                               bilinear_sample(x_plane, cols.input_size, linear_taps(rows, oy), linear_taps(cols, ox)));
    }
    out[i] = static_cast<scalar_t>(acc);
  }
}

// For one input: grad_input = weight * (adjoint of the resize applied to grad), gathered per
// input pixel (no atomics), and per block partial sums of its dot with the input.
template <typename scalar_t, typename acc_t>
__global__ void resize_sum_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ input,
                                           scalar_t* __restrict__ grad_input, const acc_t* __restrict__ weight,
                                           ResizeAxis<acc_t> rows, ResizeAxis<acc_t> cols, int64_t n,
                                           acc_t* __restrict__ partials) {
  const acc_t w = *weight;
  acc_t dot[1] = {0};
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t in_h = rows.input_size, in_w = cols.input_size;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t x = i % in_w;
    const int64_t y = (i / in_w) % in_h;
    const int64_t plane = i / (in_w * in_h);
    const acc_t adjoint =
        bilinear_adjoint_at(grad + plane * rows.output_size * cols.output_size, rows, cols, y, x);
    grad_input[i] = scaled_gradient<scalar_t>(w, adjoint);
    dot[0] = accumulate_product(dot[0], adjoint, input[i]);
  }
  block_sums(dot, 1, partials + blockIdx.x, 1);
}

at::Tensor resize_sum_cuda(at::TensorList inputs_arg, at::IntArrayRef size,
                           const std::optional<at::Tensor>& weights_arg) {
  check_resize_sum_args(inputs_arg, size, weights_arg);
  const c10::cuda::CUDAGuard device_guard(inputs_arg[0].device());
  const auto inputs = contiguous_all(inputs_arg);
  const int64_t out_h = size[0], out_w = size[1];
  at::Tensor out = at::empty({inputs[0].size(0), inputs[0].size(1), out_h, out_w}, inputs[0].options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const int K = static_cast<int>(inputs.size());
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "resize_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor weights =
        accumulation_weights(weights_arg, K, c10::CppTypeToScalarType<acc_t>::value, out.device());
    ResizeInputTable<scalar_t, acc_t> table{};
    for (int k = 0; k < K; ++k) {
      table.data[k] = inputs[k].const_data_ptr<scalar_t>();
      table.rows[k] = resize_axis<acc_t>(inputs[k].size(2), out_h);
      table.cols[k] = resize_axis<acc_t>(inputs[k].size(3), out_w);
    }
    FASTDNAS_LAUNCH((resize_sum_forward_kernel<scalar_t, acc_t>), forward_grid_for(n), kThreads, 0, stream)(
        table, weights.const_data_ptr<acc_t>(), K, out_h, out_w, n, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> resize_sum_backward_cuda(const at::Tensor& grad_arg,
                                                                          at::TensorList inputs_arg,
                                                                          const std::optional<at::Tensor>& weights_arg) {
  check_resize_sum_backward_args(grad_arg, inputs_arg, weights_arg);
  const c10::cuda::CUDAGuard device_guard(grad_arg.device());
  const auto inputs = contiguous_all(inputs_arg);
  const at::Tensor grad = grad_arg.contiguous();
  auto grad_inputs = empty_like_all(inputs);
  const int64_t out_h = grad.size(2), out_w = grad.size(3);
  const int64_t K = static_cast<int64_t>(inputs.size());
  at::Tensor grad_weights;
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "resize_sum_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor weights =
        accumulation_weights(weights_arg, K, c10::CppTypeToScalarType<acc_t>::value, grad.device());
    at::Tensor sums = at::zeros({K}, weights.options());
    for (int64_t k = 0; k < K; ++k) {
      const int64_t n = inputs[k].numel();
      if (n == 0) continue;
      const int64_t grid = grid_for(n, kMaxBackwardBlocks);
      at::Tensor partials = at::empty({grid}, weights.options());
      FASTDNAS_LAUNCH((resize_sum_backward_kernel<scalar_t, acc_t>), grid, kThreads, 0, stream)(
          grad.const_data_ptr<scalar_t>(), inputs[k].const_data_ptr<scalar_t>(),
          grad_inputs[k].mutable_data_ptr<scalar_t>(), weights.const_data_ptr<acc_t>() + k,
          resize_axis<acc_t>(inputs[k].size(2), out_h), resize_axis<acc_t>(inputs[k].size(3), out_w), n,
          partials.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      FASTDNAS_LAUNCH((sum_partials_kernel<acc_t>), 1, kThreads, 0, stream)(partials.const_data_ptr<acc_t>(), grid, 1,
                                                            sums.mutable_data_ptr<acc_t>() + k);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    grad_weights = sums.to(weights_arg.has_value() ? weights_arg->scalar_type() : grad.scalar_type());
  });
  return {grad_inputs, grad_weights};
}

}  // namespace

FASTDNAS_CUDA_LIBRARY_IMPL(m) {
  m.impl("resize_sum", &resize_sum_cuda);
  m.impl("_resize_sum_backward", &resize_sum_backward_cuda);
}

}  // namespace fastdnas
