// CUDA kernels of depthwise_conv2d on the current stream: forward (a thread per output), input
// gradient (a thread per input element, gathering from the outputs that read it) and weight
// gradient (a block per filter tap, a deterministic block reduction). Every element adds its
// taps in the order of the CPU kernels; taps that read padding add a product with zero.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/launch.cuh"
#include "../common/reduce_cuda.cuh"
#include "depthwise_conv.h"

namespace fastdnas {
namespace {

using namespace cuda_reduce;

// The shape as kernel arguments (DepthwiseShape holds std::array, which device code cannot index).
struct Geometry {
  int64_t N, C, H, W, KH, KW, OH, OW;
  int64_t sh, sw, ph, pw, dh, dw;
};

Geometry geometry(const DepthwiseShape& s) {
  return {s.N,         s.C,          s.H,          s.W,          s.KH,          s.KW,          s.OH,
          s.OW,        s.stride[0],  s.stride[1],  s.padding[0], s.padding[1],  s.dilation[0], s.dilation[1]};
}

template <typename scalar_t, typename acc_t>
__global__ void depthwise_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight,
                                         Geometry g, int64_t n, scalar_t* __restrict__ out) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < n; index += step) {
    const int64_t ow = index % g.OW;
    const int64_t oh = (index / g.OW) % g.OH;
    const int64_t p = index / (g.OW * g.OH);
    const scalar_t* plane = x + p * g.H * g.W;
    const scalar_t* filter = weight + (p % g.C) * g.KH * g.KW;
    acc_t acc = 0;
    for (int64_t i = 0; i < g.KH; ++i) {
      const int64_t ih = depthwise_input_index(oh, i, g.sh, g.ph, g.dh);
      const bool row_inside = ih >= 0 && ih < g.H;
      for (int64_t j = 0; j < g.KW; ++j) {
        const int64_t iw = depthwise_input_index(ow, j, g.sw, g.pw, g.dw);
        // A padding tap adds w * 0, as F.conv2d does: NaN for a non-finite weight.
        const scalar_t v = row_inside && iw >= 0 && iw < g.W ? plane[ih * g.W + iw] : scalar_t(0);
        acc = accumulate_product(acc, static_cast<acc_t>(filter[i * g.KW + j]), v);
      }
    }
    out[index] = static_cast<scalar_t>(acc);
  }
}

// Rows in descending tap order are output rows in ascending order: the CPU kernel's order.
template <typename scalar_t, typename acc_t>
__global__ void depthwise_input_grad_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ weight,
                                            Geometry g, int64_t n, scalar_t* __restrict__ grad_x) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < n; index += step) {
    const int64_t iw = index % g.W;
    const int64_t ih = (index / g.W) % g.H;
    const int64_t p = index / (g.W * g.H);
    const scalar_t* plane = grad + p * g.OH * g.OW;
    const scalar_t* filter = weight + (p % g.C) * g.KH * g.KW;
    acc_t acc = 0;
    for (int64_t i = g.KH - 1; i >= 0; --i) {
      const int64_t oh = depthwise_output_index(ih, i, g.OH, g.sh, g.ph, g.dh);
      if (oh < 0) continue;
      for (int64_t j = 0; j < g.KW; ++j) {
        const int64_t ow = depthwise_output_index(iw, j, g.OW, g.sw, g.pw, g.dw);
        if (ow < 0) continue;
        acc = accumulate_product(acc, static_cast<acc_t>(filter[i * g.KW + j]), plane[oh * g.OW + ow]);
      }
    }
    grad_x[index] = static_cast<scalar_t>(acc);
  }
}

// Block (c, i, j): sum over n, oh, ow of grad[n, c, oh, ow] * x[n, c, ih, iw] into sums[block].
template <typename scalar_t, typename acc_t>
__global__ void depthwise_weight_grad_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                             Geometry g, acc_t* __restrict__ sums) {
  const int64_t tap = blockIdx.x % (g.KH * g.KW);
  const int64_t c = blockIdx.x / (g.KH * g.KW);
  const int64_t i = tap / g.KW, j = tap % g.KW;
  const int64_t per_plane = g.OH * g.OW;
  acc_t acc[1] = {0};
  for (int64_t t = threadIdx.x; t < g.N * per_plane; t += blockDim.x) {
    const int64_t n = t / per_plane;
    const int64_t oh = (t % per_plane) / g.OW, ow = t % g.OW;
    const int64_t ih = depthwise_input_index(oh, i, g.sh, g.ph, g.dh);
    const int64_t iw = depthwise_input_index(ow, j, g.sw, g.pw, g.dw);
    const int64_t p = n * g.C + c;
    // A padding tap adds grad * 0, as F.conv2d does: NaN for a non-finite gradient.
    const scalar_t v = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W ? x[(p * g.H + ih) * g.W + iw] : scalar_t(0);
    acc[0] = accumulate_product(acc[0], static_cast<acc_t>(grad[p * per_plane + oh * g.OW + ow]), v);
  }
  block_sums(acc, 1, sums + blockIdx.x, 1);
}

at::Tensor depthwise_conv2d_cuda(const at::Tensor& x_arg, const at::Tensor& weight_arg, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DepthwiseShape s = check_depthwise_forward_args(x_arg, weight_arg, stride, padding, dilation);
  const c10::cuda::CUDAGuard device_guard(x_arg.device());
  const at::Tensor x = x_arg.contiguous();
  const at::Tensor weight = weight_arg.contiguous();
  at::Tensor out = at::empty({s.N, s.C, s.OH, s.OW}, x.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "depthwise_conv2d_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    FASTDNAS_LAUNCH((depthwise_forward_kernel<scalar_t, acc_t>), forward_grid_for(n), kThreads, 0, stream)(
        x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), geometry(s), n,
        out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor depthwise_conv2d_input_grad_cuda(const at::Tensor& grad_arg, const at::Tensor& weight_arg,
                                            at::IntArrayRef input_size, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DepthwiseShape s =
      check_depthwise_input_grad_args(grad_arg, weight_arg, input_size, stride, padding, dilation);
  const c10::cuda::CUDAGuard device_guard(grad_arg.device());
  const at::Tensor grad = grad_arg.contiguous();
  const at::Tensor weight = weight_arg.contiguous();
  at::Tensor grad_x = at::empty({s.N, s.C, s.H, s.W}, grad.options());
  const int64_t n = grad_x.numel();
  if (n == 0) return grad_x;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "depthwise_conv2d_input_grad_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    FASTDNAS_LAUNCH((depthwise_input_grad_kernel<scalar_t, acc_t>), forward_grid_for(n), kThreads, 0, stream)(
        grad.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), geometry(s), n,
        grad_x.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_x;
}

at::Tensor depthwise_conv2d_weight_grad_cuda(const at::Tensor& grad_arg, const at::Tensor& x_arg,
                                             at::IntArrayRef weight_size, at::IntArrayRef stride,
                                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DepthwiseShape s = check_depthwise_weight_grad_args(grad_arg, x_arg, weight_size, stride, padding, dilation);
  const c10::cuda::CUDAGuard device_guard(grad_arg.device());
  const at::Tensor grad = grad_arg.contiguous();
  const at::Tensor x = x_arg.contiguous();
  at::Tensor grad_w;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "depthwise_conv2d_weight_grad_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor sums = at::zeros({s.C, 1, s.KH, s.KW}, grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    const int64_t blocks = s.C * s.KH * s.KW;
    if (blocks > 0 && s.N > 0) {
      FASTDNAS_LAUNCH((depthwise_weight_grad_kernel<scalar_t, acc_t>), blocks, kThreads, 0, stream)(
          grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), geometry(s), sums.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    grad_w = sums.to(grad.scalar_type());
  });
  return grad_w;
}

}  // namespace

FASTDNAS_CUDA_LIBRARY_IMPL(m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cuda);
  m.impl("_depthwise_conv2d_input_grad", &depthwise_conv2d_input_grad_cuda);
  m.impl("_depthwise_conv2d_weight_grad", &depthwise_conv2d_weight_grad_cuda);
}

}  // namespace fastdnas
