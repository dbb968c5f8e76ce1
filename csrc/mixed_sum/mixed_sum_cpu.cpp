// CPU kernels of mixed_sum: forward and the fused backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

#include "../common/element_math.h"
#include "../common/reduce_cpu.h"
#include "../common/tensor_lists.h"
#include "mixed_sum.h"

namespace fastdnas {
namespace {

// Elements per block of the forward loop: a small accumulator array that stays in L1.
constexpr int64_t kForwardBlock = 1024;
// Elements per chunk of the backward reduction. Fixed (not derived from the thread count) so
// the weight gradients are bitwise identical however many threads run.
constexpr int64_t kBackwardChunk = 4096;

at::Tensor mixed_sum_cpu(at::TensorList inputs_arg, const at::Tensor& weights_arg) {
  check_mixed_sum_args(inputs_arg, weights_arg);
  const auto inputs = contiguous_all(inputs_arg);
  at::Tensor out = at::empty_like(inputs[0], at::MemoryFormat::Contiguous);
  const int64_t n = out.numel();
  const int64_t K = static_cast<int64_t>(inputs.size());
  if (n == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "mixed_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor weights = weights_arg.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* w = weights.const_data_ptr<acc_t>();
    const auto x = data_pointers<scalar_t>(inputs);
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kForwardBlock, [&](int64_t begin, int64_t end) {
      acc_t acc[kForwardBlock];
      for (int64_t start = begin; start < end; start += kForwardBlock) {
        const int64_t len = std::min(kForwardBlock, end - start);
        std::fill(acc, acc + len, acc_t(0));
        for (int64_t k = 0; k < K; ++k) {
          const scalar_t* xk = x[k] + start;
          const acc_t wk = w[k];
          for (int64_t j = 0; j < len; ++j) acc[j] = accumulate_product(acc[j], wk, xk[j]);
        }
        for (int64_t j = 0; j < len; ++j) y[start + j] = static_cast<scalar_t>(acc[j]);
      }
    });
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cpu(const at::Tensor& grad_arg,
                                                                        at::TensorList inputs_arg,
                                                                        const at::Tensor& weights_arg,
                                                                        std::array<bool, 2> output_mask) {
  check_mixed_sum_backward_args(grad_arg, inputs_arg, weights_arg);
  const auto [need_inputs, need_weights] = output_mask;
  const auto inputs = contiguous_all(inputs_arg);
  const at::Tensor grad = grad_arg.contiguous();
  auto grad_inputs = need_inputs ? empty_like_all(inputs) : std::vector<at::Tensor>{};
  if (!need_inputs && !need_weights) return {grad_inputs, at::Tensor()};
  const int64_t n = grad.numel();
  const int64_t K = static_cast<int64_t>(inputs.size());
  at::Tensor grad_weights;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "mixed_sum_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor weights = weights_arg.to(acc_dtype).contiguous();
    const acc_t* w = weights.const_data_ptr<acc_t>();
    const auto x = data_pointers<scalar_t>(inputs);
    auto gx = mutable_data_pointers<scalar_t>(grad_inputs);
    gx.resize(K, nullptr);  // no input gradients: never written
    const scalar_t* g = grad.const_data_ptr<scalar_t>();

    const int64_t chunks = (n + kBackwardChunk - 1) / kBackwardChunk;
    // No weight gradient asked for: no dots, no partials.
    at::Tensor partials = at::zeros({need_weights ? std::max<int64_t>(chunks, 1) : 0, K}, weights.options());
    acc_t* partial = partials.mutable_data_ptr<acc_t>();
    // One pass over each chunk: the chunk's grad stays in cache while every input is visited.
    at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      acc_t g_acc[kBackwardChunk];
      for (int64_t c = chunk_begin; c < chunk_end; ++c) {
        const int64_t start = c * kBackwardChunk;
        const int64_t len = std::min(kBackwardChunk, n - start);
        for (int64_t j = 0; j < len; ++j) g_acc[j] = static_cast<acc_t>(g[start + j]);
        for (int64_t k = 0; k < K; ++k) {
          const acc_t dot = scale_and_dot(need_inputs, need_weights, w[k], g_acc, x[k] + start,
                                          need_inputs ? gx[k] + start : nullptr, len);
          if (need_weights) partial[c * K + k] = dot;
        }
      }
    });
    if (need_weights) grad_weights = sum_chunk_partials<acc_t>(partials, chunks).to(weights_arg.scalar_type());
  });
  return {grad_inputs, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdnas, CPU, m) {
  m.impl("mixed_sum", &mixed_sum_cpu);
  m.impl("_mixed_sum_backward", &mixed_sum_backward_cpu);
}

}  // namespace fastdnas
