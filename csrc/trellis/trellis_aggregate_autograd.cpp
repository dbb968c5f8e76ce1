// Autograd of trellis_aggregate, in C++ as the other ops' (torchvision's csrc/ops/autograd): the
// Python formula cost about 0.3 ms of interpreter and torch.library wrapping per call, one call
// per node of the Auto-DeepLab trellis. The backward asks the kernel only for what the running
// backward pass uses (output_mask): ctx->needs_input_grad asks the engine.
#include <torch/autograd.h>
#include <torch/library.h>

#include "../common/autograd_lists.h"

namespace fastdnas {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor trellis_aggregate_forward(at::TensorList blocks, int64_t num_cells, const at::Tensor& betas) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdnas::trellis_aggregate", "")
                       .typed<at::Tensor(at::TensorList, int64_t, const at::Tensor&)>();
  return op.call(blocks, num_cells, betas);
}

std::tuple<std::vector<at::Tensor>, at::Tensor> trellis_aggregate_backward(const at::Tensor& grad,
                                                                           at::TensorList blocks, int64_t num_cells,
                                                                           const at::Tensor& betas,
                                                                           std::array<bool, 2> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdnas::_trellis_aggregate_backward", "")
                       .typed<std::tuple<std::vector<at::Tensor>, at::Tensor>(
                           const at::Tensor&, at::TensorList, int64_t, const at::Tensor&, std::array<bool, 2>)>();
  return op.call(grad, blocks, num_cells, betas, output_mask);
}

class TrellisAggregateFunction : public torch::autograd::Function<TrellisAggregateFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, at::TensorList blocks, int64_t num_cells, const at::Tensor& betas) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      out = trellis_aggregate_forward(blocks, num_cells, betas);
    }
    std::vector<at::Tensor> saved(blocks.begin(), blocks.end());
    saved.push_back(betas);
    ctx->save_for_backward(saved);
    ctx->saved_data["num_cells"] = num_cells;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list saved = ctx->get_saved_variables();
    const at::Tensor betas = saved.back();
    saved.pop_back();
    const size_t count = saved.size();
    // Edges (needs_input_grad): each block, then the betas. Results: each block, num_cells, betas.
    variable_list result(count + 2);
    const bool any_block = any_needs_input_grad(ctx, 0, count);
    const bool need_betas = ctx->needs_input_grad(count);
    if (!any_block && !need_betas) return result;
    auto [grad_blocks, grad_betas] = trellis_aggregate_backward(
        grads[0], saved, ctx->saved_data["num_cells"].toInt(), betas, {any_block, need_betas});
    if (any_block) keep_needed(ctx, 0, grad_blocks, result, 0);
    if (need_betas) result[count + 1] = grad_betas;
    return result;
  }
};

at::Tensor trellis_aggregate_autograd(at::TensorList blocks, int64_t num_cells, const at::Tensor& betas) {
  if (!betas.defined() || !all_defined(blocks)) {  // a raw call with None for a tensor: the kernel's argument check names it
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return trellis_aggregate_forward(blocks, num_cells, betas);
  }
  return TrellisAggregateFunction::apply(blocks, num_cells, betas);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdnas, Autograd, m) {
  m.impl("trellis_aggregate", &trellis_aggregate_autograd);
}

}  // namespace fastdnas
