// Deterministic reductions for the CPU kernels: fixed chunks (never derived from the thread
// count), a fixed lane order inside each chunk, and chunks added serially in index order.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "element_math.h"

namespace fastdnas {

// Independent partial sums per chunk, so the dot products vectorise without reassociation.
constexpr int kDotLanes = 16;

// The fused backward of a weighted sum over one chunk: gx[j] = w * g[j] for j < len (if
// kScale), and returns sum_j g[j] * x[j] (if kDot; else 0): the same values whichever is left out.
template <typename scalar_t, typename acc_t, bool kScale = true, bool kDot = true>
inline acc_t scale_and_dot(acc_t w, const acc_t* g, const scalar_t* x, scalar_t* gx, int64_t len) {
  acc_t lanes[kDotLanes] = {};
  int64_t j = 0;
  for (; j + kDotLanes <= len; j += kDotLanes) {
    for (int l = 0; l < kDotLanes; ++l) {
      if constexpr (kScale) gx[j + l] = scaled_gradient<scalar_t>(w, g[j + l]);
      if constexpr (kDot) lanes[l] = accumulate_product(lanes[l], g[j + l], x[j + l]);
    }
  }
  for (int l = 0; j < len; ++j, ++l) {
    if constexpr (kScale) gx[j] = scaled_gradient<scalar_t>(w, g[j]);
    if constexpr (kDot) lanes[l] = accumulate_product(lanes[l], g[j], x[j]);
  }
  acc_t sum = 0;
  for (int l = 0; l < kDotLanes; ++l) sum += lanes[l];
  return sum;
}

// scale_and_dot with the parts an output mask (gradients of the inputs, of the weight) asks for.
template <typename scalar_t, typename acc_t>
inline acc_t scale_and_dot(bool scale, bool dot, acc_t w, const acc_t* g, const scalar_t* x, scalar_t* gx,
                           int64_t len) {
  if (scale && dot) return scale_and_dot<scalar_t, acc_t, true, true>(w, g, x, gx, len);
  if (scale) return scale_and_dot<scalar_t, acc_t, true, false>(w, g, x, gx, len);
  return scale_and_dot<scalar_t, acc_t, false, true>(w, g, x, gx, len);
}

// sums[k] = sum over chunks of partials[c, k] (partials is [>= chunks, K]), added serially in
// chunk order.
template <typename acc_t>
at::Tensor sum_chunk_partials(const at::Tensor& partials, int64_t chunks) {
  const int64_t K = partials.size(1);
  const acc_t* partial = partials.const_data_ptr<acc_t>();
  at::Tensor sums = at::zeros({K}, partials.options());
  acc_t* sum = sums.mutable_data_ptr<acc_t>();
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t k = 0; k < K; ++k) sum[k] += partial[c * K + k];
  return sums;
}

}  // namespace fastdnas
