// CUDA kernels of depthwise_conv2d: the one-segment case of depthwise_conv2d_segments, whose
// kernels (../depthwise_segments/depthwise_segments_cuda.cu) take a channel slice of x per
// segment; here the slice is all of x. Arguments are checked under this op's name first.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>

#include "../common/launch.cuh"
#include "../depthwise_segments/depthwise_segments_cuda.h"
#include "depthwise_conv.h"

namespace fastdnas {
namespace {

// stride, padding and dilation as depthwise_conv2d_segments takes them: (h, w) pairs.
struct SegmentArguments {
  std::array<int64_t, 2> stride, padding, dilation;
  std::array<int64_t, 1> offsets{0};
};

SegmentArguments segment_arguments(const DepthwiseShape& s) { return {s.stride, s.padding, s.dilation}; }

at::Tensor depthwise_conv2d_cuda(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation) {
  const SegmentArguments a = segment_arguments(check_depthwise_forward_args(x, weight, stride, padding, dilation));
  return depthwise_conv2d_segments_cuda(x, {weight}, a.stride, a.padding, a.dilation, a.offsets);
}

at::Tensor depthwise_conv2d_input_grad_cuda(const at::Tensor& grad, const at::Tensor& weight,
                                            at::IntArrayRef input_size, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef dilation) {
  const SegmentArguments a =
      segment_arguments(check_depthwise_input_grad_args(grad, weight, input_size, stride, padding, dilation));
  return depthwise_conv2d_segments_input_grad_cuda(grad, {weight}, input_size, a.stride, a.padding, a.dilation,
                                                   a.offsets);
}

at::Tensor depthwise_conv2d_weight_grad_cuda(const at::Tensor& grad, const at::Tensor& x,
                                             at::IntArrayRef weight_size, at::IntArrayRef stride,
                                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DepthwiseShape s = check_depthwise_weight_grad_args(grad, x, weight_size, stride, padding, dilation);
  const SegmentArguments a = segment_arguments(s);
  const std::array<int64_t, 2> kernel_size{s.KH, s.KW};
  return depthwise_conv2d_segments_weight_grad_cuda(grad, x, kernel_size, a.stride, a.padding, a.dilation, a.offsets)
      .view({s.C, 1, s.KH, s.KW});
}

}  // namespace

FASTDNAS_CUDA_LIBRARY_IMPL(m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cuda);
  m.impl("_depthwise_conv2d_input_grad", &depthwise_conv2d_input_grad_cuda);
  m.impl("_depthwise_conv2d_weight_grad", &depthwise_conv2d_weight_grad_cuda);
}

}  // namespace fastdnas
