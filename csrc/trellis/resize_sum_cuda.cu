// CUDA kernels of resize_sum: forward and the fused backward, on the current stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/element_math.h"
#include "../common/launch.cuh"
#include "../common/reduce_cuda.cuh"
#include "../common/tensor_lists.h"
#include "bilinear.h"
#include "resize_sum.h"

namespace fastdnas {
namespace {

using namespace cuda_reduce;

// Every input's data and its two axes, passed by value to the forward kernel.
template <typename scalar_t, typename acc_t>
struct ResizeInputTable {
  const scalar_t* data[kMaxResizeSumInputs];
  ResizeAxis<acc_t> rows[kMaxResizeSumInputs];
  ResizeAxis<acc_t> cols[kMaxResizeSumInputs];
};

// Forward: one warp per output row (plane and row found once per row, 32-bit where the output
// fits), its lanes over the row's columns: no division per element.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void resize_sum_forward_kernel(ResizeInputTable<scalar_t, acc_t> inputs, const acc_t* __restrict__ weights,
                                          int K, index_t out_h, index_t out_w, index_t out_rows,
                                          scalar_t* __restrict__ out) {
  __shared__ acc_t w[kMaxResizeSumInputs];
  for (int k = threadIdx.x; k < K; k += blockDim.x) w[k] = weights[k];
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const index_t warps = static_cast<index_t>(gridDim.x) * kWarps;
  for (index_t row = static_cast<index_t>(blockIdx.x) * kWarps + threadIdx.x / 32; row < out_rows; row += warps) {
    const index_t plane = row / out_h;
    const index_t oy = row - plane * out_h;
    scalar_t* out_row = out + row * out_w;
    for (index_t ox = lane; ox < out_w; ox += 32) {
      acc_t acc = 0;
      for (int k = 0; k < K; ++k) {
        const ResizeAxis<acc_t> rows = inputs.rows[k], cols = inputs.cols[k];
        const scalar_t* x_plane = inputs.data[k] + plane * static_cast<index_t>(rows.input_size * cols.input_size);
        acc = accumulate_product(acc, w[k],
                                 bilinear_sample(x_plane, cols.input_size, linear_taps(rows, oy), linear_taps(cols, ox)));
      }
      out_row[ox] = static_cast<scalar_t>(acc);
    }
  }
}

// Backward: the adjoint at one input pixel gathers grad over the output rectangle that reads it
// (about (2 * out / in)^2 pixels: ~3,400 for the 11 x 11 ASPP level resized to 321 x 321). Each
// pixel gets a group of `lanes` lanes (a power of two up to a warp, chosen per input from the
// largest rectangle so each lane gathers up to 16 elements where a warp suffices, else more: up
// to 185 at the 11 x 11 level), laid out as row_lanes x col_lanes over the rectangle: a lane
// takes every row_lanes-th row and every col_lanes-th column from its offset (consecutive lanes
// read consecutive columns), and the group's shares are added in a fixed shuffle tree. A warp does
// 32 / lanes pixels at a time, groups_per_warp times per tile; a tile (kWarps warps) writes one
// partial sum of the weight gradient. The gather was chosen over output tiles in shared memory:
// no staging or halo logic, and a coarse input's rectangle spreads over a whole warp, which is
// where the parallelism was missing. Every split depends on the sizes only, so the results are
// bitwise the same for any grid (the grid follows the device).
struct GatherLayout {
  int lanes_log2;       // lanes per pixel: 1 << lanes_log2
  int col_lanes_log2;   // of them along the columns; the rest along the rows
  int groups_per_warp;  // pixel steps per warp and tile
};

// The most elements one lane gathers (for the widest rectangle) that still leaves a group
// narrower than a warp: 16 keeps the lanes busy where rectangles are small (the 81 x 81 level
// resized to 321 x 321: 8 lanes as 2 x 4 over up to 10 x 10) and spreads the large ones over a
// warp (41 x 41 and coarser: 32 lanes).
constexpr int64_t kGatherPerLane = 16;

// The longest run of outputs that read one input index along an axis.
template <typename acc_t>
int64_t widest_reach(const ResizeAxis<acc_t>& axis) {
  int64_t widest = 0;
  for (int64_t i = 0; i < axis.input_size; ++i) {
    const OutputRange r = outputs_reading(axis, i);
    widest = std::max(widest, r.end - r.begin);
  }
  return widest;
}

template <typename acc_t>
GatherLayout gather_layout(const ResizeAxis<acc_t>& rows, const ResizeAxis<acc_t>& cols, int64_t pixels) {
  const int64_t reach_rows = widest_reach(rows), reach_cols = widest_reach(cols);
  GatherLayout layout{0, 0, 1};
  while (layout.lanes_log2 < 5 && (int64_t{1} << layout.lanes_log2) * kGatherPerLane < reach_rows * reach_cols)
    ++layout.lanes_log2;
  // The split of the group with the least serial work per lane; ties go to more column lanes.
  int64_t best = -1;
  for (int c = layout.lanes_log2; c >= 0; --c) {
    const int64_t col_lanes = int64_t{1} << c, row_lanes = int64_t{1} << (layout.lanes_log2 - c);
    const int64_t work = ((reach_rows + row_lanes - 1) / row_lanes) * ((reach_cols + col_lanes - 1) / col_lanes);
    if (best < 0 || work < best) best = work, layout.col_lanes_log2 = c;
  }
  const int64_t pixels_per_step = int64_t{32} >> layout.lanes_log2;
  layout.groups_per_warp =
      static_cast<int>(items_per_tile((pixels + pixels_per_step - 1) / pixels_per_step, kWarps, 16));
  return layout;
}

// Columns one lane gathers at once, each with its own running sum over the lane's rows, so the
// row weight is found once per row and the column weight once per column.
constexpr int kLaneColumns = 4;

// One lane's share of the adjoint at input pixel (y, x): its rows (from row_lane, step row_lanes)
// and columns (from col_lane, step col_lanes) of the output rectangle that reads the pixel.
template <typename acc_t, typename scalar_t, typename index_t>
__device__ acc_t adjoint_share(const scalar_t* grad_plane, const ResizeAxis<acc_t>& rows,
                               const ResizeAxis<acc_t>& cols, index_t y, index_t x, int row_lane, int row_lanes,
                               int col_lane, int col_lanes) {
  const OutputRange out_rows = outputs_reading(rows, y), out_cols = outputs_reading(cols, x);
  const index_t row_begin = static_cast<index_t>(out_rows.begin) + row_lane;
  const index_t row_end = static_cast<index_t>(out_rows.end);
  const index_t col_end = static_cast<index_t>(out_cols.end);
  const index_t out_w = static_cast<index_t>(cols.output_size);
  acc_t total = 0;
  for (index_t col0 = static_cast<index_t>(out_cols.begin) + col_lane; col0 < col_end;
       col0 += kLaneColumns * col_lanes) {
    acc_t column_sums[kLaneColumns];
#pragma unroll
    for (int m = 0; m < kLaneColumns; ++m) column_sums[m] = 0;
    for (index_t oy = row_begin; oy < row_end; oy += row_lanes) {
      const acc_t row_weight = tap_weight(linear_taps(rows, oy), y);
      const scalar_t* grad_row = grad_plane + oy * out_w;
#pragma unroll
      for (int m = 0; m < kLaneColumns; ++m) {
        const index_t ox = col0 + m * col_lanes;
        if (ox < col_end) column_sums[m] = accumulate_product(column_sums[m], row_weight, grad_row[ox]);
      }
    }
#pragma unroll
    for (int m = 0; m < kLaneColumns; ++m) {
      const index_t ox = col0 + m * col_lanes;
      if (ox < col_end) total += tap_weight(linear_taps(cols, ox), x) * column_sums[m];
    }
  }
  return total;
}

// For one input: grad_input = weight * (adjoint of the resize applied to grad), gathered per
// input pixel (no atomics), and per tile partial sums of its dot with the input.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void resize_sum_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ input,
                                           scalar_t* __restrict__ grad_input, const acc_t* __restrict__ weight,
                                           ResizeAxis<acc_t> rows, ResizeAxis<acc_t> cols, GatherLayout layout,
                                           index_t pixels, index_t tiles, acc_t* __restrict__ partials) {
  const acc_t w = *weight;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int lanes = 1 << layout.lanes_log2, col_lanes = 1 << layout.col_lanes_log2;
  const int member = lane & (lanes - 1);  // this lane's place in its pixel's group
  const int col_lane = member & (col_lanes - 1), row_lane = member >> layout.col_lanes_log2;
  const int pixels_per_step = 32 >> layout.lanes_log2;
  const index_t pixels_per_warp = static_cast<index_t>(layout.groups_per_warp) * pixels_per_step;
  const index_t in_w = static_cast<index_t>(cols.input_size);
  const index_t in_plane = static_cast<index_t>(rows.input_size) * in_w;
  const index_t out_plane = static_cast<index_t>(rows.output_size * cols.output_size);
  for (index_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    acc_t dot[1] = {0};
    const index_t first = (tile * kWarps + warp) * pixels_per_warp + (lane >> layout.lanes_log2);
    for (int step = 0; step < layout.groups_per_warp; ++step) {
      const index_t i = first + static_cast<index_t>(step) * pixels_per_step;
      acc_t adjoint = 0;
      if (i < pixels) {  // one division per pixel (each gathers several elements per lane)
        const index_t plane = i / in_plane;
        const index_t rest = i - plane * in_plane;
        const index_t y = rest / in_w;
        adjoint = adjoint_share(grad + plane * out_plane, rows, cols, y, rest - y * in_w, row_lane,
                                lanes >> layout.col_lanes_log2, col_lane, col_lanes);
      }
      // The group's shares, added in a fixed tree into its first lane (every lane takes part).
      for (int offset = lanes / 2; offset > 0; offset /= 2) adjoint += __shfl_down_sync(0xffffffffu, adjoint, offset);
      if (member == 0 && i < pixels) {
        grad_input[i] = scaled_gradient<scalar_t>(w, adjoint);
        dot[0] = accumulate_product(dot[0], adjoint, input[i]);
      }
    }
    block_sums(dot, 1, partials + tile, 1);
  }
}

at::Tensor resize_sum_cuda(at::TensorList inputs_arg, at::IntArrayRef size,
                           const std::optional<at::Tensor>& weights_arg) {
  check_resize_sum_args(inputs_arg, size, weights_arg);
  const c10::cuda::CUDAGuard device_guard(inputs_arg[0].device());
  const auto inputs = contiguous_all(inputs_arg);
  const int64_t out_h = size[0], out_w = size[1];
  at::Tensor out = at::empty({inputs[0].size(0), inputs[0].size(1), out_h, out_w}, inputs[0].options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const int K = static_cast<int>(inputs.size());
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "resize_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor weights =
        accumulation_weights(weights_arg, K, c10::CppTypeToScalarType<acc_t>::value, out.device());
    ResizeInputTable<scalar_t, acc_t> table{};
    for (int k = 0; k < K; ++k) {
      table.data[k] = inputs[k].const_data_ptr<scalar_t>();
      table.rows[k] = resize_axis<acc_t>(inputs[k].size(2), out_h);
      table.cols[k] = resize_axis<acc_t>(inputs[k].size(3), out_w);
    }
    int64_t largest = n;
    for (int k = 0; k < K; ++k) largest = std::max(largest, inputs[k].numel());
    with_index_type(largest, [&](auto index_zero) {
      using index_t = decltype(index_zero);
      const int64_t out_rows = n / out_w;
      FASTDNAS_LAUNCH((resize_sum_forward_kernel<scalar_t, acc_t, index_t>),
                      device_grid_for((out_rows + kWarps - 1) / kWarps), kThreads, 0, stream)(
          table, weights.const_data_ptr<acc_t>(), K, static_cast<index_t>(out_h), static_cast<index_t>(out_w),
          static_cast<index_t>(out_rows), out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> resize_sum_backward_cuda(const at::Tensor& grad_arg,
                                                                          at::TensorList inputs_arg,
                                                                          const std::optional<at::Tensor>& weights_arg) {
  check_resize_sum_backward_args(grad_arg, inputs_arg, weights_arg);
  const c10::cuda::CUDAGuard device_guard(grad_arg.device());
  const auto inputs = contiguous_all(inputs_arg);
  const at::Tensor grad = grad_arg.contiguous();
  auto grad_inputs = empty_like_all(inputs);
  const int64_t out_h = grad.size(2), out_w = grad.size(3);
  const int64_t K = static_cast<int64_t>(inputs.size());
  at::Tensor grad_weights;
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "resize_sum_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor weights =
        accumulation_weights(weights_arg, K, c10::CppTypeToScalarType<acc_t>::value, grad.device());
    at::Tensor sums = at::zeros({K}, weights.options());
    for (int64_t k = 0; k < K; ++k) {
      const int64_t n = inputs[k].numel();
      if (n == 0) continue;
      const auto rows = resize_axis<acc_t>(inputs[k].size(2), out_h);
      const auto cols = resize_axis<acc_t>(inputs[k].size(3), out_w);
      const GatherLayout layout = gather_layout(rows, cols, n);
      const int64_t tile_pixels = int64_t{kWarps} * layout.groups_per_warp * (32 >> layout.lanes_log2);
      const int64_t tiles = (n + tile_pixels - 1) / tile_pixels;
      at::Tensor partials = at::empty({tiles}, weights.options());
      with_index_type(std::max(n, grad.numel()), [&](auto index_zero) {
        using index_t = decltype(index_zero);
        FASTDNAS_LAUNCH((resize_sum_backward_kernel<scalar_t, acc_t, index_t>),
                        device_grid_for(tiles, kTileBlocksPerSM), kThreads, 0, stream)(
            grad.const_data_ptr<scalar_t>(), inputs[k].const_data_ptr<scalar_t>(),
            grad_inputs[k].mutable_data_ptr<scalar_t>(), weights.const_data_ptr<acc_t>() + k, rows, cols, layout,
            static_cast<index_t>(n), static_cast<index_t>(tiles), partials.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      FASTDNAS_LAUNCH((sum_partials_kernel<acc_t>), 1, kThreads, 0, stream)(partials.const_data_ptr<acc_t>(), tiles,
                                                            1, sums.mutable_data_ptr<acc_t>() + k);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    grad_weights = sums.to(weights_arg.has_value() ? weights_arg->scalar_type() : grad.scalar_type());
  });
  return {grad_inputs, grad_weights};
}

}  // namespace

FASTDNAS_CUDA_LIBRARY_IMPL(m) {
  m.impl("resize_sum", &resize_sum_cuda);
  m.impl("_resize_sum_backward", &resize_sum_backward_cuda);
}

}  // namespace fastdnas
