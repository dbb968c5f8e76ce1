// CUDA kernels of mixed_node on the current stream. Forward: batch statistics in one pass (one
// block per (BatchNorm row, channel, chunk of 1024 elements), the chunks merged in a fixed order
// by a second kernel that also computes each BatchNorm's invstd once), then the weighted sum.
// Backward, 3 launches: every per-channel sum in one pass (blocks over (row group, channel,
// chunk); the pools' values kept), the chunks merged (with invstd and the weight-gradient terms),
// then every input gradient in one kernel: conv outputs element-wise, edge inputs by a gather
// per element (no atomics: deterministic). Each thread takes 4 consecutive elements, loaded 128
// bits at a time (float32) where planes and pointers allow.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <initializer_list>
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

// A pool without BatchNorm (kind 3 or 4) of a plane at output (oh, ow).
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t plain_pool(int kind, const scalar_t* plane, int64_t H, int64_t W, int64_t oh,
                                            int64_t ow, int64_t stride) {
  if (kind == kFreePlainMaxPool) {
    int64_t argmax;
    return max_pool3x3<acc_t>(plane, H, W, oh, ow, stride, &argmax);
  }
  return avg_pool3x3<acc_t>(plane, H, W, oh, ow, stride);
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

// ---- Positions and loads ------------------------------------------------------------------
//
// Every kernel gives each thread kItems consecutive elements: in the element kernels kItems
// consecutive elements of the [N, C, Ho, Wo] layout, in the per-channel reductions kItems
// consecutive elements of one channel's N * Ho * Wo values (plane by plane). With kVector (the
// plane size a multiple of kItems and every pointer the kernel loads or stores that way aligned
// to kItems elements) the kItems elements lie in one plane and the tensors of that layout are
// read and written with one load or store of kItems elements (128 bits for float32); otherwise
// element by element. Both paths take the same elements in the same order, so their results are
// bitwise the same.
constexpr int kItems = 4;
// Elements of one channel per reduction block: its partial sums (one per block) depend on the
// shapes only, never on the device.
constexpr int64_t kChunk = int64_t{kThreads} * kItems;
// Rows (sums) per block of the backward sums: the output gradient is read once per row group.
constexpr int kRowGroup = 4;

template <typename scalar_t>
struct alignas(sizeof(scalar_t) * kItems) Pack {
  scalar_t v[kItems];
};

// The planes, rows and columns of a thread's kItems elements, and their flat indices in the
// [N, C, Ho, Wo] layout; `valid` of them exist (the last thread of the data may hold fewer).
struct Items {
  int64_t p[kItems], oh[kItems], ow[kItems], idx[kItems];
  int valid;
};

// kItems elements from plane p, position o on, the next plane after the last position being
// p + p_step; positions carried from the first, no division per element.
__device__ __forceinline__ Items items_from(int64_t p, int64_t o, int64_t p_step, int valid, int64_t Ho, int64_t Wo) {
  Items it;
  it.valid = valid;
  int64_t oh = o / Wo, ow = o % Wo;
#pragma unroll
  for (int q = 0; q < kItems; ++q) {
    it.p[q] = p;
    it.oh[q] = oh;
    it.ow[q] = ow;
    it.idx[q] = (p * Ho + oh) * Wo + ow;
    if (++ow == Wo) {
      ow = 0;
      if (++oh == Ho) {
        oh = 0;
        p += p_step;
      }
    }
  }
  return it;
}

__device__ __forceinline__ int valid_items(int64_t first, int64_t count) {
  return static_cast<int>(first >= count ? 0 : (count - first < kItems ? count - first : kItems));
}

// Elements first .. first + kItems - 1 of channel c of `count` (element i of a channel: plane
// i / (Ho * Wo) of the batch, position i % (Ho * Wo)).
__device__ __forceinline__ Items channel_items(int64_t first, int64_t count, int64_t C, int64_t c, int64_t Ho,
                                               int64_t Wo) {
  const int64_t plane = Ho * Wo;
  return items_from(first / plane * C + c, first % plane, C, valid_items(first, count), Ho, Wo);
}

// Elements first .. first + kItems - 1 of the [N, C, Ho, Wo] layout of `total` elements.
__device__ __forceinline__ Items layout_items(int64_t first, int64_t total, int64_t Ho, int64_t Wo) {
  const int64_t plane = Ho * Wo;
  return items_from(first / plane, first % plane, 1, valid_items(first, total), Ho, Wo);
}

// v[q] = data[it.idx[q]] for the valid items (the rest 0), in acc_t.
template <bool kVector, typename acc_t, typename scalar_t>
__device__ __forceinline__ void load_items(const scalar_t* __restrict__ data, const Items& it, acc_t (&v)[kItems]) {
  if (kVector && it.valid == kItems) {
    const Pack<scalar_t> pack = *reinterpret_cast<const Pack<scalar_t>*>(data + it.idx[0]);
#pragma unroll
    for (int q = 0; q < kItems; ++q) v[q] = static_cast<acc_t>(pack.v[q]);
  } else {
#pragma unroll
    for (int q = 0; q < kItems; ++q) v[q] = q < it.valid ? static_cast<acc_t>(data[it.idx[q]]) : acc_t(0);
  }
}

// data[it.idx[q]] = v[q] for the valid items.
template <bool kVector, typename acc_t, typename scalar_t>
__device__ __forceinline__ void store_items(scalar_t* __restrict__ data, const Items& it, const acc_t (&v)[kItems]) {
  if (kVector && it.valid == kItems) {
    Pack<scalar_t> pack;
#pragma unroll
    for (int q = 0; q < kItems; ++q) pack.v[q] = static_cast<scalar_t>(v[q]);
    *reinterpret_cast<Pack<scalar_t>*>(data + it.idx[0]) = pack;
  } else {
#pragma unroll
    for (int q = 0; q < kItems; ++q)
      if (q < it.valid) data[it.idx[q]] = static_cast<scalar_t>(v[q]);
  }
}

// v[q] = input of BatchNorm row b at the valid items (pools computed, conv outputs loaded).
template <bool kVector, typename acc_t, typename scalar_t>
__device__ __forceinline__ void bn_inputs(const NodeTable<scalar_t>& t, int b, const Items& it, acc_t (&v)[kItems]) {
  if (b >= t.num_free_bn) {
    load_items<kVector>(t.conv[b - t.num_free_bn], it, v);
    return;
  }
#pragma unroll
  for (int q = 0; q < kItems; ++q) v[q] = q < it.valid ? bn_input<acc_t>(t, b, it.p[q], it.oh[q], it.ow[q]) : acc_t(0);
}

// ---- Forward --------------------------------------------------------------------------------

// Batch statistics, one pass: one block per (BN row, channel, chunk of kChunk elements), each
// thread's kItems values kept in registers: the chunk's sum, then the sum of squared deviations
// from the chunk's mean. partials: [rows, C, chunks, 2]. Blocks: row fastest.
template <bool kVector, typename scalar_t, typename acc_t>
__global__ void statistics_kernel(NodeTable<scalar_t> t, int64_t chunks, acc_t* __restrict__ partials) {
  __shared__ acc_t chunk_sum;
  const int rows = t.num_free_bn + t.num_conv;
  const int b = static_cast<int>(blockIdx.x % rows);
  const int64_t rest = blockIdx.x / rows, j = rest % chunks, c = rest / chunks;
  const int64_t count = t.N * t.Ho * t.Wo, first = j * kChunk;
  const int64_t length = count - first < kChunk ? count - first : kChunk;
  const Items it = channel_items(first + int64_t{threadIdx.x} * kItems, count, t.C, c, t.Ho, t.Wo);
  acc_t v[kItems];
  bn_inputs<kVector>(t, b, it, v);
  acc_t sum[1] = {0};
  for (int q = 0; q < it.valid; ++q) sum[0] += v[q];
  block_sums<acc_t, 1>(sum, 1, &chunk_sum, 1);
  const acc_t m = chunk_sum / static_cast<acc_t>(length);
  acc_t m2[1] = {0};
  for (int q = 0; q < it.valid; ++q) {
    const acc_t d = v[q] - m;
    m2[0] += d * d;
  }
  acc_t* out = partials + ((b * t.C + c) * chunks + j) * 2;
  block_sums<acc_t, 1>(m2, 1, out + 1, 1);
  if (threadIdx.x == 0) out[0] = chunk_sum;
}

// The chunks of each (BN row, channel) merged in chunk order, one warp each (lanes stride the
// chunks, then a fixed shuffle tree): mean = sum / count, var = (sum of the chunks' squared
// deviations + n_j (mean_j - mean)^2) / count (exact, and no cancellation), invstd once.
template <typename acc_t>
__global__ void finish_statistics_kernel(const acc_t* __restrict__ partials, int64_t pairs, int64_t chunks,
                                         int64_t count, double eps, acc_t* __restrict__ mean,
                                         acc_t* __restrict__ var, acc_t* __restrict__ invstd) {
  const int64_t s = int64_t{blockIdx.x} * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (s >= pairs) return;  // the whole warp: its shuffles below involve no exited lane
  const acc_t* part = partials + s * chunks * 2;
  acc_t total = 0;
  for (int64_t j = lane; j < chunks; j += 32) total += part[2 * j];
  const acc_t m = __shfl_sync(0xffffffffu, warp_sum(total), 0) / static_cast<acc_t>(count);
  acc_t m2 = 0;
  for (int64_t j = lane; j < chunks; j += 32) {
    const int64_t n_j = count - j * kChunk < kChunk ? count - j * kChunk : kChunk;
    const acc_t d = part[2 * j] / static_cast<acc_t>(n_j) - m;
    m2 += part[2 * j + 1] + static_cast<acc_t>(n_j) * d * d;
  }
  m2 = warp_sum(m2);
  if (lane == 0) {
    const acc_t v = m2 / static_cast<acc_t>(count);
    mean[s] = m;
    var[s] = v;
    invstd[s] = bn_invstd(v, eps);
  }
}

// invstd = 1 / sqrt(var + eps) of each (BatchNorm row, channel) of given statistics, once.
template <typename acc_t>
__global__ void invstd_kernel(const acc_t* __restrict__ var, int64_t n, double eps, acc_t* __restrict__ invstd) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) invstd[i] = bn_invstd(var[i], eps);
}

// The weighted sum, kItems output elements per thread.
template <bool kVector, typename scalar_t, typename acc_t>
__global__ void forward_kernel(NodeTable<scalar_t> t, const acc_t* __restrict__ weights,
                               const acc_t* __restrict__ mean, const acc_t* __restrict__ invstd,
                               scalar_t* __restrict__ out) {
  const int64_t n = t.N * t.C * t.Ho * t.Wo, groups = (n + kItems - 1) / kItems;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; group < groups; group += step) {
    const Items it = layout_items(group * kItems, n, t.Ho, t.Wo);
    int64_t c[kItems];
    for (int q = 0; q < kItems; ++q) c[q] = it.p[q] % t.C;
    acc_t acc[kItems] = {}, v[kItems];
    for (int i = 0; i < t.num_free; ++i) {
      const acc_t w = weights[t.free_weight[i]];
      const int e = t.free_edge[i];
      if (t.free_kind[i] == kFreeSkip) {  // stride 1: the output's layout
        load_items<kVector>(t.edge[e], it, v);
        for (int q = 0; q < kItems; ++q) acc[q] += w * v[q];
      } else if (t.free_kind[i] == kFreePlainAvgPool || t.free_kind[i] == kFreePlainMaxPool) {
        for (int q = 0; q < it.valid; ++q)
          acc[q] += w * plain_pool<acc_t>(t.free_kind[i], t.edge[e] + it.p[q] * t.H[e] * t.W[e], t.H[e], t.W[e],
                                          it.oh[q], it.ow[q], t.stride[e]);
      } else {
        const int b = t.free_row[i];
        bn_inputs<kVector>(t, b, it, v);
        for (int q = 0; q < it.valid; ++q) {
          const int64_t s = b * t.C + c[q];
          acc[q] += w * bn_normalize(v[q], mean[s], invstd[s]);
        }
      }
    }
    for (int k = 0; k < t.num_conv; ++k) {
      const acc_t w = weights[t.conv_weight[k]];
      load_items<kVector>(t.conv[k], it, v);
      for (int q = 0; q < it.valid; ++q) {
        const int64_t s = (t.num_free_bn + k) * t.C + c[q];
        acc[q] += w * bn_normalize(v[q], mean[s], invstd[s]);
      }
    }
    store_items<kVector>(out, it, acc);
  }
}

// ---- Backward -------------------------------------------------------------------------------

// Rows of the backward sums: the free items (sum g*xhat for a BatchNorm'd pool, sum g*x for a
// skip, sum g*pool for a plain pool), the conv outputs (sum g*xhat), and last sum(g) (on
// batch statistics only).
template <typename scalar_t>
struct RowKind {
  int b;  // BN row, -1 for none
  bool skip, plain, is_sum;
};

template <typename scalar_t>
__device__ __forceinline__ RowKind<scalar_t> row_kind(const NodeTable<scalar_t>& t, int r) {
  RowKind<scalar_t> k;
  k.skip = r < t.num_free && t.free_kind[r] == kFreeSkip;
  k.plain = r < t.num_free && (t.free_kind[r] == kFreePlainAvgPool || t.free_kind[r] == kFreePlainMaxPool);
  k.is_sum = r == t.num_free + t.num_conv;
  k.b = r < t.num_free ? t.free_row[r] : (k.is_sum ? -1 : t.num_free_bn + (r - t.num_free));
  return k;
}

// One pass over the output gradient for every sum: one block per (group of kRowGroup rows,
// channel, chunk), the group fastest; g read once per group. The BatchNorm'd pools' values (and
// each max pool's window offset of its maximum, 0..8) are kept for the input gradients, which
// then need not pool again. partials: [rows, C, chunks].
template <bool kVector, typename scalar_t, typename acc_t>
__global__ void backward_sums_kernel(NodeTable<scalar_t> t, const scalar_t* __restrict__ grad,
                                     const acc_t* __restrict__ mean, const acc_t* __restrict__ var, double eps,
                                     int rows, int64_t chunks, acc_t* __restrict__ partials,
                                     acc_t* __restrict__ pool_values, uint8_t* __restrict__ argmax_offset) {
  const int groups = (rows + kRowGroup - 1) / kRowGroup;
  const int r0 = static_cast<int>(blockIdx.x % groups) * kRowGroup;
  const int64_t rest = blockIdx.x / groups, j = rest % chunks, c = rest / chunks;
  const int64_t plane = t.Ho * t.Wo, count = t.N * plane, per_pool = t.N * t.C * plane;
  const int group_rows = rows - r0 < kRowGroup ? rows - r0 : kRowGroup;
  const Items it = channel_items(j * kChunk + int64_t{threadIdx.x} * kItems, count, t.C, c, t.Ho, t.Wo);
  acc_t g[kItems], v[kItems];
  load_items<kVector>(grad, it, g);
  acc_t sum[kRowGroup] = {};
  for (int rr = 0; rr < group_rows; ++rr) {
    const int r = r0 + rr;
    const RowKind<scalar_t> k = row_kind(t, r);
    if (k.is_sum) {
      for (int q = 0; q < it.valid; ++q) sum[rr] += g[q];
    } else if (k.skip) {
      load_items<kVector>(t.edge[t.free_edge[r]], it, v);
      for (int q = 0; q < it.valid; ++q) sum[rr] += g[q] * v[q];
    } else if (k.plain) {
      const int e = t.free_edge[r];
      for (int q = 0; q < it.valid; ++q)
        sum[rr] += g[q] * plain_pool<acc_t>(t.free_kind[r], t.edge[e] + it.p[q] * t.H[e] * t.W[e], t.H[e], t.W[e],
                                            it.oh[q], it.ow[q], t.stride[e]);
    } else {
      const int64_t s = k.b * t.C + c;
      const acc_t m = mean[s], inv = bn_invstd(var[s], eps);  // once per thread
      if (k.b >= t.num_free_bn) {
        load_items<kVector>(t.conv[k.b - t.num_free_bn], it, v);
      } else {
        const int e = t.free_edge[r];
        const int64_t H = t.H[e], W = t.W[e], st = t.stride[e];
        for (int q = 0; q < it.valid; ++q) {
          const scalar_t* x = t.edge[e] + it.p[q] * H * W;
          const int64_t at = k.b * per_pool + it.idx[q];
          if (t.free_kind[r] == kFreeMaxPool) {
            int64_t a;
            v[q] = max_pool3x3<acc_t>(x, H, W, it.oh[q], it.ow[q], st, &a);
            argmax_offset[at] =
                static_cast<uint8_t>((a / W - (it.oh[q] * st - 1)) * 3 + (a % W - (it.ow[q] * st - 1)));
          } else {
            v[q] = avg_pool3x3<acc_t>(x, H, W, it.oh[q], it.ow[q], st);
          }
          pool_values[at] = v[q];
        }
      }
      for (int q = 0; q < it.valid; ++q) sum[rr] += g[q] * bn_normalize(v[q], m, inv);
    }
  }
  block_sums<acc_t, kRowGroup>(sum, group_rows, partials + (r0 * t.C + c) * chunks + j, t.C * chunks);
}

// One block per row: each channel's chunks added (a warp per channel: lanes stride the chunks,
// then a fixed shuffle tree) into sums [rows, C]; invstd of the row's BatchNorm, once per
// channel; then the row's weight-gradient term, the channel sums added in channel order.
template <typename scalar_t, typename acc_t>
__global__ void finish_sums_kernel(NodeTable<scalar_t> t, const acc_t* __restrict__ partials, int64_t chunks,
                                   const acc_t* __restrict__ var, double eps, acc_t* __restrict__ sums,
                                   acc_t* __restrict__ invstd, acc_t* __restrict__ item_sums) {
  const int r = blockIdx.x;
  const RowKind<scalar_t> k = row_kind(t, r);
  const int lane = threadIdx.x % 32;
  for (int64_t c = threadIdx.x / 32; c < t.C; c += kWarps) {
    const acc_t* part = partials + (r * t.C + c) * chunks;
    acc_t total = 0;
    for (int64_t j = lane; j < chunks; j += 32) total += part[j];
    total = warp_sum(total);
    if (lane == 0) {
      sums[r * t.C + c] = total;
      if (k.b >= 0) invstd[k.b * t.C + c] = bn_invstd(var[k.b * t.C + c], eps);
    }
  }
  __syncthreads();  // the block's sums written before thread 0 reads them
  if (threadIdx.x == 0 && !k.is_sum) {
    acc_t sum = 0;
    for (int64_t c = 0; c < t.C; ++c) sum += sums[r * t.C + c];
    item_sums[r] = sum;
  }
}

// mean(g) or mean(g * xhat) of channel c from its row of sums: on batch statistics only
// (running statistics need neither, and the sum(g) row is then not computed).
template <typename acc_t>
__device__ __forceinline__ acc_t channel_mean(bool batch_stats, const acc_t* sums, int row, int64_t C, int64_t c,
                                              acc_t inv_count) {
  return batch_stats ? sums[row * C + c] * inv_count : acc_t(0);
}

__device__ __forceinline__ int64_t clamp_below(int64_t low, int64_t v) { return v < low ? low : v; }
__device__ __forceinline__ int64_t clamp_above(int64_t high, int64_t v) { return v > high ? high : v; }

template <typename scalar_t>
struct GradTable {
  scalar_t* edge[kMaxNodeEdges];
  scalar_t* conv[kMaxConvOutputs];
  int64_t edge_begin[kMaxNodeEdges + 1];  // work items of edge e: [edge_begin[e], edge_begin[e + 1])
};

// Every input gradient in one launch. Work items: first kItems-element groups of the conv outputs'
// BatchNorm input gradients (conv by conv), then one per edge-input element (edge by edge): its
// skip, and the pool outputs whose windows hold it, gathered in a fixed order, each pool output's
// gradient (through its BatchNorm and weight) formed from the kept pool value. Thread 0 of block 0
// also adds the weight gradients, item by item in order.
template <bool kVector, typename scalar_t, typename acc_t>
__global__ void input_gradient_kernel(NodeTable<scalar_t> t, GradTable<scalar_t> out, const scalar_t* __restrict__ grad,
                                      const acc_t* __restrict__ weights, const acc_t* __restrict__ mean,
                                      const acc_t* __restrict__ invstd, const acc_t* __restrict__ sums,
                                      const acc_t* __restrict__ item_sums, bool batch_stats, acc_t inv_count,
                                      const acc_t* __restrict__ pool_values,
                                      const uint8_t* __restrict__ argmax_offset, acc_t* __restrict__ grad_weights) {
  if (blockIdx.x == 0 && threadIdx.x == 0)
    for (int r = 0; r < t.num_free + t.num_conv; ++r)
      grad_weights[r < t.num_free ? t.free_weight[r] : t.conv_weight[r - t.num_free]] += item_sums[r];
  const int64_t plane = t.Ho * t.Wo, per_output = t.N * t.C * plane;
  const int64_t conv_groups = (per_output + kItems - 1) / kItems, conv_items = conv_groups * t.num_conv;
  const int64_t n = conv_items + out.edge_begin[kMaxNodeEdges];
  const int sum_row = t.num_free + t.num_conv;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t w_i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w_i < n; w_i += step) {
    if (w_i < conv_items) {
      const int k = static_cast<int>(w_i / conv_groups);
      const Items it = layout_items((w_i % conv_groups) * kItems, per_output, t.Ho, t.Wo);
      const int64_t row = t.num_free_bn + k;
      const acc_t wk = weights[t.conv_weight[k]];
      acc_t y[kItems], g[kItems], dy[kItems];
      load_items<kVector>(t.conv[k], it, y);
      load_items<kVector>(grad, it, g);
      for (int q = 0; q < it.valid; ++q) {
        const int64_t c = it.p[q] % t.C, s = row * t.C + c;
        const acc_t inv = invstd[s];
        dy[q] = bn_input_gradient(batch_stats, wk, inv, g[q], bn_normalize(y[q], mean[s], inv),
                                  channel_mean(batch_stats, sums, sum_row, t.C, c, inv_count),
                                  channel_mean(batch_stats, sums, t.num_free + k, t.C, c, inv_count));
      }
      store_items<kVector>(out.conv[k], it, dy);
      continue;
    }
    const int64_t idx_all = w_i - conv_items;
    int e = 0;
    while (idx_all >= out.edge_begin[e + 1]) ++e;
    const int64_t idx = idx_all - out.edge_begin[e];
    const int64_t H = t.H[e], W = t.W[e], st = t.stride[e], in_plane = H * W;
    const int64_t p = idx / in_plane, pos = idx % in_plane, ih = pos / W, iw = pos % W, c = p % t.C;
    // Outputs whose window (rows oh*st-1 .. oh*st+1) holds row ih; likewise for columns.
    const int64_t oh0 = clamp_below(0, (ih - 1 + st - 1) / st), oh1 = clamp_above(t.Ho - 1, (ih + 1) / st);
    const int64_t ow0 = clamp_below(0, (iw - 1 + st - 1) / st), ow1 = clamp_above(t.Wo - 1, (iw + 1) / st);
    const scalar_t* g = grad + p * plane;
    acc_t acc = 0;
    for (int i = 0; i < t.num_free; ++i) {
      if (t.free_edge[i] != e) continue;
      const acc_t w = weights[t.free_weight[i]];
      if (t.free_kind[i] == kFreeSkip) {
        acc += scaled_gradient<acc_t>(w, static_cast<acc_t>(grad[idx]));
        continue;
      }
      if (t.free_kind[i] == kFreePlainMaxPool) {  // weight * g of every window whose maximum it is
        const scalar_t* x = t.edge[e] + p * in_plane;
        for (int64_t oh = oh0; oh <= oh1; ++oh)
          for (int64_t ow = ow0; ow <= ow1; ++ow) {
            int64_t a;
            max_pool3x3<acc_t>(x, H, W, oh, ow, st, &a);
            if (a == pos) acc += scaled_gradient<acc_t>(w, static_cast<acc_t>(g[oh * t.Wo + ow]));
          }
        continue;
      }
      if (t.free_kind[i] == kFreePlainAvgPool) {  // weight * g / window size of every window holding it
        for (int64_t oh = oh0; oh <= oh1; ++oh)
          for (int64_t ow = ow0; ow <= ow1; ++ow)
            acc += scaled_gradient<acc_t>(w, static_cast<acc_t>(g[oh * t.Wo + ow])) /
                   static_cast<acc_t>(window_count(pool_window(oh, ow, st, H, W)));
        continue;
      }
      const int b = t.free_row[i];
      const int64_t s = b * t.C + c;
      const acc_t m = mean[s], inv = invstd[s];
      const acc_t mg = channel_mean(batch_stats, sums, sum_row, t.C, c, inv_count);
      const acc_t mgx = channel_mean(batch_stats, sums, i, t.C, c, inv_count);
      const acc_t* v = pool_values + b * per_output + p * plane;
      const uint8_t* offsets = argmax_offset + b * per_output + p * plane;
      const bool is_max = t.free_kind[i] == kFreeMaxPool;
      for (int64_t oh = oh0; oh <= oh1; ++oh) {
        for (int64_t ow = ow0; ow <= ow1; ++ow) {
          const int64_t o = oh * t.Wo + ow;
          if (is_max && offsets[o] != (ih - (oh * st - 1)) * 3 + (iw - (ow * st - 1))) continue;
          const acc_t d = bn_input_gradient(batch_stats, w, inv, static_cast<acc_t>(g[o]), bn_normalize(v[o], m, inv),
                                            mg, mgx);
          acc += is_max ? d : d / static_cast<acc_t>(window_count(pool_window(oh, ow, st, H, W)));
        }
      }
    }
    out.edge[e][idx] = static_cast<scalar_t>(acc);
  }
}

// ---- Host -----------------------------------------------------------------------------------

// Whether kItems-element loads and stores are possible: planes of a multiple of kItems elements,
// and every pointer given aligned to kItems elements.
template <typename scalar_t>
bool vector_loads(int64_t plane, std::initializer_list<const void*> pointers) {
#if defined(FASTDNAS_CUDA_EMU)
  // The emulator's tests send aligned tensors down the element-by-element path too.
  if (std::getenv("FASTDNAS_EMU_SCALAR") != nullptr) return false;
#endif
  if (plane % kItems != 0) return false;
  for (const void* ptr : pointers)
    if (reinterpret_cast<uintptr_t>(ptr) % (sizeof(scalar_t) * kItems) != 0) return false;
  return true;
}

// The pointers of the [N, C, Ho, Wo] layout a kernel may read or write kItems at a time: the
// stride-1 edges (skips), the conv outputs.
template <typename scalar_t>
std::vector<const void*> layout_pointers(const NodeLayout& L, const std::vector<at::Tensor>& edges,
                                         const std::vector<at::Tensor>& convs) {
  std::vector<const void*> ptrs;
  for (int64_t e = 0; e < L.edges(); ++e)
    if (L.stride[e] == 1) ptrs.push_back(edges[e].const_data_ptr<scalar_t>());
  for (const auto& y : convs) ptrs.push_back(y.const_data_ptr<scalar_t>());
  return ptrs;
}

template <typename scalar_t>
bool all_aligned(int64_t plane, const std::vector<const void*>& ptrs, std::initializer_list<const void*> more) {
  if (!vector_loads<scalar_t>(plane, more)) return false;
  for (const void* ptr : ptrs)
    if (!vector_loads<scalar_t>(plane, {ptr})) return false;
  return true;
}

// Launches kernel<true> or kernel<false> (kVector) with the same arguments.
#define FASTDNAS_LAUNCH_VECTOR(vector, kernel, grid, stream, ...)                                  \
  do {                                                                                             \
    if (vector)                                                                                    \
      FASTDNAS_LAUNCH((kernel<true, scalar_t, acc_t>), grid, kThreads, 0, stream)(__VA_ARGS__);    \
    else                                                                                           \
      FASTDNAS_LAUNCH((kernel<false, scalar_t, acc_t>), grid, kThreads, 0, stream)(__VA_ARGS__);   \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                                \
  } while (0)

inline int64_t chunks_for(int64_t count) { return (count + kChunk - 1) / kChunk; }

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
    const bool vector = all_aligned<scalar_t>(L.plane(), layout_pointers<scalar_t>(L, edges, convs),
                                              {out.const_data_ptr<scalar_t>()});
    if (batch_stats) {
      mean = at::zeros({L.num_bn_rows, L.C}, acc_options);
      var = at::zeros({L.num_bn_rows, L.C}, acc_options);
      invstd = at::empty({L.num_bn_rows, L.C}, acc_options);
      // No channels: nothing to reduce (and a grid of zero blocks is an invalid launch).
      if (L.count() > 0 && L.num_bn_rows > 0 && L.C > 0) {
        const int64_t chunks = chunks_for(L.count()), pairs = L.num_bn_rows * L.C;
        at::Tensor partials = at::empty({pairs * chunks * 2}, acc_options);
        FASTDNAS_LAUNCH_VECTOR(vector, statistics_kernel, pairs * chunks, stream, table, chunks,
                               partials.mutable_data_ptr<acc_t>());
        FASTDNAS_LAUNCH((finish_statistics_kernel<acc_t>), (pairs + kWarps - 1) / kWarps, kThreads, 0, stream)(
            partials.const_data_ptr<acc_t>(), pairs, chunks, L.count(), eps, mean.mutable_data_ptr<acc_t>(),
            var.mutable_data_ptr<acc_t>(), invstd.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    } else {
      mean = running_mean->to(acc_options).contiguous().clone();
      var = running_var->to(acc_options).contiguous().clone();
      invstd = bn_invstd_of<acc_t>(var, eps, stream);
    }
    if (L.count() == 0) return;
    const at::Tensor weights = weights_arg.to(acc_options).contiguous();
    FASTDNAS_LAUNCH_VECTOR(vector, forward_kernel, forward_grid_for((out.numel() + kItems - 1) / kItems), stream,
                           table, weights.const_data_ptr<acc_t>(), mean.const_data_ptr<acc_t>(),
                           invstd.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>());
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
    at::Tensor grad_w = at::zeros({weights.numel()}, acc_options);
    if (M > 0 && L.C > 0) {  // without channels every gradient is empty (and the grids would be too)
      const auto table = node_table<scalar_t>(L, edges, convs);
      GradTable<scalar_t> outputs{};
      int64_t begin = 0;
      for (int64_t e = 0; e < L.edges(); ++e) {
        outputs.edge[e] = grad_edges[e].mutable_data_ptr<scalar_t>();
        outputs.edge_begin[e] = begin;
        begin += grad_edges[e].numel();
      }
      for (int64_t e = L.edges(); e <= kMaxNodeEdges; ++e) outputs.edge_begin[e] = begin;
      std::vector<const void*> ptrs = layout_pointers<scalar_t>(L, edges, convs);
      for (int64_t k = 0; k < K; ++k) {
        outputs.conv[k] = grad_convs[k].mutable_data_ptr<scalar_t>();
        ptrs.push_back(outputs.conv[k]);
      }
      const bool vector = all_aligned<scalar_t>(L.plane(), ptrs, {grad.const_data_ptr<scalar_t>()});

      // The sum(g) row only on batch statistics: no row of running statistics reads it.
      const int rows = static_cast<int>(F + K + (batch_stats ? 1 : 0));
      const int64_t chunks = chunks_for(M), groups = (rows + kRowGroup - 1) / kRowGroup;
      at::Tensor partials = at::empty({rows * L.C * chunks}, acc_options);
      at::Tensor sums = at::empty({F + K + 1, L.C}, acc_options);
      at::Tensor invstd = at::empty({L.num_bn_rows, L.C}, acc_options);
      at::Tensor item_sums = at::empty({F + K + 1}, acc_options);
      // The BatchNorm'd pools' values and max-pool offsets live only until the input gradients.
      const int64_t pools = L.num_bn_rows - K, per_output = L.N * L.C * L.plane();
      at::Tensor pool_values = at::empty({std::max<int64_t>(pools, 1), per_output}, acc_options);
      at::Tensor argmax_offset = at::empty({std::max<int64_t>(pools, 1), per_output}, grad.options().dtype(at::kByte));
      FASTDNAS_LAUNCH_VECTOR(vector, backward_sums_kernel, groups * L.C * chunks, stream, table,
                             grad.const_data_ptr<scalar_t>(), mean.const_data_ptr<acc_t>(),
                             var.const_data_ptr<acc_t>(), eps, rows, chunks, partials.mutable_data_ptr<acc_t>(),
                             pool_values.mutable_data_ptr<acc_t>(), argmax_offset.mutable_data_ptr<uint8_t>());
      FASTDNAS_LAUNCH((finish_sums_kernel<scalar_t, acc_t>), rows, kThreads, 0, stream)(
          table, partials.const_data_ptr<acc_t>(), chunks, var.const_data_ptr<acc_t>(), eps,
          sums.mutable_data_ptr<acc_t>(), invstd.mutable_data_ptr<acc_t>(), item_sums.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const int64_t work = K * ((per_output + kItems - 1) / kItems) + begin;
      FASTDNAS_LAUNCH_VECTOR(vector, input_gradient_kernel, forward_grid_for(work), stream, table, outputs,
                             grad.const_data_ptr<scalar_t>(), weights.const_data_ptr<acc_t>(),
                             mean.const_data_ptr<acc_t>(), invstd.const_data_ptr<acc_t>(),
                             sums.const_data_ptr<acc_t>(), item_sums.const_data_ptr<acc_t>(), batch_stats,
                             acc_t(1) / static_cast<acc_t>(M), pool_values.const_data_ptr<acc_t>(),
                             argmax_offset.const_data_ptr<uint8_t>(), grad_w.mutable_data_ptr<acc_t>());
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
