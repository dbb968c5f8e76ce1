// CPU kernels of depthwise_conv2d: forward, input gradient and weight gradient. Stride 1 works
// on stacks of zero-padded planes as flat vectorised loops, other strides on stacks of the
// padded planes' phases (every stride-th row and column) the same way, and padding too wide for
// either row by row; all add the taps of every element in the order of the CUDA kernels. They
// also run on channel slices of larger tensors, for depthwise_conv2d_segments
// (depthwise_conv_cpu.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "../common/vector_clones.h"
#include "depthwise_conv_cpu.h"

namespace fastdnas {
namespace {

// Planes per parallel task: enough multiply-adds that a task outweighs the cost of scheduling it.
int64_t plane_grain(const DepthwiseShape& s) {
  return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, s.OH * s.OW * s.KH * s.KW));
}

// For each kernel column j: the first output column that reads inside the input through it,
// how many do, and the input column the first one reads. Computed once per call (divisions).
struct ColumnTaps {
  std::vector<int64_t> first_output, count, first_input;

  explicit ColumnTaps(const DepthwiseShape& s) {
    for (int64_t j = 0; j < s.KW; ++j) {
      int64_t begin, end;
      depthwise_valid_outputs(j, s.W, s.OW, s.stride[1], s.padding[1], s.dilation[1], &begin, &end);
      first_output.push_back(begin);
      count.push_back(end - begin);
      first_input.push_back(depthwise_input_index(begin, j, s.stride[1], s.padding[1], s.dilation[1]));
    }
  }
};

// Calls body(i, j, ih, iw, ow, count) for every tap (i, j) that output row oh reads inside the
// input: outputs ow .. ow + count - 1 of the row read input row ih at columns iw, iw + stride_w, ...
template <typename Body>
void for_each_tap(const DepthwiseShape& s, const ColumnTaps& columns, int64_t oh, Body body) {
  for (int64_t i = 0; i < s.KH; ++i) {
    const int64_t ih = depthwise_input_index(oh, i, s.stride[0], s.padding[0], s.dilation[0]);
    if (ih < 0 || ih >= s.H) continue;
    for (int64_t j = 0; j < s.KW; ++j) {
      if (columns.count[j] > 0) body(i, j, ih, columns.first_input[j], columns.first_output[j], columns.count[j]);
    }
  }
}

// --- stride 1: stacks of planes as flat loops --------------------------------------------------
// The planes of one channel (a chunk of the batch) are stacked, zero-padded, into rows of pitch
// Wp = max(W + pad_w, OW): each row pad_w zeros, its W values, zeros up to Wp (a tap reading
// past the right edge reads the next row's leading zeros, so the rows share their padding); pad_h
// zero rows, then each plane's H rows followed by pad_h zero rows (blocks of H + pad_h rows). The
// outputs use the same layout, plane n's row oh at stacked row n * block + oh (the other rows
// and the last Wp - OW columns are computed and dropped). Tap (i, j) of output q then reads
// padded input q + i * dil_h * Wp + j * dil_w, never another plane's values: flat loops over a
// whole chunk instead of short loops per tap and row. Padding reads add w * 0, which leaves every
// sum unchanged.
struct FlatStack {
  int64_t pitch, block, planes;  // Wp, rows per plane, planes per chunk
  // Kernel rows and columns through which some output reads the input (not only padding): the
  // other taps add nothing and are skipped (on small planes with wide padding, most of them).
  std::vector<int64_t> tap_rows, tap_cols;

  explicit FlatStack(const DepthwiseShape& s)
      : pitch(std::max(s.W + s.padding[1], s.OW)), block(s.H + s.padding[0]) {
    // Chunks of about 32K elements (in cache); fixed by the shape, never by the thread count.
    planes = std::max<int64_t>(1, std::min<int64_t>(s.N, (int64_t{1} << 15) / (block * pitch)));
    int64_t begin, end;
    for (int64_t i = 0; i < s.KH; ++i) {
      depthwise_valid_outputs(i, s.H, s.OH, 1, s.padding[0], s.dilation[0], &begin, &end);
      if (end > begin) tap_rows.push_back(i);
    }
    for (int64_t j = 0; j < s.KW; ++j) {
      depthwise_valid_outputs(j, s.W, s.OW, 1, s.padding[1], s.dilation[1], &begin, &end);
      if (end > begin) tap_cols.push_back(j);
    }
  }

  int64_t chunks(const DepthwiseShape& s) const { return (s.N + planes - 1) / planes; }
  int64_t planes_in(const DepthwiseShape& s, int64_t chunk) const { return std::min(planes, s.N - chunk * planes); }
  // Output positions of a chunk of m planes, and the padded input it reads (the last tap of the
  // dropped columns reads past the last row).
  int64_t outputs(const DepthwiseShape& s, int64_t m) const { return ((m - 1) * block + s.OH) * pitch; }
  int64_t input_size(const DepthwiseShape& s, int64_t m) const {
    return (s.padding[0] + m * block) * pitch + (s.KW - 1) * s.dilation[1];
  }
  int64_t buffer_size(const DepthwiseShape& s) const { return input_size(s, planes); }
  int64_t offset(const DepthwiseShape& s, int64_t i, int64_t j) const {
    return i * s.dilation[0] * pitch + j * s.dilation[1];
  }
  // The same for any chunk size (PhaseStack's offsets depend on it).
  int64_t offset(const DepthwiseShape& s, int64_t i, int64_t j, int64_t /*m*/) const { return offset(s, i, j); }
  int64_t input_row(const DepthwiseShape& s, int64_t n, int64_t h) const { return s.padding[0] + n * block + h; }
  int64_t output_row(int64_t n, int64_t oh) const { return (n * block + oh) * pitch; }  // where it starts
};

// The m planes of channel c from batch index n0 on, stacked and zero-padded as FlatStack says.
template <typename scalar_t, typename acc_t>
void stack_planes(const DepthwiseShape& s, const FlatStack& f, const scalar_t* x, int64_t c, int64_t n0, int64_t m,
                 acc_t* padded) {
  std::fill(padded, padded + f.input_size(s, m), acc_t(0));
  for (int64_t n = 0; n < m; ++n) {
    const scalar_t* plane = x + ((n0 + n) * s.x_channels + c) * s.H * s.W;
    for (int64_t h = 0; h < s.H; ++h) {
      acc_t* row = padded + f.input_row(s, n, h) * f.pitch + s.padding[1];
      for (int64_t w = 0; w < s.W; ++w) row[w] = static_cast<acc_t>(plane[h * s.W + w]);
    }
  }
}

// The output gradients of the same planes in the output layout of a FlatStack or PhaseStack,
// zeros in the dropped rows and columns (so they add nothing), after `margin` zeros and up to
// `size` positions (the input gradient's gather reads up to the padded input's size).
template <typename Stack, typename scalar_t, typename acc_t>
void stack_grad(const DepthwiseShape& s, const Stack& f, const scalar_t* grad, int64_t c, int64_t n0, int64_t m,
                int64_t margin, int64_t size, acc_t* stacked) {
  std::fill(stacked, stacked + margin + size, acc_t(0));
  for (int64_t n = 0; n < m; ++n) {
    const scalar_t* plane = grad + ((n0 + n) * s.y_channels + c) * s.OH * s.OW;
    for (int64_t oh = 0; oh < s.OH; ++oh) {
      acc_t* row = stacked + margin + f.output_row(n, oh);
      for (int64_t ow = 0; ow < s.OW; ++ow) row[ow] = static_cast<acc_t>(plane[oh * s.OW + ow]);
    }
  }
}

// The loops below are the whole arithmetic of the flat path, compiled also for AVX2
// (FASTDNAS_VECTOR_CLONES).

// out[q] = sum over t of weights[t] * in[q + offsets[t]], the taps added in order from zero (as
// every kernel of the op adds them). Blocks of four 32-byte vectors keep their sums in registers
// across all taps: one store per output instead of one per tap.
template <typename acc_t>
FASTDNAS_VECTOR_CLONES void correlate(acc_t* __restrict__ out, const acc_t* __restrict__ in, const int64_t* offsets,
                                      const acc_t* weights, int64_t taps, int64_t n) {
  typedef acc_t vec __attribute__((vector_size(32)));
  constexpr int64_t kWidth = sizeof(vec) / sizeof(acc_t);
  constexpr int64_t kVectors = 8;  // independent sums in flight: an add's latency is several cycles
  int64_t q = 0;
  for (; q + kVectors * kWidth <= n; q += kVectors * kWidth) {
    vec sum[kVectors] = {};
    for (int64_t t = 0; t < taps; ++t) {
      const acc_t* x = in + q + offsets[t];
      for (int64_t v = 0; v < kVectors; ++v) {
        vec xv;
        std::memcpy(&xv, x + v * kWidth, sizeof(vec));
        sum[v] = sum[v] + weights[t] * xv;
      }
    }
    std::memcpy(out + q, sum, sizeof(sum));
  }
  for (; q + kWidth <= n; q += kWidth) {  // the rest a vector at a time
    vec sum = {};
    for (int64_t t = 0; t < taps; ++t) {
      vec xv;
      std::memcpy(&xv, in + q + offsets[t], sizeof(vec));
      sum = sum + weights[t] * xv;
    }
    std::memcpy(out + q, &sum, sizeof(vec));
  }
  for (; q < n; ++q) {
    acc_t sum = 0;
    for (int64_t t = 0; t < taps; ++t) sum = accumulate_product(sum, weights[t], in[q + offsets[t]]);
    out[q] = sum;
  }
}

// The taps (i, j) that read inside the input, as flat offsets and weights for correlate:
// rows ascending (forward) or descending (input gradient), columns ascending.
template <typename scalar_t, typename acc_t>
void flat_taps(const DepthwiseShape& s, const FlatStack& f, const scalar_t* filter, bool rows_descending,
               std::vector<int64_t>& offsets, std::vector<acc_t>& weights) {
  offsets.clear();
  weights.clear();
  const int64_t rows = static_cast<int64_t>(f.tap_rows.size());
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = f.tap_rows[rows_descending ? rows - 1 - r : r];
    for (int64_t j : f.tap_cols) {
      offsets.push_back(rows_descending ? -f.offset(s, i, j) : f.offset(s, i, j));
      weights.push_back(static_cast<acc_t>(filter[i * s.KW + j]));
    }
  }
}

template <typename scalar_t, typename acc_t>
void forward_taps(const DepthwiseShape& s, const FlatStack& f, const scalar_t* filter, int64_t /*m*/,
                  std::vector<int64_t>& offsets, std::vector<acc_t>& weights) {
  flat_taps(s, f, filter, false, offsets, weights);
}

// Four 32-byte vectors of float partial sums: independent add chains (an add's latency is several cycles).
constexpr int64_t kLanes = 32;

// lanes[l] += sum over k = l (mod kLanes) of a[k] * b[k]: a dot product in a fixed order.
template <typename acc_t>
FASTDNAS_VECTOR_CLONES void add_dot(acc_t* __restrict__ lanes, const acc_t* __restrict__ a,
                                    const acc_t* __restrict__ b, int64_t n) {
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] = accumulate_product(lanes[l], a[k + l], b[k + l]);
  for (int64_t l = 0; k < n; ++k, ++l) lanes[l] = accumulate_product(lanes[l], a[k], b[k]);
}

// Calls body(c, n0, m) for every (channel, chunk of m planes from batch index n0) of a FlatStack
// or PhaseStack, in parallel.
template <typename Stack, typename Body>
void for_each_chunk(const DepthwiseShape& s, const Stack& f, Body body) {
  const int64_t chunks = f.chunks(s);
  at::parallel_for(0, s.C * chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t item = first; item < last; ++item) {
      const int64_t c = item / chunks, chunk = item % chunks;
      body(c, chunk * f.planes, f.planes_in(s, chunk));
    }
  });
}

// An input gradient: written (cast to the input's type), or with kAdd added to the
// accumulation-type sum of the segments of depthwise_conv2d_segments before it that read the
// same channel.
template <bool kAdd, typename out_t, typename acc_t>
inline void store_grad(out_t& dst, acc_t v) {
  if constexpr (kAdd) {
    dst += v;
  } else {
    dst = static_cast<out_t>(v);
  }
}

// A gather: input position r of the stack takes weight (i, j) times the output gradient at
// r - offset(i, j), rows descending, which is the CUDA kernel's order.
template <typename scalar_t, typename acc_t, typename out_t, bool kAdd>
void input_grad_flat(const DepthwiseShape& s, const scalar_t* grad, const scalar_t* weight, out_t* grad_x) {
  const FlatStack f(s);
  const int64_t margin = f.offset(s, s.KH - 1, s.KW - 1);
  for_each_chunk(s, f, [&](int64_t c, int64_t n0, int64_t m) {
    thread_local std::vector<acc_t> stacked, acc, weights;
    thread_local std::vector<int64_t> offsets;
    stacked.resize(margin + f.buffer_size(s));
    acc.resize(f.input_size(s, m));
    stack_grad(s, f, grad, c, n0, m, margin, f.input_size(s, m), stacked.data());
    flat_taps(s, f, weight + c * s.KH * s.KW, true, offsets, weights);
    // Only the rows of the planes are needed, not the padding around them.
    const int64_t first = f.input_row(s, 0, 0) * f.pitch, count = f.input_row(s, m - 1, s.H) * f.pitch - first;
    correlate(acc.data() + first, stacked.data() + margin + first, offsets.data(), weights.data(),
              static_cast<int64_t>(offsets.size()), count);
    for (int64_t n = 0; n < m; ++n) {
      out_t* gx = grad_x + ((n0 + n) * s.x_channels + c) * s.H * s.W;
      for (int64_t h = 0; h < s.H; ++h) {
        const acc_t* row = acc.data() + f.input_row(s, n, h) * f.pitch + s.padding[1];
        for (int64_t w = 0; w < s.W; ++w) store_grad<kAdd>(gx[h * s.W + w], row[w]);
      }
    }
  });
}

// --- other strides: stacks of phase planes ----------------------------------------------------
// With strides (sh, sw), tap (i, j) of output (oh, ow) reads the zero-padded input Xp at row
// oh * sh + i * dil_h and column ow * sw + j * dil_w. Split Xp into its sh * sw phase planes
// P_rc[u][v] = Xp[u * sh + r][v * sw + c] (PH x PW each, zeros past Xp): the tap reads phase
// (i * dil_h % sh, j * dil_w % sw) at (oh + i * dil_h / sh, ow + j * dil_w / sw), a stride-1
// tap. The phases some tap reads (one for a stride-2 dilation-2 layer) lie one after the other
// in one buffer, each a stack of the chunk's planes (PH x PW each), so a chunk's outputs, in the
// layout of one phase stack (the rows and columns past OH and OW computed and dropped), are one
// flat correlate over all taps, each tap's offset leading into its phase.
struct PhaseStack {
  int64_t sh, sw, ph, pw, planes;
  // Kernel rows and columns through which some output reads the input, as FlatStack's.
  std::vector<int64_t> tap_rows, tap_cols;
  std::vector<int64_t> slot;  // phase r * sw + c -> its place in the buffer (-1: no tap reads it)
  int64_t used = 0;

  explicit PhaseStack(const DepthwiseShape& s)
      : sh(s.stride[0]),
        sw(s.stride[1]),
        ph((s.H + 2 * s.padding[0] + s.stride[0] - 1) / s.stride[0]),
        pw((s.W + 2 * s.padding[1] + s.stride[1] - 1) / s.stride[1]),
        slot(s.stride[0] * s.stride[1], -1) {
    int64_t begin, end;
    for (int64_t i = 0; i < s.KH; ++i) {
      depthwise_valid_outputs(i, s.H, s.OH, sh, s.padding[0], s.dilation[0], &begin, &end);
      if (end > begin) tap_rows.push_back(i);
    }
    for (int64_t j = 0; j < s.KW; ++j) {
      depthwise_valid_outputs(j, s.W, s.OW, sw, s.padding[1], s.dilation[1], &begin, &end);
      if (end > begin) tap_cols.push_back(j);
    }
    for (int64_t i : tap_rows)
      for (int64_t j : tap_cols)
        if (slot[phase(s, i, j)] < 0) slot[phase(s, i, j)] = used++;
    // Chunks of about 32K elements, as FlatStack's: fixed by the shape, never by the thread count.
    planes = std::max<int64_t>(1, std::min<int64_t>(s.N, (int64_t{1} << 15) / (std::max<int64_t>(used, 1) * ph * pw)));
  }

  int64_t chunks(const DepthwiseShape& s) const { return (s.N + planes - 1) / planes; }
  int64_t planes_in(const DepthwiseShape& s, int64_t chunk) const { return std::min(planes, s.N - chunk * planes); }
  int64_t phase(const DepthwiseShape& s, int64_t i, int64_t j) const {
    return (i * s.dilation[0] % sh) * sw + j * s.dilation[1] % sw;
  }
  int64_t row_shift(const DepthwiseShape& s, int64_t i) const { return i * s.dilation[0] / sh; }
  int64_t column_shift(const DepthwiseShape& s, int64_t j) const { return j * s.dilation[1] / sw; }
  // Where tap (i, j) of output 0 reads, in a buffer of the phase stacks of m planes.
  int64_t offset(const DepthwiseShape& s, int64_t i, int64_t j, int64_t m) const {
    return slot[phase(s, i, j)] * m * ph * pw + row_shift(s, i) * pw + column_shift(s, j);
  }
  int64_t input_size(const DepthwiseShape&, int64_t m) const { return used * m * ph * pw; }
  // The columns [*v0, *v1) of column phase q whose input column v * sw + q - pad_w lies in [0, W).
  void columns_inside(const DepthwiseShape& s, int64_t q, int64_t* v0, int64_t* v1) const {
    *v0 = std::max<int64_t>(0, (s.padding[1] - q + sw - 1) / sw);
    *v1 = std::min<int64_t>(pw, (s.W - 1 + s.padding[1] - q) / sw + 1);
  }
  int64_t output_row(int64_t n, int64_t oh) const { return (n * ph + oh) * pw; }
  // Output positions of a chunk of m planes up to its last output: the taps of those read
  // inside their phase's stack (the last output reads the last row and column of Xp at most).
  int64_t outputs(const DepthwiseShape& s, int64_t m) const { return ((m - 1) * ph + s.OH - 1) * pw + s.OW; }
};

// Calls body(k) for k in [begin, end) with k * stride known to the compiler for stride 2 (the
// DARTS reductions), so the strided loads and stores of a phase row vectorise.
template <typename Body>
inline void for_each_strided(int64_t stride, int64_t begin, int64_t end, Body body) {
  if (stride == 2) {
    for (int64_t k = begin; k < end; ++k) body(k, k * 2);
  } else {
    for (int64_t k = begin; k < end; ++k) body(k, k * stride);
  }
}

// The m planes of channel c from batch index n0 on, as the phase stacks PhaseStack says.
template <typename scalar_t, typename acc_t>
void stack_planes(const DepthwiseShape& s, const PhaseStack& f, const scalar_t* x, int64_t c, int64_t n0, int64_t m,
                  acc_t* buffer) {
  std::fill(buffer, buffer + f.input_size(s, m), acc_t(0));
  for (int64_t r = 0; r < f.sh; ++r)
    for (int64_t q = 0; q < f.sw; ++q) {
      const int64_t k = f.slot[r * f.sw + q];
      if (k < 0) continue;
      int64_t v0, v1;
      f.columns_inside(s, q, &v0, &v1);
      for (int64_t n = 0; n < m; ++n) {
        const scalar_t* plane = x + ((n0 + n) * s.x_channels + c) * s.H * s.W;
        acc_t* phase = buffer + (k * m + n) * f.ph * f.pw;
        for (int64_t u = 0; u < f.ph; ++u) {
          const int64_t h = u * f.sh + r - s.padding[0];
          if (h < 0 || h >= s.H) continue;
          const int64_t column0 = h * s.W + q - s.padding[1];  // input index of phase column 0
          acc_t* dst = phase + u * f.pw;
          for_each_strided(f.sw, v0, v1, [&](int64_t v, int64_t step) {
            dst[v] = static_cast<acc_t>(plane[column0 + step]);
          });
        }
      }
    }
}

// The taps (i, j) of f, rows ascending and columns ascending, as offsets and weights for correlate.
template <typename scalar_t, typename acc_t>
void forward_taps(const DepthwiseShape& s, const PhaseStack& f, const scalar_t* filter, int64_t m,
                std::vector<int64_t>& offsets, std::vector<acc_t>& weights) {
  offsets.clear();
  weights.clear();
  for (int64_t i : f.tap_rows)
    for (int64_t j : f.tap_cols) {
      offsets.push_back(f.offset(s, i, j, m));
      weights.push_back(static_cast<acc_t>(filter[i * s.KW + j]));
    }
}

// Forward of a FlatStack or PhaseStack: one flat correlate per chunk, then the outputs' rows.
template <typename scalar_t, typename acc_t, typename Stack>
void forward_stacked(const DepthwiseShape& s, const scalar_t* x, const scalar_t* weight, scalar_t* out) {
  const Stack f(s);
  for_each_chunk(s, f, [&](int64_t c, int64_t n0, int64_t m) {
    thread_local std::vector<acc_t> buffer, acc, weights;
    thread_local std::vector<int64_t> offsets;
    buffer.resize(f.input_size(s, m));
    acc.resize(f.outputs(s, m));
    stack_planes(s, f, x, c, n0, m, buffer.data());
    forward_taps(s, f, weight + c * s.KH * s.KW, m, offsets, weights);
    correlate(acc.data(), buffer.data(), offsets.data(), weights.data(), static_cast<int64_t>(offsets.size()),
              f.outputs(s, m));
    for (int64_t n = 0; n < m; ++n) {
      scalar_t* y = out + ((n0 + n) * s.y_channels + c) * s.OH * s.OW;
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        const acc_t* row = acc.data() + f.output_row(n, oh);
        for (int64_t ow = 0; ow < s.OW; ++ow) y[oh * s.OW + ow] = static_cast<scalar_t>(row[ow]);
      }
    }
  });
}

// A gather per phase: position (u, v) of phase (r, q) of Xp takes, for every tap (i, j) that reads
// that phase, weight (i, j) times the output gradient at (u - row_shift(i), v - column_shift(j)),
// rows descending, which is the CUDA kernel's order. The output gradient is stacked with the
// largest shifts of zeros before each plane's rows and columns, so every gather reads inside its
// plane's block; the positions in Xp's padding are computed and dropped.
template <typename scalar_t, typename acc_t, typename out_t, bool kAdd>
void input_grad_phases(const DepthwiseShape& s, const scalar_t* grad, const scalar_t* weight, out_t* grad_x) {
  const PhaseStack f(s);
  const int64_t top = f.tap_rows.empty() ? 0 : f.row_shift(s, f.tap_rows.back());
  const int64_t left = f.tap_cols.empty() ? 0 : f.column_shift(s, f.tap_cols.back());
  const int64_t pitch = f.pw + left, block = (f.ph + top) * pitch;
  const int64_t first = top * pitch + left;  // position (0, 0) of plane 0
  for_each_chunk(s, f, [&](int64_t c, int64_t n0, int64_t m) {
    thread_local std::vector<acc_t> stacked, acc, weights;
    thread_local std::vector<int64_t> offsets;
    stacked.assign(m * block, acc_t(0));
    acc.resize(m * block);
    for (int64_t n = 0; n < m; ++n) {
      const scalar_t* plane = grad + ((n0 + n) * s.y_channels + c) * s.OH * s.OW;
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        acc_t* row = stacked.data() + n * block + first + oh * pitch;
        for (int64_t ow = 0; ow < s.OW; ++ow) row[ow] = static_cast<acc_t>(plane[oh * s.OW + ow]);
      }
    }
    const scalar_t* filter = weight + c * s.KH * s.KW;
    const int64_t count = (m - 1) * block + (f.ph - 1) * pitch + f.pw;
    for (int64_t r = 0; r < f.sh; ++r)
      for (int64_t q = 0; q < f.sw; ++q) {
        offsets.clear();
        weights.clear();
        for (auto it = f.tap_rows.rbegin(); it != f.tap_rows.rend(); ++it)
          for (int64_t j : f.tap_cols)
            if (f.phase(s, *it, j) == r * f.sw + q) {
              offsets.push_back(-(f.row_shift(s, *it) * pitch + f.column_shift(s, j)));
              weights.push_back(static_cast<acc_t>(filter[*it * s.KW + j]));
            }
        // A phase no tap reads gets zeros (correlate over no taps).
        correlate(acc.data() + first, stacked.data() + first, offsets.data(), weights.data(),
                  static_cast<int64_t>(offsets.size()), count);
        int64_t v0, v1;
        f.columns_inside(s, q, &v0, &v1);
        for (int64_t n = 0; n < m; ++n) {
          out_t* gx = grad_x + ((n0 + n) * s.x_channels + c) * s.H * s.W;
          for (int64_t u = 0; u < f.ph; ++u) {
            const int64_t h = u * f.sh + r - s.padding[0];
            if (h < 0 || h >= s.H) continue;
            const acc_t* row = acc.data() + n * block + first + u * pitch;
            const int64_t column0 = h * s.W + q - s.padding[1];
            for_each_strided(f.sw, v0, v1,
                             [&](int64_t v, int64_t step) { store_grad<kAdd>(gx[column0 + step], row[v]); });
          }
        }
      }
  });
}

// Weight gradient of a FlatStack or PhaseStack: one channel per task, its chunks in order (the
// same bits for any number of threads), the output gradient in the outputs' layout dotted with
// each tap's window of the stacked input.
template <typename Stack, typename scalar_t, typename acc_t>
void weight_grad_stacked(const DepthwiseShape& s, const scalar_t* grad, const scalar_t* x, acc_t* sums) {
  const Stack f(s);
  const int64_t taps = s.KH * s.KW;
  at::parallel_for(0, s.C, 1, [&](int64_t first, int64_t last) {
    std::vector<acc_t> buffer(f.input_size(s, f.planes)), stacked(f.outputs(s, f.planes)), lanes(taps * kLanes);
    for (int64_t c = first; c < last; ++c) {
      std::fill(lanes.begin(), lanes.end(), acc_t(0));
      for (int64_t chunk = 0; chunk < f.chunks(s); ++chunk) {
        const int64_t n0 = chunk * f.planes, m = f.planes_in(s, chunk);
        stack_planes(s, f, x, c, n0, m, buffer.data());
        stack_grad(s, f, grad, c, n0, m, 0, f.outputs(s, m), stacked.data());
        for (int64_t i : f.tap_rows)
          for (int64_t j : f.tap_cols)
            add_dot(lanes.data() + (i * s.KW + j) * kLanes, stacked.data(), buffer.data() + f.offset(s, i, j, m),
                    f.outputs(s, m));
      }
      for (int64_t t = 0; t < taps; ++t) {
        acc_t total = 0;
        for (int64_t l = 0; l < kLanes; ++l) total += lanes[t * kLanes + l];
        sums[c * taps + t] = total;
      }
    }
  });
}

// --- path choice, zero padding and non-finite values ----------------------------------------------
// The kernels leave out products with padding zeros (the row path and skipped taps) or add
// products with zeros that F.conv2d does not form (the stacks' dropped rows and columns).
// With finite values neither changes a sum; with an infinite or NaN value, x * 0 is NaN. So the
// stacked paths run only where the values they multiply by zeros are finite (checked per call), and
// padding_nan_* put back the NaN of F.conv2d's w * 0 (forward) and grad * 0 (weight gradient)
// where a non-finite value meets padding.

enum class Path { kRows, kFlat, kPhases };

// The stacks (flat for stride 1, phase planes for other strides) where the padding does not
// dwarf the planes (a padded plane much larger than the input and output planes is mostly never
// read; its buffers would be too), else rows.
Path stacked_path(const DepthwiseShape& s) {
  const double padded = static_cast<double>(s.H + 2 * s.padding[0]) * static_cast<double>(s.W + 2 * s.padding[1]);
  const double planes = static_cast<double>(s.H) * s.W + static_cast<double>(s.OH) * s.OW;
  if (padded > 32768.0 + 4.0 * planes) return Path::kRows;
  return s.stride[0] == 1 && s.stride[1] == 1 ? Path::kFlat : Path::kPhases;
}

template <typename scalar_t>
bool all_finite(const scalar_t* v, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  bool finite = true;
  for (int64_t k = 0; k < n; ++k) {
    const acc_t a = static_cast<acc_t>(v[k]);
    finite &= (a - a == acc_t(0));  // false for inf and NaN; vectorises
  }
  return finite;
}

// Whether output (oh, ow) reads padding through tap (i, j).
bool reads_padding(const DepthwiseShape& s, int64_t oh, int64_t ow, int64_t i, int64_t j) {
  const int64_t ih = depthwise_input_index(oh, i, s.stride[0], s.padding[0], s.dilation[0]);
  const int64_t iw = depthwise_input_index(ow, j, s.stride[1], s.padding[1], s.dilation[1]);
  return ih < 0 || ih >= s.H || iw < 0 || iw >= s.W;
}

// Forward: every output that reads padding through a non-finite weight is NaN.
template <typename scalar_t>
void padding_nan_forward(const DepthwiseShape& s, const scalar_t* weight, scalar_t* out) {
  const int64_t taps = s.KH * s.KW, plane = s.OH * s.OW;
  at::parallel_for(0, s.C, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      const scalar_t* filter = weight + c * taps;
      if (all_finite(filter, taps)) continue;
      std::vector<char> nan_at(plane, 0);
      for (int64_t t = 0; t < taps; ++t) {
        if (all_finite(filter + t, 1)) continue;
        for (int64_t oh = 0; oh < s.OH; ++oh)
          for (int64_t ow = 0; ow < s.OW; ++ow) nan_at[oh * s.OW + ow] |= reads_padding(s, oh, ow, t / s.KW, t % s.KW);
      }
      for (int64_t n = 0; n < s.N; ++n) {
        scalar_t* y = out + (n * s.y_channels + c) * plane;
        for (int64_t q = 0; q < plane; ++q)
          if (nan_at[q]) y[q] = std::numeric_limits<scalar_t>::quiet_NaN();
      }
    }
  });
}

// Weight gradient of channel c: tap (i, j) is NaN where a non-finite output gradient reads padding through it.
template <typename scalar_t, typename acc_t>
void padding_nan_weight_grad(const DepthwiseShape& s, const scalar_t* grad, int64_t c, acc_t* sums) {
  const int64_t plane = s.OH * s.OW;
  std::vector<char> bad(plane, 0);
  for (int64_t n = 0; n < s.N; ++n) {
    const scalar_t* g = grad + (n * s.y_channels + c) * plane;
    if (all_finite(g, plane)) continue;
    for (int64_t q = 0; q < plane; ++q) bad[q] |= !all_finite(g + q, 1);
  }
  for (int64_t t = 0; t < s.KH * s.KW; ++t)
    for (int64_t q = 0; q < plane; ++q)
      if (bad[q] && reads_padding(s, q / s.OW, q % s.OW, t / s.KW, t % s.KW)) {
        sums[c * s.KH * s.KW + t] = std::numeric_limits<acc_t>::quiet_NaN();
        break;
      }
}

// The weight gradient of channel c row by row into sums (partial: taps * OW scratch), with the
// NaN of padding products.
template <typename scalar_t, typename acc_t>
void weight_grad_rows(const DepthwiseShape& s, const ColumnTaps& columns, const scalar_t* gd, const scalar_t* xd,
                      int64_t c, std::vector<acc_t>& partial, acc_t* sd) {
  const int64_t sw = s.stride[1], taps = s.KH * s.KW;
  // Each tap keeps a row of per-column partial sums (vectorises), added up at the end.
  partial.assign(taps * s.OW, acc_t(0));
  for (int64_t n = 0; n < s.N; ++n) {
    const scalar_t* xp = xd + (n * s.x_channels + c) * s.H * s.W;
    for (int64_t oh = 0; oh < s.OH; ++oh) {
      const scalar_t* g = gd + ((n * s.y_channels + c) * s.OH + oh) * s.OW;
      for_each_tap(s, columns, oh, [&](int64_t i, int64_t j, int64_t ih, int64_t iw, int64_t ow, int64_t count) {
        acc_t* sum = partial.data() + (i * s.KW + j) * s.OW + ow;
        const scalar_t* in = xp + ih * s.W + iw;
        const scalar_t* g_row = g + ow;
        if (sw == 1) {
          for (int64_t k = 0; k < count; ++k) sum[k] = accumulate_product(sum[k], static_cast<acc_t>(g_row[k]), in[k]);
        } else {
          for (int64_t k = 0; k < count; ++k)
            sum[k] = accumulate_product(sum[k], static_cast<acc_t>(g_row[k]), in[k * sw]);
        }
      });
    }
  }
  for (int64_t t = 0; t < taps; ++t) {
    acc_t total = 0;
    for (int64_t ow = 0; ow < s.OW; ++ow) total += partial[t * s.OW + ow];
    sd[c * taps + t] = total;
  }
  padding_nan_weight_grad(s, gd, c, sd);
}

// --- any stride: row by row ----------------------------------------------------------------------

template <typename scalar_t, typename acc_t>
void forward_rows(const DepthwiseShape& s, const scalar_t* xd, const scalar_t* wd, scalar_t* yd) {
  const int64_t sw = s.stride[1];
  const ColumnTaps columns(s);
  at::parallel_for(0, s.N * s.C, plane_grain(s), [&](int64_t first, int64_t last) {
    std::vector<acc_t> acc(s.OW);
    for (int64_t p = first; p < last; ++p) {
      const int64_t n = p / s.C, c = p % s.C;
      const scalar_t* xp = xd + (n * s.x_channels + c) * s.H * s.W;
      const scalar_t* wp = wd + c * s.KH * s.KW;
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for_each_tap(s, columns, oh, [&](int64_t i, int64_t j, int64_t ih, int64_t iw, int64_t ow, int64_t count) {
          const acc_t w = static_cast<acc_t>(wp[i * s.KW + j]);
          const scalar_t* in = xp + ih * s.W + iw;
          acc_t* out_row = acc.data() + ow;
          if (sw == 1) {
            for (int64_t k = 0; k < count; ++k) out_row[k] = accumulate_product(out_row[k], w, in[k]);
          } else {
            for (int64_t k = 0; k < count; ++k) out_row[k] = accumulate_product(out_row[k], w, in[k * sw]);
          }
        });
        scalar_t* y = yd + ((n * s.y_channels + c) * s.OH + oh) * s.OW;
        for (int64_t ow = 0; ow < s.OW; ++ow) y[ow] = static_cast<scalar_t>(acc[ow]);
      }
    }
  });
  padding_nan_forward(s, wd, yd);
}

template <typename scalar_t, typename acc_t, typename out_t, bool kAdd>
void input_grad_rows(const DepthwiseShape& s, const scalar_t* gd, const scalar_t* wd, out_t* gxd) {
  const int64_t sw = s.stride[1];
  const ColumnTaps columns(s);
  at::parallel_for(0, s.N * s.C, plane_grain(s), [&](int64_t first, int64_t last) {
    std::vector<acc_t> acc(s.H * s.W);
    for (int64_t p = first; p < last; ++p) {
      const int64_t n = p / s.C, c = p % s.C;
      const scalar_t* wp = wd + c * s.KH * s.KW;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      // Each output row sends its gradient back through every tap. An input element receives
      // its terms in the order (oh ascending, j ascending), which the CUDA gather follows.
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        const scalar_t* g = gd + ((n * s.y_channels + c) * s.OH + oh) * s.OW;
        for_each_tap(s, columns, oh, [&](int64_t i, int64_t j, int64_t ih, int64_t iw, int64_t ow, int64_t count) {
          const acc_t w = static_cast<acc_t>(wp[i * s.KW + j]);
          acc_t* in = acc.data() + ih * s.W + iw;
          const scalar_t* g_row = g + ow;
          if (sw == 1) {
            for (int64_t k = 0; k < count; ++k) in[k] = accumulate_product(in[k], w, g_row[k]);
          } else {
            for (int64_t k = 0; k < count; ++k) in[k * sw] = accumulate_product(in[k * sw], w, g_row[k]);
          }
        });
      }
      out_t* gx = gxd + (n * s.x_channels + c) * s.H * s.W;
      for (int64_t k = 0; k < s.H * s.W; ++k) store_grad<kAdd>(gx[k], acc[k]);
    }
  });
}

template <typename scalar_t, typename acc_t, typename out_t, bool kAdd>
void input_grad(Path path, const DepthwiseShape& s, const scalar_t* gd, const scalar_t* wd, out_t* gxd) {
  switch (path) {
    case Path::kFlat: return input_grad_flat<scalar_t, acc_t, out_t, kAdd>(s, gd, wd, gxd);
    case Path::kPhases: return input_grad_phases<scalar_t, acc_t, out_t, kAdd>(s, gd, wd, gxd);
    case Path::kRows: return input_grad_rows<scalar_t, acc_t, out_t, kAdd>(s, gd, wd, gxd);
  }
}

template <typename scalar_t, typename acc_t>
void weight_grad(const DepthwiseShape& s, const scalar_t* gd, const scalar_t* xd, acc_t* sd) {
  if (s.N == 0) {
    std::fill(sd, sd + s.C * s.KH * s.KW, acc_t(0));
    return;
  }
  const ColumnTaps columns(s);
  const int64_t taps = s.KH * s.KW;
  const Path path = stacked_path(s);
  if (path != Path::kRows) {
    if (path == Path::kFlat) {
      weight_grad_stacked<FlatStack, scalar_t, acc_t>(s, gd, xd, sd);
    } else {
      weight_grad_stacked<PhaseStack, scalar_t, acc_t>(s, gd, xd, sd);
    }
    // Redone row by row where a non-finite value took part (the stacked sums multiply the
    // dropped outputs' zeros too).
    at::parallel_for(0, s.C, 1, [&](int64_t first, int64_t last) {
      std::vector<acc_t> partial;
      for (int64_t c = first; c < last; ++c) {
        bool finite = all_finite(sd + c * taps, taps);
        for (int64_t n = 0; n < s.N && finite; ++n)
          finite = all_finite(gd + (n * s.y_channels + c) * s.OH * s.OW, s.OH * s.OW);
        if (!finite) weight_grad_rows(s, columns, gd, xd, c, partial, sd);
      }
    });
    return;
  }
  // One channel per task, as weight_grad_stacked.
  at::parallel_for(0, s.C, 1, [&](int64_t first, int64_t last) {
    std::vector<acc_t> partial;
    for (int64_t c = first; c < last; ++c) weight_grad_rows(s, columns, gd, xd, c, partial, sd);
  });
}

// The path of the forward and the input gradient: a stacked one only with finite weights.
template <typename scalar_t>
Path weights_path(const DepthwiseShape& s, const scalar_t* wd) {
  const Path path = stacked_path(s);
  return path != Path::kRows && all_finite(wd, s.C * s.KH * s.KW) ? path : Path::kRows;
}

at::Tensor depthwise_conv2d_cpu(const at::Tensor& x_arg, const at::Tensor& weight_arg, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DepthwiseShape s = check_depthwise_forward_args(x_arg, weight_arg, stride, padding, dilation);
  const at::Tensor x = x_arg.contiguous();
  at::Tensor out = at::empty({s.N, s.C, s.OH, s.OW}, x.options());
  depthwise_forward_cpu(s, x, 0, weight_arg.contiguous(), out, 0);
  return out;
}

at::Tensor depthwise_conv2d_input_grad_cpu(const at::Tensor& grad_arg, const at::Tensor& weight_arg,
                                           at::IntArrayRef input_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DepthwiseShape s =
      check_depthwise_input_grad_args(grad_arg, weight_arg, input_size, stride, padding, dilation);
  const at::Tensor grad = grad_arg.contiguous();
  at::Tensor grad_x = at::empty({s.N, s.C, s.H, s.W}, grad.options());
  depthwise_input_grad_cpu(s, grad, 0, weight_arg.contiguous(), grad_x, 0, false);
  return grad_x;
}

at::Tensor depthwise_conv2d_weight_grad_cpu(const at::Tensor& grad_arg, const at::Tensor& x_arg,
                                            at::IntArrayRef weight_size, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DepthwiseShape s = check_depthwise_weight_grad_args(grad_arg, x_arg, weight_size, stride, padding, dilation);
  const at::Tensor grad = grad_arg.contiguous();
  at::Tensor sums = at::empty({s.C, 1, s.KH, s.KW}, grad.options().dtype(at::toOpMathType(grad.scalar_type())));
  depthwise_weight_grad_cpu(s, grad, 0, x_arg.contiguous(), 0, sums, 0);
  return sums.to(grad.scalar_type());
}

}  // namespace

void depthwise_forward_cpu(const DepthwiseShape& s, const at::Tensor& x, int64_t x_channel0, const at::Tensor& weight,
                           at::Tensor& out, int64_t y_channel0) {
  if (s.N * s.C == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "depthwise_conv2d_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xd = x.const_data_ptr<scalar_t>() + x_channel0 * s.H * s.W;
    const scalar_t* wd = weight.const_data_ptr<scalar_t>();
    scalar_t* yd = out.mutable_data_ptr<scalar_t>() + y_channel0 * s.OH * s.OW;
    switch (weights_path(s, wd)) {
      case Path::kFlat: return forward_stacked<scalar_t, acc_t, FlatStack>(s, xd, wd, yd);
      case Path::kPhases: return forward_stacked<scalar_t, acc_t, PhaseStack>(s, xd, wd, yd);
      case Path::kRows: return forward_rows<scalar_t, acc_t>(s, xd, wd, yd);
    }
  });
}

void depthwise_input_grad_cpu(const DepthwiseShape& s, const at::Tensor& grad, int64_t y_channel0,
                              const at::Tensor& weight, at::Tensor& grad_x, int64_t x_channel0, bool add) {
  if (s.N * s.C == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "depthwise_conv2d_input_grad_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gd = grad.const_data_ptr<scalar_t>() + y_channel0 * s.OH * s.OW;
    const scalar_t* wd = weight.const_data_ptr<scalar_t>();
    const Path path = weights_path(s, wd);
    if (add) {
      acc_t* gxd = grad_x.mutable_data_ptr<acc_t>() + x_channel0 * s.H * s.W;
      input_grad<scalar_t, acc_t, acc_t, true>(path, s, gd, wd, gxd);
    } else {
      scalar_t* gxd = grad_x.mutable_data_ptr<scalar_t>() + x_channel0 * s.H * s.W;
      input_grad<scalar_t, acc_t, scalar_t, false>(path, s, gd, wd, gxd);
    }
  });
}

void depthwise_weight_grad_cpu(const DepthwiseShape& s, const at::Tensor& grad, int64_t y_channel0,
                               const at::Tensor& x, int64_t x_channel0, at::Tensor& sums, int64_t sums_offset) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "depthwise_conv2d_weight_grad_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    weight_grad<scalar_t, acc_t>(s, grad.const_data_ptr<scalar_t>() + y_channel0 * s.OH * s.OW,
                                 x.const_data_ptr<scalar_t>() + x_channel0 * s.H * s.W,
                                 sums.mutable_data_ptr<acc_t>() + sums_offset);
  });
}

TORCH_LIBRARY_IMPL(fastdnas, CPU, m) {
  m.impl("depthwise_conv2d", &depthwise_conv2d_cpu);
  m.impl("_depthwise_conv2d_input_grad", &depthwise_conv2d_input_grad_cpu);
  m.impl("_depthwise_conv2d_weight_grad", &depthwise_conv2d_weight_grad_cpu);
}

}  // namespace fastdnas
