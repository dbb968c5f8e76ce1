// The CUDA host functions of depthwise_conv2d_segments. depthwise_conv2d's CUDA kernels are its
// one-segment case (../depthwise_conv/depthwise_conv_cuda.cu), so both ops run the same kernels.
#pragma once

#include <ATen/ATen.h>

namespace fastdnas {

at::Tensor depthwise_conv2d_segments_cuda(const at::Tensor& x, at::TensorList weights, at::IntArrayRef stride,
                                          at::IntArrayRef paddings, at::IntArrayRef dilations,
                                          at::IntArrayRef input_offsets);

at::Tensor depthwise_conv2d_segments_input_grad_cuda(const at::Tensor& grad, at::TensorList weights,
                                                     at::IntArrayRef input_size, at::IntArrayRef stride,
                                                     at::IntArrayRef paddings, at::IntArrayRef dilations,
                                                     at::IntArrayRef input_offsets);

at::Tensor depthwise_conv2d_segments_weight_grad_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                      at::IntArrayRef kernel_sizes, at::IntArrayRef stride,
                                                      at::IntArrayRef paddings, at::IntArrayRef dilations,
                                                      at::IntArrayRef input_offsets);

}  // namespace fastdnas
