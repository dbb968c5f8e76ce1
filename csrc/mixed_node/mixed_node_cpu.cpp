// CPU kernels of mixed_node: batch statistics, the weighted sum, and the fused backward.
// Every reduction runs serially inside one (row, channel) work item, so the results are bitwise
// the same for any thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/tensor_lists.h"
#include "mixed_node.h"

namespace fastdnas {
namespace {

// Where the values normalised by one BatchNorm come from: a pool of an edge input, or a conv
// output read as it is.
template <typename scalar_t>
struct BnSource {
  int64_t kind;  // kFreeMaxPool, kFreeAvgPool, or -1 for a conv output
  const scalar_t* data;
  int64_t H, W, stride;
};

constexpr int64_t kDirect = -1;

template <typename scalar_t>
std::vector<BnSource<scalar_t>> bn_sources(const NodeLayout& L, const std::vector<at::Tensor>& edges,
                                           const std::vector<at::Tensor>& convs) {
  std::vector<BnSource<scalar_t>> sources;
  for (const FreeItem& item : L.free) {
    if (item.kind == kFreeSkip) continue;
    sources.push_back({item.kind, edges[item.edge].const_data_ptr<scalar_t>(), L.H[item.edge], L.W[item.edge],
                       L.stride[item.edge]});
  }
  for (const auto& y : convs) sources.push_back({kDirect, y.const_data_ptr<scalar_t>(), L.Ho, L.Wo, 1});
  return sources;
}

// values[o] for every output of a pool over one plane, by the shared per-element rules. For
// rows whose windows lie inside the plane vertically, the 9 window elements are visited in the
// same order for a run of inner columns at once (the loop over outputs is innermost, so it
// vectorises); the border columns take the clipped per-output functions.
template <typename scalar_t, typename acc_t, bool kMax>
void pool_plane(const scalar_t* plane, int64_t H, int64_t W, int64_t stride, const NodeLayout& L, acc_t* values) {
  // Outputs o whose window lies inside the plane: o * stride - 1 >= 0 and o * stride + 1 <= size - 1.
  auto end_inner = [&](int64_t size, int64_t out) {
    return std::max<int64_t>(1, std::min<int64_t>(out, (size - 2) / stride + 1));
  };
  const int64_t ow0 = 1, ow1 = end_inner(W, L.Wo);
  const int64_t oh0 = 1, oh1 = end_inner(H, L.Ho);
  int64_t argmax;
  for (int64_t oh = 0; oh < L.Ho; ++oh) {
    acc_t* row = values + oh * L.Wo;
    auto generic = [&](int64_t ow) {
      return kMax ? max_pool3x3<acc_t>(plane, H, W, oh, ow, stride, &argmax)
                  : avg_pool3x3<acc_t>(plane, H, W, oh, ow, stride);
    };
    if (oh < oh0 || oh >= oh1 || ow0 >= ow1) {
      for (int64_t ow = 0; ow < L.Wo; ++ow) row[ow] = generic(ow);
      continue;
    }
    for (int64_t ow = 0; ow < ow0; ++ow) row[ow] = generic(ow);
    const scalar_t* top = plane + (oh * stride - 1) * W - 1;  // window of output ow starts at top + ow * stride
    for (int64_t ow = ow0; ow < ow1; ++ow) row[ow] = kMax ? static_cast<acc_t>(top[ow * stride]) : acc_t(0);
    for (int64_t h = 0; h < 3; ++h) {
      for (int64_t w = 0; w < 3; ++w) {
        const scalar_t* x = top + h * W + w;
        for (int64_t ow = ow0; ow < ow1; ++ow) {
          const acc_t v = static_cast<acc_t>(x[ow * stride]);
          if (kMax)
            row[ow] = max_pool_takes(v, row[ow]) ? v : row[ow];
          else
            row[ow] += v;
        }
      }
    }
    if (!kMax)
      for (int64_t ow = ow0; ow < ow1; ++ow) row[ow] /= static_cast<acc_t>(9);
    for (int64_t ow = ow1; ow < L.Wo; ++ow) row[ow] = generic(ow);
  }
}

// values[o] for every output position o of plane p (= n * C + c) of a BatchNorm's input.
template <typename scalar_t, typename acc_t>
void fill_plane(const BnSource<scalar_t>& src, int64_t p, const NodeLayout& L, acc_t* values) {
  const scalar_t* plane = src.data + p * src.H * src.W;
  if (src.kind == kFreeMaxPool) {
    pool_plane<scalar_t, acc_t, true>(plane, src.H, src.W, src.stride, L, values);
  } else if (src.kind == kFreeAvgPool) {
    pool_plane<scalar_t, acc_t, false>(plane, src.H, src.W, src.stride, L, values);
  } else {
    for (int64_t o = 0; o < L.plane(); ++o) values[o] = static_cast<acc_t>(plane[o]);
  }
}

// dx[argmax of window o] += d[o] for every output o of a max pool. values[o] is the window's
// maximum, so its position is the first element (in the shared scan order) equal to it: the 9
// window positions are visited in that order, each for a whole output row at once (vectorises).
// A NaN maximum equals nothing: those outputs take the per-output rule.
template <typename scalar_t, typename acc_t>
void max_pool_scatter(const scalar_t* plane, int64_t H, int64_t W, int64_t stride, const NodeLayout& L,
                      const acc_t* values, const acc_t* d, acc_t* dx, uint8_t* found) {
  for (int64_t oh = 0; oh < L.Ho; ++oh) {
    const acc_t* v_row = values + oh * L.Wo;
    const acc_t* d_row = d + oh * L.Wo;
    std::fill(found, found + L.Wo, uint8_t(0));
    for (int64_t kh = 0; kh < 3; ++kh) {
      const int64_t ih = oh * stride - 1 + kh;
      if (ih < 0 || ih >= H) continue;
      for (int64_t kw = 0; kw < 3; ++kw) {
        // Outputs whose column ow * stride - 1 + kw lies in [0, W).
        const int64_t ow0 = kw == 0 ? 1 : 0;
        const int64_t ow1 = std::min<int64_t>(L.Wo, (W - kw) / stride + 1);
        const scalar_t* x = plane + ih * W - 1 + kw;
        acc_t* g = dx + ih * W - 1 + kw;
        for (int64_t ow = ow0; ow < ow1; ++ow) {
          const uint8_t take = !found[ow] & (static_cast<acc_t>(x[ow * stride]) == v_row[ow]);
          g[ow * stride] += take ? d_row[ow] : acc_t(0);
          found[ow] |= take;
        }
      }
    }
    for (int64_t ow = 0; ow < L.Wo; ++ow) {
      if (found[ow]) continue;
      int64_t argmax;
      max_pool3x3<acc_t>(plane, H, W, oh, ow, stride, &argmax);
      dx[argmax] += d_row[ow];
    }
  }
}

// dx[window of o] += d[o] / (window size) for every output o of an avg pool
// (count_include_pad=False), as 9 shifted row updates.
template <typename acc_t>
void avg_pool_scatter(int64_t H, int64_t W, int64_t stride, const NodeLayout& L, acc_t* d, acc_t* dx) {
  for (int64_t oh = 0, o = 0; oh < L.Ho; ++oh)
    for (int64_t ow = 0; ow < L.Wo; ++ow, ++o) d[o] /= static_cast<acc_t>(window_count(pool_window(oh, ow, stride, H, W)));
  for (int64_t oh = 0; oh < L.Ho; ++oh) {
    const acc_t* d_row = d + oh * L.Wo;
    for (int64_t kh = 0; kh < 3; ++kh) {
      const int64_t ih = oh * stride - 1 + kh;
      if (ih < 0 || ih >= H) continue;
      acc_t* dx_row = dx + ih * W;
      for (int64_t kw = 0; kw < 3; ++kw) {
        // Outputs whose column ow * stride - 1 + kw lies in [0, W).
        const int64_t ow0 = kw == 0 ? 1 : 0;
        const int64_t ow1 = std::min<int64_t>(L.Wo, (W - kw) / stride + 1);
        for (int64_t ow = ow0; ow < ow1; ++ow) dx_row[ow * stride - 1 + kw] += d_row[ow];
      }
    }
  }
}

// Lanes of independent partial sums, so the plane sums vectorise (fixed order: deterministic).
constexpr int64_t kLanes = 8;

template <typename acc_t, typename Term>
acc_t lane_sum(int64_t n, Term term) {
  acc_t lanes[kLanes] = {};
  int64_t o = 0;
  for (; o + kLanes <= n; o += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += term(o + l);
  for (int64_t l = 0; o < n; ++o, ++l) lanes[l] += term(o);
  acc_t sum = 0;
  for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
  return sum;
}

// Per (row, channel) mean and biased variance over N planes: two passes inside each plane, the
// planes merged in order with Chan's formula (accurate without a third pass over the input).
template <typename scalar_t, typename acc_t>
void batch_statistics(const NodeLayout& L, const std::vector<BnSource<scalar_t>>& sources, acc_t* mean, acc_t* var) {
  const int64_t C = L.C, HW = L.plane();
  at::parallel_for(0, L.num_bn_rows * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> values(HW);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / C, c = item % C;
      acc_t total_mean = 0, total_m2 = 0;
      int64_t count = 0;
      for (int64_t n = 0; n < L.N; ++n) {
        fill_plane(sources[b], n * C + c, L, values.data());
        const acc_t* v = values.data();
        const acc_t plane_mean = lane_sum<acc_t>(HW, [&](int64_t o) { return v[o]; }) / static_cast<acc_t>(HW);
        const acc_t m2 = lane_sum<acc_t>(HW, [&](int64_t o) { return (v[o] - plane_mean) * (v[o] - plane_mean); });
        const int64_t merged = count + HW;
        const acc_t delta = plane_mean - total_mean;
        total_mean += delta * static_cast<acc_t>(HW) / static_cast<acc_t>(merged);
        total_m2 += m2 + delta * delta * static_cast<acc_t>(count) * static_cast<acc_t>(HW) / static_cast<acc_t>(merged);
        count = merged;
      }
      mean[item] = total_mean;
      var[item] = count > 0 ? total_m2 / static_cast<acc_t>(count) : acc_t(0);
    }
  });
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
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
  const bool batch_stats = !(running_mean.has_value() && running_mean->defined());
  const auto edges = contiguous_all(edge_inputs_arg);
  const auto convs = contiguous_all(conv_outputs_arg);
  const auto dtype = edges[0].scalar_type();
  at::Tensor out = at::empty({L.N, L.C, L.Ho, L.Wo}, edges[0].options());
  at::Tensor mean, var;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mixed_node_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_options = edges[0].options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const auto sources = bn_sources<scalar_t>(L, edges, convs);
    if (batch_stats) {
      mean = at::zeros({L.num_bn_rows, L.C}, acc_options);
      var = at::zeros({L.num_bn_rows, L.C}, acc_options);
      if (L.count() > 0)
        batch_statistics<scalar_t, acc_t>(L, sources, mean.mutable_data_ptr<acc_t>(), var.mutable_data_ptr<acc_t>());
    } else {
      mean = running_mean->to(acc_options).contiguous().clone();
      var = running_var->to(acc_options).contiguous().clone();
    }
    if (L.count() == 0) return;
    const at::Tensor weights = weights_arg.to(acc_options).contiguous();
    const acc_t* w = weights.const_data_ptr<acc_t>();
    const acc_t* mu = mean.const_data_ptr<acc_t>();
    std::vector<acc_t> invstd(L.num_bn_rows * L.C);
    const acc_t* v = var.const_data_ptr<acc_t>();
    for (size_t i = 0; i < invstd.size(); ++i) invstd[i] = bn_invstd(v[i], eps);
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    const int64_t C = L.C, HW = L.plane(), K = static_cast<int64_t>(convs.size());

    at::parallel_for(0, L.N * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(HW), values(HW);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t c = p % C;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        auto add_normalised = [&](int64_t b, acc_t weight) {
          fill_plane(sources[b], p, L, values.data());
          const acc_t m = mu[b * C + c], s = invstd[b * C + c];
          for (int64_t o = 0; o < HW; ++o) acc[o] += weight * bn_normalize(values[o], m, s);
        };
        for (const FreeItem& item : L.free) {
          if (item.kind == kFreeSkip) {
            const scalar_t* x = edges[item.edge].const_data_ptr<scalar_t>() + p * HW;
            for (int64_t o = 0; o < HW; ++o) acc[o] = accumulate_product(acc[o], w[item.weight_index], x[o]);
          } else {
            add_normalised(item.bn_row, w[item.weight_index]);
          }
        }
        for (int64_t k = 0; k < K; ++k) add_normalised(L.conv_bn_row(k), w[L.conv_weight_index[k]]);
        for (int64_t o = 0; o < HW; ++o) y[p * HW + o] = static_cast<scalar_t>(acc[o]);
      }
    });
  });
  return {out, mean, var};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> mixed_node_backward_cpu(
    const at::Tensor& grad_arg, at::TensorList edge_inputs_arg, at::IntArrayRef strides,
    at::TensorList conv_outputs_arg, const at::Tensor& weights_arg, at::IntArrayRef free_items,
    at::IntArrayRef free_kinds, at::IntArrayRef conv_items, const at::Tensor& mean_arg, const at::Tensor& var_arg,
    double eps, bool batch_stats) {
  const NodeLayout L = check_mixed_node_backward_args(grad_arg, edge_inputs_arg, strides, conv_outputs_arg,
                                                      weights_arg, free_items, free_kinds, conv_items, mean_arg,
                                                      var_arg);
  const auto edges = contiguous_all(edge_inputs_arg);
  const auto convs = contiguous_all(conv_outputs_arg);
  const at::Tensor grad = grad_arg.contiguous();
  auto grad_edges = empty_like_all(edges);
  auto grad_convs = empty_like_all(convs);
  at::Tensor grad_weights;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "mixed_node_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_options = grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const int64_t C = L.C, HW = L.plane(), M = L.count();
    const int64_t F = static_cast<int64_t>(L.free.size()), K = static_cast<int64_t>(convs.size());
    const at::Tensor weights = weights_arg.to(acc_options).contiguous();
    const acc_t* w = weights.const_data_ptr<acc_t>();
    const at::Tensor mean = mean_arg.to(acc_options).contiguous();
    const acc_t* mu = mean.const_data_ptr<acc_t>();
    const at::Tensor var = var_arg.to(acc_options).contiguous();
    std::vector<acc_t> invstd(L.num_bn_rows * C);
    for (size_t i = 0; i < invstd.size(); ++i) invstd[i] = bn_invstd(var.const_data_ptr<acc_t>()[i], eps);
    const auto sources = bn_sources<scalar_t>(L, edges, convs);
    const scalar_t* g = grad.const_data_ptr<scalar_t>();

    // Pass 1, per (row, channel): sum(g * xhat) for each BatchNorm, sum(g * x) for each skip,
    // and sum(g) in the last row. Rows: free items, conv outputs, sum(g).
    const int64_t rows = F + K + 1;
    at::Tensor partials = at::zeros({rows, C}, acc_options);
    acc_t* partial = partials.mutable_data_ptr<acc_t>();
    at::parallel_for(0, rows * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> values(HW);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t r = item / C, c = item % C;
        acc_t total = 0;
        for (int64_t n = 0; n < L.N; ++n) {
          const int64_t p = n * C + c;
          const scalar_t* gp = g + p * HW;
          acc_t sum;
          if (r == F + K) {
            sum = lane_sum<acc_t>(HW, [&](int64_t o) { return static_cast<acc_t>(gp[o]); });
          } else if (r < F && L.free[r].kind == kFreeSkip) {
            const scalar_t* x = edges[L.free[r].edge].const_data_ptr<scalar_t>() + p * HW;
            sum = lane_sum<acc_t>(HW, [&](int64_t o) { return accumulate_product(acc_t(0), static_cast<acc_t>(gp[o]), x[o]); });
          } else {
            const int64_t b = r < F ? L.free[r].bn_row : L.conv_bn_row(r - F);
            fill_plane(sources[b], p, L, values.data());
            const acc_t m = mu[b * C + c], s = invstd[b * C + c];
            const acc_t* v = values.data();
            sum = lane_sum<acc_t>(HW, [&](int64_t o) { return static_cast<acc_t>(gp[o]) * bn_normalize(v[o], m, s); });
          }
          total += sum;
        }
        partial[item] = total;
      }
    });

    // Weight gradients: the per-channel partials added in channel order.
    at::Tensor grad_w = at::zeros({weights.numel()}, acc_options);
    acc_t* gw = grad_w.mutable_data_ptr<acc_t>();
    for (int64_t r = 0; r < F + K; ++r) {
      acc_t sum = 0;
      for (int64_t c = 0; c < C; ++c) sum += partial[r * C + c];
      gw[r < F ? L.free[r].weight_index : L.conv_weight_index[r - F]] += sum;
    }
    grad_weights = grad_w.view(weights_arg.sizes()).to(weights_arg.scalar_type());
    if (M == 0) return;

    // mean(g) and mean(g * xhat) of each BatchNorm's input gradient; zero with running statistics.
    const acc_t inv_count = batch_stats ? acc_t(1) / static_cast<acc_t>(M) : acc_t(0);
    auto mean_g = [&](int64_t c) { return partial[(F + K) * C + c] * inv_count; };
    auto mean_g_xhat = [&](int64_t r, int64_t c) { return partial[r * C + c] * inv_count; };

    // Pass 2, per plane: the conv outputs' BatchNorm input gradients, and each edge input's
    // gradient through its skip, pools and their BatchNorms.
    at::parallel_for(0, L.N * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> dx, d(HW), values(HW);
      std::vector<uint8_t> found(L.Wo);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t c = p % C;
        const scalar_t* gp = g + p * HW;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t b = L.conv_bn_row(k);
          const scalar_t* yk = convs[k].const_data_ptr<scalar_t>() + p * HW;
          scalar_t* dy = grad_convs[k].mutable_data_ptr<scalar_t>() + p * HW;
          const acc_t wk = w[L.conv_weight_index[k]], m = mu[b * C + c], s = invstd[b * C + c];
          const acc_t mg = mean_g(c), mgx = mean_g_xhat(F + k, c);
          for (int64_t o = 0; o < HW; ++o) {
            const acc_t xhat = bn_normalize(static_cast<acc_t>(yk[o]), m, s);
            dy[o] = static_cast<scalar_t>(bn_input_gradient(wk, s, static_cast<acc_t>(gp[o]), xhat, mg, mgx));
          }
        }
        for (int64_t e = 0; e < L.edges(); ++e) {
          const int64_t H = L.H[e], W = L.W[e], stride = L.stride[e];
          const scalar_t* x = edges[e].const_data_ptr<scalar_t>() + p * H * W;
          dx.assign(H * W, acc_t(0));
          for (int64_t i = 0; i < F; ++i) {
            const FreeItem& item = L.free[i];
            if (item.edge != e) continue;
            const acc_t wi = w[item.weight_index];
            if (item.kind == kFreeSkip) {
              for (int64_t o = 0; o < HW; ++o) dx[o] += scaled_gradient<acc_t>(wi, static_cast<acc_t>(gp[o]));
              continue;
            }
            // The gradient of every pool output (through BN), then each goes back to its window.
            const int64_t b = item.bn_row;
            const acc_t m = mu[b * C + c], s = invstd[b * C + c], mg = mean_g(c), mgx = mean_g_xhat(i, c);
            fill_plane(sources[b], p, L, values.data());
            for (int64_t o = 0; o < HW; ++o)
              d[o] = bn_input_gradient(wi, s, static_cast<acc_t>(gp[o]), bn_normalize(values[o], m, s), mg, mgx);
            if (item.kind == kFreeMaxPool)
              max_pool_scatter(x, H, W, stride, L, values.data(), d.data(), dx.data(), found.data());
            else
              avg_pool_scatter(H, W, stride, L, d.data(), dx.data());
          }
          scalar_t* gx = grad_edges[e].mutable_data_ptr<scalar_t>() + p * H * W;
          for (int64_t j = 0; j < H * W; ++j) gx[j] = static_cast<scalar_t>(dx[j]);
        }
      }
    });
  });
  return {grad_edges, grad_convs, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastdnas, CPU, m) {
  m.impl("mixed_node", &mixed_node_cpu);
  m.impl("_mixed_node_backward", &mixed_node_backward_cpu);
}

}  // namespace fastdnas
