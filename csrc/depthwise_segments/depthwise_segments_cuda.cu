// CUDA kernels of depthwise_conv2d_segments on the current stream (depthwise_conv2d runs them as
// its one-segment case). Three launches' worth of kernels:
// - forward: a block per output plane (grid x), its elements in tiles (grid y); the plane's
//   segment, channel and filter are found once per block, each element costs one division;
// - input gradient: the same over input planes, gathering from every segment that reads the
//   channel, in ascending segment order;
// - weight gradient: a block per (output channel, batch chunk) sums grad * x for every tap of its
//   filter at once (the gradient read once, not once per tap), one partial sum per tap and chunk;
//   a second kernel adds the chunks in order. Chunks depend on the shapes only, never on the
//   device, so the result is bitwise the same on every run and every GPU.
// The geometries of the DARTS space (3x3 and 5x5 kernels, dilation 1 and 2, stride 1 and 2) are
// compiled with constant sizes (unrolled taps, no division per tap); others take a generic path.
// Index math is 32-bit where every index fits. Each element adds its taps in the order of the
// CPU kernels; taps that read padding add a product with zero.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstdint>
#include <type_traits>

#include "../common/launch.cuh"
#include "../common/reduce_cuda.cuh"
#include "depthwise_segments.h"
#include "depthwise_segments_cuda.h"

namespace fastdnas {
namespace {

using namespace cuda_reduce;

template <int V>
struct Const {
  static constexpr int value = V;
};

// Segment geometries compiled with a constant kernel size and dilation (square, the same in h
// and w); every other segment runs the generic path.
enum GeometryCode : int { kGenericGeometry = 0, k3x3 = 1, k3x3Dilated = 2, k5x5 = 3, k5x5Dilated = 4 };

int geometry_code(const DepthwiseShape& s) {
  if (s.KH != s.KW || s.dilation[0] != s.dilation[1] || (s.KH != 3 && s.KH != 5) ||
      (s.dilation[0] != 1 && s.dilation[0] != 2))
    return kGenericGeometry;
  return s.KH == 3 ? (s.dilation[0] == 1 ? k3x3 : k3x3Dilated) : (s.dilation[0] == 1 ? k5x5 : k5x5Dilated);
}

// Calls f(Const<K>, Const<D>) for the segment's geometry; K = D = 0 on the generic path.
template <typename F>
__device__ __forceinline__ void with_segment_geometry(int code, F&& f) {
  switch (code) {
    case k3x3: f(Const<3>{}, Const<1>{}); break;
    case k3x3Dilated: f(Const<3>{}, Const<2>{}); break;
    case k5x5: f(Const<5>{}, Const<1>{}); break;
    case k5x5Dilated: f(Const<5>{}, Const<2>{}); break;
    default: f(Const<0>{}, Const<0>{}); break;
  }
}

// The segments as a kernel argument, by value: the shared sizes, then each segment's kernel
// size, padding, dilation, first input channel, first element of its weight gradient (in units
// of filter taps over all channels: C * KH * KW per segment) and geometry code.
template <typename index_t>
struct SegmentGeometry {
  index_t G, N, C, Cx, H, W, OH, OW, sh, sw;
  index_t KH[kMaxDepthwiseSegments], KW[kMaxDepthwiseSegments];
  index_t ph[kMaxDepthwiseSegments], pw[kMaxDepthwiseSegments];
  index_t dh[kMaxDepthwiseSegments], dw[kMaxDepthwiseSegments];
  index_t offset[kMaxDepthwiseSegments];
  index_t weight_offset[kMaxDepthwiseSegments + 1];
  int code[kMaxDepthwiseSegments];
};

template <typename index_t>
SegmentGeometry<index_t> geometry(const DepthwiseSegments& seg) {
  const auto cast = [](int64_t v) { return static_cast<index_t>(v); };
  SegmentGeometry<index_t> g{};
  g.G = cast(seg.G);
  g.N = cast(seg.N);
  g.C = cast(seg.C);
  g.Cx = cast(seg.Cx);
  g.H = cast(seg.H);
  g.W = cast(seg.W);
  g.OH = cast(seg.OH);
  g.OW = cast(seg.OW);
  g.sh = cast(seg.shape[0].stride[0]);
  g.sw = cast(seg.shape[0].stride[1]);
  for (int64_t k = 0; k < seg.G; ++k) {
    const DepthwiseShape& s = seg.shape[k];
    g.KH[k] = cast(s.KH);
    g.KW[k] = cast(s.KW);
    g.ph[k] = cast(s.padding[0]);
    g.pw[k] = cast(s.padding[1]);
    g.dh[k] = cast(s.dilation[0]);
    g.dw[k] = cast(s.dilation[1]);
    g.offset[k] = cast(seg.offset[k]);
    g.code[k] = geometry_code(s);
  }
  for (int64_t k = 0; k <= seg.G; ++k) g.weight_offset[k] = cast(seg.weight_offset[k]);
  return g;
}

// Whether 32-bit index math is exact: every tensor holds at most 2^30 elements and every
// padding, dilated kernel extent and stride is at most 2^28, so no intermediate index (an
// output position times the stride, minus the padding, plus a tap's offset) reaches 2^31.
bool fits_int32(const DepthwiseSegments& seg) {
#if defined(FASTDNAS_CUDA_EMU)
  // The emulator's tests send small tensors down the 64-bit path too (too few elements to reach it).
  if (std::getenv("FASTDNAS_EMU_INDEX64") != nullptr) return false;
#endif
  constexpr int64_t kMaxElements = int64_t{1} << 30, kMaxGeometry = int64_t{1} << 28;
  const auto elements = [](std::initializer_list<int64_t> sizes) {
    int64_t n = 1;
    for (int64_t s : sizes) {
      if (s != 0 && n > kMaxElements / s) return kMaxElements + 1;
      n *= s;
    }
    return n;
  };
  if (elements({seg.N, seg.Cx, seg.H, seg.W}) > kMaxElements ||
      elements({seg.N, seg.out_channels, seg.OH, seg.OW}) > kMaxElements || seg.weight_offset[seg.G] > kMaxElements)
    return false;
  for (int64_t k = 0; k < seg.G; ++k) {
    const DepthwiseShape& s = seg.shape[k];
    for (int d = 0; d < 2; ++d)
      if (s.stride[d] > kMaxGeometry || s.padding[d] > kMaxGeometry ||
          s.dilation[d] > kMaxGeometry / std::max<int64_t>(1, (d == 0 ? s.KH : s.KW)))
        return false;
  }
  return true;
}

// Calls f(Const<S>, index_t{}): stride S (1 or 2, the same in h and w; 0 for any other) as a
// constant where 32-bit indices suffice, the generic path with 64-bit indices otherwise.
template <typename F>
void with_stride_and_index(const DepthwiseSegments& seg, F&& f) {
  const int64_t sh = seg.shape[0].stride[0], sw = seg.shape[0].stride[1];
  if (!fits_int32(seg))
    f(Const<0>{}, int64_t{});
  else if (sh == 1 && sw == 1)
    f(Const<1>{}, int32_t{});
  else if (sh == 2 && sw == 2)
    f(Const<2>{}, int32_t{});
  else
    f(Const<0>{}, int32_t{});
}

template <typename scalar_t>
struct SegmentWeights {
  const scalar_t* w[kMaxDepthwiseSegments];
};

// The weights as contiguous tensors (kept alive by the caller) and their pointers.
template <typename scalar_t>
SegmentWeights<scalar_t> weight_pointers(at::TensorList weights, std::vector<at::Tensor>& contiguous) {
  SegmentWeights<scalar_t> p{};
  for (size_t k = 0; k < weights.size(); ++k) {
    contiguous.push_back(weights[k].contiguous());
    p.w[k] = contiguous.back().template const_data_ptr<scalar_t>();
  }
  return p;
}

// The segment of output channel `channel` (of G * C).
template <typename index_t>
__device__ __forceinline__ int segment_of(const SegmentGeometry<index_t>& g, index_t channel) {
  int k = 0;
  while (k + 1 < g.G && channel >= (k + 1) * g.C) ++k;
  return k;
}

// o = hs / s when s divides hs >= 0 (s a constant where S > 0), the output row or column that
// reads an input through a tap: depthwise_output_index without a division by a runtime stride.
template <int S, typename index_t>
__device__ __forceinline__ bool divide_exactly(index_t hs, index_t s, index_t* o) {
  using unsigned_t = std::make_unsigned_t<index_t>;
  if (hs < 0) return false;
  const unsigned_t u = static_cast<unsigned_t>(hs), d = static_cast<unsigned_t>(S > 0 ? S : s);
  if (S == 1) {
    *o = hs;
    return true;
  }
  if (u % d != 0) return false;
  *o = static_cast<index_t>(u / d);
  return true;
}

// Launch shape of the per-plane kernels: a warp-rounded block no larger than the plane (8x8
// planes get 64 threads), planes in grid x, a plane's tiles in grid y; both loop when capped.
struct PlaneLaunch {
  dim3 grid, block;
};

PlaneLaunch plane_launch(int64_t planes, int64_t plane_size) {
  const int64_t threads = std::min<int64_t>(kThreads, std::max<int64_t>(32, (plane_size + 31) / 32 * 32));
  const int64_t tiles = std::min<int64_t>(65535, (plane_size + threads - 1) / threads);
  const int64_t x = std::min<int64_t>(planes, 0x7fffffff);
  return {dim3(static_cast<unsigned>(x), static_cast<unsigned>(tiles)), dim3(static_cast<unsigned>(threads))};
}

template <int S, typename index_t, typename scalar_t, typename acc_t>
__global__ void segments_forward_kernel(const scalar_t* __restrict__ x, SegmentWeights<scalar_t> weights,
                                        SegmentGeometry<index_t> g, scalar_t* __restrict__ out) {
  const index_t plane = g.OH * g.OW, channels = g.G * g.C, planes = g.N * channels;
  const index_t sh = S > 0 ? S : g.sh, sw = S > 0 ? S : g.sw;
  for (index_t p = blockIdx.x; p < planes; p += gridDim.x) {
    const index_t b = p / channels, channel = p - b * channels;
    const int k = segment_of(g, channel);
    const index_t c = channel - k * g.C;
    const scalar_t* in = x + (b * g.Cx + g.offset[k] + c) * g.H * g.W;
    scalar_t* out_plane = out + p * plane;
    with_segment_geometry(g.code[k], [&](auto kernel_size, auto dilation) {
      constexpr int K = decltype(kernel_size)::value, D = decltype(dilation)::value;
      const index_t KH = K > 0 ? K : g.KH[k], KW = K > 0 ? K : g.KW[k];
      const index_t dh = D > 0 ? D : g.dh[k], dw = D > 0 ? D : g.dw[k];
      const index_t ph = g.ph[k], pw = g.pw[k];
      const scalar_t* filter = weights.w[k] + c * KH * KW;
      // Constant-size filters live in registers for the whole plane.
      acc_t taps[K > 0 ? K * K : 1];
      if (K > 0) {
#pragma unroll
        for (int q = 0; q < (K > 0 ? K * K : 1); ++q) taps[q] = static_cast<acc_t>(filter[q]);
      }
      for (index_t t = blockIdx.y * blockDim.x + threadIdx.x; t < plane; t += gridDim.y * blockDim.x) {
        const index_t oh = t / g.OW, ow = t - oh * g.OW;
        acc_t acc = 0;
#pragma unroll
        for (index_t i = 0; i < KH; ++i) {
          const index_t ih = oh * sh - ph + i * dh;  // depthwise_input_index
          const bool row_inside = ih >= 0 && ih < g.H;
#pragma unroll
          for (index_t j = 0; j < KW; ++j) {
            const index_t iw = ow * sw - pw + j * dw;
            // A padding tap adds w * 0, as F.conv2d does: NaN for a non-finite weight.
            const scalar_t v = row_inside && iw >= 0 && iw < g.W ? in[ih * g.W + iw] : scalar_t(0);
            const acc_t w = K > 0 ? taps[K > 0 ? i * K + j : 0] : static_cast<acc_t>(filter[i * KW + j]);
            acc = accumulate_product(acc, w, v);
          }
        }
        out_plane[t] = static_cast<scalar_t>(acc);
      }
    });
  }
}

// Each segment's sum in the order of the CPU input-gradient kernel (rows in descending tap
// order, so output rows ascending), the segments' sums added in ascending order.
template <int S, typename index_t, typename scalar_t, typename acc_t>
__global__ void segments_input_grad_kernel(const scalar_t* __restrict__ grad, SegmentWeights<scalar_t> weights,
                                           SegmentGeometry<index_t> g, scalar_t* __restrict__ grad_x) {
  const index_t plane = g.H * g.W, out_plane = g.OH * g.OW, planes = g.N * g.Cx;
  const index_t sh = S > 0 ? S : g.sh, sw = S > 0 ? S : g.sw;
  for (index_t p = blockIdx.x; p < planes; p += gridDim.x) {
    const index_t b = p / g.Cx, channel = p - b * g.Cx;
    for (index_t t = blockIdx.y * blockDim.x + threadIdx.x; t < plane; t += gridDim.y * blockDim.x) {
      const index_t ih = t / g.W, iw = t - ih * g.W;
      acc_t total = 0;
      for (int k = 0; k < g.G; ++k) {
        const index_t c = channel - g.offset[k];
        if (c < 0 || c >= g.C) continue;
        const scalar_t* grad_plane = grad + ((b * g.G + k) * g.C + c) * out_plane;
        with_segment_geometry(g.code[k], [&](auto kernel_size, auto dilation) {
          constexpr int K = decltype(kernel_size)::value, D = decltype(dilation)::value;
          const index_t KH = K > 0 ? K : g.KH[k], KW = K > 0 ? K : g.KW[k];
          const index_t dh = D > 0 ? D : g.dh[k], dw = D > 0 ? D : g.dw[k];
          const scalar_t* filter = weights.w[k] + c * KH * KW;
          acc_t acc = 0;
#pragma unroll
          for (index_t i = KH - 1; i >= 0; --i) {
            index_t oh;
            if (!divide_exactly<S>(ih + g.ph[k] - i * dh, sh, &oh) || oh >= g.OH) continue;
#pragma unroll
            for (index_t j = 0; j < KW; ++j) {
              index_t ow;
              if (!divide_exactly<S>(iw + g.pw[k] - j * dw, sw, &ow) || ow >= g.OW) continue;
              acc = accumulate_product(acc, static_cast<acc_t>(filter[i * KW + j]), grad_plane[oh * g.OW + ow]);
            }
          }
          total += acc;
        });
      }
      grad_x[p * plane + t] = static_cast<scalar_t>(total);
    }
  }
}

// Block (output channel r = k * C + c, batch chunk y): for each tap of the filter, the sum over
// the chunk's images and output positions of grad * x, into partials[y, flat tap index]. A
// constant-size filter takes all its taps in one block; a generic one a tap per block (grid z).
template <int S, typename index_t, typename scalar_t, typename acc_t>
__global__ void segments_weight_grad_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                            SegmentGeometry<index_t> g, index_t chunk_batch,
                                            acc_t* __restrict__ partials) {
  const index_t out_plane = g.OH * g.OW, in_plane = g.H * g.W, rows = g.G * g.C;
  const index_t sh = S > 0 ? S : g.sh, sw = S > 0 ? S : g.sw;
  const index_t b0 = blockIdx.y * chunk_batch, b1 = b0 + chunk_batch < g.N ? b0 + chunk_batch : g.N;
  acc_t* chunk_partials = partials + static_cast<int64_t>(blockIdx.y) * g.weight_offset[g.G];
  for (index_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int k = segment_of(g, r);
    const index_t c = r - k * g.C;
    with_segment_geometry(g.code[k], [&](auto kernel_size, auto dilation) {
      constexpr int K = decltype(kernel_size)::value, D = decltype(dilation)::value;
      constexpr int kTaps = K > 0 ? K * K : 1;  // taps per block
      const index_t KH = K > 0 ? K : g.KH[k], KW = K > 0 ? K : g.KW[k];
      const index_t dh = D > 0 ? D : g.dh[k], dw = D > 0 ? D : g.dw[k];
      const index_t ph = g.ph[k], pw = g.pw[k];
      acc_t* out = chunk_partials + g.weight_offset[k] + c * KH * KW;
      const index_t first_taps = K > 0 ? 1 : KH * KW;  // blocks' starting taps on this filter
      for (index_t first = blockIdx.z; first < first_taps; first += gridDim.z) {
        acc_t acc[kTaps];
#pragma unroll
        for (int q = 0; q < kTaps; ++q) acc[q] = 0;
        for (index_t b = b0; b < b1; ++b) {
          const scalar_t* grad_plane = grad + ((b * g.G + k) * g.C + c) * out_plane;
          const scalar_t* in = x + (b * g.Cx + g.offset[k] + c) * in_plane;
          for (index_t t = threadIdx.x; t < out_plane; t += blockDim.x) {
            const index_t oh = t / g.OW, ow = t - oh * g.OW;
            const acc_t gv = static_cast<acc_t>(grad_plane[t]);
#pragma unroll
            for (int q = 0; q < kTaps; ++q) {
              const index_t tap = first + q;
              const index_t i = tap / KW, j = tap - i * KW;
              const index_t ih = oh * sh - ph + i * dh, iw = ow * sw - pw + j * dw;
              // A padding tap adds grad * 0, as F.conv2d does: NaN for a non-finite gradient.
              const scalar_t v = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W ? in[ih * g.W + iw] : scalar_t(0);
              acc[q] = accumulate_product(acc[q], gv, v);
            }
          }
        }
        block_sums(acc, kTaps, out + first, 1);
      }
    });
  }
}

// out[f] = the sum over chunks, in order, of partials[chunk, f]: the weight gradient.
template <typename scalar_t, typename acc_t>
__global__ void sum_chunks_kernel(const acc_t* __restrict__ partials, int64_t chunks, int64_t total,
                                  scalar_t* __restrict__ out) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t f = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; f < total; f += step) {
    acc_t sum = 0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partials[chunk * total + f];
    out[f] = static_cast<scalar_t>(sum);
  }
}

// Batch chunks of the weight gradient: about kWeightGradBlocks blocks over (channel, chunk),
// each with at least a block's worth of elements. A function of the shapes only.
constexpr int64_t kWeightGradBlocks = 1024;

int64_t chunk_batch_for(const DepthwiseSegments& seg) {
  if (seg.N == 0) return 1;
  const int64_t rows = std::max<int64_t>(1, seg.out_channels);
  int64_t chunks = std::max<int64_t>(1, kWeightGradBlocks / rows);
  chunks = std::min(chunks, std::max<int64_t>(1, seg.N * seg.OH * seg.OW / kThreads));
  chunks = std::min(chunks, seg.N);
  return (seg.N + chunks - 1) / chunks;
}

}  // namespace

at::Tensor depthwise_conv2d_segments_cuda(const at::Tensor& x_arg, at::TensorList weights, at::IntArrayRef stride,
                                          at::IntArrayRef paddings, at::IntArrayRef dilations,
                                          at::IntArrayRef input_offsets) {
  const DepthwiseSegments seg = check_segments_forward_args(x_arg, weights, stride, paddings, dilations, input_offsets);
  const c10::cuda::CUDAGuard device_guard(x_arg.device());
  const at::Tensor x = x_arg.contiguous();
  at::Tensor out = at::empty({seg.N, seg.out_channels, seg.OH, seg.OW}, x.options());
  if (out.numel() == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const PlaneLaunch launch = plane_launch(seg.N * seg.out_channels, seg.OH * seg.OW);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "depthwise_conv2d_segments_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<at::Tensor> contiguous;
    const SegmentWeights<scalar_t> w = weight_pointers<scalar_t>(weights, contiguous);
    with_stride_and_index(seg, [&](auto stride_constant, auto index) {
      constexpr int S = decltype(stride_constant)::value;
      using index_t = decltype(index);
      FASTDNAS_LAUNCH((segments_forward_kernel<S, index_t, scalar_t, acc_t>), launch.grid, launch.block, 0, stream)(
          x.const_data_ptr<scalar_t>(), w, geometry<index_t>(seg), out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor depthwise_conv2d_segments_input_grad_cuda(const at::Tensor& grad_arg, at::TensorList weights,
                                                     at::IntArrayRef input_size, at::IntArrayRef stride,
                                                     at::IntArrayRef paddings, at::IntArrayRef dilations,
                                                     at::IntArrayRef input_offsets) {
  const DepthwiseSegments seg =
      check_segments_input_grad_args(grad_arg, weights, input_size, stride, paddings, dilations, input_offsets);
  const c10::cuda::CUDAGuard device_guard(grad_arg.device());
  const at::Tensor grad = grad_arg.contiguous();
  at::Tensor grad_x = at::empty(input_size, grad.options());
  if (grad_x.numel() == 0) return grad_x;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const PlaneLaunch launch = plane_launch(seg.N * seg.Cx, seg.H * seg.W);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "depthwise_conv2d_segments_input_grad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<at::Tensor> contiguous;
    const SegmentWeights<scalar_t> w = weight_pointers<scalar_t>(weights, contiguous);
    with_stride_and_index(seg, [&](auto stride_constant, auto index) {
      constexpr int S = decltype(stride_constant)::value;
      using index_t = decltype(index);
      FASTDNAS_LAUNCH((segments_input_grad_kernel<S, index_t, scalar_t, acc_t>), launch.grid, launch.block, 0,
                      stream)(grad.const_data_ptr<scalar_t>(), w, geometry<index_t>(seg),
                              grad_x.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return grad_x;
}

at::Tensor depthwise_conv2d_segments_weight_grad_cuda(const at::Tensor& grad_arg, const at::Tensor& x_arg,
                                                      at::IntArrayRef kernel_sizes, at::IntArrayRef stride,
                                                      at::IntArrayRef paddings, at::IntArrayRef dilations,
                                                      at::IntArrayRef input_offsets) {
  const DepthwiseSegments seg =
      check_segments_weight_grad_args(grad_arg, x_arg, kernel_sizes, stride, paddings, dilations, input_offsets);
  const c10::cuda::CUDAGuard device_guard(grad_arg.device());
  const at::Tensor grad = grad_arg.contiguous();
  const at::Tensor x = x_arg.contiguous();
  const int64_t total = seg.weight_offset[seg.G];
  at::Tensor grad_w = at::empty({total}, grad.options());
  if (total == 0) return grad_w;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t chunk_batch = chunk_batch_for(seg);
  const int64_t chunks = (seg.N + chunk_batch - 1) / chunk_batch;  // 0 for an empty batch: zeros
  int64_t tap_blocks = 1;  // grid z: the most taps of a generic-path filter
  for (int64_t k = 0; k < seg.G; ++k)
    if (geometry_code(seg.shape[k]) == kGenericGeometry)
      tap_blocks = std::max(tap_blocks, std::min<int64_t>(65535, seg.shape[k].KH * seg.shape[k].KW));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "depthwise_conv2d_segments_weight_grad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor partials =
        at::empty({chunks, total}, grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    if (chunks > 0) {
      const dim3 grid(static_cast<unsigned>(std::min<int64_t>(seg.out_channels, 0x7fffffff)),
                      static_cast<unsigned>(chunks), static_cast<unsigned>(tap_blocks));
      with_stride_and_index(seg, [&](auto stride_constant, auto index) {
        constexpr int S = decltype(stride_constant)::value;
        using index_t = decltype(index);
        FASTDNAS_LAUNCH((segments_weight_grad_kernel<S, index_t, scalar_t, acc_t>), grid, kThreads, 0, stream)(
            grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), geometry<index_t>(seg),
            static_cast<index_t>(chunk_batch), partials.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    FASTDNAS_LAUNCH((sum_chunks_kernel<scalar_t, acc_t>), forward_grid_for(total), kThreads, 0, stream)(
        partials.const_data_ptr<acc_t>(), chunks, total, grad_w.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_w;
}

FASTDNAS_CUDA_LIBRARY_IMPL(m) {
  m.impl("depthwise_conv2d_segments", &depthwise_conv2d_segments_cuda);
  m.impl("_depthwise_conv2d_segments_input_grad", &depthwise_conv2d_segments_input_grad_cuda);
  m.impl("_depthwise_conv2d_segments_weight_grad", &depthwise_conv2d_segments_weight_grad_cuda);
}

}  // namespace fastdnas
