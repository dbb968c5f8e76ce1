// Autograd of depthwise_conv2d_segments, in C++ (as torchvision's csrc/ops/autograd): the same
// formula in Python (torch.library.register_autograd) cost about 0.3 ms of interpreter and
// wrapping per call, and a DARTS search step makes about a hundred. The backward computes only
// the gradients the running backward pass uses: ctx->needs_input_grad asks the engine (the edge
// is live and, under torch.autograd.grad(inputs=...), leads to an input asked for).
#include <torch/autograd.h>
#include <torch/library.h>

#include "../common/autograd_lists.h"

namespace fastdnas {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor segments_forward(const at::Tensor& input, at::TensorList weights, at::IntArrayRef stride,
                            at::IntArrayRef paddings, at::IntArrayRef dilations, at::IntArrayRef input_offsets) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdnas::depthwise_conv2d_segments", "")
                       .typed<at::Tensor(const at::Tensor&, at::TensorList, at::IntArrayRef, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef)>();
  return op.call(input, weights, stride, paddings, dilations, input_offsets);
}

at::Tensor segments_input_grad(const at::Tensor& grad, at::TensorList weights, c10::SymIntArrayRef input_size,
                               at::IntArrayRef stride, at::IntArrayRef paddings, at::IntArrayRef dilations,
                               at::IntArrayRef input_offsets) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdnas::_depthwise_conv2d_segments_input_grad", "")
                       .typed<at::Tensor(const at::Tensor&, at::TensorList, c10::SymIntArrayRef, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef, at::IntArrayRef)>();
  return op.call(grad, weights, input_size, stride, paddings, dilations, input_offsets);
}

at::Tensor segments_weight_grad(const at::Tensor& grad, const at::Tensor& input, at::IntArrayRef kernel_sizes,
                                at::IntArrayRef stride, at::IntArrayRef paddings, at::IntArrayRef dilations,
                                at::IntArrayRef input_offsets) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastdnas::_depthwise_conv2d_segments_weight_grad", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef, at::IntArrayRef)>();
  return op.call(grad, input, kernel_sizes, stride, paddings, dilations, input_offsets);
}

class SegmentsFunction : public torch::autograd::Function<SegmentsFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, at::TensorList weights,
                            at::IntArrayRef stride, at::IntArrayRef paddings, at::IntArrayRef dilations,
                            at::IntArrayRef input_offsets) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      out = segments_forward(input, weights, stride, paddings, dilations, input_offsets);
    }
    // Only what a gradient needs: the input for the weights', the weights for the input's.
    bool need_weights = false;
    for (const at::Tensor& w : weights) need_weights = need_weights || w.requires_grad();
    const bool need_input = input.requires_grad();
    std::vector<at::Tensor> saved{need_weights ? input : at::Tensor()};
    std::vector<int64_t> weight_shapes;  // (C, KH, KW) per segment
    for (const at::Tensor& w : weights) {
      if (need_input) saved.push_back(w);
      weight_shapes.insert(weight_shapes.end(), {w.size(0), w.size(2), w.size(3)});
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["input_size"] = input.sym_sizes().vec();
    ctx->saved_data["weight_shapes"] = weight_shapes;
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["paddings"] = paddings.vec();
    ctx->saved_data["dilations"] = dilations.vec();
    ctx->saved_data["input_offsets"] = input_offsets.vec();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const std::vector<int64_t> shapes = ctx->saved_data["weight_shapes"].toIntVector();
    const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector();
    const std::vector<int64_t> paddings = ctx->saved_data["paddings"].toIntVector();
    const std::vector<int64_t> dilations = ctx->saved_data["dilations"].toIntVector();
    const std::vector<int64_t> offsets = ctx->saved_data["input_offsets"].toIntVector();
    const size_t G = shapes.size() / 3;
    const at::Tensor& grad = grads[0];
    // One entry per argument, each tensor of weights its own: input, weights, then 4 int lists.
    variable_list result(1 + G + 4);
    if (ctx->needs_input_grad(0)) {
      const std::vector<at::Tensor> weights(saved.begin() + 1, saved.end());
      result[0] = segments_input_grad(grad, weights, sym_sizes(ctx->saved_data["input_size"]), stride, paddings,
                                      dilations, offsets);
    }
    std::vector<bool> need(G);
    bool any = false;
    for (size_t g = 0; g < G; ++g) any |= (need[g] = ctx->needs_input_grad(1 + g));
    if (any) {
      std::vector<int64_t> kernel_sizes;
      for (size_t g = 0; g < G; ++g) kernel_sizes.insert(kernel_sizes.end(), {shapes[3 * g + 1], shapes[3 * g + 2]});
      const at::Tensor flat = segments_weight_grad(grad, saved[0], kernel_sizes, stride, paddings, dilations, offsets);
      int64_t start = 0;
      for (size_t g = 0; g < G; ++g) {
        const int64_t C = shapes[3 * g], KH = shapes[3 * g + 1], KW = shapes[3 * g + 2];
        if (need[g]) result[1 + g] = flat.narrow(0, start, C * KH * KW).view({C, 1, KH, KW});
        start += C * KH * KW;
      }
    }
    return result;
  }
};

at::Tensor depthwise_conv2d_segments_autograd(const at::Tensor& input, at::TensorList weights,
                                              at::IntArrayRef stride, at::IntArrayRef paddings,
                                              at::IntArrayRef dilations, at::IntArrayRef input_offsets) {
  if (!input.defined() || !all_defined(weights)) {  // a raw call with None for a tensor: the kernel's argument check names it
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return segments_forward(input, weights, stride, paddings, dilations, input_offsets);
  }
  return SegmentsFunction::apply(input, weights, stride, paddings, dilations, input_offsets);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdnas, Autograd, m) {
  m.impl("depthwise_conv2d_segments", &depthwise_conv2d_segments_autograd);
}

}  // namespace fastdnas
