// mixed_node: a whole DARTS search node in one op, with the parameter-free candidates and every
// search-mode BatchNorm computed inside (see fastdnas/reference.py for the definition):
//
//   out = sum over free items i of weights[i] * F_i(edge_inputs[edge_i])
//       + sum over conv outputs k of weights[k] * BN_k(conv_outputs[k])
//
// with F = BN(max_pool_3x3), BN(avg_pool_3x3), identity (skip at stride 1) or avg_pool_3x3
// without BatchNorm (the NAS-Bench-201 space's pool), BN a BatchNorm
// (affine=False) on batch statistics, or on given running statistics. The pools' outputs are
// never saved for the backward: the backward pass computes them again from the edge inputs.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "../common/checks.h"
#include "../common/pool_bn_math.h"

namespace fastdnas {

// Kinds of free (parameter-free) items.
constexpr int64_t kFreeMaxPool = 0;
constexpr int64_t kFreeAvgPool = 1;
constexpr int64_t kFreeSkip = 2;
constexpr int64_t kFreePlainAvgPool = 3;  // avg_pool_3x3 without BatchNorm
constexpr int64_t kFreePlainMaxPool = 4;  // max_pool_3x3 without BatchNorm

// Free items without a BatchNorm (no statistics row): skip and the plain pools.
FASTDNAS_HOST_DEVICE bool free_kind_has_bn(int64_t kind) { return kind == kFreeMaxPool || kind == kFreeAvgPool; }
FASTDNAS_HOST_DEVICE bool free_kind_is_max(int64_t kind) { return kind == kFreeMaxPool || kind == kFreePlainMaxPool; }

// Limits that keep the CUDA kernels' argument tables small (the 4 KB parameter limit of older
// GPUs); wider nodes are split by the caller (fastdnas/nn/mixed_op.py).
constexpr int64_t kMaxNodeEdges = 16;
constexpr int64_t kMaxFreeItems = 3 * kMaxNodeEdges;
constexpr int64_t kMaxConvOutputs = 5 * kMaxNodeEdges;

struct FreeItem {
  int64_t edge;
  int64_t kind;
  int64_t weight_index;  // flat index into weights [E, P]
  int64_t bn_row;        // row of mean/var, -1 for skip and the plain avg pool
};

// Shapes and item tables of one call, validated.
struct NodeLayout {
  int64_t N = 0, C = 0, Ho = 0, Wo = 0;
  std::vector<int64_t> H, W, stride;  // per edge
  std::vector<FreeItem> free;
  std::vector<int64_t> conv_weight_index;  // per conv output
  int64_t num_bn_rows = 0;                 // BN'd free items, then the conv outputs
  int64_t edges() const { return static_cast<int64_t>(H.size()); }
  int64_t plane() const { return Ho * Wo; }
  int64_t count() const { return N * Ho * Wo; }  // elements per channel of every BatchNorm
  int64_t conv_bn_row(int64_t k) const { return num_bn_rows - static_cast<int64_t>(conv_weight_index.size()) + k; }
};

inline NodeLayout make_node_layout(const char* op, at::TensorList edge_inputs, at::IntArrayRef strides,
                                   at::TensorList conv_outputs, const at::Tensor& weights,
                                   at::IntArrayRef free_items, at::IntArrayRef free_kinds,
                                   at::IntArrayRef conv_items) {
  TORCH_CHECK(!edge_inputs.empty(), op, ": edge_inputs must hold at least one tensor, got an empty list");
  const int64_t E = static_cast<int64_t>(edge_inputs.size());
  TORCH_CHECK(E <= kMaxNodeEdges, op, ": edge_inputs holds ", E, " tensors; at most ", kMaxNodeEdges,
              " are supported (split wider nodes)");
  const at::Tensor& first = edge_inputs[0];
  TORCH_CHECK(first.defined() && is_supported_float(first.scalar_type()), op,
              ": edge_inputs must be float64, float32, float16 or bfloat16 tensors");
  TORCH_CHECK(static_cast<int64_t>(strides.size()) == E, op, ": strides must hold one stride per edge input (", E,
              "), got ", strides.size());
  NodeLayout L;
  for (int64_t e = 0; e < E; ++e) {
    const at::Tensor& x = edge_inputs[e];
    TORCH_CHECK(x.defined() && x.dim() == 4, op, ": edge_inputs[", e, "] must be a 4-D tensor [N, C, H, W]");
    TORCH_CHECK(x.scalar_type() == first.scalar_type(), op, ": edge_inputs[", e, "] has dtype ", x.scalar_type(),
                " but edge_inputs[0] has dtype ", first.scalar_type(), "; all must match");
    TORCH_CHECK(x.device() == first.device(), op, ": edge_inputs[", e, "] is on ", x.device(),
                " but edge_inputs[0] is on ", first.device(), "; all must be on one device");
    TORCH_CHECK(x.size(0) == first.size(0) && x.size(1) == first.size(1), op, ": edge_inputs[", e, "] has shape ",
                x.sizes(), " but edge_inputs[0] has shape ", first.sizes(), "; N and C must match");
    TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, op, ": edge_inputs[", e, "] must have H, W > 0, got shape ",
                x.sizes());
    TORCH_CHECK(strides[e] == 1 || strides[e] == 2, op, ": strides[", e, "] must be 1 or 2, got ", strides[e]);
    const int64_t ho = pooled_size(x.size(2), strides[e]);
    const int64_t wo = pooled_size(x.size(3), strides[e]);
    if (e == 0) {
      L.Ho = ho;
      L.Wo = wo;
    }
    TORCH_CHECK(ho == L.Ho && wo == L.Wo, op, ": edge_inputs[", e, "] (shape ", x.sizes(), ", stride ", strides[e],
                ") gives a ", ho, "x", wo, " output but edge_inputs[0] gives ", L.Ho, "x", L.Wo, "; all must match");
    L.H.push_back(x.size(2));
    L.W.push_back(x.size(3));
    L.stride.push_back(strides[e]);
  }
  L.N = first.size(0);
  L.C = first.size(1);

  TORCH_CHECK(weights.defined(), op, ": weights must be a floating-point tensor [", E,
              ", P] (one row of primitive weights per edge), got None");
  TORCH_CHECK(weights.is_floating_point() && weights.dim() == 2 && weights.size(0) == E, op,
              ": weights must be a floating-point tensor [", E, ", P] (one row of primitive weights per edge), got ",
              weights.sizes(), " ", weights.scalar_type());
  TORCH_CHECK(weights.device() == first.device(), op, ": weights is on ", weights.device(),
              " but the edge inputs are on ", first.device(), "; they must be on one device");
  const int64_t P = weights.size(1);

  TORCH_CHECK(free_items.size() == free_kinds.size(), op, ": free_items and free_kinds must have one entry per free "
              "item, got ", free_items.size(), " and ", free_kinds.size());
  TORCH_CHECK(static_cast<int64_t>(free_items.size()) <= kMaxFreeItems, op, ": at most ", kMaxFreeItems,
              " free items are supported, got ", free_items.size());
  TORCH_CHECK(static_cast<int64_t>(conv_outputs.size()) <= kMaxConvOutputs, op, ": at most ", kMaxConvOutputs,
              " conv outputs are supported, got ", conv_outputs.size());
  TORCH_CHECK(conv_items.size() == conv_outputs.size(), op, ": conv_items must have one entry per conv output (",
              conv_outputs.size(), "), got ", conv_items.size());
  TORCH_CHECK(!free_items.empty() || !conv_outputs.empty(), op,
              ": at least one candidate (a free item or a conv output) is needed");
  for (size_t i = 0; i < free_items.size(); ++i) {
    TORCH_CHECK(free_items[i] >= 0 && free_items[i] < E * P, op, ": free_items[", i, "] = ", free_items[i],
                " is not a flat index into weights [", E, ", ", P, "]");
    const int64_t kind = free_kinds[i];
    TORCH_CHECK(kind >= kFreeMaxPool && kind <= kFreePlainMaxPool, op, ": free_kinds[", i,
                "] must be 0 (max_pool_3x3), 1 (avg_pool_3x3), 2 (skip_connect), 3 (avg_pool_3x3 without BatchNorm) "
                "or 4 (max_pool_3x3 without BatchNorm), got ", kind);
    const int64_t edge = free_items[i] / P;
    TORCH_CHECK(kind != kFreeSkip || L.stride[edge] == 1, op, ": free item ", i, " is a skip on edge ", edge,
                " of stride ", L.stride[edge], "; a strided skip_connect is a FactorizedReduce (a conv output)");
    L.free.push_back({edge, kind, free_items[i], free_kind_has_bn(kind) ? L.num_bn_rows : -1});
    if (free_kind_has_bn(kind)) ++L.num_bn_rows;
  }
  for (size_t k = 0; k < conv_outputs.size(); ++k) {
    const at::Tensor& y = conv_outputs[k];
    TORCH_CHECK(y.defined() && y.dim() == 4 && y.size(0) == L.N && y.size(1) == L.C && y.size(2) == L.Ho &&
                    y.size(3) == L.Wo,
                op, ": conv_outputs[", k, "] must have shape [", L.N, ", ", L.C, ", ", L.Ho, ", ", L.Wo,
                "] (the node's output), got ", y.defined() ? y.sizes() : at::IntArrayRef{});
    TORCH_CHECK(y.scalar_type() == first.scalar_type() && y.device() == first.device(), op, ": conv_outputs[", k,
                "] must have the edge inputs' dtype ", first.scalar_type(), " and device ", first.device(), ", got ",
                y.scalar_type(), " on ", y.device());
    TORCH_CHECK(conv_items[k] >= 0 && conv_items[k] < E * P, op, ": conv_items[", k, "] = ", conv_items[k],
                " is not a flat index into weights [", E, ", ", P, "]");
    L.conv_weight_index.push_back(conv_items[k]);
    ++L.num_bn_rows;
  }
  return L;
}

inline void check_statistics(const char* op, const NodeLayout& L, const at::Tensor& t, const at::Device& device,
                             const char* what) {
  TORCH_CHECK(t.defined(), op, ": ", what, " is undefined");
  TORCH_CHECK(t.is_floating_point() && t.dim() == 2 && t.size(0) == L.num_bn_rows && t.size(1) == L.C, op, ": ",
              what, " must be a floating-point tensor [", L.num_bn_rows, ", ", L.C,
              "] (one row per BatchNorm: the pooled free items, then the conv outputs), got shape ", t.sizes(),
              " and dtype ", t.scalar_type());
  TORCH_CHECK(t.device() == device, op, ": ", what, " is on ", t.device(), " but the edge inputs are on ", device);
}

// Running statistics are given (eval) or not (training: batch statistics); never one of them.
inline void check_running_statistics(const char* op, const NodeLayout& L, const c10::optional<at::Tensor>& mean,
                                     const c10::optional<at::Tensor>& var, const at::Device& device) {
  const bool has_mean = mean.has_value() && mean->defined();
  const bool has_var = var.has_value() && var->defined();
  TORCH_CHECK(has_mean == has_var, op, ": running_mean and running_var must be given together (eval) or both None "
              "(batch statistics)");
  if (has_mean) {
    check_statistics(op, L, *mean, device, "running_mean");
    check_statistics(op, L, *var, device, "running_var");
  }
}

// The BatchNorm epsilon: >= 0 (NaN fails the test too).
inline void check_eps(const char* op, double eps) { TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps); }

// The argument checks of _mixed_node_backward (CPU and CUDA): the node, the statistics the
// forward used, eps and the output gradient; returns the node's layout. Errors name the forward op.
inline NodeLayout check_mixed_node_backward_args(const at::Tensor& grad, at::TensorList edge_inputs,
                                                 at::IntArrayRef strides, at::TensorList conv_outputs,
                                                 const at::Tensor& weights, at::IntArrayRef free_items,
                                                 at::IntArrayRef free_kinds, at::IntArrayRef conv_items,
                                                 const at::Tensor& mean, const at::Tensor& var, double eps) {
  const char* op = "mixed_node (backward)";
  NodeLayout L = make_node_layout(op, edge_inputs, strides, conv_outputs, weights, free_items, free_kinds,
                                  conv_items);
  const at::Tensor& first = edge_inputs[0];
  check_statistics(op, L, mean, first.device(), "mean");
  check_statistics(op, L, var, first.device(), "var");
  check_eps(op, eps);
  TORCH_CHECK(grad.defined() && grad.dim() == 4 && grad.size(0) == L.N && grad.size(1) == L.C &&
                  grad.size(2) == L.Ho && grad.size(3) == L.Wo && grad.scalar_type() == first.scalar_type() &&
                  grad.device() == first.device(),
              op, ": grad must have shape [", L.N, ", ", L.C, ", ", L.Ho, ", ", L.Wo, "], dtype ",
              first.scalar_type(), " and device ", first.device());
  return L;
}

}  // namespace fastdnas
