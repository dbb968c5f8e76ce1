// The CPU kernels of depthwise_conv2d (depthwise_conv_cpu.cpp) on planes inside larger tensors,
// for depthwise_conv2d_segments. x, grad, out, grad_x and sums are contiguous; the planes of
// channel c < s.C and batch index n are channel x_channel0 + c of x and grad_x (s.x_channels
// channels) and channel y_channel0 + c of out and grad (s.y_channels channels).
#pragma once

#include <ATen/ATen.h>

#include "depthwise_conv.h"

namespace fastdnas {

void depthwise_forward_cpu(const DepthwiseShape& s, const at::Tensor& x, int64_t x_channel0, const at::Tensor& weight,
                           at::Tensor& out, int64_t y_channel0);

// add = false: grad_x (the input's dtype) is written. add = true: grad_x has the accumulation
// dtype (float32 for half inputs) and the gradient is added to it.
void depthwise_input_grad_cpu(const DepthwiseShape& s, const at::Tensor& grad, int64_t y_channel0,
                              const at::Tensor& weight, at::Tensor& grad_x, int64_t x_channel0, bool add);

// Writes the weight gradient [C, KH, KW] into sums (accumulation dtype) from element sums_offset on.
void depthwise_weight_grad_cpu(const DepthwiseShape& s, const at::Tensor& grad, int64_t y_channel0,
                               const at::Tensor& x, int64_t x_channel0, at::Tensor& sums, int64_t sums_offset);

}  // namespace fastdnas
