// Autograd of mixed_node, in C++ (as torchvision's csrc/ops/autograd): the same formula in Python
// (torch.library.register_autograd) cost a few tenths of a millisecond of interpreter and wrapping
// per call, dozens of times a search step. The statistics (mean, var) are not differentiable and
// their gradients are not materialised; an undefined output gradient gives undefined input ones.
#include <torch/autograd.h>
#include <torch/library.h>

#include "../common/autograd_lists.h"

namespace fastdnas {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor, at::Tensor> node_forward(
    at::TensorList edge_inputs, at::IntArrayRef strides, at::TensorList conv_outputs, const at::Tensor& weights,
    at::IntArrayRef free_items, at::IntArrayRef free_kinds, at::IntArrayRef conv_items,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdnas::mixed_node", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           at::TensorList, at::IntArrayRef, at::TensorList, const at::Tensor&, at::IntArrayRef,
                           at::IntArrayRef, at::IntArrayRef, const std::optional<at::Tensor>&,
                           const std::optional<at::Tensor>&, double)>();
  return op.call(edge_inputs, strides, conv_outputs, weights, free_items, free_kinds, conv_items, running_mean,
                 running_var, eps);
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> node_backward(
    const at::Tensor& grad, at::TensorList edge_inputs, at::IntArrayRef strides, at::TensorList conv_outputs,
    const at::Tensor& weights, at::IntArrayRef free_items, at::IntArrayRef free_kinds, at::IntArrayRef conv_items,
    const at::Tensor& mean, const at::Tensor& var, double eps, bool batch_stats) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdnas::_mixed_node_backward", "")
                       .typed<std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor>(
                           const at::Tensor&, at::TensorList, at::IntArrayRef, at::TensorList, const at::Tensor&,
                           at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, const at::Tensor&, const at::Tensor&,
                           double, bool)>();
  return op.call(grad, edge_inputs, strides, conv_outputs, weights, free_items, free_kinds, conv_items, mean, var,
                 eps, batch_stats);
}

class MixedNodeFunction : public torch::autograd::Function<MixedNodeFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, at::TensorList edge_inputs, at::IntArrayRef strides,
                               at::TensorList conv_outputs, const at::Tensor& weights, at::IntArrayRef free_items,
                               at::IntArrayRef free_kinds, at::IntArrayRef conv_items,
                               const std::optional<at::Tensor>& running_mean,
                               const std::optional<at::Tensor>& running_var, double eps) {
    at::Tensor out, mean, var;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(out, mean, var) = node_forward(edge_inputs, strides, conv_outputs, weights, free_items, free_kinds,
                                              conv_items, running_mean, running_var, eps);
    }
    ctx->mark_non_differentiable({mean, var});
    ctx->set_materialize_grads(false);  // no zero gradients made for the statistics
    std::vector<at::Tensor> saved(edge_inputs.begin(), edge_inputs.end());
    saved.insert(saved.end(), conv_outputs.begin(), conv_outputs.end());
    saved.insert(saved.end(), {weights, mean, var});
    ctx->save_for_backward(saved);
    ctx->saved_data["num_edges"] = static_cast<int64_t>(edge_inputs.size());
    ctx->saved_data["strides"] = strides.vec();
    ctx->saved_data["free_items"] = free_items.vec();
    ctx->saved_data["free_kinds"] = free_kinds.vec();
    ctx->saved_data["conv_items"] = conv_items.vec();
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["batch_stats"] = !(running_mean.has_value() && running_mean->defined());
    return {out, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const int64_t E = ctx->saved_data["num_edges"].toInt();
    const std::vector<int64_t> conv_items = ctx->saved_data["conv_items"].toIntVector();
    const int64_t K = static_cast<int64_t>(conv_items.size());
    // One entry per argument, each tensor of edge_inputs and conv_outputs its own: edge inputs,
    // strides, conv outputs, weights, free_items, free_kinds, conv_items, running_mean,
    // running_var, eps.
    variable_list result(E + K + 8);
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) return result;  // the sum's gradient is undefined: so are the inputs'
    const variable_list saved = ctx->get_saved_variables();
    const std::vector<at::Tensor> edge_inputs(saved.begin(), saved.begin() + E);
    const std::vector<at::Tensor> conv_outputs(saved.begin() + E, saved.begin() + E + K);
    auto [grad_edges, grad_convs, grad_weights] = node_backward(
        grad, edge_inputs, ctx->saved_data["strides"].toIntVector(), conv_outputs, saved[E + K],
        ctx->saved_data["free_items"].toIntVector(), ctx->saved_data["free_kinds"].toIntVector(), conv_items,
        saved[E + K + 1], saved[E + K + 2], ctx->saved_data["eps"].toDouble(), ctx->saved_data["batch_stats"].toBool());
    // Tensor inputs in the order of the node's next edges: edge inputs, conv outputs, weights.
    keep_needed(ctx, 0, grad_edges, result, 0);
    keep_needed(ctx, E, grad_convs, result, E + 1);
    if (ctx->needs_input_grad(E + K)) result[E + K + 1] = grad_weights;
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> mixed_node_autograd(
    at::TensorList edge_inputs, at::IntArrayRef strides, at::TensorList conv_outputs, const at::Tensor& weights,
    at::IntArrayRef free_items, at::IntArrayRef free_kinds, at::IntArrayRef conv_items,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var, double eps) {
  if (!weights.defined()) {  // a raw call with weights=None: the kernel's argument check names it
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return node_forward(edge_inputs, strides, conv_outputs, weights, free_items, free_kinds, conv_items, running_mean,
                        running_var, eps);
  }
  const variable_list out = MixedNodeFunction::apply(edge_inputs, strides, conv_outputs, weights, free_items,
                                                     free_kinds, conv_items, running_mean, running_var, eps);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdnas, Autograd, m) { m.impl("mixed_node", &mixed_node_autograd); }

}  // namespace fastdnas
