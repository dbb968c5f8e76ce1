// CPU kernels of resize_sum: forward and the fused backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common/element_math.h"
#include "../common/tensor_lists.h"
#include "bilinear.h"
#include "resize_sum.h"

namespace fastdnas {
namespace {

// Output elements per task of the forward loop.
constexpr int64_t kForwardGrain = 2048;
// Input elements per chunk of the backward reduction (whole rows of one plane); the chunks
// depend only on the sizes, so the weight gradients are the same for any thread count.
constexpr int64_t kBackwardChunk = 4096;

// The adjoint of one resize axis, per input index: the outputs that read it, [begin, end), and
// their weights on it (weight[offset + o - begin]), so the backward pass computes no tap twice.
template <typename acc_t>
struct AxisAdjoint {
  std::vector<int64_t> begin, end, offset;
  std::vector<acc_t> weight;
};

template <typename acc_t>
AxisAdjoint<acc_t> axis_adjoint(const ResizeAxis<acc_t>& axis) {
  AxisAdjoint<acc_t> adjoint;
  for (int64_t i = 0; i < axis.input_size; ++i) {
    const OutputRange range = outputs_reading(axis, i);
    adjoint.begin.push_back(range.begin);
    adjoint.end.push_back(range.end);
    adjoint.offset.push_back(static_cast<int64_t>(adjoint.weight.size()));
    for (int64_t o = range.begin; o < range.end; ++o) adjoint.weight.push_back(tap_weight(linear_taps(axis, o), i));
  }
  return adjoint;
}

// The last two input rows one thread resampled along x, keyed by (plane, row). Consecutive
// output rows read non-decreasing input rows, so the forward resamples each input row about
// once instead of once per output pixel reading it.
template <typename acc_t>
class ResampledRows {
 public:
  explicit ResampledRows(int64_t width) : rows_{std::vector<acc_t>(width), std::vector<acc_t>(width)} {}

  // Row `key`, computed by fill(buffer) unless held; never evicts `keep` (the other row in use).
  template <typename Fill>
  const acc_t* get(int64_t key, int64_t keep, const Fill& fill) {
    for (int slot = 0; slot < 2; ++slot)
      if (keys_[slot] == key) return rows_[slot].data();
    const int slot = keys_[0] == keep ? 1 : (keys_[1] == keep ? 0 : (keys_[0] < keys_[1] ? 0 : 1));
    fill(rows_[slot].data());
    keys_[slot] = key;
    return rows_[slot].data();
  }

 private:
  std::vector<acc_t> rows_[2];
  int64_t keys_[2] = {-1, -1};
};

at::Tensor resize_sum_cpu(at::TensorList inputs_arg, at::IntArrayRef size, const std::optional<at::Tensor>& weights_arg) {
  check_resize_sum_args(inputs_arg, size, weights_arg);
  const auto inputs = contiguous_all(inputs_arg);
  const int64_t planes = inputs[0].size(0) * inputs[0].size(1);
  const int64_t out_h = size[0], out_w = size[1];
  at::Tensor out = at::empty({inputs[0].size(0), inputs[0].size(1), out_h, out_w}, inputs[0].options());
  if (out.numel() == 0) return out;
  const int64_t K = static_cast<int64_t>(inputs.size());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "resize_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor weights =
        accumulation_weights(weights_arg, K, c10::CppTypeToScalarType<acc_t>::value, out.device());
    const acc_t* w = weights.const_data_ptr<acc_t>();
    // Per input: its data, its row axis, and the column taps shared by every output row.
    std::vector<const scalar_t*> data;
    std::vector<ResizeAxis<acc_t>> row_axes;
    std::vector<std::vector<LinearTaps<acc_t>>> col_taps(K);
    for (int64_t k = 0; k < K; ++k) {
      data.push_back(inputs[k].const_data_ptr<scalar_t>());
      row_axes.push_back(resize_axis<acc_t>(inputs[k].size(2), out_h));
      const auto cols = resize_axis<acc_t>(inputs[k].size(3), out_w);
      for (int64_t ox = 0; ox < out_w; ++ox) col_taps[k].push_back(linear_taps(cols, ox));
    }
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes * out_h, std::max<int64_t>(1, kForwardGrain / out_w), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(out_w);
      std::vector<ResampledRows<acc_t>> resampled(K, ResampledRows<acc_t>(out_w));
      for (int64_t row = begin; row < end; ++row) {
        const int64_t plane = row / out_h, oy = row % out_h;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t k = 0; k < K; ++k) {
          const int64_t in_h = inputs[k].size(2), in_w = inputs[k].size(3);
          const scalar_t* x_plane = data[k] + plane * in_h * in_w;
          const LinearTaps<acc_t> row_taps = linear_taps(row_axes[k], oy);
          auto resample = [&](int64_t input_row, acc_t* out_row) {
            const scalar_t* x_row = x_plane + input_row * in_w;
            for (int64_t ox = 0; ox < out_w; ++ox) {
              const LinearTaps<acc_t>& col = col_taps[k][ox];
              out_row[ox] = col.lambda0 * static_cast<acc_t>(x_row[col.index0]) +
                            col.lambda1 * static_cast<acc_t>(x_row[col.index1]);
            }
          };
          const acc_t* row0 = resampled[k].get(plane * in_h + row_taps.index0, plane * in_h + row_taps.index1,
                                                [&](acc_t* r) { resample(row_taps.index0, r); });
          const acc_t* row1 = resampled[k].get(plane * in_h + row_taps.index1, plane * in_h + row_taps.index0,
                                                [&](acc_t* r) { resample(row_taps.index1, r); });
          // bilinear_sample's arithmetic, in its order: the same bits as sampling pixel by pixel.
          for (int64_t ox = 0; ox < out_w; ++ox)
            acc[ox] = accumulate_product(acc[ox], w[k], row_taps.lambda0 * row0[ox] + row_taps.lambda1 * row1[ox]);
        }
        scalar_t* y_row = y + row * out_w;
        for (int64_t ox = 0; ox < out_w; ++ox) y_row[ox] = static_cast<scalar_t>(acc[ox]);
      }
    });
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> resize_sum_backward_cpu(const at::Tensor& grad_arg,
                                                                         at::TensorList inputs_arg,
                                                                         const std::optional<at::Tensor>& weights_arg) {
  check_resize_sum_backward_args(grad_arg, inputs_arg, weights_arg);
  const auto inputs = contiguous_all(inputs_arg);
  const at::Tensor grad = grad_arg.contiguous();
  auto grad_inputs = empty_like_all(inputs);
  const int64_t planes = inputs[0].size(0) * inputs[0].size(1);
  const int64_t out_h = grad.size(2), out_w = grad.size(3);
  const int64_t K = static_cast<int64_t>(inputs.size());
  at::Tensor grad_weights;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "resize_sum_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor weights =
        accumulation_weights(weights_arg, K, c10::CppTypeToScalarType<acc_t>::value, grad.device());
    const acc_t* w = weights.const_data_ptr<acc_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    at::Tensor sums = at::zeros({K}, weights.options());
    acc_t* sum = sums.mutable_data_ptr<acc_t>();
    for (int64_t k = 0; k < K; ++k) {
      const int64_t in_h = inputs[k].size(2), in_w = inputs[k].size(3);
      const auto rows = resize_axis<acc_t>(in_h, out_h);
      const auto cols = resize_axis<acc_t>(in_w, out_w);
      const AxisAdjoint<acc_t> row_adjoint = axis_adjoint(rows), col_adjoint = axis_adjoint(cols);
      const scalar_t* x = inputs[k].const_data_ptr<scalar_t>();
      scalar_t* gx = grad_inputs[k].mutable_data_ptr<scalar_t>();
      const int64_t rows_per_chunk = std::max<int64_t>(1, kBackwardChunk / in_w);
      const int64_t chunks_per_plane = (in_h + rows_per_chunk - 1) / rows_per_chunk;
      const int64_t chunks = planes * chunks_per_plane;
      std::vector<acc_t> partial(chunks);
      // grad_input = w * (adjoint of the resize applied to grad), and its dot with the input is
      // this weight's gradient. The adjoint is separable: grad is first summed along x into
      // `column_sums` (per output row and input column), then along y, each sum in output order.
      at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
        std::vector<acc_t> column_sums;
        std::vector<acc_t> adjoint(in_w);
        for (int64_t c = chunk_begin; c < chunk_end; ++c) {
          const int64_t plane = c / chunks_per_plane;
          const int64_t y_begin = (c % chunks_per_plane) * rows_per_chunk;
          const int64_t y_end = std::min(in_h, y_begin + rows_per_chunk);
          const scalar_t* g_plane = g + plane * out_h * out_w;
          // The output rows that read this chunk's rows (both ends grow with the input row).
          const int64_t oy_begin = row_adjoint.begin[y_begin];
          const int64_t oy_end = std::max(oy_begin, row_adjoint.end[y_end - 1]);
          column_sums.resize((oy_end - oy_begin) * in_w);
          for (int64_t oy = oy_begin; oy < oy_end; ++oy) {
            const scalar_t* grad_row = g_plane + oy * out_w;
            acc_t* sums = column_sums.data() + (oy - oy_begin) * in_w;
            for (int64_t ix = 0; ix < in_w; ++ix) {
              const acc_t* weight = col_adjoint.weight.data() + col_adjoint.offset[ix];
              const int64_t ox_begin = col_adjoint.begin[ix], ox_end = col_adjoint.end[ix];
              acc_t sum = 0;
              for (int64_t ox = ox_begin; ox < ox_end; ++ox)
                sum = accumulate_product(sum, weight[ox - ox_begin], grad_row[ox]);
              sums[ix] = sum;
            }
          }
          acc_t dot = 0;
          for (int64_t y = y_begin; y < y_end; ++y) {
            std::fill(adjoint.begin(), adjoint.end(), acc_t(0));
            const acc_t* weight = row_adjoint.weight.data() + row_adjoint.offset[y];
            for (int64_t oy = row_adjoint.begin[y]; oy < row_adjoint.end[y]; ++oy) {
              const acc_t wy = weight[oy - row_adjoint.begin[y]];
              const acc_t* sums = column_sums.data() + (oy - oy_begin) * in_w;
              for (int64_t ix = 0; ix < in_w; ++ix) adjoint[ix] += wy * sums[ix];
            }
            acc_t row_dot = 0;  // summed per row first: shorter float32 running sums
            for (int64_t ix = 0; ix < in_w; ++ix) {
              const int64_t i = (plane * in_h + y) * in_w + ix;
              gx[i] = scaled_gradient<scalar_t>(w[k], adjoint[ix]);
              row_dot = accumulate_product(row_dot, adjoint[ix], x[i]);
            }
            dot += row_dot;
          }
          partial[c] = dot;
        }
      });
      // Chunks are summed serially in index order: deterministic.
      for (int64_t c = 0; c < chunks; ++c) sum[k] += partial[c];
    }
    grad_weights = sums.to(weights_arg.has_value() ? weights_arg->scalar_type() : grad.scalar_type());
  });
  return {grad_inputs, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdnas, CPU, m) {
  m.impl("resize_sum", &resize_sum_cpu);
  m.impl("_resize_sum_backward", &resize_sum_backward_cpu);
}

}  // namespace fastdnas
