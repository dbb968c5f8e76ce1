// An emulator of the CUDA execution model for host C++ (g++), so the project's CUDA kernels and
// their host launch code run on the CPU: every block of a grid runs in turn, its threads as
// cooperative fibers that switch only at barriers and warp operations (see runtime.cpp).
// The CUDA sources are compiled unchanged with this header (through the stand-in CUDA headers
// beside it) and -DFASTDNAS_CUDA_EMU; launches go through FASTDNAS_LAUNCH (csrc/common/launch.cuh).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// CUDA qualifiers as host C++. __shared__ variables are function statics (blocks run one at a
// time, so one copy serves every block). The runtime finds them in the symbol table (every
// function-local static in the namespaces fastdnas and cuda_emu of the emulated build counts as
// one) and fills them with garbage at each block start, so that a read before a write shows.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The built-in variables of the running fiber; the scheduler sets them before it resumes one.
// Launches hold a lock, so one OS thread at a time runs emulated kernels.
inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
constexpr int warpSize = 32;

struct cudaDeviceProp {
  char name[256];
  int multiProcessorCount;
  int maxThreadsPerBlock;
  int warpSize;
  size_t sharedMemPerBlock;
};

using cudaStream_t = struct cuda_emu_stream*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidConfiguration = 9 };

namespace cuda_emu {

using Site = std::source_location;

// Properties of the emulated device (multiProcessorCount is settable from Python).
cudaDeviceProp* device_properties();

// The stream stand-in: every emulated launch runs to completion before it returns.
struct Stream {
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return nullptr; }
};

// Block-level barrier and warp operations: the calling fiber waits, the scheduler checks.
void syncthreads(Site site);
void syncwarp(unsigned mask, Site site);
enum class ShuffleKind { Index, Up, Down, Xor };
// Exchanges `size` bytes of `value` within the warp; returns the bytes to read in `result`.
void shuffle(ShuffleKind kind, unsigned mask, const void* value, void* result, size_t size, int arg, int width,
             Site site);

// A type-erased kernel body: each thread calls it once.
struct Body {
  void (*call)(const void* self);
  const void* self;
};

struct LaunchSite {
  const char* kernel;
  const char* file;
  int line;
};

void launch(const LaunchSite& where, dim3 grid, dim3 block, size_t shared_bytes, const Body& body);
// C10_CUDA_KERNEL_LAUNCH_CHECK: raises the configuration error of the last launch, if any.
void check_last_launch(const char* file, int line);

// Binds a kernel and its launch configuration; calling it with the kernel arguments runs the
// grid. The arguments are converted to the parameter types once, as a launch does, and each
// thread gets its own copies.
template <typename... Params>
struct Launcher {
  void (*kernel)(Params...);
  LaunchSite where;
  dim3 grid, block;
  size_t shared_bytes;

  template <typename... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(Params), "kernel launched with the wrong number of arguments");
    struct Bound {
      void (*kernel)(Params...);
      std::tuple<std::decay_t<Params>...> params;
    } bound{kernel, {static_cast<std::decay_t<Params>>(std::forward<Args>(args))...}};
    const Body body{[](const void* self) {
                      const Bound& b = *static_cast<const Bound*>(self);
                      std::apply(b.kernel, b.params);
                    },
                    &bound};
    launch(where, grid, block, shared_bytes, body);
  }
};

template <typename... Params>
Launcher<Params...> launcher(void (*kernel)(Params...), const char* name, const char* file, int line, dim3 grid,
                             dim3 block, size_t shared_bytes, const Stream&) {
  return {kernel, {name, file, line}, grid, block, shared_bytes};
}

template <typename... Params>
Launcher<Params...> launcher(void (*kernel)(Params...), const char* name, const char* file, int line, dim3 grid,
                             dim3 block, size_t shared_bytes, cudaStream_t) {
  return {kernel, {name, file, line}, grid, block, shared_bytes};
}

template <typename T>
T shuffle_value(ShuffleKind kind, unsigned mask, T value, int arg, int width, Site site) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16, "shuffled values are at most 16 bytes");
  T result;
  shuffle(kind, mask, &value, &result, sizeof(T), arg, width, site);
  return result;
}

}  // namespace cuda_emu

// The CUDA intrinsics. Each records its call site, so the scheduler can tell barriers apart.
inline void __syncthreads(cuda_emu::Site site = cuda_emu::Site::current()) { cuda_emu::syncthreads(site); }
inline void __syncwarp(unsigned mask = 0xffffffffu, cuda_emu::Site site = cuda_emu::Site::current()) {
  cuda_emu::syncwarp(mask, site);
}

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize, cuda_emu::Site site = cuda_emu::Site::current()) {
  return cuda_emu::shuffle_value(cuda_emu::ShuffleKind::Index, mask, var, src_lane, width, site);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                 cuda_emu::Site site = cuda_emu::Site::current()) {
  return cuda_emu::shuffle_value(cuda_emu::ShuffleKind::Up, mask, var, static_cast<int>(delta), width, site);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                   cuda_emu::Site site = cuda_emu::Site::current()) {
  return cuda_emu::shuffle_value(cuda_emu::ShuffleKind::Down, mask, var, static_cast<int>(delta), width, site);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                  cuda_emu::Site site = cuda_emu::Site::current()) {
  return cuda_emu::shuffle_value(cuda_emu::ShuffleKind::Xor, mask, var, lane_mask, width, site);
}

// Fibers never run at the same time, so a memory fence has nothing to order.
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <typename T>
T __ldg(const T* p) {
  return *p;
}

template <typename T>
T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}
template <typename T>
T atomicExch(T* address, T value) {
  return std::atomic_ref<T>(*address).exchange(value);
}
template <typename T>
T atomicCAS(T* address, T expected, T desired) {
  std::atomic_ref<T>(*address).compare_exchange_strong(expected, desired);
  return expected;
}
template <typename T>
T atomicMax(T* address, T value) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (old < value && !ref.compare_exchange_weak(old, value)) {
  }
  return old;
}
template <typename T>
T atomicMin(T* address, T value) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (value < old && !ref.compare_exchange_weak(old, value)) {
  }
  return old;
}

// CUDA's device min/max overloads (host C++ has none in the global namespace).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
