// CUDA kernels of mixed_node on the current stream: batch statistics (one block per BatchNorm
// channel, two passes), the weighted sum (one thread per output element), and the fused backward:
// per-channel reductions (one block each), conv-output gradients, pool gradients per output,
// then a gather per edge-input element (no atomics: deterministic).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "../common/launch.cuh"
#include "../common/reduce_cuda.cuh"
#include "../common/tensor_lists.h"
#include "mixed_node.h"

namespace fastdnas {
namespace {

using namespace cuda_reduce;

// Everything a kernel needs to know about the node, passed by value (about 2.3 KB).
template <typename scalar_t>
struct NodeTable {
  const scalar_t* edge[kMaxNodeEdges];
  const scalar_t* conv[kMaxConvOutputs];
  int32_t H[kMaxNodeEdges], W[kMaxNodeEdges], stride[kMaxNodeEdges];
  int32_t free_edge[kMaxFreeItems], free_kind[kMaxFreeItems], free_weight[kMaxFreeItems], free_row[kMaxFreeItems];
  int32_t bn_free[kMaxFreeItems];  // BN row b < num_free_bn -> its free item
  int32_t conv_weight[kMaxConvOutputs];
  int32_t num_free, num_conv, num_free_bn;
  int64_t N, C, Ho, Wo;
};

template <typename scalar_t>
struct GradTable {
  scalar_t* edge[kMaxNodeEdges];
  scalar_t* conv[kMaxConvOutputs];
};

template <typename scalar_t>
NodeTable<scalar_t> node_table(const NodeLayout& L, const std::vector<at::Tensor>& edges,
                               const std::vector<at::Tensor>& convs) {
  NodeTable<scalar_t> t{};
  for (int64_t e = 0; e < L.edges(); ++e) {
    t.edge[e] = edges[e].const_data_ptr<scalar_t>();
    t.H[e] = static_cast<int32_t>(L.H[e]);
    t.W[e] = static_cast<int32_t>(L.W[e]);
    t.stride[e] = static_cast<int32_t>(L.stride[e]);
  }
  int32_t bn = 0;
  for (size_t i = 0; i < L.free.size(); ++i) {
    const FreeItem& item = L.free[i];
    t.free_edge[i] = static_cast<int32_t>(item.edge);
    t.free_kind[i] = static_cast<int32_t>(item.kind);
    t.free_weight[i] = static_cast<int32_t>(item.weight_index);
    t.free_row[i] = static_cast<int32_t>(item.bn_row);
    if (free_kind_has_bn(item.kind)) t.bn_free[bn++] = static_cast<int32_t>(i);
  }
  for (size_t k = 0; k < convs.size(); ++k) {
    t.conv[k] = convs[k].const_data_ptr<scalar_t>();
    t.conv_weight[k] = static_cast<int32_t>(L.conv_weight_index[k]);
  }
  t.num_free = static_cast<int32_t>(L.free.size());
  t.num_conv = static_cast<int32_t>(convs.size());
  t.num_free_bn = bn;
  t.N = L.N;
  t.C = L.C;
  t.Ho = L.Ho;
  t.Wo = L.Wo;
  return t;
}

// The input of BatchNorm row b at plane p, output (oh, ow): a pool of an edge input or a conv output.
template <typename acc_t, typename scalar_t>
__device__ acc_t bn_input(const NodeTable<scalar_t>& t, int b, int64_t p, int64_t oh, int64_t ow) {
  if (b < t.num_free_bn) {
    const int i = t.bn_free[b];
    const int e = t.free_edge[i];
    const int64_t H = t.H[e], W = t.W[e];
    const scalar_t* plane = t.edge[e] + p * H * W;
    if (t.free_kind[i] == kFreeMaxPool) {
      int64_t argmax;
      return max_pool3x3<acc_t>(plane, H, W, oh, ow, t.stride[e], &argmax);
    }
    return avg_pool3x3<acc_t>(plane, H, W, oh, ow, t.stride[e]);
  }
  return static_cast<acc_t>(t.conv[b - t.num_free_bn][(p * t.Ho + oh) * t.Wo + ow]);
}

// One block per (BN row, channel): mean, then the biased variance around it.
template <typename scalar_t, typename acc_t>
__global__ void statistics_kernel(NodeTable<scalar_t> t, double eps, acc_t* __restrict__ mean, acc_t* __restrict__ var,
                                  acc_t* __restrict__ invstd) {
  __shared__ acc_t result;
  const int b = blockIdx.x / t.C;
  const int64_t c = blockIdx.x % t.C;
  const int64_t plane = t.Ho * t.Wo, count = t.N * plane;
  acc_t sum[1] = {0};
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    const int64_t o = i % plane;
    sum[0] += bn_input<acc_t>(t, b, (i / plane) * t.C + c, o / t.Wo, o % t.Wo);
  }
  block_sums<acc_t, 1>(sum, 1, &result, 1);
  const acc_t m = result / static_cast<acc_t>(count);
  acc_t m2[1] = {0};
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    const int64_t o = i % plane;
    const acc_t d = bn_input<acc_t>(t, b, (i / plane) * t.C + c, o / t.Wo, o % t.Wo) - m;
    m2[0] += d * d;
  }
  block_sums<acc_t, 1>(m2, 1, &result, 1);
  if (threadIdx.x == 0) {
    mean[blockIdx.x] = m;
    const acc_t v = result / static_cast<acc_t>(count);
    var[blockIdx.x] = v;
    invstd[blockIdx.x] = bn_invstd(v, eps);
  }
}

// invstd = 1 / sqrt(var + eps) of each (BatchNorm row, channel), once, for the element kernels.
template <typename acc_t>
__global__ void invstd_kernel(const acc_t* __restrict__ var, int64_t n, double eps, acc_t* __restrict__ invstd) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) invstd[i] = bn_invstd(var[i], eps);
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(NodeTable<scalar_t> t, const acc_t* __restrict__ weights,
                               const acc_t* __restrict__ mean, const acc_t* __restrict__ invstd,
                               scalar_t* __restrict__ out) {
  const int64_t plane = t.Ho * t.Wo, n = t.N * t.C * plane;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    const int64_t p = idx / plane, o = idx % plane, c = p % t.C, oh = o / t.Wo, ow = o % t.Wo;
    acc_t acc = 0;
    for (int i = 0; i < t.num_free; ++i) {
      const acc_t w = weights[t.free_weight[i]];
      if (t.free_kind[i] == kFreeSkip) {
        acc = accumulate_product(acc, w, t.edge[t.free_edge[i]][idx]);  // stride 1: same layout as out
      } else if (t.free_kind[i] == kFreePlainAvgPool) {
        const int e = t.free_edge[i];
        acc += w * avg_pool3x3<acc_t>(t.edge[e] + p * t.H[e] * t.W[e], t.H[e], t.W[e], oh, ow, t.stride[e]);
      } else {
        const int64_t s = t.free_row[i] * t.C + c;
        acc += w * bn_normalize(bn_input<acc_t>(t, t.free_row[i], p, oh, ow), mean[s], invstd[s]);
      }
    }
    for (int k = 0; k < t.num_conv; ++k) {
      const int64_t s = (t.num_free_bn + k) * t.C + c;
      acc += weights[t.conv_weight[k]] *
             bn_normalize(static_cast<acc_t>(t.conv[k][idx]), mean[s], invstd[s]);
    }
    out[idx] = static_cast<scalar_t>(acc);
  }
}

// One block per (row, channel); rows: free items (sum g*xhat, or sum g*x for a skip), conv
// outputs (sum g*xhat), and last sum(g) (launched on batch statistics only).
template <typename scalar_t, typename acc_t>
__global__ void backward_sums_kernel(NodeTable<scalar_t> t, const scalar_t* __restrict__ grad,
                                     const acc_t* __restrict__ mean, const acc_t* __restrict__ invstd,
                                     acc_t* __restrict__ partials) {
  const int r = blockIdx.x / t.C;
  const int64_t c = blockIdx.x % t.C;
  const int64_t plane = t.Ho * t.Wo, count = t.N * plane;
  const bool skip = r < t.num_free && t.free_kind[r] == kFreeSkip;
  const bool plain = r < t.num_free && t.free_kind[r] == kFreePlainAvgPool;
  const bool is_sum = r == t.num_free + t.num_conv;
  const int b = r < t.num_free ? t.free_row[r] : t.num_free_bn + (r - t.num_free);
  acc_t m = 0, s = 0;
  if (!skip && !plain && !is_sum) {
    m = mean[b * t.C + c];
    s = invstd[b * t.C + c];
  }
  acc_t sum[1] = {0};
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    const int64_t p = (i / plane) * t.C + c, o = i % plane;
    const acc_t g = static_cast<acc_t>(grad[p * plane + o]);
    if (is_sum)
      sum[0] += g;
    else if (skip)
      sum[0] = accumulate_product(sum[0], g, t.edge[t.free_edge[r]][p * plane + o]);
    else if (plain) {
      const int e = t.free_edge[r];
      sum[0] += g * avg_pool3x3<acc_t>(t.edge[e] + p * t.H[e] * t.W[e], t.H[e], t.W[e], o / t.Wo, o % t.Wo,
                                       t.stride[e]);
    } else
      sum[0] += g * bn_normalize(bn_input<acc_t>(t, b, p, o / t.Wo, o % t.Wo), m, s);
  }
  block_sums<acc_t, 1>(sum, 1, partials + blockIdx.x, 1);
}

// Weight gradients: each item's partials added in channel order, then the items in order.
template <typename scalar_t, typename acc_t>
__global__ void weight_gradient_kernel(NodeTable<scalar_t> t, const acc_t* __restrict__ partials,
                                       acc_t* __restrict__ grad_weights) {
  __shared__ acc_t item_sum[kMaxFreeItems + kMaxConvOutputs];
  const int items = t.num_free + t.num_conv;
  for (int r = threadIdx.x; r < items; r += blockDim.x) {
    acc_t sum = 0;
    for (int64_t c = 0; c < t.C; ++c) sum += partials[r * t.C + c];
    item_sum[r] = sum;
  }
  __syncthreads();
  if (threadIdx.x == 0)
    for (int r = 0; r < items; ++r)
      grad_weights[r < t.num_free ? t.free_weight[r] : t.conv_weight[r - t.num_free]] += item_sum[r];
}

// mean(g) or mean(g * xhat) of channel c from its row of partials: on batch statistics only
// (running statistics need neither, and the sum(g) row is then not computed).
template <typename acc_t>
__device__ __forceinline__ acc_t channel_mean(bool batch_stats, const acc_t* partials, int row, int64_t C, int64_t c,
                                              acc_t inv_count) {
  return batch_stats ? partials[row * C + c] * inv_count : acc_t(0);
}

// BatchNorm input gradients of the conv outputs, one thread per element.
template <typename scalar_t, typename acc_t>
__global__ void conv_gradient_kernel(NodeTable<scalar_t> t, GradTable<scalar_t> out, const scalar_t* __restrict__ grad,
                                     const acc_t* __restrict__ weights, const acc_t* __restrict__ mean,
                                     const acc_t* __restrict__ invstd_of, const acc_t* __restrict__ partials,
                                     bool batch_stats, acc_t inv_count) {
  const int64_t plane = t.Ho * t.Wo, per_conv = t.N * t.C * plane, n = per_conv * t.num_conv;
  const int sum_row = t.num_free + t.num_conv;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    const int k = static_cast<int>(idx / per_conv);
    const int64_t j = idx % per_conv, c = (j / plane) % t.C;
    const int64_t s = (t.num_free_bn + k) * t.C + c;
    const acc_t m = mean[s], invstd = invstd_of[s];
    const acc_t xhat = bn_normalize(static_cast<acc_t>(t.conv[k][j]), m, invstd);
    out.conv[k][j] = static_cast<scalar_t>(bn_input_gradient(
        batch_stats, weights[t.conv_weight[k]], invstd, static_cast<acc_t>(grad[j]), xhat,
        channel_mean(batch_stats, partials, sum_row, t.C, c, inv_count),
        channel_mean(batch_stats, partials, t.num_free + k, t.C, c, inv_count)));
  }
}

// Gradient of each pool output (through its BatchNorm and weight; divided by the window size
// for avg pools), and for max pools the window offset (0..8) of the maximum.
template <typename scalar_t, typename acc_t>
__global__ void pool_gradient_kernel(NodeTable<scalar_t> t, const scalar_t* __restrict__ grad,
                                     const acc_t* __restrict__ weights, const acc_t* __restrict__ mean,
                                     const acc_t* __restrict__ invstd_of, const acc_t* __restrict__ partials,
                                     bool batch_stats, acc_t inv_count, acc_t* __restrict__ pool_grad,
                                     uint8_t* __restrict__ argmax_offset) {
  const int64_t plane = t.Ho * t.Wo, per_pool = t.N * t.C * plane, n = per_pool * t.num_free_bn;
  const int sum_row = t.num_free + t.num_conv;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    const int b = static_cast<int>(idx / per_pool);
    const int64_t j = idx % per_pool, p = j / plane, o = j % plane, c = p % t.C, oh = o / t.Wo, ow = o % t.Wo;
    const int i = t.bn_free[b], e = t.free_edge[i];
    const int64_t H = t.H[e], W = t.W[e], st = t.stride[e];
    const scalar_t* x = t.edge[e] + p * H * W;
    const int64_t s = b * t.C + c;
    const acc_t m = mean[s], invstd = invstd_of[s];
    const acc_t w = weights[t.free_weight[i]];
    const acc_t g = static_cast<acc_t>(grad[j]);
    const acc_t mg = channel_mean(batch_stats, partials, sum_row, t.C, c, inv_count);
    const acc_t mgx = channel_mean(batch_stats, partials, i, t.C, c, inv_count);
    if (t.free_kind[i] == kFreeMaxPool) {
      int64_t a;
      const acc_t v = max_pool3x3<acc_t>(x, H, W, oh, ow, st, &a);
      pool_grad[idx] = bn_input_gradient(batch_stats, w, invstd, g, bn_normalize(v, m, invstd), mg, mgx);
      argmax_offset[idx] = static_cast<uint8_t>((a / W - (oh * st - 1)) * 3 + (a % W - (ow * st - 1)));
    } else {
      const acc_t v = avg_pool3x3<acc_t>(x, H, W, oh, ow, st);
      pool_grad[idx] = bn_input_gradient(batch_stats, w, invstd, g, bn_normalize(v, m, invstd), mg, mgx) /
                       static_cast<acc_t>(window_count(pool_window(oh, ow, st, H, W)));
    }
  }
}

__device__ __forceinline__ int64_t clamp_below(int64_t low, int64_t v) { return v < low ? low : v; }
__device__ __forceinline__ int64_t clamp_above(int64_t high, int64_t v) { return v > high ? high : v; }

// Gradient of edge input e, one thread per element: its skip, and the pool outputs whose
// windows hold it (gathered, in a fixed order).
template <typename scalar_t, typename acc_t>
__global__ void edge_gradient_kernel(NodeTable<scalar_t> t, int e, const scalar_t* __restrict__ grad,
                                     const acc_t* __restrict__ weights, const acc_t* __restrict__ pool_grad,
                                     const uint8_t* __restrict__ argmax_offset, scalar_t* __restrict__ grad_edge) {
  const int64_t H = t.H[e], W = t.W[e], st = t.stride[e], in_plane = H * W;
  const int64_t plane = t.Ho * t.Wo, per_pool = t.N * t.C * plane, n = t.N * t.C * in_plane;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    const int64_t p = idx / in_plane, pos = idx % in_plane, ih = pos / W, iw = pos % W;
    // Outputs whose window (rows oh*st-1 .. oh*st+1) holds row ih; likewise for columns.
    const int64_t oh0 = clamp_below(0, (ih - 1 + st - 1) / st), oh1 = clamp_above(t.Ho - 1, (ih + 1) / st);
    const int64_t ow0 = clamp_below(0, (iw - 1 + st - 1) / st), ow1 = clamp_above(t.Wo - 1, (iw + 1) / st);
    acc_t acc = 0;
    for (int i = 0; i < t.num_free; ++i) {
      if (t.free_edge[i] != e) continue;
      if (t.free_kind[i] == kFreeSkip) {
        acc += scaled_gradient<acc_t>(weights[t.free_weight[i]], static_cast<acc_t>(grad[idx]));
        continue;
      }
      if (t.free_kind[i] == kFreePlainAvgPool) {  // weight * g / window size of every window holding it
        const scalar_t* g = grad + p * plane;
        for (int64_t oh = oh0; oh <= oh1; ++oh)
          for (int64_t ow = ow0; ow <= ow1; ++ow)
            acc += scaled_gradient<acc_t>(weights[t.free_weight[i]], static_cast<acc_t>(g[oh * t.Wo + ow])) /
                   static_cast<acc_t>(window_count(pool_window(oh, ow, st, H, W)));
        continue;
      }
      const acc_t* pg = pool_grad + t.free_row[i] * per_pool + p * plane;
      const uint8_t* offsets = argmax_offset + t.free_row[i] * per_pool + p * plane;
      const bool is_max = t.free_kind[i] == kFreeMaxPool;
      for (int64_t oh = oh0; oh <= oh1; ++oh) {
        for (int64_t ow = ow0; ow <= ow1; ++ow) {
          const int64_t o = oh * t.Wo + ow;
          if (!is_max || offsets[o] == (ih - (oh * st - 1)) * 3 + (iw - (ow * st - 1))) acc += pg[o];
        }
      }
    }
    grad_edge[idx] = static_cast<scalar_t>(acc);
  }
}

// The BatchNorm scales of given statistics, one per (row, channel), by invstd_kernel.
template <typename acc_t>
at::Tensor bn_invstd_of(const at::Tensor& var, double eps, cudaStream_t stream) {
  at::Tensor invstd = at::empty_like(var);
  if (var.numel() > 0) {
    FASTDNAS_LAUNCH((invstd_kernel<acc_t>), grid_for(var.numel(), var.numel()), kThreads, 0, stream)(
        var.const_data_ptr<acc_t>(), var.numel(), eps, invstd.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return invstd;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mixed_node_cuda(
    at::TensorList edge_inputs_arg, at::IntArrayRef strides, at::TensorList conv_outputs_arg,
    const at::Tensor& weights_arg, at::IntArrayRef free_items, at::IntArrayRef free_kinds, at::IntArrayRef conv_items,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var, double eps) {
  const char* op = "mixed_node";
  const NodeLayout L = make_node_layout(op, edge_inputs_arg, strides, conv_outputs_arg, weights_arg, free_items,
                                        free_kinds, conv_items);
  const auto device = edge_inputs_arg[0].device();
  check_running_statistics(op, L, running_mean, running_var, device);
  check_eps(op, eps);
  const c10::cuda::CUDAGuard device_guard(device);
  const bool batch_stats = !(running_mean.has_value() && running_mean->defined());
  const auto edges = contiguous_all(edge_inputs_arg);
  const auto convs = contiguous_all(conv_outputs_arg);
  at::Tensor out = at::empty({L.N, L.C, L.Ho, L.Wo}, edges[0].options());
  at::Tensor mean, var, invstd;
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, edges[0].scalar_type(), "mixed_node_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_options = edges[0].options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const auto table = node_table<scalar_t>(L, edges, convs);
    if (batch_stats) {
      mean = at::zeros({L.num_bn_rows, L.C}, acc_options);
      var = at::zeros({L.num_bn_rows, L.C}, acc_options);
      invstd = at::empty({L.num_bn_rows, L.C}, acc_options);
      // No channels: nothing to reduce (and a grid of zero blocks is an invalid launch).
      if (L.count() > 0 && L.num_bn_rows > 0 && L.C > 0) {
        FASTDNAS_LAUNCH((statistics_kernel<scalar_t, acc_t>), L.num_bn_rows * L.C, kThreads, 0, stream)(
            table, eps, mean.mutable_data_ptr<acc_t>(), var.mutable_data_ptr<acc_t>(), invstd.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    } else {
      mean = running_mean->to(acc_options).contiguous().clone();
      var = running_var->to(acc_options).contiguous().clone();
      invstd = bn_invstd_of<acc_t>(var, eps, stream);
    }
    if (L.count() == 0) return;
    const at::Tensor weights = weights_arg.to(acc_options).contiguous();
    FASTDNAS_LAUNCH((forward_kernel<scalar_t, acc_t>), forward_grid_for(out.numel()), kThreads, 0, stream)(
        table, weights.const_data_ptr<acc_t>(), mean.const_data_ptr<acc_t>(), invstd.const_data_ptr<acc_t>(),
        out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, mean, var};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> mixed_node_backward_cuda(
    const at::Tensor& grad_arg, at::TensorList edge_inputs_arg, at::IntArrayRef strides,
    at::TensorList conv_outputs_arg, const at::Tensor& weights_arg, at::IntArrayRef free_items,
    at::IntArrayRef free_kinds, at::IntArrayRef conv_items, const at::Tensor& mean_arg, const at::Tensor& var_arg,
    double eps, bool batch_stats) {
  const NodeLayout L = check_mixed_node_backward_args(grad_arg, edge_inputs_arg, strides, conv_outputs_arg,
                                                      weights_arg, free_items, free_kinds, conv_items, mean_arg,
                                                      var_arg, eps);
  const c10::cuda::CUDAGuard device_guard(edge_inputs_arg[0].device());
  const auto edges = contiguous_all(edge_inputs_arg);
  const auto convs = contiguous_all(conv_outputs_arg);
  const at::Tensor grad = grad_arg.contiguous();
  auto grad_edges = empty_like_all(edges);
  auto grad_convs = empty_like_all(convs);
  at::Tensor grad_weights;
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "mixed_node_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_options = grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const int64_t F = static_cast<int64_t>(L.free.size()), K = static_cast<int64_t>(convs.size());
    const int64_t M = L.count();
    const at::Tensor weights = weights_arg.to(acc_options).contiguous();
    const at::Tensor mean = mean_arg.to(acc_options).contiguous();
    const at::Tensor var = var_arg.to(acc_options).contiguous();
    const at::Tensor invstd = bn_invstd_of<acc_t>(var, eps, stream);
    at::Tensor grad_w = at::zeros({weights.numel()}, acc_options);
    if (M > 0 && L.C > 0) {  // without channels every gradient is empty (and the grids would be too)
      const auto table = node_table<scalar_t>(L, edges, convs);
      GradTable<scalar_t> outputs{};
      for (int64_t e = 0; e < L.edges(); ++e) outputs.edge[e] = grad_edges[e].mutable_data_ptr<scalar_t>();
      for (int64_t k = 0; k < K; ++k) outputs.conv[k] = grad_convs[k].mutable_data_ptr<scalar_t>();
      const acc_t* w = weights.const_data_ptr<acc_t>();
      const acc_t* mu = mean.const_data_ptr<acc_t>();
      const acc_t* v = invstd.const_data_ptr<acc_t>();
      const scalar_t* g = grad.const_data_ptr<scalar_t>();

      // The sum(g) row only on batch statistics: no row of running statistics reads it.
      at::Tensor partials = at::empty({F + K + 1, L.C}, acc_options);
      FASTDNAS_LAUNCH((backward_sums_kernel<scalar_t, acc_t>), (F + K + (batch_stats ? 1 : 0)) * L.C, kThreads, 0,
                      stream)(
          table, g, mu, v, partials.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const acc_t* partial = partials.const_data_ptr<acc_t>();
      FASTDNAS_LAUNCH((weight_gradient_kernel<scalar_t, acc_t>), 1, kThreads, 0, stream)(table, partial,
                                                                           grad_w.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();

      const acc_t inv_count = acc_t(1) / static_cast<acc_t>(M);
      const int64_t per_output = L.N * L.C * L.plane();
      if (K > 0) {
        FASTDNAS_LAUNCH((conv_gradient_kernel<scalar_t, acc_t>), forward_grid_for(per_output * K), kThreads, 0, stream)(
            table, outputs, g, w, mu, v, partial, batch_stats, inv_count);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      // Pool output gradients live only until the gather below.
      const int64_t pools = L.num_bn_rows - K;
      at::Tensor pool_grad = at::empty({std::max<int64_t>(pools, 1), per_output}, acc_options);
      at::Tensor argmax_offset = at::empty({std::max<int64_t>(pools, 1), per_output}, grad.options().dtype(at::kByte));
      if (pools > 0) {
        FASTDNAS_LAUNCH((pool_gradient_kernel<scalar_t, acc_t>), forward_grid_for(per_output * pools), kThreads, 0,
                        stream)(
            table, g, w, mu, v, partial, batch_stats, inv_count, pool_grad.mutable_data_ptr<acc_t>(),
            argmax_offset.mutable_data_ptr<uint8_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      for (int64_t e = 0; e < L.edges(); ++e) {
        FASTDNAS_LAUNCH((edge_gradient_kernel<scalar_t, acc_t>), forward_grid_for(grad_edges[e].numel()), kThreads, 0,
                        stream)(
            table, static_cast<int>(e), g, w, pool_grad.const_data_ptr<acc_t>(),
            argmax_offset.const_data_ptr<uint8_t>(), outputs.edge[e]);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    grad_weights = grad_w.view(weights_arg.sizes()).to(weights_arg.scalar_type());
  });
  return {grad_edges, grad_convs, grad_weights};
}

}  // namespace

FASTDNAS_CUDA_LIBRARY_IMPL(m) {
  m.impl("mixed_node", &mixed_node_cuda);
  m.impl("_mixed_node_backward", &mixed_node_backward_cuda);
}

}  // namespace fastdnas
