// Autograd of resize_sum, in C++ as the other ops' (torchvision's csrc/ops/autograd): no Python
// interpreter or torch.library wrapping per call. The backward runs when autograd needs the
// inputs' or the weights' gradient, and returns only those it needs.
#include <torch/autograd.h>
#include <torch/library.h>

#include "../common/autograd_lists.h"

namespace fastdnas {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor resize_sum_forward(at::TensorList inputs, c10::SymIntArrayRef size,
                              const std::optional<at::Tensor>& weights) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdnas::resize_sum", "")
                       .typed<at::Tensor(at::TensorList, c10::SymIntArrayRef, const std::optional<at::Tensor>&)>();
  return op.call(inputs, size, weights);
}

std::tuple<std::vector<at::Tensor>, at::Tensor> resize_sum_backward(const at::Tensor& grad, at::TensorList inputs,
                                                                    const std::optional<at::Tensor>& weights) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdnas::_resize_sum_backward", "")
                       .typed<std::tuple<std::vector<at::Tensor>, at::Tensor>(
                           const at::Tensor&, at::TensorList, const std::optional<at::Tensor>&)>();
  return op.call(grad, inputs, weights);
}

class ResizeSumFunction : public torch::autograd::Function<ResizeSumFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, at::TensorList inputs, c10::SymIntArrayRef size,
                            const std::optional<at::Tensor>& weights) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      out = resize_sum_forward(inputs, size, weights);
    }
    std::vector<at::Tensor> saved(inputs.begin(), inputs.end());
    const bool has_weights = weights.has_value() && weights->defined();
    if (has_weights) saved.push_back(*weights);
    ctx->save_for_backward(saved);
    ctx->saved_data["has_weights"] = has_weights;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list saved = ctx->get_saved_variables();
    const bool has_weights = ctx->saved_data["has_weights"].toBool();
    std::optional<at::Tensor> weights;
    if (has_weights) {
      weights = saved.back();
      saved.pop_back();
    }
    const size_t count = saved.size();
    // Edges (needs_input_grad): each input, then the weights if given. Results: each input, size, weights.
    variable_list result(count + 2);
    const bool any_input = any_needs_input_grad(ctx, 0, count);
    const bool need_weights = has_weights && ctx->needs_input_grad(count);
    if (!any_input && !need_weights) return result;
    auto [grad_inputs, grad_weights] = resize_sum_backward(grads[0], saved, weights);
    keep_needed(ctx, 0, grad_inputs, result, 0);
    if (need_weights) result[count + 1] = grad_weights;
    return result;
  }
};

at::Tensor resize_sum_autograd(at::TensorList inputs, c10::SymIntArrayRef size,
                               const std::optional<at::Tensor>& weights) {
  if (!all_defined(inputs)) {  // a raw call with None for a tensor: the kernel's argument check names it
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return resize_sum_forward(inputs, size, weights);
  }
  return ResizeSumFunction::apply(inputs, size, weights);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdnas, Autograd, m) {
  m.impl("resize_sum", &resize_sum_autograd);
}

}  // namespace fastdnas
