// mixed_sum(inputs, weights) = sum_i weights[i] * inputs[i]: the node sum of a DARTS cell.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "../common/checks.h"

namespace fastdnas {

// Kernels take the input pointers by value; 128 keeps both pointer tables of the backward
// kernel inside the 4 KB parameter limit of older GPUs.
constexpr int64_t kMaxMixedSumInputs = 128;

// `op` names the op in messages: the backward op's errors name the forward op.
inline void check_mixed_sum_args(at::TensorList inputs, const at::Tensor& weights, const char* op = "mixed_sum") {
  check_same_tensors(inputs, op, "inputs");
  TORCH_CHECK(static_cast<int64_t>(inputs.size()) <= kMaxMixedSumInputs, op, ": inputs holds ", inputs.size(),
              " tensors; at most ", kMaxMixedSumInputs, " are supported");
  check_weight_vector(weights, static_cast<int64_t>(inputs.size()), inputs[0].device(), op, "weights",
                      "one weight per input");
}

inline void check_mixed_sum_backward_args(const at::Tensor& grad, at::TensorList inputs, const at::Tensor& weights) {
  const char* op = "mixed_sum (backward)";
  check_mixed_sum_args(inputs, weights, op);
  TORCH_CHECK(grad.defined() && grad.sizes() == inputs[0].sizes() && grad.scalar_type() == inputs[0].scalar_type() &&
                  grad.device() == inputs[0].device(),
              op, ": grad must match inputs[0] (shape ", inputs[0].sizes(), ", dtype ",
              inputs[0].scalar_type(), ", device ", inputs[0].device(), ")");
}

}  // namespace fastdnas
