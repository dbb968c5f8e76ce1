// Per-element arithmetic of the search-mode parameter-free ops and BatchNorm, shared by the CPU
// and CUDA kernels of mixed_node: 3x3 pools (padding 1, stride 1 or 2) read straight from the
// input plane, and the batch-statistics BatchNorm forward and input gradient.
#pragma once

#include <cmath>
#include <cstdint>

#include "element_math.h"

namespace fastdnas {

// The input rows [h0, h1) and columns [w0, w1) of output (oh, ow) of a 3x3 window with padding
// 1, clipped to the plane (every window holds at least one input element).
struct PoolWindow {
  int64_t h0, h1, w0, w1;
};

FASTDNAS_HOST_DEVICE PoolWindow pool_window(int64_t oh, int64_t ow, int64_t stride, int64_t H, int64_t W) {
  const int64_t hs = oh * stride - 1;
  const int64_t ws = ow * stride - 1;
  PoolWindow win;
  win.h0 = hs < 0 ? 0 : hs;
  win.w0 = ws < 0 ? 0 : ws;
  win.h1 = hs + 3 < H ? hs + 3 : H;
  win.w1 = ws + 3 < W ? ws + 3 : W;
  return win;
}

// Output size of the 3x3 pools (padding 1) and of a stride-s edge: (size - 1) / s + 1.
FASTDNAS_HOST_DEVICE int64_t pooled_size(int64_t size, int64_t stride) { return (size - 1) / stride + 1; }

// One step of the max-pool scan: PyTorch's rule, the first largest element wins, a NaN wins.
template <typename acc_t>
FASTDNAS_HOST_DEVICE bool max_pool_takes(acc_t v, acc_t best) {
  return (v > best) | (v != v);  // branch-free, so CPU loops over outputs vectorise
}

// max_pool2d(3, stride, padding=1) at (oh, ow); *argmax receives the plane index of the maximum.
// Same scan order (row-major from the window's first element) as PyTorch.
template <typename acc_t, typename scalar_t>
FASTDNAS_HOST_DEVICE acc_t max_pool3x3(const scalar_t* plane, int64_t H, int64_t W, int64_t oh, int64_t ow,
                                       int64_t stride, int64_t* argmax) {
  const PoolWindow win = pool_window(oh, ow, stride, H, W);
  int64_t best_index = win.h0 * W + win.w0;
  acc_t best = static_cast<acc_t>(plane[best_index]);
  for (int64_t h = win.h0; h < win.h1; ++h) {
    for (int64_t w = win.w0; w < win.w1; ++w) {
      const acc_t v = static_cast<acc_t>(plane[h * W + w]);
      if (max_pool_takes(v, best)) {
        best = v;
        best_index = h * W + w;
      }
    }
  }
  *argmax = best_index;
  return best;
}

// Number of input elements in the window: the divisor of avg_pool2d(count_include_pad=False).
FASTDNAS_HOST_DEVICE int64_t window_count(const PoolWindow& win) { return (win.h1 - win.h0) * (win.w1 - win.w0); }

// avg_pool2d(3, stride, padding=1, count_include_pad=False) at (oh, ow).
template <typename acc_t, typename scalar_t>
FASTDNAS_HOST_DEVICE acc_t avg_pool3x3(const scalar_t* plane, int64_t H, int64_t W, int64_t oh, int64_t ow,
                                       int64_t stride) {
  const PoolWindow win = pool_window(oh, ow, stride, H, W);
  acc_t sum = 0;
  for (int64_t h = win.h0; h < win.h1; ++h)
    for (int64_t w = win.w0; w < win.w1; ++w) sum += static_cast<acc_t>(plane[h * W + w]);
  return sum / static_cast<acc_t>(window_count(win));
}

// BatchNorm(affine=False): (v - mean) * invstd.
template <typename acc_t>
FASTDNAS_HOST_DEVICE acc_t bn_normalize(acc_t v, acc_t mean, acc_t invstd) {
  return (v - mean) * invstd;
}

// 1 / sqrt(var + eps), the BatchNorm scale.
template <typename acc_t>
FASTDNAS_HOST_DEVICE acc_t bn_invstd(acc_t var, double eps) {
#if defined(__CUDA_ARCH__)
  return acc_t(1) / sqrt(var + static_cast<acc_t>(eps));  // CUDA's float/double overloads (IEEE)
#else
  return acc_t(1) / std::sqrt(var + static_cast<acc_t>(eps));
#endif
}

// Gradient of the BatchNorm input of a candidate scaled by `weight` in a sum whose gradient is
// g: on batch statistics weight * invstd * (g - mean(g) - xhat * mean(g * xhat)), the means over
// the channel; on running statistics (eval) the statistics are constants, so weight * invstd * g
// and the means are not read (callers do not compute them): a non-finite g stays local, as in
// PyTorch's eval BatchNorm backward.
template <typename acc_t>
FASTDNAS_HOST_DEVICE acc_t bn_input_gradient(bool batch_stats, acc_t weight, acc_t invstd, acc_t g, acc_t xhat,
                                             acc_t mean_g, acc_t mean_g_xhat) {
  return batch_stats ? weight * invstd * (g - mean_g - xhat * mean_g_xhat) : weight * invstd * g;
}

}  // namespace fastdnas
