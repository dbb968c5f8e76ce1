// resize_sum(inputs, size, weights) = sum_i weights[i] * bilinear_resize(inputs[i], size), with
// F.interpolate(mode="bilinear", align_corners=False) semantics; weights default to ones.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

#include "../common/checks.h"

namespace fastdnas {

// Kernels take the input table by value.
constexpr int64_t kMaxResizeSumInputs = 32;

// `op` names the op in messages: the backward op's errors name the forward op.
inline void check_resize_sum_args(at::TensorList inputs, at::IntArrayRef size,
                                  const std::optional<at::Tensor>& weights, const char* op = "resize_sum") {
  TORCH_CHECK(!inputs.empty(), op, ": inputs must hold at least one tensor, got an empty list");
  TORCH_CHECK(static_cast<int64_t>(inputs.size()) <= kMaxResizeSumInputs, op, ": inputs holds ", inputs.size(),
              " tensors; at most ", kMaxResizeSumInputs, " are supported");
  const at::Tensor& first = inputs[0];
  TORCH_CHECK(first.defined(), op, ": inputs[0] is undefined");
  TORCH_CHECK(is_supported_float(first.scalar_type()), op,
              ": inputs must be float64, float32, float16 or bfloat16, got ", first.scalar_type());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const at::Tensor& t = inputs[i];
    TORCH_CHECK(t.defined(), op, ": inputs[", i, "] is undefined");
    TORCH_CHECK(t.dim() == 4 && t.size(2) > 0 && t.size(3) > 0, op, ": inputs[", i,
                "] must be 4-D [N, C, H, W] with H, W > 0, got shape ", t.sizes());
    TORCH_CHECK(t.scalar_type() == first.scalar_type(), op, ": inputs[", i, "] has dtype ", t.scalar_type(),
                " but inputs[0] has dtype ", first.scalar_type(), "; all must match");
    TORCH_CHECK(t.device() == first.device(), op, ": inputs[", i, "] is on ", t.device(),
                " but inputs[0] is on ", first.device(), "; all must be on one device");
    TORCH_CHECK(t.size(0) == first.size(0) && t.size(1) == first.size(1), op, ": inputs[", i, "] has shape ",
                t.sizes(), " but inputs[0] has shape ", first.sizes(), "; N and C must match");
  }
  TORCH_CHECK(size.size() == 2 && size[0] > 0 && size[1] > 0, op,
              ": size must be 2 positive ints (height, width), got ", size);
  check_storage_size(op, "the output (from size and inputs' N, C)", {first.size(0), first.size(1), size[0], size[1]},
                     first.scalar_type());
  if (weights.has_value())
    check_weight_vector(*weights, static_cast<int64_t>(inputs.size()), first.device(), op, "weights",
                        "one weight per input");
}

inline void check_resize_sum_backward_args(const at::Tensor& grad, at::TensorList inputs,
                                           const std::optional<at::Tensor>& weights) {
  const char* op = "resize_sum (backward)";
  TORCH_CHECK(grad.defined() && grad.dim() == 4, op, ": grad must be 4-D [N, C, H, W]");
  check_resize_sum_args(inputs, grad.sizes().slice(2), weights, op);
  TORCH_CHECK(grad.size(0) == inputs[0].size(0) && grad.size(1) == inputs[0].size(1) &&
                  grad.scalar_type() == inputs[0].scalar_type() && grad.device() == inputs[0].device(),
              op, ": grad must have N=", inputs[0].size(0), ", C=", inputs[0].size(1), ", dtype ",
              inputs[0].scalar_type(), " and device ", inputs[0].device());
}

// Each weight in the accumulation type, ones where no weights were given (read on the host by
// the CPU kernel, on the device by the CUDA kernel).
inline at::Tensor accumulation_weights(const std::optional<at::Tensor>& weights, int64_t count,
                                       at::ScalarType acc_dtype, const at::Device& device) {
  if (weights.has_value()) return weights->to(acc_dtype).contiguous();
  return at::ones({count}, at::TensorOptions().dtype(acc_dtype).device(device));
}

}  // namespace fastdnas
