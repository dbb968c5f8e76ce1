// FASTDNAS_VECTOR_CLONES: a CPU loop function compiled also for AVX2 (twice the vector width of
// the x86-64 baseline) and picked at load time by the CPU (GCC function multiversioning). No FMA:
// every sum stays bitwise that of the baseline build. What it inlines is compiled with it, so its
// loop helpers are FASTDNAS_VECTOR_INLINE (a helper left out of line runs the baseline code).
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FASTDNAS_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#define FASTDNAS_VECTOR_INLINE inline __attribute__((always_inline))
#else
#define FASTDNAS_VECTOR_CLONES
#define FASTDNAS_VECTOR_INLINE inline
#endif
