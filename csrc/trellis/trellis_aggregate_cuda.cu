// CUDA kernels of trellis_aggregate: forward and the fused backward, on the current stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <vector>

#include "../common/element_math.h"
#include "../common/launch.cuh"
#include "../common/reduce_cuda.cuh"
#include "../common/tensor_lists.h"
#include "trellis_aggregate.h"

namespace fastdnas {
namespace {

using namespace cuda_reduce;

constexpr int64_t kMaxTrellisBlocks = kMaxTrellisCells * kMaxTrellisBlocksPerCell;

template <typename T>
struct BlockTable {
  T ptr[kMaxTrellisBlocks];
};

template <typename T>
BlockTable<T> block_table(const std::vector<at::Tensor>& tensors) {
  BlockTable<T> table{};
  for (size_t i = 0; i < tensors.size(); ++i) table.ptr[i] = static_cast<T>(tensors[i].data_ptr());
  return table;
}

// The output viewed as [N, B, inner]: element i is block b of sample n at offset j, and reads
// element n * inner + j of cells[t][b] = blocks[t * B + b].
struct TrellisIndex {
  int b;
  int64_t source;
};

__device__ __forceinline__ TrellisIndex trellis_index(int64_t i, int64_t inner, int B) {
  const int64_t row = i / inner;
  const int64_t j = i - row * inner;
  return {static_cast<int>(row % B), (row / B) * inner + j};
}

template <typename scalar_t, typename acc_t>
__global__ void trellis_aggregate_forward_kernel(BlockTable<const scalar_t*> blocks, const acc_t* __restrict__ betas,
                                                 int T, int B, int64_t inner, int64_t n,
                                                 scalar_t* __restrict__ out) {
  acc_t beta[kMaxTrellisCells];
#pragma unroll
  for (int t = 0; t < kMaxTrellisCells; ++t) beta[t] = t < T ? betas[t] : acc_t(0);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const TrellisIndex where = trellis_index(i, inner, B);
    acc_t acc = 0;
#pragma unroll
    for (int t = 0; t < kMaxTrellisCells; ++t)
      if (t < T) acc = accumulate_product(acc, beta[t], blocks.ptr[t * B + where.b][where.source]);
    out[i] = static_cast<scalar_t>(acc);
  }
}

// grad_blocks[t*B+b] = betas[t] * grad slice b (if need_blocks), and per block partial sums of
// grad slice b * cells[t][b] into partials[block, t] (if need_betas); grad is read once.
template <typename scalar_t, typename acc_t>
__global__ void trellis_aggregate_backward_kernel(const scalar_t* __restrict__ grad,
                                                  BlockTable<const scalar_t*> blocks,
                                                  BlockTable<scalar_t*> grad_blocks,
                                                  const acc_t* __restrict__ betas, int T, int B, int64_t inner,
                                                  int64_t n, acc_t* __restrict__ partials, bool need_blocks,
                                                  bool need_betas) {
  acc_t beta[kMaxTrellisCells];
  acc_t acc[kMaxTrellisCells];
#pragma unroll
  for (int t = 0; t < kMaxTrellisCells; ++t) {
    beta[t] = t < T ? betas[t] : acc_t(0);
    acc[t] = 0;
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const TrellisIndex where = trellis_index(i, inner, B);
    const acc_t g = static_cast<acc_t>(grad[i]);
#pragma unroll
    for (int t = 0; t < kMaxTrellisCells; ++t) {
      if (t < T) {
        if (need_blocks) grad_blocks.ptr[t * B + where.b][where.source] = scaled_gradient<scalar_t>(beta[t], g);
        if (need_betas) acc[t] = accumulate_product(acc[t], g, blocks.ptr[t * B + where.b][where.source]);
      }
    }
  }
  // need_betas is the same for the whole grid: every thread of a block reaches the barriers or none.
  if (need_betas) block_sums(acc, T, partials + static_cast<int64_t>(blockIdx.x) * T, 1);
}

at::Tensor trellis_aggregate_cuda(at::TensorList blocks_arg, int64_t num_cells, const at::Tensor& betas_arg) {
  const int64_t B = check_trellis_aggregate_args(blocks_arg, num_cells, betas_arg);
  const c10::cuda::CUDAGuard device_guard(blocks_arg[0].device());
  const auto blocks = contiguous_all(blocks_arg);
  at::Tensor out = at::empty(trellis_output_shape(blocks[0], B), blocks[0].options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const int64_t inner = blocks[0].numel() / blocks[0].size(0);
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "trellis_aggregate_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor betas = betas_arg.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    FASTDNAS_LAUNCH((trellis_aggregate_forward_kernel<scalar_t, acc_t>), forward_grid_for(n), kThreads, 0, stream)(
        block_table<const scalar_t*>(blocks), betas.const_data_ptr<acc_t>(), static_cast<int>(num_cells),
        static_cast<int>(B), inner, n, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> trellis_aggregate_backward_cuda(const at::Tensor& grad_arg,
                                                                                 at::TensorList blocks_arg,
                                                                                 int64_t num_cells,
                                                                                 const at::Tensor& betas_arg,
                                                                                 std::array<bool, 2> output_mask) {
  const int64_t B = check_trellis_aggregate_backward_args(grad_arg, blocks_arg, num_cells, betas_arg);
  const auto [need_blocks, need_betas] = output_mask;
  const c10::cuda::CUDAGuard device_guard(grad_arg.device());
  const auto blocks = contiguous_all(blocks_arg);
  const at::Tensor grad = grad_arg.contiguous();
  auto grad_blocks = need_blocks ? empty_like_all(blocks) : std::vector<at::Tensor>{};
  if (!need_blocks && !need_betas) return {grad_blocks, at::Tensor()};
  const int64_t n = grad.numel();
  const int T = static_cast<int>(num_cells);
  at::Tensor grad_betas;
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "trellis_aggregate_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor betas = betas_arg.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    at::Tensor sums = need_betas ? at::zeros({T}, betas.options()) : at::Tensor();
    if (n > 0) {
      const int64_t inner = blocks[0].numel() / blocks[0].size(0);
      const int64_t grid = grid_for(n, kMaxBackwardBlocks);
      at::Tensor partials = at::empty({need_betas ? grid : 0, T}, betas.options());
      FASTDNAS_LAUNCH((trellis_aggregate_backward_kernel<scalar_t, acc_t>), grid, kThreads, 0, stream)(
          grad.const_data_ptr<scalar_t>(), block_table<const scalar_t*>(blocks),
          block_table<scalar_t*>(grad_blocks), betas.const_data_ptr<acc_t>(), T, static_cast<int>(B), inner, n,
          partials.mutable_data_ptr<acc_t>(), need_blocks, need_betas);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (need_betas) {
        FASTDNAS_LAUNCH((sum_partials_kernel<acc_t>), T, kThreads, 0, stream)(partials.const_data_ptr<acc_t>(), grid,
                                                                              T, sums.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    if (need_betas) grad_betas = sums.to(betas_arg.scalar_type());
  });
  return {grad_blocks, grad_betas};
}

}  // namespace

FASTDNAS_CUDA_LIBRARY_IMPL(m) {
  m.impl("trellis_aggregate", &trellis_aggregate_cuda);
  m.impl("_trellis_aggregate_backward", &trellis_aggregate_backward_cuda);
}

}  // namespace fastdnas
