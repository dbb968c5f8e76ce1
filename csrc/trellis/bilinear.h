// Bilinear resampling arithmetic with F.interpolate(mode="bilinear", align_corners=False)
// semantics (no antialias), shared by the CPU and CUDA kernels of resize_sum.
#pragma once

#include <cstdint>

#include "../common/element_math.h"

namespace fastdnas {

// The two source indices one output index reads along one axis, and their weights.
template <typename acc_t>
struct LinearTaps {
  int64_t index0;
  int64_t index1;
  acc_t lambda0;
  acc_t lambda1;
};

// One axis of a resize. The scale is computed in acc_t, as PyTorch does (float for float and
// half types), so the source indices round the same way.
template <typename acc_t>
struct ResizeAxis {
  int64_t input_size;
  int64_t output_size;
  acc_t scale;
};

template <typename acc_t>
FASTDNAS_HOST_DEVICE ResizeAxis<acc_t> resize_axis(int64_t input_size, int64_t output_size) {
  return {input_size, output_size, static_cast<acc_t>(input_size) / static_cast<acc_t>(output_size)};
}

template <typename acc_t>
FASTDNAS_HOST_DEVICE LinearTaps<acc_t> linear_taps(const ResizeAxis<acc_t>& axis, int64_t output_index) {
  LinearTaps<acc_t> taps;
  if (axis.input_size == axis.output_size) {  // PyTorch copies an axis that keeps its size
    taps.index0 = taps.index1 = output_index;
    taps.lambda0 = static_cast<acc_t>(1);
    taps.lambda1 = static_cast<acc_t>(0);
    return taps;
  }
  acc_t source =
      axis.scale * (static_cast<acc_t>(output_index) + static_cast<acc_t>(0.5)) - static_cast<acc_t>(0.5);
  if (source < static_cast<acc_t>(0)) source = static_cast<acc_t>(0);  // linear modes clamp at the near edge
  const int64_t floor_index = static_cast<int64_t>(source);  // truncation is floor: source >= 0
  const int64_t last = axis.input_size - 1;
  taps.index0 = floor_index < last ? floor_index : last;
  acc_t lambda = source - static_cast<acc_t>(taps.index0);
  lambda = lambda < static_cast<acc_t>(0) ? static_cast<acc_t>(0) : (lambda > static_cast<acc_t>(1) ? static_cast<acc_t>(1) : lambda);
  taps.index1 = taps.index0 < last ? taps.index0 + 1 : taps.index0;
  taps.lambda1 = lambda;
  taps.lambda0 = static_cast<acc_t>(1) - lambda;
  return taps;
}

// The weight with which an output index reads `input_index` (both taps may name the last pixel).
template <typename acc_t>
FASTDNAS_HOST_DEVICE acc_t tap_weight(const LinearTaps<acc_t>& taps, int64_t input_index) {
  acc_t weight = static_cast<acc_t>(0);
  if (taps.index0 == input_index) weight += taps.lambda0;
  if (taps.index1 == input_index) weight += taps.lambda1;
  return weight;
}

// The first output index whose index0 is at least `source_index` (output_size if none). index0
// never decreases along the output axis, so the outputs reading input index k, those with index0
// in {k-1, k}, are [first_output_from(k-1), first_output_from(k+1)).
template <typename acc_t>
FASTDNAS_HOST_DEVICE int64_t first_output_from(const ResizeAxis<acc_t>& axis, int64_t source_index) {
  if (source_index <= 0) return 0;
  if (source_index >= axis.input_size) return axis.output_size;
  // Invert the source-index formula for a guess, then correct it against the exact taps.
  const acc_t guess = (static_cast<acc_t>(source_index) + static_cast<acc_t>(0.5)) / axis.scale - static_cast<acc_t>(0.5);
  int64_t o = guess <= static_cast<acc_t>(0) ? 0
              : guess >= static_cast<acc_t>(axis.output_size) ? axis.output_size
                                                               : static_cast<int64_t>(guess);
  while (o > 0 && linear_taps(axis, o - 1).index0 >= source_index) --o;
  while (o < axis.output_size && linear_taps(axis, o).index0 < source_index) ++o;
  return o;
}

// The outputs that read input index `index` along an axis: [begin, end).
struct OutputRange {
  int64_t begin;
  int64_t end;
};

template <typename acc_t>
FASTDNAS_HOST_DEVICE OutputRange outputs_reading(const ResizeAxis<acc_t>& axis, int64_t index) {
  return {first_output_from(axis, index - 1), first_output_from(axis, index + 1)};
}

// One output pixel of a bilinear resize of `plane` (input_width wide), in PyTorch's CUDA order.
template <typename acc_t, typename scalar_t>
FASTDNAS_HOST_DEVICE acc_t bilinear_sample(const scalar_t* plane, int64_t input_width, const LinearTaps<acc_t>& row,
                                           const LinearTaps<acc_t>& col) {
  const scalar_t* row0 = plane + row.index0 * input_width;
  const scalar_t* row1 = plane + row.index1 * input_width;
  return row.lambda0 * (col.lambda0 * static_cast<acc_t>(row0[col.index0]) +
                        col.lambda1 * static_cast<acc_t>(row0[col.index1])) +
         row.lambda1 * (col.lambda0 * static_cast<acc_t>(row1[col.index0]) +
                        col.lambda1 * static_cast<acc_t>(row1[col.index1]));
}

}  // namespace fastdnas
