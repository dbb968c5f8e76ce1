// Kernel launches and the CUDA kernel registration, written once for nvcc and for the CPU
// emulator of the tests (tests/cuda_emu, built with -DFASTDNAS_CUDA_EMU):
//   FASTDNAS_LAUNCH((kernel<T, U>), grid, block, shared_bytes, stream)(args...);
// Under nvcc this is exactly kernel<T, U><<<grid, block, shared_bytes, stream>>>(args...).
// The emulator registers the CUDA host functions for CPU tensors in the op library fastdnas_emu.
#pragma once

#define FASTDNAS_UNPAREN(...) __VA_ARGS__

#if defined(FASTDNAS_CUDA_EMU)
#include <cuda_emu.h>
#define FASTDNAS_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  ::cuda_emu::launcher(FASTDNAS_UNPAREN kernel, #kernel, __FILE__, __LINE__, grid, block, shared_bytes, stream)
#define FASTDNAS_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(fastdnas_emu, CPU, m)
#else
#define FASTDNAS_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  FASTDNAS_UNPAREN kernel<<<grid, block, shared_bytes, stream>>>
#define FASTDNAS_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(fastdnas, CUDA, m)
#endif
