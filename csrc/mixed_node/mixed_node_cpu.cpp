// CPU kernels of mixed_node: the forward (batch statistics and the weighted sum) and the fused
// backward, both one work item per channel (the backward: per channel and edge or conv output),
// so every pool plane is computed once per pass and every reduction runs serially inside one
// work item: the results are bitwise the same for any thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "../common/tensor_lists.h"
#include "../common/vector_clones.h"
#include "mixed_node.h"

namespace fastdnas {
namespace {

// The 3x3 pools (padding 1) over the planes of one edge. The kernels read each plane from a
// padded copy (one more row and column on every side), so every output, border ones included,
// takes the same 9 taps and the loops over outputs vectorise: a padding tap adds 0 to an avg
// pool's sum (exact: the sum starting from +0 is never -0) and -inf to a max pool's scan (never
// taken), so the values equal max_pool3x3 and avg_pool3x3 bitwise.
template <typename acc_t>
struct EdgePools {
  int64_t H, W, stride, Ho, Wo;
  std::vector<acc_t> divisor;  // [Ho * Wo], each avg output's window size
  int64_t padded_width() const { return W + 2; }
  int64_t padded_size() const { return (H + 2) * (W + 2); }
};

template <typename acc_t>
std::vector<EdgePools<acc_t>> edge_pools(const NodeLayout& L) {
  std::vector<EdgePools<acc_t>> pools;
  for (int64_t e = 0; e < L.edges(); ++e) {
    EdgePools<acc_t> P{L.H[e], L.W[e], L.stride[e], L.Ho, L.Wo, std::vector<acc_t>(L.plane())};
    for (int64_t oh = 0, o = 0; oh < P.Ho; ++oh)
      for (int64_t ow = 0; ow < P.Wo; ++ow, ++o)
        P.divisor[o] = static_cast<acc_t>(window_count(pool_window(oh, ow, P.stride, P.H, P.W)));
    pools.push_back(std::move(P));
  }
  return pools;
}

// The largest padded plane of the node's edges (the size of the pools' scratch planes).
template <typename acc_t>
int64_t max_padded_size(const std::vector<EdgePools<acc_t>>& pools) {
  int64_t size = 0;
  for (const auto& P : pools) size = std::max(size, P.padded_size());
  return size;
}

template <typename acc_t>
acc_t pool_padding(int64_t kind) {
  return free_kind_is_max(kind) ? -std::numeric_limits<acc_t>::infinity() : acc_t(0);
}

// The per-plane pool loops below are AVX2 clones of their own, not inlined into the work items:
// inlined, their __restrict__ was lost and the stride-2 loops ran slower than the baseline's.

// xp = the plane in acc_t with a border of `pad`; plane element (h, w) is xp[(h + 1) * (W + 2) + w + 1].
template <typename scalar_t, typename acc_t>
FASTDNAS_VECTOR_CLONES
void pad_plane(const scalar_t* __restrict__ plane, const EdgePools<acc_t>& P, acc_t pad, acc_t* __restrict__ xp) {
  const int64_t Wp = P.padded_width();
  std::fill(xp, xp + Wp, pad);
  for (int64_t h = 0; h < P.H; ++h) {
    acc_t* row = xp + (h + 1) * Wp;
    const scalar_t* in = plane + h * P.W;
    row[0] = pad;
    for (int64_t w = 0; w < P.W; ++w) row[w + 1] = static_cast<acc_t>(in[w]);
    row[P.W + 1] = pad;
  }
  std::fill(xp + (P.H + 1) * Wp, xp + (P.H + 2) * Wp, pad);
}

// The max-pool scan step as a binary operation, a before b in the scan order: b if
// max_pool_takes(b, a). It is associative (the result is the first largest element, or the last
// NaN, of the sequence however it is bracketed), so windows may be reduced in pieces.
template <typename acc_t>
inline acc_t max_pool_combine(acc_t a, acc_t b) {
  return max_pool_takes(b, a) ? b : a;
}

// values[o] for every output of a max pool over a padded plane: each window as the scan of its 3
// row triples (row-major, the shared order), each row triple computed once for every output
// row that uses it. rows: (H + 2) * Wo values of scratch.
template <int64_t kStride, typename acc_t>
FASTDNAS_VECTOR_CLONES
void max_pool_plane(const acc_t* __restrict__ xp, const EdgePools<acc_t>& P, acc_t* __restrict__ rows,
                    acc_t* __restrict__ values) {
  const int64_t Wp = P.padded_width(), Wo = P.Wo;
  for (int64_t i = 0; i < (P.Ho - 1) * kStride + 3; ++i) {
    const acc_t* x = xp + i * Wp;
    acc_t* r = rows + i * Wo;
    for (int64_t ow = 0; ow < Wo; ++ow)
      r[ow] = max_pool_combine(max_pool_combine(x[ow * kStride], x[ow * kStride + 1]), x[ow * kStride + 2]);
  }
  for (int64_t oh = 0; oh < P.Ho; ++oh) {
    const acc_t* r0 = rows + oh * kStride * Wo;
    acc_t* out = values + oh * Wo;
    for (int64_t ow = 0; ow < Wo; ++ow)
      out[ow] = max_pool_combine(max_pool_combine(r0[ow], r0[Wo + ow]), r0[2 * Wo + ow]);
  }
}

// values[o] for every output of an avg pool over a padded plane: the 9 taps of each window
// added in the shared order (row-major), the loop over outputs outermost (vectorises).
template <int64_t kStride, typename acc_t>
FASTDNAS_VECTOR_CLONES
void avg_pool_plane(const acc_t* __restrict__ xp, const EdgePools<acc_t>& P, acc_t* __restrict__ values) {
  const int64_t Wp = P.padded_width();
  for (int64_t oh = 0; oh < P.Ho; ++oh) {
    const acc_t* r0 = xp + oh * kStride * Wp;
    const acc_t* r1 = r0 + Wp;
    const acc_t* r2 = r1 + Wp;
    const acc_t* count = P.divisor.data() + oh * P.Wo;
    acc_t* out = values + oh * P.Wo;
    for (int64_t ow = 0; ow < P.Wo; ++ow) {
      const int64_t j = ow * kStride;
      const acc_t sum = acc_t(0) + r0[j] + r0[j + 1] + r0[j + 2] + r1[j] + r1[j + 1] + r1[j + 2] + r2[j] +
                        r2[j + 1] + r2[j + 2];
      out[ow] = sum / count[ow];
    }
  }
}

// Pads plane into xp, then pools it into values (rows: scratch for max_pool_plane).
template <typename scalar_t, typename acc_t>
FASTDNAS_VECTOR_INLINE
void pool_plane(int64_t kind, const scalar_t* plane, const EdgePools<acc_t>& P, acc_t* xp, acc_t* rows,
                acc_t* values) {
  pad_plane(plane, P, pool_padding<acc_t>(kind), xp);
  if (free_kind_is_max(kind))
    P.stride == 1 ? max_pool_plane<1>(xp, P, rows, values) : max_pool_plane<2>(xp, P, rows, values);
  else
    P.stride == 1 ? avg_pool_plane<1>(xp, P, values) : avg_pool_plane<2>(xp, P, values);
}

// The gradients of the pool outputs, passed back to the windows on padded planes in the shared
// order: output rows ascending, then per input element the window taps (kh, kw) ascending, which
// is the order of the generic per-output loops; every input element's sum is bitwise the same.

// Row layout of the avg-pool output gradients: row oh of a plane at oh * padded_row(Wo) +
// kRowPad, kRowPad zeros before and after it, so shifted reads need no bounds.
constexpr int64_t kRowPad = 2;
inline int64_t padded_row(int64_t Wo) { return Wo + 2 * kRowPad; }

// dxp[window of o] += d[o] for every output o of an avg pool (d already divided by the window
// size, in padded rows). Padded input column j takes tap kw from output (j - kw) / kStride: one
// pass per input row adds all three (the zeros around a row add +0, which is exact: the
// gradients start at +0, and no sum turns that into -0).
// (ivdep: g and d never overlap; __restrict__ does not always survive inlining.)
template <int64_t kStride, typename acc_t>
FASTDNAS_VECTOR_CLONES
void avg_pool_scatter(const EdgePools<acc_t>& P, const acc_t* __restrict__ d_padded, acc_t* __restrict__ dxp) {
  const int64_t Wp = P.padded_width(), Wo = P.Wo;
  for (int64_t oh = 0; oh < P.Ho; ++oh) {
    const acc_t* d = d_padded + oh * padded_row(Wo) + kRowPad;
    for (int64_t kh = 0; kh < 3; ++kh) {
      acc_t* g = dxp + (oh * kStride + kh) * Wp;
      if (kStride == 1) {
#pragma GCC ivdep
        for (int64_t j = 0; j < Wo + 2; ++j) g[j] = ((g[j] + d[j]) + d[j - 1]) + d[j - 2];
      } else {
#pragma GCC ivdep
        for (int64_t m = 0; m < Wo; ++m) {
          g[2 * m] = (g[2 * m] + d[m]) + d[m - 1];
          g[2 * m + 1] += d[m];
        }
        g[2 * Wo] += d[Wo - 1];
      }
    }
  }
}

// avg_pool_scatter at the edge's stride.
template <typename acc_t>
void avg_pool_scatter_at_stride(const EdgePools<acc_t>& P, const acc_t* d_padded, acc_t* dxp) {
  P.stride == 1 ? avg_pool_scatter<1>(P, d_padded, dxp) : avg_pool_scatter<2>(P, d_padded, dxp);
}

// The tap (0..8, row-major in the window) of each max-pool output's maximum: the first tap equal
// to it, which is where the shared scan found it; kNoTap for a NaN or -inf maximum (NaN equals
// no tap, -inf may equal a padding tap), which takes the per-output rule.
constexpr int32_t kNoTap = 9;

template <int64_t kStride, typename acc_t>
FASTDNAS_VECTOR_CLONES
void max_pool_taps(const acc_t* __restrict__ xp, const EdgePools<acc_t>& P, const acc_t* __restrict__ values,
                   int32_t* __restrict__ taps) {
  const int64_t Wp = P.padded_width(), Wo = P.Wo;
  const acc_t lowest = -std::numeric_limits<acc_t>::infinity();
  for (int64_t oh = 0; oh < P.Ho; ++oh) {
    const acc_t* r0 = xp + oh * kStride * Wp;
    const acc_t* r1 = r0 + Wp;
    const acc_t* r2 = r1 + Wp;
    const acc_t* v = values + oh * Wo;
    int32_t* t = taps + oh * Wo;
    for (int64_t ow = 0; ow < Wo; ++ow) {
      const int64_t j = ow * kStride;
      const acc_t m = v[ow];
      int32_t k = kNoTap;
      k = r2[j + 2] == m ? 8 : k;
      k = r2[j + 1] == m ? 7 : k;
      k = r2[j] == m ? 6 : k;
      k = r1[j + 2] == m ? 5 : k;
      k = r1[j + 1] == m ? 4 : k;
      k = r1[j] == m ? 3 : k;
      k = r0[j + 2] == m ? 2 : k;
      k = r0[j + 1] == m ? 1 : k;
      k = r0[j] == m ? 0 : k;
      t[ow] = m > lowest ? k : kNoTap;
    }
  }
}

// dxp[argmax of window o] += d[o] for every output o of a max pool. Within an output row the
// outputs go right to left: an input element takes its taps kw ascending, as in the shared order.
template <int64_t kStride, typename scalar_t, typename acc_t>
FASTDNAS_VECTOR_CLONES
void max_pool_scatter(const scalar_t* plane, const EdgePools<acc_t>& P, const int32_t* taps, const acc_t* d,
                      acc_t* dxp) {
  const int64_t Wp = P.padded_width(), Wo = P.Wo;
  const int64_t offset[9] = {0, 1, 2, Wp, Wp + 1, Wp + 2, 2 * Wp, 2 * Wp + 1, 2 * Wp + 2};
  for (int64_t oh = 0; oh < P.Ho; ++oh) {
    acc_t* g = dxp + oh * kStride * Wp;  // window of output (oh, ow) starts at g + ow * kStride
    const int32_t* t = taps + oh * Wo;
    const acc_t* d_row = d + oh * Wo;
    bool irregular = false;
    for (int64_t ow = Wo - 1; ow >= 0; --ow) {
      if (t[ow] == kNoTap) {
        irregular = true;
        continue;
      }
      g[ow * kStride + offset[t[ow]]] += d_row[ow];
    }
    for (int64_t ow = 0; irregular && ow < Wo; ++ow) {
      if (t[ow] != kNoTap) continue;
      int64_t argmax;
      max_pool3x3<acc_t>(plane, P.H, P.W, oh, ow, kStride, &argmax);
      dxp[(argmax / P.W + 1) * Wp + argmax % P.W + 1] += d_row[ow];
    }
  }
}

// Lanes of independent partial sums, so the plane sums vectorise (fixed order: deterministic):
// four AVX2 vectors of float, enough adds in flight to hide their latency.
constexpr int64_t kLanes = 32;

// lanes[0] + ... + lanes[2 * kHalf - 1], halving pairwise: a few vector adds (a serial sum of 32
// lanes would outweigh a small plane's loop).
template <int64_t kHalf, typename acc_t>
FASTDNAS_VECTOR_INLINE acc_t fold_lanes(acc_t* lanes) {
  for (int64_t l = 0; l < kHalf; ++l) lanes[l] += lanes[l + kHalf];
  if constexpr (kHalf > 1) {
    return fold_lanes<kHalf / 2>(lanes);
  } else {
    return lanes[0];
  }
}

template <typename acc_t, typename Term>
FASTDNAS_VECTOR_INLINE acc_t lane_sum(int64_t n, Term term) {
  acc_t lanes[kLanes] = {};
  int64_t o = 0;
  for (; o + kLanes <= n; o += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += term(o + l);
  for (int64_t l = 0; o < n; ++o, ++l) lanes[l] += term(o);
  return fold_lanes<kLanes / 2>(lanes);
}

// Mean and biased variance of one channel over its N planes: two passes inside each plane, the
// planes merged in order with Chan's formula (accurate without a third pass over the input).
// value(n, o) is element o of plane n.
template <typename acc_t, typename Value>
FASTDNAS_VECTOR_INLINE void channel_statistics(int64_t N, int64_t HW, Value value, acc_t* mean, acc_t* var) {
  acc_t total_mean = 0, total_m2 = 0;
  int64_t count = 0;
  for (int64_t n = 0; n < N; ++n) {
    const acc_t plane_mean = lane_sum<acc_t>(HW, [&](int64_t o) { return value(n, o); }) / static_cast<acc_t>(HW);
    const acc_t m2 = lane_sum<acc_t>(HW, [&](int64_t o) {
      const acc_t v = value(n, o);
      return (v - plane_mean) * (v - plane_mean);
    });
    const int64_t merged = count + HW;
    const acc_t delta = plane_mean - total_mean;
    total_mean += delta * static_cast<acc_t>(HW) / static_cast<acc_t>(merged);
    total_m2 += m2 + delta * delta * static_cast<acc_t>(count) * static_cast<acc_t>(HW) / static_cast<acc_t>(merged);
    count = merged;
  }
  *mean = total_mean;
  *var = count > 0 ? total_m2 / static_cast<acc_t>(count) : acc_t(0);
}

// An uninitialised work buffer (every use writes before it reads).
template <typename acc_t>
std::unique_ptr<acc_t[]> buffer(int64_t size) {
  return std::unique_ptr<acc_t[]>(new acc_t[std::max<int64_t>(size, 1)]);
}

// What the work items of both passes read: one call's inputs and tables.
template <typename scalar_t, typename acc_t>
struct NodeInputs {
  const NodeLayout& L;
  const std::vector<EdgePools<acc_t>>& pools;
  const std::vector<const scalar_t*>& x;  // edge inputs
  const std::vector<const scalar_t*>& y;  // conv outputs
  const acc_t* w;
  bool batch_stats;
};

// ... and what the forward's also read and write.
template <typename scalar_t, typename acc_t>
struct NodeForward : NodeInputs<scalar_t, acc_t> {
  double eps;
  acc_t* mu;      // [num_bn_rows, C]: written on batch statistics, else the running means
  acc_t* sigma2;  // likewise the variances
  scalar_t* out;
};

// Channels [begin, end) of the forward. First every BatchNorm's statistics over the channel's N
// planes (the BatchNorm'd pools pooled once, kept); then plane by plane, in a sum that stays in
// the L1 cache, every item's weighted (normalised) value added in item order, as the node's
// definition lists them: the same sums, in the same order, as one item at a time over all planes.
template <typename scalar_t, typename acc_t>
FASTDNAS_VECTOR_CLONES void forward_channels(const NodeForward<scalar_t, acc_t>& f, int64_t begin, int64_t end) {
  const NodeLayout& L = f.L;
  const int64_t N = L.N, C = L.C, HW = L.plane(), K = static_cast<int64_t>(f.y.size());
  int64_t pooled_items = 0;
  for (const FreeItem& item : L.free) pooled_items += free_kind_has_bn(item.kind);
  auto pooled = buffer<acc_t>(pooled_items * N * HW), acc = buffer<acc_t>(HW), values = buffer<acc_t>(HW);
  const int64_t max_padded = max_padded_size(f.pools);
  auto xp = buffer<acc_t>(max_padded), rows = buffer<acc_t>(max_padded);
  std::vector<acc_t> invstd(L.num_bn_rows);
  for (int64_t c = begin; c < end; ++c) {
    for (int64_t i = 0, b = 0; i < static_cast<int64_t>(L.free.size()); ++i) {
      const FreeItem& item = L.free[i];
      if (!free_kind_has_bn(item.kind)) continue;
      const EdgePools<acc_t>& P = f.pools[item.edge];
      acc_t* v = pooled.get() + b++ * N * HW;
      for (int64_t n = 0; n < N; ++n)
        pool_plane(item.kind, f.x[item.edge] + (n * C + c) * P.H * P.W, P, xp.get(), rows.get(), v + n * HW);
      const int64_t s = item.bn_row * C + c;
      if (f.batch_stats)
        channel_statistics<acc_t>(N, HW, [&](int64_t n, int64_t o) { return v[n * HW + o]; }, f.mu + s, f.sigma2 + s);
      invstd[item.bn_row] = bn_invstd(f.sigma2[s], f.eps);
    }
    for (int64_t k = 0; k < K; ++k) {
      const scalar_t* yk = f.y[k] + c * HW;
      const int64_t r = L.conv_bn_row(k), s = r * C + c;
      if (f.batch_stats)
        channel_statistics<acc_t>(
            N, HW, [&](int64_t n, int64_t o) { return static_cast<acc_t>(yk[n * C * HW + o]); }, f.mu + s,
            f.sigma2 + s);
      invstd[r] = bn_invstd(f.sigma2[s], f.eps);
    }
    // `a` is this thread's own buffer, never an input: ivdep says so, else GCC keeps the loops scalar.
    for (int64_t n = 0; n < N; ++n) {
      acc_t* a = acc.get();
      std::fill(a, a + HW, acc_t(0));
      auto add_normalised = [&](int64_t row, acc_t weight, auto value) {
        const acc_t m = f.mu[row * C + c], inv = invstd[row];
#pragma GCC ivdep
        for (int64_t o = 0; o < HW; ++o) a[o] += weight * bn_normalize(value(o), m, inv);
      };
      for (int64_t i = 0, b = 0; i < static_cast<int64_t>(L.free.size()); ++i) {
        const FreeItem& item = L.free[i];
        const acc_t wi = f.w[item.weight_index];
        const EdgePools<acc_t>& P = f.pools[item.edge];
        const scalar_t* plane = f.x[item.edge] + (n * C + c) * P.H * P.W;
        if (item.kind == kFreeSkip) {
#pragma GCC ivdep
          for (int64_t o = 0; o < HW; ++o) a[o] = accumulate_product(a[o], wi, plane[o]);
        } else if (!free_kind_has_bn(item.kind)) {  // a plain pool: the pool itself, weighted
          pool_plane(item.kind, plane, P, xp.get(), rows.get(), values.get());
          const acc_t* v = values.get();
#pragma GCC ivdep
          for (int64_t o = 0; o < HW; ++o) a[o] += wi * v[o];
        } else {
          const acc_t* v = pooled.get() + (b++ * N + n) * HW;
          add_normalised(item.bn_row, wi, [&](int64_t o) { return v[o]; });
        }
      }
      for (int64_t k = 0; k < K; ++k) {
        const scalar_t* yp = f.y[k] + (n * C + c) * HW;
        add_normalised(L.conv_bn_row(k), f.w[L.conv_weight_index[k]],
                       [&](int64_t o) { return static_cast<acc_t>(yp[o]); });
      }
      scalar_t* yp = f.out + (n * C + c) * HW;
#pragma GCC ivdep
      for (int64_t o = 0; o < HW; ++o) yp[o] = static_cast<scalar_t>(a[o]);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mixed_node_cpu(
    at::TensorList edge_inputs_arg, at::IntArrayRef strides, at::TensorList conv_outputs_arg,
    const at::Tensor& weights_arg, at::IntArrayRef free_items, at::IntArrayRef free_kinds, at::IntArrayRef conv_items,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var, double eps) {
  const char* op = "mixed_node";
  const NodeLayout L = make_node_layout(op, edge_inputs_arg, strides, conv_outputs_arg, weights_arg, free_items,
                                        free_kinds, conv_items);
  const auto device = edge_inputs_arg[0].device();
  check_running_statistics(op, L, running_mean, running_var, device);
  check_eps(op, eps);
  const bool batch_stats = !(running_mean.has_value() && running_mean->defined());
  const auto edges = contiguous_all(edge_inputs_arg);
  const auto convs = contiguous_all(conv_outputs_arg);
  const auto dtype = edges[0].scalar_type();
  at::Tensor out = at::empty({L.N, L.C, L.Ho, L.Wo}, edges[0].options());
  at::Tensor mean, var;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mixed_node_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_options = edges[0].options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    if (batch_stats) {
      mean = at::zeros({L.num_bn_rows, L.C}, acc_options);
      var = at::zeros({L.num_bn_rows, L.C}, acc_options);
    } else {
      mean = running_mean->to(acc_options).contiguous().clone();
      var = running_var->to(acc_options).contiguous().clone();
    }
    if (L.count() == 0) return;
    const at::Tensor weights = weights_arg.to(acc_options).contiguous();
    const acc_t* w = weights.const_data_ptr<acc_t>();
    acc_t* mu = mean.mutable_data_ptr<acc_t>();
    acc_t* sigma2 = var.mutable_data_ptr<acc_t>();
    const auto pools = edge_pools<acc_t>(L);
    const auto x = data_pointers<scalar_t>(edges);
    const auto y = data_pointers<scalar_t>(convs);
    const NodeForward<scalar_t, acc_t> f{{L, pools, x, y, w, batch_stats}, eps, mu, sigma2,
                                         out.mutable_data_ptr<scalar_t>()};
    at::parallel_for(0, L.C, 1, [&](int64_t begin, int64_t end) { forward_channels(f, begin, end); });
  });
  return {out, mean, var};
}

// What the backward's work items also read and write.
template <typename scalar_t, typename acc_t>
struct NodeBackward : NodeInputs<scalar_t, acc_t> {
  const scalar_t* g;                 // the node's gradient
  const std::vector<scalar_t*>& gx;  // the edge inputs' gradients
  const std::vector<scalar_t*>& gy;  // the conv outputs'
  const acc_t* mu;                   // [num_bn_rows, C]
  const acc_t* invstd;               // [num_bn_rows, C]
  acc_t* partial;                    // [F + K + 1, C]: see mixed_node_backward_cpu
};

// Work items [begin, end) of the backward: item (channel c, unit u), units the edges (the
// gradient of the edge input through its skip, pools and their BatchNorms), then the conv
// outputs (their BatchNorm input gradients). Each item first sums its rows' partials over the N
// planes, then computes the gradients.
template <typename scalar_t, typename acc_t>
FASTDNAS_VECTOR_CLONES void backward_items(const NodeBackward<scalar_t, acc_t>& work, int64_t begin, int64_t end) {
  const NodeLayout& L = work.L;
  const int64_t N = L.N, C = L.C, HW = L.plane(), M = L.count(), E = L.edges();
  const int64_t F = static_cast<int64_t>(L.free.size()), K = static_cast<int64_t>(work.y.size()), units = E + K;
  const auto& pools = work.pools;
  const auto& x = work.x;
  const auto& y = work.y;
  const auto& gx = work.gx;
  const auto& gy = work.gy;
  const scalar_t* g = work.g;
  const acc_t *w = work.w, *mu = work.mu, *invstd = work.invstd;
  acc_t* partial = work.partial;
  const bool batch_stats = work.batch_stats;
  const int64_t max_padded = max_padded_size(pools);
  // mean(g) and mean(g * xhat) of each BatchNorm's input gradient, on batch statistics only.
  const acc_t inv_count = acc_t(1) / static_cast<acc_t>(M);
  auto batch_mean = [&](acc_t sum) { return batch_stats ? sum * inv_count : acc_t(0); };
  auto values = buffer<acc_t>(N * HW), d = buffer<acc_t>(HW);
  std::vector<acc_t> d_padded(L.Ho * padded_row(L.Wo), acc_t(0));  // the zeros around the rows stay
  std::vector<int32_t> taps(HW);
  auto xp = buffer<acc_t>(N * max_padded), dx = buffer<acc_t>(N * max_padded);  // padded planes
  auto rows = buffer<acc_t>(max_padded);
  for (int64_t item_index = begin; item_index < end; ++item_index) {
    const int64_t c = item_index / units, u = item_index % units;
    const acc_t mg = batch_mean(partial[(F + K) * C + c]);
    if (u >= E) {
      const int64_t k = u - E, b = L.conv_bn_row(k), s = b * C + c;
      const acc_t wk = w[L.conv_weight_index[k]], m = mu[s], inv = invstd[s];
      acc_t total = 0;
      for (int64_t n = 0; n < N; ++n) {
        const scalar_t* gp = g + (n * C + c) * HW;
        const scalar_t* yp = y[k] + (n * C + c) * HW;
        total += lane_sum<acc_t>(HW, [&](int64_t o) {
          return static_cast<acc_t>(gp[o]) * bn_normalize(static_cast<acc_t>(yp[o]), m, inv);
        });
      }
      partial[(F + k) * C + c] = total;
      const acc_t mgx = batch_mean(total);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t p = n * C + c;
        const scalar_t* gp = g + p * HW;
        const scalar_t* yp = y[k] + p * HW;
        scalar_t* dy = gy[k] + p * HW;
        for (int64_t o = 0; o < HW; ++o) {
          const acc_t xhat = bn_normalize(static_cast<acc_t>(yp[o]), m, inv);
          dy[o] = static_cast<scalar_t>(
              bn_input_gradient(batch_stats, wk, inv, static_cast<acc_t>(gp[o]), xhat, mg, mgx));
        }
      }
      continue;
    }
    const int64_t e = u;
    const EdgePools<acc_t>& P = pools[e];
    const int64_t in_plane = P.H * P.W, Wp = P.padded_width(), padded = P.padded_size();
    const scalar_t* xe = x[e];
    std::fill(dx.get(), dx.get() + N * padded, acc_t(0));
    for (int64_t i = 0; i < F; ++i) {
      const FreeItem& item = L.free[i];
      if (item.edge != e) continue;
      const acc_t wi = w[item.weight_index];
      acc_t total = 0;
      if (item.kind == kFreeSkip) {
        for (int64_t n = 0; n < N; ++n) {
          const int64_t p = n * C + c;
          const scalar_t* gp = g + p * HW;
          const scalar_t* xn = xe + p * HW;
          total += lane_sum<acc_t>(HW, [&](int64_t o) {
            return accumulate_product(acc_t(0), static_cast<acc_t>(gp[o]), xn[o]);
          });
          for (int64_t h = 0; h < P.H; ++h) {
            acc_t* dx_row = dx.get() + n * padded + (h + 1) * Wp + 1;
            const scalar_t* g_row = gp + h * P.W;
            for (int64_t j = 0; j < P.W; ++j) dx_row[j] += scaled_gradient<acc_t>(wi, static_cast<acc_t>(g_row[j]));
          }
        }
        partial[i * C + c] = total;
        continue;
      }
      if (item.kind == kFreePlainMaxPool) {
        // weight * g sent back to each window's maximum; the weight's sum(g * pool(x)).
        for (int64_t n = 0; n < N; ++n) {
          const int64_t p = n * C + c;
          const scalar_t* gp = g + p * HW;
          const scalar_t* xn = xe + p * in_plane;
          acc_t* v = values.get();
          acc_t* xpn = xp.get() + n * padded;
          pool_plane(item.kind, xn, P, xpn, rows.get(), v);
          total += lane_sum<acc_t>(HW, [&](int64_t o) { return static_cast<acc_t>(gp[o]) * v[o]; });
          for (int64_t o = 0; o < HW; ++o) d[o] = scaled_gradient<acc_t>(wi, static_cast<acc_t>(gp[o]));
          acc_t* dxp = dx.get() + n * padded;
          if (P.stride == 1) {
            max_pool_taps<1>(xpn, P, v, taps.data());
            max_pool_scatter<1>(xn, P, taps.data(), d.get(), dxp);
          } else {
            max_pool_taps<2>(xpn, P, v, taps.data());
            max_pool_scatter<2>(xn, P, taps.data(), d.get(), dxp);
          }
        }
        partial[i * C + c] = total;
        continue;
      }
      if (item.kind == kFreePlainAvgPool) {
        // t = pool^T(g / window size), the pool's adjoint (on a padded plane), gives both the
        // input gradient weight * t and the weight's sum(g * pool(x)) = sum(x * t): no pool
        // recomputed.
        acc_t* t = xp.get();
        for (int64_t n = 0; n < N; ++n) {
          const int64_t p = n * C + c;
          const scalar_t* gp = g + p * HW;
          for (int64_t oh = 0, o = 0; oh < P.Ho; ++oh) {
            acc_t* d_row = d_padded.data() + oh * padded_row(P.Wo) + kRowPad;
            for (int64_t ow = 0; ow < P.Wo; ++ow, ++o) d_row[ow] = static_cast<acc_t>(gp[o]) / P.divisor[o];
          }
          std::fill(t, t + padded, acc_t(0));
          avg_pool_scatter_at_stride(P, d_padded.data(), t);
          const scalar_t* xn = xe + p * in_plane;
          acc_t* dxp = dx.get() + n * padded;
          for (int64_t h = 0; h < P.H; ++h) {
            const acc_t* t_row = t + (h + 1) * Wp + 1;
            acc_t* dx_row = dxp + (h + 1) * Wp + 1;
            const scalar_t* x_row = xn + h * P.W;
#pragma GCC ivdep
            for (int64_t j = 0; j < P.W; ++j) dx_row[j] += wi * t_row[j];
            total += lane_sum<acc_t>(P.W, [&](int64_t j) { return static_cast<acc_t>(x_row[j]) * t_row[j]; });
          }
        }
        partial[i * C + c] = total;
        continue;
      }
      // The pool outputs of all N planes, their sum(g * xhat), then the gradient of every pool
      // output (through BN), each sent back to its window.
      const int64_t s = item.bn_row * C + c;
      const acc_t m = mu[s], inv = invstd[s];
      for (int64_t n = 0; n < N; ++n) {
        const int64_t p = n * C + c;
        const scalar_t* gp = g + p * HW;
        acc_t* v = values.get() + n * HW;
        pool_plane(item.kind, xe + p * in_plane, P, xp.get() + n * padded, rows.get(), v);
        total += lane_sum<acc_t>(HW, [&](int64_t o) {
          return static_cast<acc_t>(gp[o]) * bn_normalize(v[o], m, inv);
        });
      }
      partial[i * C + c] = total;
      const acc_t mgx = batch_mean(total);
      for (int64_t n = 0; n < N; ++n) {
        const int64_t p = n * C + c;
        const scalar_t* gp = g + p * HW;
        const acc_t* v = values.get() + n * HW;
        acc_t* dxp = dx.get() + n * padded;
        if (item.kind == kFreeMaxPool) {
          for (int64_t o = 0; o < HW; ++o)
            d[o] = bn_input_gradient(batch_stats, wi, inv, static_cast<acc_t>(gp[o]), bn_normalize(v[o], m, inv),
                                     mg, mgx);
          const acc_t* xpn = xp.get() + n * padded;
          if (P.stride == 1) {
            max_pool_taps<1>(xpn, P, v, taps.data());
            max_pool_scatter<1>(xe + p * in_plane, P, taps.data(), d.get(), dxp);
          } else {
            max_pool_taps<2>(xpn, P, v, taps.data());
            max_pool_scatter<2>(xe + p * in_plane, P, taps.data(), d.get(), dxp);
          }
        } else {
          for (int64_t oh = 0, o = 0; oh < P.Ho; ++oh) {
            acc_t* d_row = d_padded.data() + oh * padded_row(P.Wo) + kRowPad;
            for (int64_t ow = 0; ow < P.Wo; ++ow, ++o)
              d_row[ow] = bn_input_gradient(batch_stats, wi, inv, static_cast<acc_t>(gp[o]),
                                            bn_normalize(v[o], m, inv), mg, mgx) /
                          P.divisor[o];
          }
          avg_pool_scatter_at_stride(P, d_padded.data(), dxp);
        }
      }
    }
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t h = 0; h < P.H; ++h) {
        scalar_t* gx_row = gx[e] + (n * C + c) * in_plane + h * P.W;
        const acc_t* dx_row = dx.get() + n * padded + (h + 1) * Wp + 1;
        for (int64_t j = 0; j < P.W; ++j) gx_row[j] = static_cast<scalar_t>(dx_row[j]);
      }
    }
  }
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> mixed_node_backward_cpu(
    const at::Tensor& grad_arg, at::TensorList edge_inputs_arg, at::IntArrayRef strides,
    at::TensorList conv_outputs_arg, const at::Tensor& weights_arg, at::IntArrayRef free_items,
    at::IntArrayRef free_kinds, at::IntArrayRef conv_items, const at::Tensor& mean_arg, const at::Tensor& var_arg,
    double eps, bool batch_stats) {
  const NodeLayout L = check_mixed_node_backward_args(grad_arg, edge_inputs_arg, strides, conv_outputs_arg,
                                                      weights_arg, free_items, free_kinds, conv_items, mean_arg,
                                                      var_arg, eps);
  const auto edges = contiguous_all(edge_inputs_arg);
  const auto convs = contiguous_all(conv_outputs_arg);
  const at::Tensor grad = grad_arg.contiguous();
  auto grad_edges = empty_like_all(edges);
  auto grad_convs = empty_like_all(convs);
  at::Tensor grad_weights;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "mixed_node_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_options = grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const int64_t N = L.N, C = L.C, HW = L.plane(), M = L.count(), E = L.edges();
    const int64_t F = static_cast<int64_t>(L.free.size()), K = static_cast<int64_t>(convs.size());
    const at::Tensor weights = weights_arg.to(acc_options).contiguous();
    if (M == 0) {
      grad_weights = at::zeros_like(weights_arg, at::MemoryFormat::Contiguous);
      return;
    }
    const acc_t* w = weights.const_data_ptr<acc_t>();
    const at::Tensor mean = mean_arg.to(acc_options).contiguous();
    const acc_t* mu = mean.const_data_ptr<acc_t>();
    const at::Tensor var = var_arg.to(acc_options).contiguous();
    std::vector<acc_t> invstd(L.num_bn_rows * C);
    for (size_t i = 0; i < invstd.size(); ++i) invstd[i] = bn_invstd(var.const_data_ptr<acc_t>()[i], eps);
    const auto pools = edge_pools<acc_t>(L);
    const auto x = data_pointers<scalar_t>(edges);
    const auto y = data_pointers<scalar_t>(convs);
    const auto gx = mutable_data_pointers<scalar_t>(grad_edges);
    const auto gy = mutable_data_pointers<scalar_t>(grad_convs);
    const scalar_t* g = grad.const_data_ptr<scalar_t>();

    // Per-channel sums for the weight gradients and the BatchNorm backward: sum(g * xhat) for
    // each BatchNorm, sum(g * x) for each skip, sum(g) in the last row (batch statistics only).
    // Rows: free items, conv outputs, sum(g).
    at::Tensor partials = at::zeros({F + K + 1, C}, acc_options);
    acc_t* partial = partials.mutable_data_ptr<acc_t>();
    if (batch_stats) at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        acc_t total = 0;
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* gp = g + (n * C + c) * HW;
          total += lane_sum<acc_t>(HW, [&](int64_t o) { return static_cast<acc_t>(gp[o]); });
        }
        partial[(F + K) * C + c] = total;
      }
    });
    const NodeBackward<scalar_t, acc_t> work{
        {L, pools, x, y, w, batch_stats}, g, gx, gy, mu, invstd.data(), partial};
    at::parallel_for(0, C * (E + K), 1, [&](int64_t begin, int64_t end) { backward_items(work, begin, end); });

    // Weight gradients: the per-channel partials added in channel order.
    at::Tensor grad_w = at::zeros({weights.numel()}, acc_options);
    acc_t* gw = grad_w.mutable_data_ptr<acc_t>();
    for (int64_t r = 0; r < F + K; ++r) {
      acc_t sum = 0;
      for (int64_t c = 0; c < C; ++c) sum += partial[r * C + c];
      gw[r < F ? L.free[r].weight_index : L.conv_weight_index[r - F]] += sum;
    }
    grad_weights = grad_w.view(weights_arg.sizes()).to(weights_arg.scalar_type());
  });
  return {grad_edges, grad_convs, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdnas, CPU, m) {
  m.impl("mixed_node", &mixed_node_cpu);
  m.impl("_mixed_node_backward", &mixed_node_backward_cpu);
}

}  // namespace fastdnas
