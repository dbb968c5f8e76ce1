// Argument checks shared by every op: each error names the argument and what was expected.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/util/safe_numerics.h>

#include <cstdint>
#include <limits>
#include <string>

namespace fastdnas {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kDouble || t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// All tensors of `tensors` share shape, dtype and device with tensors[0], in a supported
// floating dtype. `what` names the argument in messages.
inline void check_same_tensors(at::TensorList tensors, const char* op, const char* what) {
  TORCH_CHECK(!tensors.empty(), op, ": ", what, " must hold at least one tensor, got an empty list");
  const at::Tensor& first = tensors[0];
  TORCH_CHECK(first.defined(), op, ": ", what, "[0] is undefined");
  TORCH_CHECK(is_supported_float(first.scalar_type()), op, ": ", what,
              " must be float64, float32, float16 or bfloat16, got ", first.scalar_type());
  for (size_t i = 1; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.defined(), op, ": ", what, "[", i, "] is undefined");
    TORCH_CHECK(t.scalar_type() == first.scalar_type(), op, ": ", what, "[", i, "] has dtype ", t.scalar_type(),
                " but ", what, "[0] has dtype ", first.scalar_type(), "; all must match");
    TORCH_CHECK(t.device() == first.device(), op, ": ", what, "[", i, "] is on ", t.device(), " but ", what,
                "[0] is on ", first.device(), "; all must be on one device");
    TORCH_CHECK(t.sizes() == first.sizes(), op, ": ", what, "[", i, "] has shape ", t.sizes(), " but ", what,
                "[0] has shape ", first.sizes(), "; all must match");
  }
}

// A 1-D floating tensor of length `length` on `device`.
inline void check_weight_vector(const at::Tensor& weights, int64_t length, const at::Device& device,
                                const char* op, const char* what, const char* length_meaning) {
  TORCH_CHECK(weights.defined(), op, ": ", what, " is undefined");
  TORCH_CHECK(weights.is_floating_point(), op, ": ", what, " must be a floating-point tensor, got ",
              weights.scalar_type());
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == length, op, ": ", what, " must have shape [", length, "] (",
              length_meaning, "), got ", weights.sizes());
  TORCH_CHECK(weights.device() == device, op, ": ", what, " is on ", weights.device(),
              " but the inputs are on ", device, "; they must be on one device");
}

// Size arithmetic on int64 that raises instead of wrapping: a * b and a + b, where `what` names
// the size computed (and the arguments it comes from). The compiler builtins, since c10's int64
// overloads (add_overflows) are missing from older torch (2.4 has only the uint64 one).
inline int64_t checked_size_product(const char* op, const char* what, int64_t a, int64_t b) {
  int64_t out = 0;
  TORCH_CHECK(!__builtin_mul_overflow(a, b, &out), op, ": ", what, " (", a, " * ", b, ") overflows int64");
  return out;
}

inline int64_t checked_size_sum(const char* op, const char* what, int64_t a, int64_t b) {
  int64_t out = 0;
  TORCH_CHECK(!__builtin_add_overflow(a, b, &out), op, ": ", what, " (", a, " + ", b, ") overflows int64");
  return out;
}

// A result of shape `sizes` fits in memory addressable by int64 byte counts, counted in the
// accumulation type of `dtype` (the kernels' sums use it): otherwise at::empty fails with a
// message that names no argument. `what` names the result and the arguments giving its shape.
inline void check_storage_size(const char* op, const char* what, at::IntArrayRef sizes, at::ScalarType dtype) {
  uint64_t numel = 0;
  const bool overflows = c10::safe_multiplies_u64(sizes, &numel);
  const uint64_t item = c10::elementSize(at::toOpMathType(dtype));
  TORCH_CHECK(!overflows && numel <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / item, op, ": ",
              what, " would have shape ", sizes, ": more bytes than int64 can count");
}

}  // namespace fastdnas
