// Stand-in for ATen's CUDA context in the emulated build: the current stream and the device
// properties of the emulated device (the multiprocessor count is settable from Python).
#pragma once

#include <ATen/ATen.h>
#include <cuda_emu.h>

namespace at::cuda {
using CUDAStream = cuda_emu::Stream;
inline cudaDeviceProp* getCurrentDeviceProperties() { return cuda_emu::device_properties(); }
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
}  // namespace at::cuda
