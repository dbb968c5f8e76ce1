// Autograd of mixed_sum, in C++ (as torchvision's csrc/ops/autograd): the Python formula
// (torch.library.register_autograd) cost about 0.3 ms of interpreter and wrapping per call, one
// call per node of a PC-DARTS cell or of the fused_sum backend. The backward asks the kernel only
// for what the running backward pass uses (output_mask): ctx->needs_input_grad asks the engine.
#include <torch/autograd.h>
#include <torch/library.h>

#include "../common/autograd_lists.h"

namespace fastdnas {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor mixed_sum_forward(at::TensorList inputs, const at::Tensor& weights) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdnas::mixed_sum", "")
                       .typed<at::Tensor(at::TensorList, const at::Tensor&)>();
  return op.call(inputs, weights);
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward(const at::Tensor& grad, at::TensorList inputs,
                                                                   const at::Tensor& weights,
                                                                   std::array<bool, 2> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdnas::_mixed_sum_backward", "")
                       .typed<std::tuple<std::vector<at::Tensor>, at::Tensor>(
                           const at::Tensor&, at::TensorList, const at::Tensor&, std::array<bool, 2>)>();
  return op.call(grad, inputs, weights, output_mask);
}

class MixedSumFunction : public torch::autograd::Function<MixedSumFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, at::TensorList inputs, const at::Tensor& weights) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      out = mixed_sum_forward(inputs, weights);
    }
    std::vector<at::Tensor> saved(inputs.begin(), inputs.end());
    saved.push_back(weights);
    ctx->save_for_backward(saved);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list saved = ctx->get_saved_variables();
    const at::Tensor weights = saved.back();
    saved.pop_back();
    const size_t K = saved.size();
    // One entry per tensor argument, each tensor of inputs its own, then the weights.
    variable_list result(K + 1);
    const bool any_input = any_needs_input_grad(ctx, 0, K);
    const bool need_weights = ctx->needs_input_grad(K);
    if (!any_input && !need_weights) return result;
    auto [grad_inputs, grad_weights] = mixed_sum_backward(grads[0], saved, weights, {any_input, need_weights});
    if (any_input) keep_needed(ctx, 0, grad_inputs, result, 0);
    if (need_weights) result[K] = grad_weights;
    return result;
  }
};

at::Tensor mixed_sum_autograd(at::TensorList inputs, const at::Tensor& weights) {
  if (!weights.defined() || !all_defined(inputs)) {  // a raw call with None for a tensor: the kernel's argument check names it
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return mixed_sum_forward(inputs, weights);
  }
  return MixedSumFunction::apply(inputs, weights);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdnas, Autograd, m) {
  m.impl("mixed_sum", &mixed_sum_autograd);
}

}  // namespace fastdnas
