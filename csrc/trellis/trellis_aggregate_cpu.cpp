// CPU kernels of trellis_aggregate: forward and the fused backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/element_math.h"
#include "../mixed_sum/mixed_sum.h"  // contiguous_all, empty_like_all
#include "trellis_aggregate.h"

namespace fastdnas {
namespace {

// Elements per block of the forward loop: a small accumulator array that stays in L1.
constexpr int64_t kForwardBlock = 1024;
// Elements per chunk of the backward reduction; chunks never cross a block's row, and their
// number depends only on the sizes, so the beta gradients are the same for any thread count.
constexpr int64_t kBackwardChunk = 4096;
// Independent partial sums per chunk, so the dot products vectorise without reassociation.
constexpr int kLanes = 16;

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
    std::vector<const scalar_t*> x;
    for (const auto& t : blocks) x.push_back(t.const_data_ptr<scalar_t>());
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
                                                                                const at::Tensor& betas_arg) {
  const int64_t B = check_trellis_aggregate_backward_args(grad_arg, blocks_arg, num_cells, betas_arg);
  const auto blocks = contiguous_all(blocks_arg);
  const at::Tensor grad = grad_arg.contiguous();
  auto grad_blocks = empty_like_all(blocks);
  const int64_t inner = blocks[0].numel() / std::max<int64_t>(blocks[0].size(0), 1);
  const int64_t rows = blocks[0].size(0) * B;
  const int64_t T = num_cells;
  at::Tensor grad_betas;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "trellis_aggregate_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor betas = betas_arg.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* beta = betas.const_data_ptr<acc_t>();
    std::vector<const scalar_t*> x;
    for (const auto& t : blocks) x.push_back(t.const_data_ptr<scalar_t>());
    std::vector<scalar_t*> gx;
    for (auto& t : grad_blocks) gx.push_back(t.mutable_data_ptr<scalar_t>());
    const scalar_t* g = grad.const_data_ptr<scalar_t>();

    const int64_t chunks_per_row = (inner + kBackwardChunk - 1) / kBackwardChunk;
    const int64_t chunks = rows * chunks_per_row;
    at::Tensor partials = at::zeros({std::max<int64_t>(chunks, 1), T}, betas.options());
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
        for (int64_t t = 0; t < T; ++t) {
          const scalar_t* xt = x[t * B + b] + n * inner + start;
          scalar_t* gxt = gx[t * B + b] + n * inner + start;
          const acc_t bt = beta[t];
          acc_t lanes[kLanes] = {};
          int64_t j = 0;
          for (; j + kLanes <= len; j += kLanes) {
            for (int l = 0; l < kLanes; ++l) {
              gxt[j + l] = scaled_gradient<scalar_t>(bt, g_acc[j + l]);
              lanes[l] = accumulate_product(lanes[l], g_acc[j + l], xt[j + l]);
            }
          }
          for (int l = 0; j < len; ++j, ++l) {
            gxt[j] = scaled_gradient<scalar_t>(bt, g_acc[j]);
            lanes[l] = accumulate_product(lanes[l], g_acc[j], xt[j]);
          }
          acc_t sum = 0;
          for (int l = 0; l < kLanes; ++l) sum += lanes[l];
          partial[c * T + t] = sum;
        }
      }
    });
    // Chunks are summed serially in index order: deterministic.
    at::Tensor sums = at::zeros({T}, betas.options());
    acc_t* sum = sums.mutable_data_ptr<acc_t>();
    for (int64_t c = 0; c < chunks; ++c)
      for (int64_t t = 0; t < T; ++t) sum[t] += partial[c * T + t];
    grad_betas = sums.to(betas_arg.scalar_type());
  });
  return {grad_blocks, grad_betas};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdnas, CPU, m) {
  m.impl("trellis_aggregate", &trellis_aggregate_cpu);
  m.impl("_trellis_aggregate_backward", &trellis_aggregate_backward_cpu);
}

}  // namespace fastdnas
