// Stand-in for c10's CUDA device guard in the emulated build: the emulated device holds CPU
// tensors, so the guard accepts CPU devices only.
#pragma once

#include <c10/core/Device.h>
#include <c10/util/Exception.h>

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device device) {
    TORCH_CHECK(device.is_cpu(), "cuda_emu: the emulated CUDA device takes CPU tensors, got a tensor on ", device);
  }
  CUDAGuard(const CUDAGuard&) = delete;
  CUDAGuard& operator=(const CUDAGuard&) = delete;
};
}  // namespace c10::cuda
