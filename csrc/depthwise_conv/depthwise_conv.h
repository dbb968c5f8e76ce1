// depthwise_conv2d(x, weight, stride, padding, dilation): the depthwise convolution of the DARTS
// separable and dilated convolutions (groups = channels, one filter per channel, no bias), with
// its two gradients as separate ops so autograd computes only the one it needs (the
// architecture step needs no weight gradients). The CPU kernels work row by row (the loop over
// output columns is innermost, so it vectorises); the CUDA kernels per element; both take the
// index arithmetic and the per-element sums below, in the same order.
#pragma once

#include <ATen/ATen.h>

#include <array>

#include "../common/checks.h"
#include "../common/element_math.h"

namespace fastdnas {

// Input row (or column) read by output o through kernel tap k.
FASTDNAS_HOST_DEVICE int64_t depthwise_input_index(int64_t o, int64_t k, int64_t stride, int64_t padding,
                                                   int64_t dilation) {
  return o * stride - padding + k * dilation;
}

// The output o that reads input i through tap k, or -1 when no output does.
FASTDNAS_HOST_DEVICE int64_t depthwise_output_index(int64_t i, int64_t k, int64_t out_size, int64_t stride,
                                                    int64_t padding, int64_t dilation) {
  const int64_t shifted = i + padding - k * dilation;
  if (shifted < 0 || shifted % stride != 0) return -1;
  const int64_t o = shifted / stride;
  return o < out_size ? o : -1;
}

// The outputs [*begin, *end) whose tap k reads inside an input of `in_size` (empty if none).
FASTDNAS_HOST_DEVICE void depthwise_valid_outputs(int64_t k, int64_t in_size, int64_t out_size, int64_t stride,
                                                  int64_t padding, int64_t dilation, int64_t* begin, int64_t* end) {
  const int64_t offset = k * dilation - padding;  // input index of output 0
  // First o with o * stride + offset >= 0, and one past the last with o * stride + offset < in_size.
  int64_t lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  int64_t hi = in_size - offset <= 0 ? 0 : (in_size - offset - 1) / stride + 1;
  hi = hi < out_size ? hi : out_size;
  *begin = lo;
  *end = hi > lo ? hi : lo;
}

// Output size of one spatial dimension, as PyTorch's convolution computes it: the division
// floors, so a dilated kernel longer than the padded input gives a size <= 0 (then rejected).
FASTDNAS_HOST_DEVICE int64_t depthwise_output_size(int64_t in_size, int64_t kernel, int64_t stride, int64_t padding,
                                                   int64_t dilation) {
  const int64_t span = in_size + 2 * padding - dilation * (kernel - 1) - 1;
  return (span >= 0 ? span / stride : -((-span + stride - 1) / stride)) + 1;
}

// Every size, stride, padding and dilation is at most this (checked before any arithmetic), so
// padded sizes, dilated kernel extents and every index computed from them fit in int64.
constexpr int64_t kMaxDepthwiseGeometry = (int64_t{1} << 31) - 1;

// Stride, padding and dilation of both spatial dimensions, and the derived sizes. x_channels
// and y_channels: the channel counts of the tensors holding the input and output planes (C for
// depthwise_conv2d; more where a segment of depthwise_conv2d_segments reads or writes a channel
// slice of a larger tensor).
struct DepthwiseShape {
  int64_t N, C, H, W, KH, KW, OH, OW;
  std::array<int64_t, 2> stride, padding, dilation;
  int64_t x_channels, y_channels;
};

inline std::array<int64_t, 2> pair_argument(const char* op, const char* what, at::IntArrayRef values, int64_t min) {
  TORCH_CHECK(values.size() == 1 || values.size() == 2, op, ": ", what, " must hold 1 or 2 values, got ",
              values.size());
  const std::array<int64_t, 2> pair{values[0], values[values.size() - 1]};
  TORCH_CHECK(pair[0] >= min && pair[1] >= min, op, ": ", what, " must be >= ", min, ", got ", values);
  TORCH_CHECK(pair[0] <= kMaxDepthwiseGeometry && pair[1] <= kMaxDepthwiseGeometry, op, ": ", what,
              " must be at most ", kMaxDepthwiseGeometry, ", got ", values);
  return pair;
}

inline void check_geometry_size(const char* op, const char* what, at::IntArrayRef sizes) {
  for (size_t d = 2; d < 4; ++d)
    TORCH_CHECK(sizes[d] >= 0 && sizes[d] <= kMaxDepthwiseGeometry, op, ": ", what, " has spatial sizes ",
                sizes.slice(2), "; each must be in [0, ", kMaxDepthwiseGeometry, "]");
}

// Validates the arguments of every depthwise_conv2d op: x_sizes [N, C, H, W] of the input and
// w_sizes [C, 1, KH, KW] of the weight; errors name the argument and what was expected.
inline DepthwiseShape depthwise_shape(const char* op, at::IntArrayRef x_sizes, at::IntArrayRef w_sizes,
                                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(x_sizes.size() == 4, op, ": input must be a 4-D tensor [N, C, H, W], got shape ", x_sizes);
  TORCH_CHECK(w_sizes.size() == 4 && w_sizes[0] == x_sizes[1] && w_sizes[1] == 1 && w_sizes[2] > 0 && w_sizes[3] > 0,
              op, ": weight must have shape [C, 1, KH, KW] with C = ", x_sizes[1],
              " (one filter per input channel), got ", w_sizes);
  TORCH_CHECK(x_sizes[0] >= 0 && x_sizes[1] >= 0, op, ": input must have N, C >= 0, got shape ", x_sizes);
  check_geometry_size(op, "input", x_sizes);
  check_geometry_size(op, "weight", w_sizes);
  DepthwiseShape s;
  s.N = x_sizes[0];
  s.C = x_sizes[1];
  s.H = x_sizes[2];
  s.W = x_sizes[3];
  s.KH = w_sizes[2];
  s.KW = w_sizes[3];
  s.x_channels = s.y_channels = s.C;
  s.stride = pair_argument(op, "stride", stride, 1);
  s.padding = pair_argument(op, "padding", padding, 0);
  s.dilation = pair_argument(op, "dilation", dilation, 1);
  s.OH = depthwise_output_size(s.H, s.KH, s.stride[0], s.padding[0], s.dilation[0]);
  s.OW = depthwise_output_size(s.W, s.KW, s.stride[1], s.padding[1], s.dilation[1]);
  TORCH_CHECK(s.H > 0 && s.W > 0 && s.OH > 0 && s.OW > 0, op, ": input of spatial size ", s.H, "x", s.W,
              " with kernel ", s.KH, "x", s.KW, ", stride ", stride, ", padding ", padding, " and dilation ", dilation,
              " gives an output of size ", s.OH, "x", s.OW, "; it must be at least 1x1");
  return s;
}

inline void check_depthwise_tensor(const char* op, const char* what, const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK(t.defined(), op, ": ", what, " is undefined");
  TORCH_CHECK(is_supported_float(t.scalar_type()), op, ": ", what,
              " must be float64, float32, float16 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == like.scalar_type() && t.device() == like.device(), op, ": ", what, " has dtype ",
              t.scalar_type(), " on ", t.device(), " but must match the other tensors (", like.scalar_type(), " on ",
              like.device(), ")");
}

inline void check_grad_shape(const char* op, const at::Tensor& grad, const DepthwiseShape& s) {
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == s.N && grad.size(1) == s.C && grad.size(2) == s.OH &&
                  grad.size(3) == s.OW,
              op, ": grad must have the output's shape [", s.N, ", ", s.C, ", ", s.OH, ", ", s.OW, "], got ",
              grad.sizes());
}

inline DepthwiseShape check_depthwise_forward_args(const at::Tensor& x, const at::Tensor& weight,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation) {
  const char* op = "depthwise_conv2d";
  check_depthwise_tensor(op, "input", x, x);
  check_depthwise_tensor(op, "weight", weight, x);
  const DepthwiseShape s = depthwise_shape(op, x.sizes(), weight.sizes(), stride, padding, dilation);
  check_storage_size(op, "the output (from input, weight, stride, padding and dilation)", {s.N, s.C, s.OH, s.OW},
                     x.scalar_type());
  return s;
}

inline DepthwiseShape check_depthwise_input_grad_args(const at::Tensor& grad, const at::Tensor& weight,
                                                      at::IntArrayRef input_size, at::IntArrayRef stride,
                                                      at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = "depthwise_conv2d (input gradient)";
  check_depthwise_tensor(op, "grad", grad, grad);
  check_depthwise_tensor(op, "weight", weight, grad);
  const DepthwiseShape s = depthwise_shape(op, input_size, weight.sizes(), stride, padding, dilation);
  check_grad_shape(op, grad, s);
  check_storage_size(op, "the input gradient (input_size)", input_size, grad.scalar_type());
  return s;
}

inline DepthwiseShape check_depthwise_weight_grad_args(const at::Tensor& grad, const at::Tensor& x,
                                                       at::IntArrayRef weight_size, at::IntArrayRef stride,
                                                       at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = "depthwise_conv2d (weight gradient)";
  check_depthwise_tensor(op, "grad", grad, x);
  check_depthwise_tensor(op, "input", x, x);
  const DepthwiseShape s = depthwise_shape(op, x.sizes(), weight_size, stride, padding, dilation);
  check_grad_shape(op, grad, s);
  check_storage_size(op, "the weight gradient (weight_size)", weight_size, grad.scalar_type());
  return s;
}

}  // namespace fastdnas
