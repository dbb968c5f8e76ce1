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

// Backward: the adjoint of a bilinear resize is separable. At input pixel (y, x) of input k it is
//   sum over output rows oy reading y of  w_row(oy, y) * T[oy, x],
//   T[oy, x] = sum over output columns ox reading x of  w_col(ox, x) * grad[oy, ox],
// each sum in ascending order (the CPU kernel adds the same products in the same order: T per
// output row, then the rows). Two kernels for all K inputs at once:
//  1. resize_sum_bands_kernel: a block per (plane, band of band_rows output rows) reads the band
//     of grad once for every input; a thread per input column (k, x) forms T for the band's rows
//     (one column weight per output column, the rows' loads independent), then streams the rows'
//     contributions, in ascending oy, into running sums of the input rows they read (at most two
//     at a time: a row's first tap index never decreases), writing each finished input row's
//     partial sum for the band. Input rows inside the band's span that no row reads (a
//     downsampling skips them) get 0.
//  2. resize_sum_combine_kernel: a warp per input row (k, plane, y), its lanes over x, adds the
//     partials of the bands holding the output rows that read y, in band order, then writes
//     grad_input = weight * adjoint and per tile partial sums of adjoint * input (tiles of whole
//     rows of one input).
// Then one block per input adds its tiles' partial sums in a fixed order. The bands (rows per
// band, so the number of blocks: about kTargetBands at every Auto-DeepLab level) and the tiles
// depend on the sizes only, so the results are bitwise the same for any grid (the grids follow
// the device). No division per element: the plane and band are found once per block task, the
// input and row once per row.
constexpr int kMaxBandRows = 16;
constexpr int64_t kTargetBands = 1024;

template <typename acc_t>
struct ResizeBackwardTable {
  ResizeAxis<acc_t> rows[kMaxResizeSumInputs];
  ResizeAxis<acc_t> cols[kMaxResizeSumInputs];
  int64_t column_begin[kMaxResizeSumInputs + 1];  // input k's columns are [column_begin[k], column_begin[k + 1])
  int64_t partial_offset[kMaxResizeSumInputs];    // input k's band partials: [planes * bands, band_height, in_w]
  int64_t tile_begin[kMaxResizeSumInputs + 1];    // input k's tiles of the combine kernel
  int band_height[kMaxResizeSumInputs];           // input rows a band's partial holds (the most any band spans)
  int rows_per_warp[kMaxResizeSumInputs];         // combine kernel: consecutive input rows per warp and tile
};

// The input rows a band of output rows [oy_begin, oy_end) contributes to: [first, last].
template <typename acc_t>
FASTDNAS_HOST_DEVICE OutputRange band_input_rows(const ResizeAxis<acc_t>& rows, int64_t oy_begin, int64_t oy_end) {
  const int64_t first = linear_taps(rows, oy_begin).index0;
  const int64_t last_index0 = linear_taps(rows, oy_end - 1).index0;
  return {first, last_index0 + 1 < rows.input_size ? last_index0 + 1 : last_index0};
}

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void resize_sum_bands_kernel(const scalar_t* __restrict__ grad, ResizeBackwardTable<acc_t> table, int K,
                                        index_t out_h, index_t out_w, int band_rows, index_t bands, index_t tasks,
                                        acc_t* __restrict__ partials) {
  const index_t columns = static_cast<index_t>(table.column_begin[K]);
  for (index_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const index_t plane = task / bands;
    const index_t oy0 = (task - plane * bands) * band_rows;
    const int rows = out_h - oy0 < band_rows ? static_cast<int>(out_h - oy0) : band_rows;
    const scalar_t* grad_band = grad + (plane * out_h + oy0) * out_w;
    for (index_t c = threadIdx.x; c < columns; c += kThreads) {
      int k = 0;
      while (c >= static_cast<index_t>(table.column_begin[k + 1])) ++k;
      const ResizeAxis<acc_t> row_axis = table.rows[k], col_axis = table.cols[k];
      const index_t x = c - static_cast<index_t>(table.column_begin[k]);
      const index_t in_w = static_cast<index_t>(col_axis.input_size);
      // T for the band's rows at column x.
      acc_t sums[kMaxBandRows];
#pragma unroll
      for (int r = 0; r < kMaxBandRows; ++r) sums[r] = 0;
      const OutputRange reach = outputs_reading(col_axis, x);
      for (index_t ox = static_cast<index_t>(reach.begin); ox < static_cast<index_t>(reach.end); ++ox) {
        const acc_t w = tap_weight(linear_taps(col_axis, ox), x);
        const scalar_t* g = grad_band + ox;
#pragma unroll
        for (int r = 0; r < kMaxBandRows; ++r)
          if (r < rows) sums[r] = accumulate_product(sums[r], w, g[r * out_w]);
      }
      // The rows' contributions to input rows y (running sum `current`) and y + 1 (`next`).
      const index_t first = static_cast<index_t>(linear_taps(row_axis, oy0).index0);
      const index_t in_h = static_cast<index_t>(row_axis.input_size);
      acc_t* out = partials + static_cast<index_t>(table.partial_offset[k]) +
                   task * static_cast<index_t>(table.band_height[k]) * in_w + x;  // row `first`
      index_t y = first;
      acc_t current = 0, next = 0;
#pragma unroll
      for (int r = 0; r < kMaxBandRows; ++r) {
        if (r < rows) {
          const LinearTaps<acc_t> taps = linear_taps(row_axis, oy0 + r);
          for (; y < static_cast<index_t>(taps.index0); ++y) {
            out[(y - first) * in_w] = current;
            current = next;
            next = 0;
          }
          current += tap_weight(taps, y) * sums[r];
          if (y + 1 < in_h) next += tap_weight(taps, y + 1) * sums[r];
        }
      }
      out[(y - first) * in_w] = current;
      if (y + 1 < in_h) out[(y + 1 - first) * in_w] = next;
    }
  }
}

template <typename scalar_t>
struct ResizeGradTable {
  const scalar_t* input[kMaxResizeSumInputs];
  scalar_t* grad_input[kMaxResizeSumInputs];
};

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void resize_sum_combine_kernel(ResizeGradTable<scalar_t> io, ResizeBackwardTable<acc_t> table,
                                          const acc_t* __restrict__ weights, int K, int band_rows, index_t bands,
                                          index_t planes, const acc_t* __restrict__ partials,
                                          acc_t* __restrict__ dot_partials) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const index_t tiles = static_cast<index_t>(table.tile_begin[K]);
  for (index_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    int k = 0;
    while (tile >= static_cast<index_t>(table.tile_begin[k + 1])) ++k;
    const ResizeAxis<acc_t> row_axis = table.rows[k];
    const index_t in_h = static_cast<index_t>(row_axis.input_size);
    const index_t in_w = static_cast<index_t>(table.cols[k].input_size);
    const index_t input_rows = planes * in_h;
    const index_t band_size = static_cast<index_t>(table.band_height[k]) * in_w;
    const acc_t* band_partials = partials + static_cast<index_t>(table.partial_offset[k]);
    const acc_t w = weights[k];
    const int rows_per_warp = table.rows_per_warp[k];
    const index_t row0 = ((tile - static_cast<index_t>(table.tile_begin[k])) * kWarps + warp) * rows_per_warp;
    acc_t dot[1] = {0};
    for (int i = 0; i < rows_per_warp; ++i) {
      const index_t row = row0 + i;
      if (row >= input_rows) break;
      const index_t plane = row / in_h;
      const index_t y = row - plane * in_h;
      const OutputRange reach = outputs_reading(row_axis, y);
      const index_t band_begin = static_cast<index_t>(reach.begin) / band_rows;
      const index_t band_end = reach.end > reach.begin ? static_cast<index_t>(reach.end - 1) / band_rows + 1 : band_begin;
      const scalar_t* input_row = io.input[k] + row * in_w;
      scalar_t* grad_row = io.grad_input[k] + row * in_w;
      for (index_t x = lane; x < in_w; x += 32) {
        acc_t adjoint = 0;
        for (index_t band = band_begin; band < band_end; ++band) {
          const index_t first = static_cast<index_t>(linear_taps(row_axis, band * band_rows).index0);
          const acc_t part = band_partials[(plane * bands + band) * band_size + (y - first) * in_w + x];
          adjoint = band == band_begin ? part : adjoint + part;
        }
        grad_row[x] = scaled_gradient<scalar_t>(w, adjoint);
        dot[0] = accumulate_product(dot[0], adjoint, input_row[x]);
      }
    }
    block_sums(dot, 1, dot_partials + tile, 1);
  }
}

// sums[k] = the sum of partials[tile_begin[k] .. tile_begin[k + 1]) in a fixed tree order; K blocks.
template <typename acc_t>
__global__ void resize_sum_weight_sums_kernel(const acc_t* __restrict__ partials, ResizeBackwardTable<acc_t> table,
                                              acc_t* __restrict__ sums) {
  const int k = blockIdx.x;
  sum_partials_column(partials + table.tile_begin[k], table.tile_begin[k + 1] - table.tile_begin[k], 1, 0,
                           sums + k);
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
  const int64_t planes = grad.size(0) * grad.size(1);
  const int64_t out_h = grad.size(2), out_w = grad.size(3);
  const int K = static_cast<int>(inputs.size());
  at::Tensor grad_weights;
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "resize_sum_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor weights =
        accumulation_weights(weights_arg, K, c10::CppTypeToScalarType<acc_t>::value, grad.device());
    at::Tensor sums = at::zeros({K}, weights.options());
    if (planes > 0) {
      // Bands of output rows: about kTargetBands blocks in all, at most kMaxBandRows rows each.
      const int64_t bands_wanted = std::max<int64_t>(1, (kTargetBands + planes - 1) / planes);
      const int band_rows = static_cast<int>(std::min<int64_t>(kMaxBandRows, (out_h + bands_wanted - 1) / bands_wanted));
      const int64_t bands = (out_h + band_rows - 1) / band_rows;
      ResizeBackwardTable<acc_t> table{};
      ResizeGradTable<scalar_t> io{};
      int64_t partial_size = 0, largest = grad.numel();
      for (int k = 0; k < K; ++k) {
        const int64_t in_h = inputs[k].size(2), in_w = inputs[k].size(3);
        table.rows[k] = resize_axis<acc_t>(in_h, out_h);
        table.cols[k] = resize_axis<acc_t>(in_w, out_w);
        table.column_begin[k + 1] = table.column_begin[k] + in_w;
        int64_t height = 1;
        for (int64_t band = 0; band < bands; ++band) {
          const OutputRange span =
              band_input_rows(table.rows[k], band * band_rows, std::min(out_h, (band + 1) * band_rows));
          height = std::max(height, span.end - span.begin + 1);
        }
        table.band_height[k] = static_cast<int>(height);
        table.partial_offset[k] = partial_size;
        partial_size += planes * bands * height * in_w;
        const int64_t input_rows = planes * in_h;
        table.rows_per_warp[k] = static_cast<int>(items_per_tile(input_rows, kWarps, 16));
        const int64_t tile_rows = int64_t{kWarps} * table.rows_per_warp[k];
        table.tile_begin[k + 1] = table.tile_begin[k] + (input_rows + tile_rows - 1) / tile_rows;
        io.input[k] = inputs[k].const_data_ptr<scalar_t>();
        io.grad_input[k] = grad_inputs[k].mutable_data_ptr<scalar_t>();
        largest = std::max(largest, inputs[k].numel());
      }
      at::Tensor partials = at::empty({partial_size}, weights.options());
      at::Tensor dot_partials = at::empty({table.tile_begin[K]}, weights.options());
      with_index_type(std::max(largest, partial_size), [&](auto index_zero) {
        using index_t = decltype(index_zero);
        const int64_t tasks = planes * bands;
        FASTDNAS_LAUNCH((resize_sum_bands_kernel<scalar_t, acc_t, index_t>),
                        device_grid_for(tasks, kTileBlocksPerSM), kThreads, 0, stream)(
            grad.const_data_ptr<scalar_t>(), table, K, static_cast<index_t>(out_h), static_cast<index_t>(out_w),
            band_rows, static_cast<index_t>(bands), static_cast<index_t>(tasks), partials.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        FASTDNAS_LAUNCH((resize_sum_combine_kernel<scalar_t, acc_t, index_t>),
                        device_grid_for(table.tile_begin[K], kTileBlocksPerSM), kThreads, 0, stream)(
            io, table, weights.const_data_ptr<acc_t>(), K, band_rows, static_cast<index_t>(bands),
            static_cast<index_t>(planes), partials.const_data_ptr<acc_t>(), dot_partials.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      FASTDNAS_LAUNCH((resize_sum_weight_sums_kernel<acc_t>), K, kThreads, 0, stream)(
          dot_partials.const_data_ptr<acc_t>(), table, sums.mutable_data_ptr<acc_t>());
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
