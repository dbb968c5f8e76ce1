// Stand-in for the CUDA runtime header in the emulated build.
#pragma once
#include <cuda_emu.h>
