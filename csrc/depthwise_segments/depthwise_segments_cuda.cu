// CUDA kernels of depthwise_conv2d_segments on the current stream, one launch each: forward (a
// thread per output element, its segment found from the channel), input gradient (a thread per
// input element, gathering from every segment that reads its channel, in ascending order) and
// weight gradient (a block per filter tap of every segment, a deterministic block reduction).
// Each segment adds its taps in the order of the depthwise_conv2d kernels; taps that read
// padding add a product with zero.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/launch.cuh"
#include "../common/reduce_cuda.cuh"
#include "depthwise_segments.h"

namespace fastdnas {
namespace {

using namespace cuda_reduce;

// The segments as a kernel argument, by value: the shared sizes, then each segment's kernel
// size, padding, dilation, first input channel and first element of its weight gradient
// (in units of filter taps over all channels: C * KH * KW per segment).
struct SegmentGeometry {
  int64_t G, N, C, Cx, H, W, OH, OW, sh, sw;
  int64_t KH[kMaxDepthwiseSegments], KW[kMaxDepthwiseSegments];
  int64_t ph[kMaxDepthwiseSegments], pw[kMaxDepthwiseSegments];
  int64_t dh[kMaxDepthwiseSegments], dw[kMaxDepthwiseSegments];
  int64_t offset[kMaxDepthwiseSegments];
  int64_t weight_offset[kMaxDepthwiseSegments + 1];
};

template <typename scalar_t>
struct SegmentWeights {
  const scalar_t* w[kMaxDepthwiseSegments];
};

SegmentGeometry geometry(const DepthwiseSegments& seg) {
  SegmentGeometry g{};
  g.G = seg.G;
  g.N = seg.N;
  g.C = seg.C;
  g.Cx = seg.Cx;
  g.H = seg.H;
  g.W = seg.W;
  g.OH = seg.OH;
  g.OW = seg.OW;
  g.sh = seg.shape[0].stride[0];
  g.sw = seg.shape[0].stride[1];
  for (int64_t k = 0; k < seg.G; ++k) {
    const DepthwiseShape& s = seg.shape[k];
    g.KH[k] = s.KH;
    g.KW[k] = s.KW;
    g.ph[k] = s.padding[0];
    g.pw[k] = s.padding[1];
    g.dh[k] = s.dilation[0];
    g.dw[k] = s.dilation[1];
    g.offset[k] = seg.offset[k];
  }
  for (int64_t k = 0; k <= seg.G; ++k) g.weight_offset[k] = seg.weight_offset[k];
  return g;
}

// The weights as contiguous tensors (kept alive by the caller) and their pointers.
template <typename scalar_t>
SegmentWeights<scalar_t> weight_pointers(at::TensorList weights, std::vector<at::Tensor>& contiguous) {
  SegmentWeights<scalar_t> p{};
  for (size_t k = 0; k < weights.size(); ++k) {
    contiguous.push_back(weights[k].contiguous());
    p.w[k] = contiguous.back().template const_data_ptr<scalar_t>();
  }
  return p;
}

template <typename scalar_t, typename acc_t>
__global__ void segments_forward_kernel(const scalar_t* __restrict__ x, SegmentWeights<scalar_t> weights,
                                        SegmentGeometry g, int64_t n, scalar_t* __restrict__ out) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < n; index += step) {
    const int64_t ow = index % g.OW;
    const int64_t oh = (index / g.OW) % g.OH;
    const int64_t channel = (index / (g.OW * g.OH)) % (g.G * g.C);
    const int64_t b = index / (g.OW * g.OH * g.G * g.C);
    const int64_t k = channel / g.C, c = channel % g.C;
    const int64_t KH = g.KH[k], KW = g.KW[k];
    const scalar_t* plane = x + (b * g.Cx + g.offset[k] + c) * g.H * g.W;
    const scalar_t* filter = weights.w[k] + c * KH * KW;
    acc_t acc = 0;
    for (int64_t i = 0; i < KH; ++i) {
      const int64_t ih = depthwise_input_index(oh, i, g.sh, g.ph[k], g.dh[k]);
      const bool row_inside = ih >= 0 && ih < g.H;
      for (int64_t j = 0; j < KW; ++j) {
        const int64_t iw = depthwise_input_index(ow, j, g.sw, g.pw[k], g.dw[k]);
        // A padding tap adds w * 0, as F.conv2d does: NaN for a non-finite weight.
        const scalar_t v = row_inside && iw >= 0 && iw < g.W ? plane[ih * g.W + iw] : scalar_t(0);
        acc = accumulate_product(acc, static_cast<acc_t>(filter[i * KW + j]), v);
      }
    }
    out[index] = static_cast<scalar_t>(acc);
  }
}

// Each segment's sum in the order of depthwise_conv2d's input-gradient kernel (rows in
// descending tap order), the segments' sums added in ascending order: the CPU kernels' order.
template <typename scalar_t, typename acc_t>
__global__ void segments_input_grad_kernel(const scalar_t* __restrict__ grad, SegmentWeights<scalar_t> weights,
                                           SegmentGeometry g, int64_t n, scalar_t* __restrict__ grad_x) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < n; index += step) {
    const int64_t iw = index % g.W;
    const int64_t ih = (index / g.W) % g.H;
    const int64_t channel = (index / (g.W * g.H)) % g.Cx;
    const int64_t b = index / (g.W * g.H * g.Cx);
    acc_t total = 0;
    for (int64_t k = 0; k < g.G; ++k) {
      const int64_t c = channel - g.offset[k];
      if (c < 0 || c >= g.C) continue;
      const int64_t KH = g.KH[k], KW = g.KW[k];
      const scalar_t* plane = grad + ((b * g.G + k) * g.C + c) * g.OH * g.OW;
      const scalar_t* filter = weights.w[k] + c * KH * KW;
      acc_t acc = 0;
      for (int64_t i = KH - 1; i >= 0; --i) {
        const int64_t oh = depthwise_output_index(ih, i, g.OH, g.sh, g.ph[k], g.dh[k]);
        if (oh < 0) continue;
        for (int64_t j = 0; j < KW; ++j) {
          const int64_t ow = depthwise_output_index(iw, j, g.OW, g.sw, g.pw[k], g.dw[k]);
          if (ow < 0) continue;
          acc = accumulate_product(acc, static_cast<acc_t>(filter[i * KW + j]), plane[oh * g.OW + ow]);
        }
      }
      total += acc;
    }
    grad_x[index] = static_cast<scalar_t>(total);
  }
}

// Block t (a filter tap of one channel of one segment, numbered as the flat weight gradient):
// sum over n, oh, ow of grad[n, k * C + c, oh, ow] * x[n, offset_k + c, ih, iw] into sums[t].
template <typename scalar_t, typename acc_t>
__global__ void segments_weight_grad_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                            SegmentGeometry g, acc_t* __restrict__ sums) {
  const int64_t block = blockIdx.x;
  int64_t k = 0;
  while (k + 1 < g.G && block >= g.weight_offset[k + 1]) ++k;
  const int64_t KH = g.KH[k], KW = g.KW[k];
  const int64_t local = block - g.weight_offset[k];
  const int64_t tap = local % (KH * KW);
  const int64_t c = local / (KH * KW);
  const int64_t i = tap / KW, j = tap % KW;
  const int64_t per_plane = g.OH * g.OW;
  acc_t acc[1] = {0};
  for (int64_t t = threadIdx.x; t < g.N * per_plane; t += blockDim.x) {
    const int64_t b = t / per_plane;
    const int64_t oh = (t % per_plane) / g.OW, ow = t % g.OW;
    const int64_t ih = depthwise_input_index(oh, i, g.sh, g.ph[k], g.dh[k]);
    const int64_t iw = depthwise_input_index(ow, j, g.sw, g.pw[k], g.dw[k]);
    // A padding tap adds grad * 0, as F.conv2d does: NaN for a non-finite gradient.
    const scalar_t v = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W
                           ? x[((b * g.Cx + g.offset[k] + c) * g.H + ih) * g.W + iw]
                           : scalar_t(0);
    const scalar_t gv = grad[((b * g.G + k) * g.C + c) * per_plane + oh * g.OW + ow];
    acc[0] = accumulate_product(acc[0], static_cast<acc_t>(gv), v);
  }
  block_sums(acc, 1, sums + block, 1);
}

at::Tensor depthwise_conv2d_segments_cuda(const at::Tensor& x_arg, at::TensorList weights, at::IntArrayRef stride,
                                          at::IntArrayRef paddings, at::IntArrayRef dilations,
                                          at::IntArrayRef input_offsets) {
  const DepthwiseSegments seg = check_segments_forward_args(x_arg, weights, stride, paddings, dilations, input_offsets);
  const c10::cuda::CUDAGuard device_guard(x_arg.device());
  const at::Tensor x = x_arg.contiguous();
  at::Tensor out = at::empty({seg.N, seg.out_channels, seg.OH, seg.OW}, x.options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "depthwise_conv2d_segments_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<at::Tensor> contiguous;
    const SegmentWeights<scalar_t> w = weight_pointers<scalar_t>(weights, contiguous);
    FASTDNAS_LAUNCH((segments_forward_kernel<scalar_t, acc_t>), forward_grid_for(n), kThreads, 0, stream)(
        x.const_data_ptr<scalar_t>(), w, geometry(seg), n, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor depthwise_conv2d_segments_input_grad_cuda(const at::Tensor& grad_arg, at::TensorList weights,
                                                     at::IntArrayRef input_size, at::IntArrayRef stride,
                                                     at::IntArrayRef paddings, at::IntArrayRef dilations,
                                                     at::IntArrayRef input_offsets) {
  const DepthwiseSegments seg =
      check_segments_input_grad_args(grad_arg, weights, input_size, stride, paddings, dilations, input_offsets);
  const c10::cuda::CUDAGuard device_guard(grad_arg.device());
  const at::Tensor grad = grad_arg.contiguous();
  at::Tensor grad_x = at::empty(input_size, grad.options());
  const int64_t n = grad_x.numel();
  if (n == 0) return grad_x;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "depthwise_conv2d_segments_input_grad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<at::Tensor> contiguous;
    const SegmentWeights<scalar_t> w = weight_pointers<scalar_t>(weights, contiguous);
    FASTDNAS_LAUNCH((segments_input_grad_kernel<scalar_t, acc_t>), forward_grid_for(n), kThreads, 0, stream)(
        grad.const_data_ptr<scalar_t>(), w, geometry(seg), n, grad_x.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_x;
}

at::Tensor depthwise_conv2d_segments_weight_grad_cuda(const at::Tensor& grad_arg, const at::Tensor& x_arg,
                                                      at::IntArrayRef kernel_sizes, at::IntArrayRef stride,
                                                      at::IntArrayRef paddings, at::IntArrayRef dilations,
                                                      at::IntArrayRef input_offsets) {
  const DepthwiseSegments seg =
      check_segments_weight_grad_args(grad_arg, x_arg, kernel_sizes, stride, paddings, dilations, input_offsets);
  const c10::cuda::CUDAGuard device_guard(grad_arg.device());
  const at::Tensor grad = grad_arg.contiguous();
  const at::Tensor x = x_arg.contiguous();
  at::Tensor grad_w;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "depthwise_conv2d_segments_weight_grad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t blocks = seg.weight_offset[seg.G];
    at::Tensor sums = at::zeros({blocks}, grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    if (blocks > 0 && seg.N > 0) {
      FASTDNAS_LAUNCH((segments_weight_grad_kernel<scalar_t, acc_t>), blocks, kThreads, 0, stream)(
          grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), geometry(seg),
          sums.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    grad_w = sums.to(grad.scalar_type());
  });
  return grad_w;
}

}  // namespace

FASTDNAS_CUDA_LIBRARY_IMPL(m) {
  m.impl("depthwise_conv2d_segments", &depthwise_conv2d_segments_cuda);
  m.impl("_depthwise_conv2d_segments_input_grad", &depthwise_conv2d_segments_input_grad_cuda);
  m.impl("_depthwise_conv2d_segments_weight_grad", &depthwise_conv2d_segments_weight_grad_cuda);
}

}  // namespace fastdnas
