// trellis_aggregate(blocks, num_cells, betas): the Auto-DeepLab node sum
//   out[:, b*C:(b+1)*C] = sum_t betas[t] * cells[t][b]
// written straight into the concatenated output. `blocks` is the list of cells flattened
// cell-major: blocks[t * B + b] = cells[t][b].
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <tuple>
#include <vector>

#include "../common/checks.h"

namespace fastdnas {

// One cell evaluation per incoming transition: from the finer, the same and the coarser level.
constexpr int64_t kMaxTrellisCells = 3;
// Kernels take the block pointers by value; this keeps both tables of the backward kernel small.
constexpr int64_t kMaxTrellisBlocksPerCell = 32;

// Checks the arguments and returns the number of blocks per cell. Errors name cells[t][b] and
// the op `op` (the backward op's errors name the forward op).
inline int64_t check_trellis_aggregate_args(at::TensorList blocks, int64_t num_cells, const at::Tensor& betas,
                                            const char* op = "trellis_aggregate") {
  TORCH_CHECK(num_cells >= 1 && num_cells <= kMaxTrellisCells, op, ": cells must hold 1 to ", kMaxTrellisCells,
              " cell evaluations (one per incoming transition), got ", num_cells);
  const int64_t count = static_cast<int64_t>(blocks.size());
  TORCH_CHECK(count > 0 && count % num_cells == 0, op, ": blocks holds ", count,
              " tensors, not a positive multiple of num_cells=", num_cells,
              "; every cell evaluation must give the same number of blocks");
  const int64_t B = count / num_cells;
  TORCH_CHECK(B <= kMaxTrellisBlocksPerCell, op, ": each cell gives ", B, " blocks; at most ",
              kMaxTrellisBlocksPerCell, " are supported");
  const at::Tensor& first = blocks[0];
  TORCH_CHECK(first.defined(), op, ": cells[0][0] is undefined");
  TORCH_CHECK(is_supported_float(first.scalar_type()), op,
              ": cells must be float64, float32, float16 or bfloat16, got ", first.scalar_type());
  TORCH_CHECK(first.dim() == 4, op, ": cells[0][0] must be 4-D [N, C, H, W], got shape ", first.sizes());
  TORCH_CHECK(first.size(1) <= std::numeric_limits<int64_t>::max() / B, op, ": the output's ", B, " * ",
              first.size(1), " channels (blocks per cell * C) overflow int64");
  check_storage_size(op, "the output (from the cells' block shape and blocks per cell)",
                     {first.size(0), B * first.size(1), first.size(2), first.size(3)}, first.scalar_type());
  for (int64_t i = 1; i < count; ++i) {
    const at::Tensor& t = blocks[i];
    const int64_t cell = i / B, block = i % B;
    TORCH_CHECK(t.defined(), op, ": cells[", cell, "][", block, "] is undefined");
    TORCH_CHECK(t.scalar_type() == first.scalar_type(), op, ": cells[", cell, "][", block, "] has dtype ",
                t.scalar_type(), " but cells[0][0] has dtype ", first.scalar_type(), "; all must match");
    TORCH_CHECK(t.device() == first.device(), op, ": cells[", cell, "][", block, "] is on ", t.device(),
                " but cells[0][0] is on ", first.device(), "; all must be on one device");
    TORCH_CHECK(t.sizes() == first.sizes(), op, ": cells[", cell, "][", block, "] has shape ", t.sizes(),
                " but cells[0][0] has shape ", first.sizes(), "; all must match");
  }
  check_weight_vector(betas, num_cells, first.device(), op, "betas", "one weight per cell evaluation");
  return B;
}

// [N, B*C, H, W] for blocks of shape [N, C, H, W].
inline std::vector<int64_t> trellis_output_shape(const at::Tensor& block, int64_t blocks_per_cell) {
  return {block.size(0), blocks_per_cell * block.size(1), block.size(2), block.size(3)};
}

inline int64_t check_trellis_aggregate_backward_args(const at::Tensor& grad, at::TensorList blocks, int64_t num_cells,
                                                     const at::Tensor& betas) {
  const char* op = "trellis_aggregate (backward)";
  const int64_t B = check_trellis_aggregate_args(blocks, num_cells, betas, op);
  const auto shape = trellis_output_shape(blocks[0], B);
  TORCH_CHECK(grad.defined() && grad.sizes() == at::IntArrayRef(shape) &&
                  grad.scalar_type() == blocks[0].scalar_type() && grad.device() == blocks[0].device(),
              op, ": grad must have shape ", at::IntArrayRef(shape), ", dtype ",
              blocks[0].scalar_type(), " and device ", blocks[0].device());
  return B;
}

}  // namespace fastdnas
