// Stand-in for c10's CUDA error checks in the emulated build.
#pragma once

#include <cuda_emu.h>

#define C10_CUDA_KERNEL_LAUNCH_CHECK() ::cuda_emu::check_last_launch(__FILE__, __LINE__)
