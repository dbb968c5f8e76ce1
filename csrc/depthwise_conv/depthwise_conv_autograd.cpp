// Autograd of depthwise_conv2d, in C++ (as torchvision's csrc/ops/autograd): the Python formula
// (torch.library.register_autograd) cost about 0.3 ms of interpreter and wrapping per call, and
// every separable or dilated candidate that runs on its own (GDAS's sampled ones, a node's
// unstackable ones) makes one or two calls. The backward computes only the gradients the running
// backward pass uses: ctx->needs_input_grad asks the engine.
#include <torch/autograd.h>
#include <torch/library.h>

#include "../common/autograd_lists.h"

namespace fastdnas {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor depthwise_forward(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdnas::depthwise_conv2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                         at::IntArrayRef)>();
  return op.call(input, weight, stride, padding, dilation);
}

at::Tensor depthwise_input_grad(const at::Tensor& grad, const at::Tensor& weight, c10::SymIntArrayRef input_size,
                                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdnas::_depthwise_conv2d_input_grad", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef)>();
  return op.call(grad, weight, input_size, stride, padding, dilation);
}

at::Tensor depthwise_weight_grad(const at::Tensor& grad, const at::Tensor& input, c10::SymIntArrayRef weight_size,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdnas::_depthwise_conv2d_weight_grad", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef)>();
  return op.call(grad, input, weight_size, stride, padding, dilation);
}

class DepthwiseFunction : public torch::autograd::Function<DepthwiseFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      out = depthwise_forward(input, weight, stride, padding, dilation);
    }
    // Only what a gradient needs: the input for the weight's, the weight for the input's.
    ctx->save_for_backward({weight.requires_grad() ? input : at::Tensor(),
                            input.requires_grad() ? weight : at::Tensor()});
    ctx->saved_data["input_size"] = input.sym_sizes().vec();
    ctx->saved_data["weight_size"] = weight.sym_sizes().vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector();
    const std::vector<int64_t> padding = ctx->saved_data["padding"].toIntVector();
    const std::vector<int64_t> dilation = ctx->saved_data["dilation"].toIntVector();
    const at::Tensor& grad = grads[0];
    variable_list result(5);  // input, weight, then the three int lists
    if (ctx->needs_input_grad(0))
      result[0] = depthwise_input_grad(grad, saved[1], sym_sizes(ctx->saved_data["input_size"]), stride, padding,
                                       dilation);
    if (ctx->needs_input_grad(1))
      result[1] = depthwise_weight_grad(grad, saved[0], sym_sizes(ctx->saved_data["weight_size"]), stride, padding,
                                        dilation);
    return result;
  }
};

at::Tensor depthwise_conv2d_autograd(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation) {
  if (!input.defined() || !weight.defined()) {  // a raw call with None: the kernel's argument check names it
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return depthwise_forward(input, weight, stride, padding, dilation);
  }
  return DepthwiseFunction::apply(input, weight, stride, padding, dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdnas, Autograd, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_autograd);
}

}  // namespace fastdnas
