// depthwise_conv2d_segments(x, weights, stride, paddings, dilations, input_offsets): G depthwise
// convolutions of one stride in one call, segment g convolving input channels
// [offset_g, offset_g + C) with weights[g] (its own kernel size, padding and dilation) into
// output channels [g * C, (g + 1) * C). Each segment runs the index arithmetic and the
// per-element sums of depthwise_conv2d (../depthwise_conv/depthwise_conv.h); an input channel
// read by several segments gets their input gradients added in ascending segment order.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <string>
#include <vector>

#include "../depthwise_conv/depthwise_conv.h"

namespace fastdnas {

constexpr int kMaxDepthwiseSegments = 8;

struct DepthwiseSegments {
  int64_t G, N, C, Cx, H, W, OH, OW;
  int64_t out_channels;  // G * C
  std::array<int64_t, kMaxDepthwiseSegments> offset;  // first input channel of each segment
  // First element of each segment's weight gradient in the flat weight-gradient result; [G]: its size.
  std::array<int64_t, kMaxDepthwiseSegments + 1> weight_offset;
  // Each segment as a depthwise_conv2d of C channels inside an input of Cx and an output of G * C channels.
  std::array<DepthwiseShape, kMaxDepthwiseSegments> shape;
};

inline int64_t segment_count(const char* op, at::IntArrayRef input_offsets) {
  const int64_t G = static_cast<int64_t>(input_offsets.size());
  TORCH_CHECK(G >= 1 && G <= kMaxDepthwiseSegments, op, ": input_offsets must hold 1 to ", kMaxDepthwiseSegments,
              " values (one per segment), got ", G);
  return G;
}

// Validates the arguments shared by the three ops: x_sizes [N, Cx, H, W], w_sizes[g] = [C, 1,
// KH_g, KW_g], paddings and dilations flat (h, w) pairs of each segment. Errors name the
// argument and the segment.
inline DepthwiseSegments depthwise_segments(const char* op, at::IntArrayRef x_sizes,
                                            const std::vector<at::IntArrayRef>& w_sizes, at::IntArrayRef stride,
                                            at::IntArrayRef paddings, at::IntArrayRef dilations,
                                            at::IntArrayRef input_offsets) {
  const int64_t G = segment_count(op, input_offsets);
  TORCH_CHECK(static_cast<int64_t>(w_sizes.size()) == G, op, ": weights must hold one tensor per segment (",
              G, " = len(input_offsets)), got ", w_sizes.size());
  TORCH_CHECK(static_cast<int64_t>(paddings.size()) == 2 * G, op,
              ": paddings must hold an (h, w) pair per segment (", 2 * G, " values), got ", paddings.size());
  TORCH_CHECK(static_cast<int64_t>(dilations.size()) == 2 * G, op,
              ": dilations must hold an (h, w) pair per segment (", 2 * G, " values), got ", dilations.size());
  TORCH_CHECK(x_sizes.size() == 4, op, ": input must be a 4-D tensor [N, C, H, W], got shape ", x_sizes);
  TORCH_CHECK(w_sizes[0].size() == 4 && w_sizes[0][1] == 1, op, ": weights[0] must have shape [C, 1, KH, KW], got ",
              w_sizes[0]);
  pair_argument(op, "stride", stride, 1);
  DepthwiseSegments seg;
  seg.G = G;
  seg.N = x_sizes[0];
  seg.Cx = x_sizes[1];
  seg.C = w_sizes[0][0];
  seg.out_channels = checked_size_product(op, "the output's G * C channels (segments * channels of weights[0])", G,
                                          seg.C);
  seg.weight_offset[0] = 0;
  for (int64_t g = 0; g < G; ++g) {
    TORCH_CHECK(w_sizes[g].size() == 4 && w_sizes[g][0] == seg.C && w_sizes[g][1] == 1, op, ": weights[", g,
                "] must have shape [C, 1, KH, KW] with C = ", seg.C, " (the C of weights[0]), got ", w_sizes[g]);
    const int64_t off = input_offsets[g];
    TORCH_CHECK(off >= 0 && off <= seg.Cx - seg.C, op, ": input_offsets[", g, "] = ", off, " reads ", seg.C,
                " input channels from channel ", off, " but the input has ", seg.Cx,
                " channels; each offset must be in [0, ", seg.Cx - seg.C, "]");
    seg.offset[g] = off;
    const std::string segment_op = std::string(op) + " (segment " + std::to_string(g) + ")";
    const std::array<int64_t, 4> x_segment{x_sizes[0], seg.C, x_sizes[2], x_sizes[3]};
    DepthwiseShape s = depthwise_shape(segment_op.c_str(), x_segment, w_sizes[g], stride, paddings.slice(2 * g, 2),
                                       dilations.slice(2 * g, 2));
    s.x_channels = seg.Cx;
    s.y_channels = seg.out_channels;
    if (g == 0) {
      seg.H = s.H;
      seg.W = s.W;
      seg.OH = s.OH;
      seg.OW = s.OW;
    }
    TORCH_CHECK(s.OH == seg.OH && s.OW == seg.OW, op, ": segment ", g, " gives an output of size ", s.OH, "x", s.OW,
                " but segment 0 gives ", seg.OH, "x", seg.OW, "; every segment must give the same size");
    seg.shape[g] = s;
    const char* flat = "the flat weight gradient's size (the sum of C * KH * KW over the segments)";
    seg.weight_offset[g + 1] =
        checked_size_sum(op, flat, seg.weight_offset[g],
                         checked_size_product(op, flat, checked_size_product(op, flat, seg.C, s.KH), s.KW));
  }
  return seg;
}

inline void check_segments_grad_shape(const char* op, const at::Tensor& grad, const DepthwiseSegments& seg) {
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == seg.N && grad.size(1) == seg.out_channels &&
                  grad.size(2) == seg.OH && grad.size(3) == seg.OW,
              op, ": grad must have the output's shape [", seg.N, ", ", seg.out_channels, ", ", seg.OH, ", ", seg.OW,
              "], got ", grad.sizes());
}

inline void check_segments_weights(const char* op, at::TensorList weights, const at::Tensor& like) {
  for (size_t g = 0; g < weights.size(); ++g) {
    const std::string what = "weights[" + std::to_string(g) + "]";
    check_depthwise_tensor(op, what.c_str(), weights[g], like);
  }
}

inline std::vector<at::IntArrayRef> weight_sizes(at::TensorList weights) {
  std::vector<at::IntArrayRef> sizes;
  for (const at::Tensor& w : weights) sizes.push_back(w.sizes());
  return sizes;
}

inline DepthwiseSegments check_segments_forward_args(const at::Tensor& x, at::TensorList weights,
                                                     at::IntArrayRef stride, at::IntArrayRef paddings,
                                                     at::IntArrayRef dilations, at::IntArrayRef input_offsets) {
  const char* op = "depthwise_conv2d_segments";
  check_depthwise_tensor(op, "input", x, x);
  check_segments_weights(op, weights, x);
  const DepthwiseSegments seg =
      depthwise_segments(op, x.sizes(), weight_sizes(weights), stride, paddings, dilations, input_offsets);
  check_storage_size(op, "the output (from input, weights, stride, paddings and dilations)",
                     {seg.N, seg.out_channels, seg.OH, seg.OW}, x.scalar_type());
  return seg;
}

inline DepthwiseSegments check_segments_input_grad_args(const at::Tensor& grad, at::TensorList weights,
                                                        at::IntArrayRef input_size, at::IntArrayRef stride,
                                                        at::IntArrayRef paddings, at::IntArrayRef dilations,
                                                        at::IntArrayRef input_offsets) {
  const char* op = "depthwise_conv2d_segments (input gradient)";
  check_depthwise_tensor(op, "grad", grad, grad);
  check_segments_weights(op, weights, grad);
  const DepthwiseSegments seg =
      depthwise_segments(op, input_size, weight_sizes(weights), stride, paddings, dilations, input_offsets);
  check_segments_grad_shape(op, grad, seg);
  check_storage_size(op, "the input gradient (input_size)", input_size, grad.scalar_type());
  return seg;
}

// kernel_sizes: (KH, KW) of each segment; C comes from grad's channels (G * C).
inline DepthwiseSegments check_segments_weight_grad_args(const at::Tensor& grad, const at::Tensor& x,
                                                         at::IntArrayRef kernel_sizes, at::IntArrayRef stride,
                                                         at::IntArrayRef paddings, at::IntArrayRef dilations,
                                                         at::IntArrayRef input_offsets) {
  const char* op = "depthwise_conv2d_segments (weight gradient)";
  check_depthwise_tensor(op, "grad", grad, x);
  check_depthwise_tensor(op, "input", x, x);
  const int64_t G = segment_count(op, input_offsets);
  TORCH_CHECK(static_cast<int64_t>(kernel_sizes.size()) == 2 * G, op,
              ": kernel_sizes must hold a (KH, KW) pair per segment (", 2 * G, " values), got ", kernel_sizes.size());
  TORCH_CHECK(grad.dim() == 4 && grad.size(1) % G == 0, op, ": grad must be a 4-D tensor with G * C channels (G = ",
              G, "), got shape ", grad.sizes());
  std::vector<std::array<int64_t, 4>> shapes;
  for (int64_t g = 0; g < G; ++g) shapes.push_back({grad.size(1) / G, 1, kernel_sizes[2 * g], kernel_sizes[2 * g + 1]});
  const std::vector<at::IntArrayRef> sizes(shapes.begin(), shapes.end());
  const DepthwiseSegments seg = depthwise_segments(op, x.sizes(), sizes, stride, paddings, dilations, input_offsets);
  check_segments_grad_shape(op, grad, seg);
  check_storage_size(op, "the flat weight gradient (from kernel_sizes and grad's channels)",
                     {seg.weight_offset[seg.G]}, grad.scalar_type());
  return seg;
}

}  // namespace fastdnas
