// Helpers over the tensor lists every op takes and returns.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace fastdnas {

// Contiguous views of the inputs (copies only where an input is not contiguous).
inline std::vector<at::Tensor> contiguous_all(at::TensorList tensors) {
  std::vector<at::Tensor> out;
  out.reserve(tensors.size());
  for (const auto& t : tensors) out.push_back(t.contiguous());
  return out;
}

inline std::vector<at::Tensor> empty_like_all(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> out;
  out.reserve(tensors.size());
  for (const auto& t : tensors) out.push_back(at::empty_like(t, at::MemoryFormat::Contiguous));
  return out;
}

template <typename scalar_t>
std::vector<const scalar_t*> data_pointers(const std::vector<at::Tensor>& tensors) {
  std::vector<const scalar_t*> ptrs;
  ptrs.reserve(tensors.size());
  for (const auto& t : tensors) ptrs.push_back(t.const_data_ptr<scalar_t>());
  return ptrs;
}

template <typename scalar_t>
std::vector<scalar_t*> mutable_data_pointers(std::vector<at::Tensor>& tensors) {
  std::vector<scalar_t*> ptrs;
  ptrs.reserve(tensors.size());
  for (auto& t : tensors) ptrs.push_back(t.mutable_data_ptr<scalar_t>());
  return ptrs;
}

}  // namespace fastdnas
