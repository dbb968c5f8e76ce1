// CPU kernels of depthwise_conv2d_segments: each segment runs the depthwise_conv2d CPU kernels
// on its channel slice of the input, writing its slice of the output (no copies of either);
// input gradients of segments that read one channel are added in the accumulation type.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../depthwise_conv/depthwise_conv_cpu.h"
#include "depthwise_segments.h"

namespace fastdnas {
namespace {

at::Tensor depthwise_conv2d_segments_cpu(const at::Tensor& x_arg, at::TensorList weights, at::IntArrayRef stride,
                                         at::IntArrayRef paddings, at::IntArrayRef dilations,
                                         at::IntArrayRef input_offsets) {
  const DepthwiseSegments seg = check_segments_forward_args(x_arg, weights, stride, paddings, dilations, input_offsets);
  const at::Tensor x = x_arg.contiguous();
  at::Tensor out = at::empty({seg.N, seg.out_channels, seg.OH, seg.OW}, x.options());
  for (int64_t g = 0; g < seg.G; ++g)
    depthwise_forward_cpu(seg.shape[g], x, seg.offset[g], weights[g].contiguous(), out, g * seg.C);
  return out;
}

at::Tensor depthwise_conv2d_segments_input_grad_cpu(const at::Tensor& grad_arg, at::TensorList weights,
                                                    at::IntArrayRef input_size, at::IntArrayRef stride,
                                                    at::IntArrayRef paddings, at::IntArrayRef dilations,
                                                    at::IntArrayRef input_offsets) {
  const DepthwiseSegments seg =
      check_segments_input_grad_args(grad_arg, weights, input_size, stride, paddings, dilations, input_offsets);
  const at::Tensor grad = grad_arg.contiguous();
  // Channels no segment reads keep their zero gradient.
  at::Tensor sums = at::zeros(input_size, grad.options().dtype(at::toOpMathType(grad.scalar_type())));
  for (int64_t g = 0; g < seg.G; ++g)
    depthwise_input_grad_cpu(seg.shape[g], grad, g * seg.C, weights[g].contiguous(), sums, seg.offset[g], true);
  return sums.to(grad.scalar_type());
}

at::Tensor depthwise_conv2d_segments_weight_grad_cpu(const at::Tensor& grad_arg, const at::Tensor& x_arg,
                                                     at::IntArrayRef kernel_sizes, at::IntArrayRef stride,
                                                     at::IntArrayRef paddings, at::IntArrayRef dilations,
                                                     at::IntArrayRef input_offsets) {
  const DepthwiseSegments seg =
      check_segments_weight_grad_args(grad_arg, x_arg, kernel_sizes, stride, paddings, dilations, input_offsets);
  const at::Tensor grad = grad_arg.contiguous();
  const at::Tensor x = x_arg.contiguous();
  at::Tensor sums =
      at::empty({seg.weight_offset[seg.G]}, grad.options().dtype(at::toOpMathType(grad.scalar_type())));
  for (int64_t g = 0; g < seg.G; ++g)
    depthwise_weight_grad_cpu(seg.shape[g], grad, g * seg.C, x, seg.offset[g], sums, seg.weight_offset[g]);
  return sums.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdnas, CPU, m) {
  m.impl("depthwise_conv2d_segments", &depthwise_conv2d_segments_cpu);
  m.impl("_depthwise_conv2d_segments_input_grad", &depthwise_conv2d_segments_input_grad_cpu);
  m.impl("_depthwise_conv2d_segments_weight_grad", &depthwise_conv2d_segments_weight_grad_cpu);
}

}  // namespace fastdnas
