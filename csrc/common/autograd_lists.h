// Pieces shared by the C++ autograd formulas (*_autograd.cpp). A Tensor[] argument gives the
// autograd node one edge per tensor (ctx->needs_input_grad counts them one by one), and a
// Function's backward returns one entry per forward argument, each tensor of a list its own.
#pragma once

#include <torch/autograd.h>

#include <vector>

namespace fastdnas {

// Whether every tensor of a list is defined: a raw call may pass None inside a Tensor[], which
// the kernel's argument check (not autograd) names.
inline bool all_defined(at::TensorList tensors) {
  for (const at::Tensor& t : tensors)
    if (!t.defined()) return false;
  return true;
}

// Whether autograd needs the gradient of any of the `count` edges from edge `first` on.
inline bool any_needs_input_grad(torch::autograd::AutogradContext* ctx, size_t first, size_t count) {
  for (size_t i = 0; i < count; ++i)
    if (ctx->needs_input_grad(first + i)) return true;
  return false;
}

// result[slot + i] = grads[i] where edge first + i needs a gradient; the others stay undefined.
inline void keep_needed(torch::autograd::AutogradContext* ctx, size_t first, const std::vector<at::Tensor>& grads,
                        torch::autograd::variable_list& result, size_t slot) {
  for (size_t i = 0; i < grads.size(); ++i)
    if (ctx->needs_input_grad(first + i)) result[slot + i] = grads[i];
}

// A saved size list back as SymInts (toSymIntList is newer than the oldest torch supported).
inline std::vector<c10::SymInt> sym_sizes(const c10::IValue& saved) {
  std::vector<c10::SymInt> sizes;
  for (const c10::IValue& size : saved.toListRef()) sizes.push_back(size.toSymInt());
  return sizes;
}

}  // namespace fastdnas
