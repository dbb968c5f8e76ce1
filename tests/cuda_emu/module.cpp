// The Python module of the emulated CUDA build: the op library fastdnas_emu (the fastdnas
// schemas; the CUDA host functions register for CPU tensors through FASTDNAS_CUDA_LIBRARY_IMPL),
// the emulator's settings, and small kernels that exercise each of its checks.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include <c10/cuda/CUDAException.h>

#include <string>
#include <vector>

#include "../../csrc/common/launch.cuh"
#include "../../csrc/schemas.h"

#if !defined(CUDA_EMU_CHECK_KERNELS_ONLY)
TORCH_LIBRARY(fastdnas_emu, m) { fastdnas::define_op_schemas(m); }
#endif

namespace cuda_emu {

void set_schedule(const std::string& mode, uint64_t seed);
void set_multiprocessor_count(int count);
uint64_t launches();
std::vector<std::string> take_launched_kernels();
uint64_t switches();

namespace {

// ---- kernels that break a rule: each launch must fail with a clear message ----

__global__ void different_barriers(float* out) {
  if (threadIdx.x % 2)
    __syncthreads();
  else
    __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void exit_before_barrier(float* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void shuffle_with_exited_lane(float* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 1);
}

// Launched with 48 threads: the second warp has 16 lanes, but the mask names 32.
__global__ void shuffle_with_missing_lanes(float* out) {
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<float>(threadIdx.x), 1);
}

// Lanes 0..15 shuffle among themselves, but lanes 8..15 read lanes 16..23.
__global__ void shuffle_reads_outside_mask(float* out) {
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_down_sync(0x0000ffffu, static_cast<float>(threadIdx.x), 8);
}

// The mask leaves out lane 0, which calls the shuffle all the same.
__global__ void shuffle_mask_without_own_lane(float* out) {
  out[threadIdx.x] = __shfl_down_sync(0xfffffffeu, static_cast<float>(threadIdx.x), 1);
}

// Lane 0 waits at the barrier for lanes that wait at a shuffle for lane 0.
__global__ void deadlock(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x != 0) v = __shfl_sync(0xffffffffu, v, 0);
  __syncthreads();
  out[threadIdx.x] = v;
}

__global__ void raises(float*) { TORCH_CHECK(threadIdx.x != 7, "an error raised in device code"); }

// ---- kernels that follow the rules: their results show the emulated semantics ----

__global__ void nothing(float*) {}

// Threads 0..31 write their element of a shared array, and every thread reads its own: threads
// 32..63 read what a fresh block holds.
__global__ void read_before_write(float* out) {
  __shared__ float shared[64];
  if (threadIdx.x < 32) shared[threadIdx.x] = 1;
  __syncthreads();
  out[threadIdx.x] = shared[threadIdx.x];
}

// For each lane: __shfl_sync from lane 3, up by 1, down by 2, xor 5 (width 32), and down by 1
// within segments of 8 lanes.
__global__ void shuffles(float* out) {
  const float v = static_cast<float>(threadIdx.x);
  float* o = out + 5 * threadIdx.x;
  o[0] = __shfl_sync(0xffffffffu, v, 3);
  o[1] = __shfl_up_sync(0xffffffffu, v, 1);
  o[2] = __shfl_down_sync(0xffffffffu, v, 2);
  o[3] = __shfl_xor_sync(0xffffffffu, v, 5);
  o[4] = __shfl_down_sync(0xffffffffu, v, 1, 8);
}

// Every thread of the grid adds 1 to out[0], and its block index to out[1].
__global__ void atomics(float* out) {
  atomicAdd(out, 1.0f);
  atomicAdd(out + 1, static_cast<float>(blockIdx.x));
}

// The order in which the threads of block 0 first run, as thread indices (to see the schedule).
__global__ void first_run_order(float* out) {
  __shared__ int next;
  if (threadIdx.x == 0) next = 0;
  __syncthreads();
  __syncwarp();  // a warp operation: in greedy modes one warp finishes it before the next starts
  out[next++] = static_cast<float>(threadIdx.x);
}

struct Check {
  void (*kernel)(float*);
  dim3 grid, block;
  size_t shared_bytes;
  int outputs;
};

Check find_check(const std::string& name) {
  if (name == "different_barriers") return {different_barriers, 1, 64, 0, 64};
  if (name == "exit_before_barrier") return {exit_before_barrier, 1, 64, 0, 64};
  if (name == "shuffle_with_exited_lane") return {shuffle_with_exited_lane, 1, 32, 0, 32};
  if (name == "shuffle_with_missing_lanes") return {shuffle_with_missing_lanes, 1, 48, 0, 48};
  if (name == "shuffle_reads_outside_mask") return {shuffle_reads_outside_mask, 1, 32, 0, 32};
  if (name == "shuffle_mask_without_own_lane") return {shuffle_mask_without_own_lane, 1, 32, 0, 32};
  if (name == "deadlock") return {deadlock, 1, 64, 0, 64};
  if (name == "raises") return {raises, 1, 32, 0, 32};
  if (name == "empty_grid") return {nothing, 0, 32, 0, 1};
  if (name == "too_many_threads") return {nothing, 1, dim3(32, 33), 0, 1};
  if (name == "too_much_shared_memory") return {nothing, 1, 32, 64 * 1024, 1};
  if (name == "read_before_write") return {read_before_write, 1, 64, 0, 64};
  if (name == "shuffles") return {shuffles, 1, 32, 0, 5 * 32};
  if (name == "atomics") return {atomics, 3, 100, 0, 2};
  if (name == "first_run_order") return {first_run_order, 1, 96, 0, 96};
  TORCH_CHECK(false, "cuda_emu: no check kernel named ", name);
  return {};
}

// Runs the named kernel on zeroed outputs and returns them; `check_launch` false leaves the
// launch unchecked (its error then shows at the next launch).
std::vector<float> run_check_kernel(const std::string& name, bool check_launch) {
  const Check c = find_check(name);
  std::vector<float> out(c.outputs, 0.0f);
  FASTDNAS_LAUNCH((c.kernel), c.grid, c.block, c.shared_bytes, cudaStream_t{})(out.data());
  if (check_launch) C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace cuda_emu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastdnas CUDA kernels on the CPU: an emulator of the CUDA execution model";
  m.def("set_schedule", &cuda_emu::set_schedule, pybind11::arg("mode"), pybind11::arg("seed") = 0,
        "Order of the threads between barriers: forward, reverse, shuffle, or greedy-<order> (one warp "
        "runs as far as it can before the next starts); blocks run in the same order.");
  m.def("set_multiprocessor_count", &cuda_emu::set_multiprocessor_count,
        "The multiProcessorCount of the emulated device (sizes the grids of the element-wise kernels).");
  m.def("launches", &cuda_emu::launches, "Emulated launches so far.");
  m.def("take_launched_kernels", &cuda_emu::take_launched_kernels,
        "The kernels launched (as the launch names them) since the last call, in order.");
  m.def("switches", &cuda_emu::switches, "Fiber switches so far (each from the scheduler into a thread).");
  m.def("run_check_kernel", &cuda_emu::run_check_kernel, pybind11::arg("name"), pybind11::arg("check_launch") = true,
        "Runs one of the emulator's check kernels and returns its outputs.");
}
