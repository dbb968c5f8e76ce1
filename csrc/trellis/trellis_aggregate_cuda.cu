// CUDA kernels of trellis_aggregate: forward and the fused backward, on the current stream.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <vector>

#include "../common/element_math.h"
#include "../common/launch.cuh"
#include "../common/reduce_cuda.cuh"
#include "../common/tensor_lists.h"
#include "trellis_aggregate.h"

namespace fastdnas {
namespace {

using namespace cuda_reduce;

constexpr int64_t kMaxTrellisBlocks = kMaxTrellisCells * kMaxTrellisBlocksPerCell;

template <typename T>
struct BlockTable {
  T ptr[kMaxTrellisBlocks];
};

template <typename T>
BlockTable<T> block_table(const std::vector<at::Tensor>& tensors) {
  BlockTable<T> table{};
  for (size_t i = 0; i < tensors.size(); ++i) table.ptr[i] = static_cast<T>(tensors[i].data_ptr());
  return table;
}

// The output viewed as [N * B planes, inner]: plane n * B + b is block b of sample n, and its
// element j reads element n * inner + j of cells[t][b] = blocks[t * B + b]. Both kernels walk
// fixed tiles of one plane (tile_elems = items * kThreads * kGroup consecutive elements), a block
// looping over tiles: the plane, sample and block index are found once per tile, and the elements
// of a tile are plain offsets from its plane (no division per element), in index_t (32 bits where
// the output fits). A thread takes kGroup consecutive elements per step (thread i of a step the
// elements [i * kGroup, (i + 1) * kGroup) of the step's kThreads * kGroup), read and written as
// one 128-bit access where every pointer is 16-byte aligned (`vector`), else element by element:
// the same elements, added in the same order, so both give the same bits. The tiles and the
// group depend on the sizes only, so the backward kernel's partial sums, one per tile, are the
// same for any grid and any alignment; the grids follow the device.
template <typename index_t>
struct TrellisTiles {
  index_t inner;           // elements per plane
  index_t tile_elems;      // elements per tile
  index_t tiles_per_plane;
  index_t tiles;           // N * B * tiles_per_plane
  int B;
  bool vector;             // 128-bit loads and stores (kGroup elements each)
};

// Elements of one 128-bit access.
template <typename scalar_t>
constexpr int kPackWidth = static_cast<int>(16 / sizeof(scalar_t));

template <typename scalar_t, int kWidth>
struct alignas(sizeof(scalar_t) * kWidth) Pack {
  scalar_t v[kWidth];
};

// A group of kPackWidth elements per thread step where the planes split into whole groups and
// the tiles still number at least kMinTrellisTiles (two per multiprocessor of a 132-SM GPU; a
// shape rule, not a device query); else one element per step, so small levels (Auto-DeepLab's
// 21 x 21 and 11 x 11 nodes) still spread over every multiprocessor.
constexpr int64_t kMinTrellisTiles = 264;

template <typename index_t>
TrellisTiles<index_t> trellis_tiles(int64_t n, int64_t inner, int64_t B, int64_t group) {
  const int64_t step = kThreads * group;
  const int64_t tile_elems = items_per_tile(n, step, 8) * step;
  const int64_t tiles_per_plane = (inner + tile_elems - 1) / tile_elems;
  return {static_cast<index_t>(inner), static_cast<index_t>(tile_elems), static_cast<index_t>(tiles_per_plane),
          static_cast<index_t>(n / inner * tiles_per_plane), static_cast<int>(B), false};
}

template <typename scalar_t>
int64_t trellis_group(int64_t n, int64_t inner, int64_t B) {
  constexpr int64_t width = kPackWidth<scalar_t>;
  if (inner % width != 0) return 1;
  return trellis_tiles<int64_t>(n, inner, B, width).tiles >= kMinTrellisTiles ? width : 1;
}

inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Whether every tensor's data (all contiguous) starts on a 16-byte boundary.
inline bool all_aligned16(std::initializer_list<const std::vector<at::Tensor>*> lists,
                          std::initializer_list<const at::Tensor*> tensors) {
  for (const auto* list : lists)
    for (const auto& t : *list)
      if (!aligned16(t.const_data_ptr())) return false;
  for (const auto* t : tensors)
    if (!aligned16(t->const_data_ptr())) return false;
  return true;
}

// Calls f(std::integral_constant<int, kWidth>{}) for group == kWidth, else f(... 1).
template <int kWidth, typename F>
void with_group(int64_t group, F&& f) {
  if (group == kWidth)
    f(std::integral_constant<int, kWidth>{});
  else
    f(std::integral_constant<int, 1>{});
}

// Where one tile lies: its plane's offset in the output and in the blocks, and its elements
// [begin, end) within the plane (begin already includes the thread's offset).
template <typename index_t>
struct TrellisTile {
  index_t out_offset;
  index_t source_offset;
  int b;
  index_t begin;
  index_t end;
};

template <int kGroup, typename index_t>
__device__ __forceinline__ TrellisTile<index_t> trellis_tile(const TrellisTiles<index_t>& tiles, index_t tile) {
  const index_t plane = tile / tiles.tiles_per_plane;
  const index_t chunk = tile - plane * tiles.tiles_per_plane;
  const index_t sample = plane / tiles.B;
  const index_t begin = chunk * tiles.tile_elems;
  const index_t end = begin + tiles.tile_elems < tiles.inner ? begin + tiles.tile_elems : tiles.inner;
  return {plane * tiles.inner, sample * tiles.inner, static_cast<int>(plane - sample * tiles.B),
          begin + static_cast<index_t>(threadIdx.x) * kGroup, end};
}

// The kGroup elements at p[j..] (those before `end`) into v: one 128-bit load where `vector`
// (then the group is whole and aligned), else one by one.
template <int kGroup, typename scalar_t, typename index_t>
__device__ __forceinline__ void load_group(const scalar_t* p, index_t j, index_t end, bool vector,
                                           scalar_t (&v)[kGroup]) {
  if (kGroup > 1 && vector) {
    const Pack<scalar_t, kGroup> pack = *reinterpret_cast<const Pack<scalar_t, kGroup>*>(p + j);
#pragma unroll
    for (int e = 0; e < kGroup; ++e) v[e] = pack.v[e];
  } else {
#pragma unroll
    for (int e = 0; e < kGroup; ++e) v[e] = j + e < end ? p[j + e] : scalar_t(0);
  }
}

template <int kGroup, typename scalar_t, typename index_t>
__device__ __forceinline__ void store_group(scalar_t* p, index_t j, index_t end, bool vector,
                                            const scalar_t (&v)[kGroup]) {
  if (kGroup > 1 && vector) {
    Pack<scalar_t, kGroup> pack;
#pragma unroll
    for (int e = 0; e < kGroup; ++e) pack.v[e] = v[e];
    *reinterpret_cast<Pack<scalar_t, kGroup>*>(p + j) = pack;
  } else {
#pragma unroll
    for (int e = 0; e < kGroup; ++e)
      if (j + e < end) p[j + e] = v[e];
  }
}

template <typename scalar_t, typename acc_t, typename index_t, int kGroup>
__global__ void trellis_aggregate_forward_kernel(BlockTable<const scalar_t*> blocks, const acc_t* __restrict__ betas,
                                                 int T, TrellisTiles<index_t> tiles, scalar_t* __restrict__ out) {
  acc_t beta[kMaxTrellisCells];
#pragma unroll
  for (int t = 0; t < kMaxTrellisCells; ++t) beta[t] = t < T ? betas[t] : acc_t(0);
  for (index_t tile = blockIdx.x; tile < tiles.tiles; tile += gridDim.x) {
    const TrellisTile<index_t> where = trellis_tile<kGroup>(tiles, tile);
    const scalar_t* source[kMaxTrellisCells];
#pragma unroll
    for (int t = 0; t < kMaxTrellisCells; ++t)
      source[t] = t < T ? blocks.ptr[t * tiles.B + where.b] + where.source_offset : nullptr;
    scalar_t* out_plane = out + where.out_offset;
    for (index_t j = where.begin; j < where.end; j += kThreads * kGroup) {
      acc_t acc[kGroup];
#pragma unroll
      for (int e = 0; e < kGroup; ++e) acc[e] = 0;
#pragma unroll
      for (int t = 0; t < kMaxTrellisCells; ++t) {
        if (t < T) {
          scalar_t x[kGroup];
          load_group(source[t], j, where.end, tiles.vector, x);
#pragma unroll
          for (int e = 0; e < kGroup; ++e) acc[e] = accumulate_product(acc[e], beta[t], x[e]);
        }
      }
      scalar_t y[kGroup];
#pragma unroll
      for (int e = 0; e < kGroup; ++e) y[e] = static_cast<scalar_t>(acc[e]);
      store_group(out_plane, j, where.end, tiles.vector, y);
    }
  }
}

// grad_blocks[t*B+b] = betas[t] * grad slice b (if need_blocks), and per tile partial sums of
// grad slice b * cells[t][b] into partials[tile, t] (if need_betas); grad is read once.
template <typename scalar_t, typename acc_t, typename index_t, int kGroup>
__global__ void trellis_aggregate_backward_kernel(const scalar_t* __restrict__ grad,
                                                  BlockTable<const scalar_t*> blocks,
                                                  BlockTable<scalar_t*> grad_blocks,
                                                  const acc_t* __restrict__ betas, int T, TrellisTiles<index_t> tiles,
                                                  acc_t* __restrict__ partials, bool need_blocks, bool need_betas) {
  acc_t beta[kMaxTrellisCells];
#pragma unroll
  for (int t = 0; t < kMaxTrellisCells; ++t) beta[t] = t < T ? betas[t] : acc_t(0);
  for (index_t tile = blockIdx.x; tile < tiles.tiles; tile += gridDim.x) {
    const TrellisTile<index_t> where = trellis_tile<kGroup>(tiles, tile);
    const scalar_t* source[kMaxTrellisCells];
    scalar_t* grad_source[kMaxTrellisCells];
    acc_t acc[kMaxTrellisCells];
#pragma unroll
    for (int t = 0; t < kMaxTrellisCells; ++t) {
      source[t] = t < T ? blocks.ptr[t * tiles.B + where.b] + where.source_offset : nullptr;
      grad_source[t] = need_blocks && t < T ? grad_blocks.ptr[t * tiles.B + where.b] + where.source_offset : nullptr;
      acc[t] = 0;
    }
    const scalar_t* grad_plane = grad + where.out_offset;
    for (index_t j = where.begin; j < where.end; j += kThreads * kGroup) {
      scalar_t g_raw[kGroup];
      load_group(grad_plane, j, where.end, tiles.vector, g_raw);
      acc_t g[kGroup];
#pragma unroll
      for (int e = 0; e < kGroup; ++e) g[e] = static_cast<acc_t>(g_raw[e]);
#pragma unroll
      for (int t = 0; t < kMaxTrellisCells; ++t) {
        if (t < T) {
          if (need_blocks) {
            scalar_t d[kGroup];
#pragma unroll
            for (int e = 0; e < kGroup; ++e) d[e] = scaled_gradient<scalar_t>(beta[t], g[e]);
            store_group(grad_source[t], j, where.end, tiles.vector, d);
          }
          if (need_betas) {
            scalar_t x[kGroup];
            load_group(source[t], j, where.end, tiles.vector, x);
#pragma unroll
            for (int e = 0; e < kGroup; ++e)
              if (j + e < where.end) acc[t] = accumulate_product(acc[t], g[e], x[e]);
          }
        }
      }
    }
    // need_betas is the same for the whole grid: every thread of a block reaches the barriers or none.
    if (need_betas) block_sums(acc, T, partials + static_cast<int64_t>(tile) * T, 1);
  }
}

at::Tensor trellis_aggregate_cuda(at::TensorList blocks_arg, int64_t num_cells, const at::Tensor& betas_arg) {
  const int64_t B = check_trellis_aggregate_args(blocks_arg, num_cells, betas_arg);
  const c10::cuda::CUDAGuard device_guard(blocks_arg[0].device());
  const auto blocks = contiguous_all(blocks_arg);
  at::Tensor out = at::empty(trellis_output_shape(blocks[0], B), blocks[0].options());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const int64_t inner = blocks[0].numel() / blocks[0].size(0);
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "trellis_aggregate_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor betas = betas_arg.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const int64_t group = trellis_group<scalar_t>(n, inner, B);
    const bool vector = group > 1 && all_aligned16({&blocks}, {&out});
    with_index_type(n, [&](auto index_zero) {
      using index_t = decltype(index_zero);
      with_group<kPackWidth<scalar_t>>(group, [&](auto group_constant) {
        constexpr int kGroup = decltype(group_constant)::value;
        auto tiles = trellis_tiles<index_t>(n, inner, B, kGroup);
        tiles.vector = vector;
        FASTDNAS_LAUNCH((trellis_aggregate_forward_kernel<scalar_t, acc_t, index_t, kGroup>),
                        device_grid_for(tiles.tiles, kTileBlocksPerSM), kThreads, 0, stream)(
            block_table<const scalar_t*>(blocks), betas.const_data_ptr<acc_t>(), static_cast<int>(num_cells), tiles,
            out.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> trellis_aggregate_backward_cuda(const at::Tensor& grad_arg,
                                                                                 at::TensorList blocks_arg,
                                                                                 int64_t num_cells,
                                                                                 const at::Tensor& betas_arg,
                                                                                 std::array<bool, 2> output_mask) {
  const int64_t B = check_trellis_aggregate_backward_args(grad_arg, blocks_arg, num_cells, betas_arg);
  const auto [need_blocks, need_betas] = output_mask;
  const c10::cuda::CUDAGuard device_guard(grad_arg.device());
  const auto blocks = contiguous_all(blocks_arg);
  const at::Tensor grad = grad_arg.contiguous();
  auto grad_blocks = need_blocks ? empty_like_all(blocks) : std::vector<at::Tensor>{};
  if (!need_blocks && !need_betas) return {grad_blocks, at::Tensor()};
  const int64_t n = grad.numel();
  const int T = static_cast<int>(num_cells);
  at::Tensor grad_betas;
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "trellis_aggregate_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor betas = betas_arg.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    at::Tensor sums = need_betas ? at::zeros({T}, betas.options()) : at::Tensor();
    if (n > 0) {
      const int64_t inner = blocks[0].numel() / blocks[0].size(0);
      const int64_t group = trellis_group<scalar_t>(n, inner, B);
      const bool vector = group > 1 && all_aligned16({&blocks, &grad_blocks}, {&grad});
      with_index_type(n, [&](auto index_zero) {
        using index_t = decltype(index_zero);
        with_group<kPackWidth<scalar_t>>(group, [&](auto group_constant) {
          constexpr int kGroup = decltype(group_constant)::value;
          auto tiles = trellis_tiles<index_t>(n, inner, B, kGroup);
          tiles.vector = vector;
          at::Tensor partials = at::empty({need_betas ? static_cast<int64_t>(tiles.tiles) : 0, T}, betas.options());
          FASTDNAS_LAUNCH((trellis_aggregate_backward_kernel<scalar_t, acc_t, index_t, kGroup>),
                          device_grid_for(tiles.tiles, kTileBlocksPerSM), kThreads, 0, stream)(
              grad.const_data_ptr<scalar_t>(), block_table<const scalar_t*>(blocks),
              block_table<scalar_t*>(grad_blocks), betas.const_data_ptr<acc_t>(), T, tiles,
              partials.mutable_data_ptr<acc_t>(), need_blocks, need_betas);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          if (need_betas) {
            FASTDNAS_LAUNCH((sum_partials_kernel<acc_t>), T, kThreads, 0, stream)(
                partials.const_data_ptr<acc_t>(), tiles.tiles, T, sums.mutable_data_ptr<acc_t>());
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          }
        });
      });
    }
    if (need_betas) grad_betas = sums.to(betas_arg.scalar_type());
  });
  return {grad_blocks, grad_betas};
}

}  // namespace

FASTDNAS_CUDA_LIBRARY_IMPL(m) {
  m.impl("trellis_aggregate", &trellis_aggregate_cuda);
  m.impl("_trellis_aggregate_backward", &trellis_aggregate_backward_cuda);
}

}  // namespace fastdnas
