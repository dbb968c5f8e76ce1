// CPU kernels of trellis_aggregate: forward and the fused backward.
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
#include "trellis_aggregate.h"

namespace fastdnas {
namespace {

// Elements per block of the forward loop: a small accumulator array that stays in L1.
constexpr int64_t kForwardBlock = 1024;
// Elements per chunk of the backward reduction; chunks never cross a block's row, and their
// number depends only on the sizes, so the beta gradients are the same for any thread count.
constexpr int64_t kBackwardChunk = 4096;

at::Tensor trellis_aggregate_cpu(at::TensorList blocks_arg, int64_t num_cells, const at::Tensor& betas_arg) {
  const int64_t B = check_trellis_aggregate_args(blocks_arg, num_cells, betas_arg);
  const auto blocks = contiguous_all(blocks_arg);
  at::Tensor out = at::empty(trellis_output_shape(blocks[0], B), blocks[0].options());
  // out viewed as [N, B, inner]: row n * B + b is block b of sample n, read from row n of each cell's block b.
  const int64_t inner = blocks[0].numel() / std::max<int64_t>(blocks[0].size(0), 1);
  const int64_t rows = blocks[0].size(0) * B;
  if (out.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "trellis_aggregate_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor betas = betas_arg.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* beta = betas.const_data_ptr<acc_t>();
    const auto x = data_pointers<scalar_t>(blocks);
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, kForwardBlock / inner);
    at::parallel_for(0, rows, grain, [&](int64_t row_begin, int64_t row_end) {
      acc_t acc[kForwardBlock];
      for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t n = row / B, b = row % B;
        for (int64_t start = 0; start < inner; start += kForwardBlock) {
          const int64_t len = std::min(kForwardBlock, inner - start);
          std::fill(acc, acc + len, acc_t(0));
          for (int64_t t = 0; t < num_cells; ++t) {
            const scalar_t* xt = x[t * B + b] + n * inner + start;
            const acc_t bt = beta[t];
            for (int64_t j = 0; j < len; ++j) acc[j] = accumulate_product(acc[j], bt, xt[j]);
          }
          scalar_t* y_row = y + row * inner + start;
          for (int64_t j = 0; j < len; ++j) y_row[j] = static_cast<scalar_t>(acc[j]);
        }
      }
    });
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> trellis_aggregate_backward_cpu(const at::Tensor& grad_arg,
                                                                                at::TensorList blocks_arg,
                                                                                int64_t num_cells,
                                                                                const at::Tensor& betas_arg,
                                                                                std::array<bool, 2> output_mask) {
  const int64_t B = check_trellis_aggregate_backward_args(grad_arg, blocks_arg, num_cells, betas_arg);
  const auto [need_blocks, need_betas] = output_mask;
  const auto blocks = contiguous_all(blocks_arg);
  const at::Tensor grad = grad_arg.contiguous();
  auto grad_blocks = need_blocks ? empty_like_all(blocks) : std::vector<at::Tensor>{};
  if (!need_blocks && !need_betas) return {grad_blocks, at::Tensor()};
  const int64_t inner = blocks[0].numel() / std::max<int64_t>(blocks[0].size(0), 1);
  const int64_t rows = blocks[0].size(0) * B;
  const int64_t T = num_cells;
  at::Tensor grad_betas;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "trellis_aggregate_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor betas = betas_arg.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* beta = betas.const_data_ptr<acc_t>();
    const auto x = data_pointers<scalar_t>(blocks);
    auto gx = mutable_data_pointers<scalar_t>(grad_blocks);
    gx.resize(blocks.size(), nullptr);  // no block gradients: never written
    const scalar_t* g = grad.const_data_ptr<scalar_t>();

    const int64_t chunks_per_row = (inner + kBackwardChunk - 1) / kBackwardChunk;
    const int64_t chunks = rows * chunks_per_row;
    // No beta gradient asked for: no dots, no partials.
    at::Tensor partials = at::zeros({need_betas ? std::max<int64_t>(chunks, 1) : 0, T}, betas.options());
    acc_t* partial = partials.mutable_data_ptr<acc_t>();
    // One pass over each chunk of grad: it stays in cache while every cell's block is visited.
    at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      acc_t g_acc[kBackwardChunk];
      for (int64_t c = chunk_begin; c < chunk_end; ++c) {
        const int64_t row = c / chunks_per_row;
        const int64_t n = row / B, b = row % B;
        const int64_t start = (c % chunks_per_row) * kBackwardChunk;
        const int64_t len = std::min(kBackwardChunk, inner - start);
        const scalar_t* g_row = g + row * inner + start;
        for (int64_t j = 0; j < len; ++j) g_acc[j] = static_cast<acc_t>(g_row[j]);
        const int64_t offset = n * inner + start;
        for (int64_t t = 0; t < T; ++t) {
          const acc_t dot = scale_and_dot(need_blocks, need_betas, beta[t], g_acc, x[t * B + b] + offset,
                                          need_blocks ? gx[t * B + b] + offset : nullptr, len);
          if (need_betas) partial[c * T + t] = dot;
        }
      }
    });
    if (need_betas) grad_betas = sum_chunk_partials<acc_t>(partials, chunks).to(betas_arg.scalar_type());
  });
  return {grad_blocks, grad_betas};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdnas, CPU, m) {
  m.impl("trellis_aggregate", &trellis_aggregate_cpu);
  m.impl("_trellis_aggregate_backward", &trellis_aggregate_backward_cpu);
}

}  // namespace fastdnas
