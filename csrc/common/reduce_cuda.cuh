// Deterministic two-stage reductions for the CUDA kernels: each block writes its partial sums
// in a fixed order, then one block per sum adds the partials in a fixed tree order.
#pragma once

#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

namespace fastdnas {
namespace cuda_reduce {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Backward grids depend only on the element count, never on the device, so the reduction
// order (and so the weight gradients) is the same on every GPU.
constexpr int64_t kMaxBackwardBlocks = 1024;

inline int64_t grid_for(int64_t n, int64_t max_blocks) {
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, max_blocks));
}

// A grid of `tasks` blocks at most that fills the device: blocks_per_sm per SM at most. Only
// kernels whose results do not depend on the grid may size it by the device: element-wise ones,
// and reductions that write one partial sum per fixed tile of the data (a block loops over
// tiles), never one per block. Kernels of many small tiles pass a higher blocks_per_sm: blocks
// beyond the resident ones start as others finish, which balances the load better than a block
// looping over a second, partly filled round of tiles; the cap only bounds huge tensors' grids.
inline int64_t device_grid_for(int64_t tasks, int64_t blocks_per_sm = 8) {
  const int64_t most =
      static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * blocks_per_sm;
  return std::max<int64_t>(1, std::min<int64_t>(tasks, most));
}

// blocks_per_sm of the kernels that loop over fixed tiles.
constexpr int64_t kTileBlocksPerSM = 32;

// Grid of an element-wise forward kernel of n elements, kThreads per block.
inline int64_t forward_grid_for(int64_t n) { return device_grid_for((n + kThreads - 1) / kThreads); }

// Reductions by fixed tiles: about kTargetTiles tiles (enough to fill a 132-SM GPU several times
// over) of `per_tile(items)` elements, items growing with the element count n up to max_items.
// Sized by n only, never by the device, so the partial sums (one per tile) and their order are
// the same on every GPU.
constexpr int64_t kTargetTiles = 2048;
inline int64_t items_per_tile(int64_t n, int64_t unit, int64_t max_items) {
  return std::max<int64_t>(1, std::min<int64_t>(n / (unit * kTargetTiles), max_items));
}

// Calls f(int32_t{}) when every offset a kernel forms stays below n <= 2^30 (so a tile's
// overshoot past the end cannot overflow either), else f(int64_t{}): 32-bit index math where the
// tensors fit.
// The emulator's tests send small tensors down the 64-bit path with FASTDNAS_EMU_INDEX64 (too few
// elements to reach it otherwise).
template <typename F>
void with_index_type(int64_t n, F&& f) {
#if defined(FASTDNAS_CUDA_EMU)
  if (std::getenv("FASTDNAS_EMU_INDEX64") != nullptr) return f(int64_t{});
#endif
  if (n <= (int64_t{1} << 30))
    f(int32_t{});
  else
    f(int64_t{});
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  // Fixed butterfly order: deterministic.
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sums each thread's values[j] (j < count) over a kThreads block into out[j * out_stride], in
// a fixed order. Every thread of the block must call it. It ends with a barrier, so a kernel
// may call it again (its shared buffer is reused).
template <typename acc_t, int kMaxCount>
__device__ void block_sums(const acc_t (&values)[kMaxCount], int count, acc_t* out, int64_t out_stride) {
  __shared__ acc_t warp_partials[kMaxCount][kWarps];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int j = 0; j < kMaxCount; ++j) {
    const acc_t v = warp_sum(values[j]);
    if (lane == 0) warp_partials[j][warp] = v;
  }
  __syncthreads();
  if (threadIdx.x < count) {
    acc_t sum = 0;
    for (int w = 0; w < kWarps; ++w) sum += warp_partials[threadIdx.x][w];
    out[threadIdx.x * out_stride] = sum;
  }
  __syncthreads();
}

// *sum = sum over rows of partials[row, k] (partials is [rows, K]) in a fixed tree order; every
// thread of a kThreads block must call it.
template <typename acc_t>
__device__ void sum_partials_column(const acc_t* __restrict__ partials, int64_t rows, int K, int k, acc_t* sum) {
  __shared__ acc_t shared[kThreads];
  acc_t v = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) v += partials[r * K + k];
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (threadIdx.x < width) shared[threadIdx.x] += shared[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) *sum = shared[0];
}

// sums[k] = sum over rows of partials[row, k] (partials is [rows, K]); launch K blocks of kThreads.
template <typename acc_t>
__global__ void sum_partials_kernel(const acc_t* __restrict__ partials, int64_t rows, int K, acc_t* __restrict__ sums) {
  sum_partials_column(partials, rows, K, static_cast<int>(blockIdx.x), sums + blockIdx.x);
}

}  // namespace cuda_reduce
}  // namespace fastdnas
