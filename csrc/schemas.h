// The schemas of the fastdnas ops, defined by the op library fastdnas (csrc/fastdnas.cpp) and
// by the emulated CUDA build of the tests (library fastdnas_emu, tests/cuda_emu).
#pragma once

#include <torch/library.h>

namespace fastdnas {

inline void define_op_schemas(torch::Library& m) {
  m.def("mixed_sum(Tensor[] inputs, Tensor weights) -> Tensor");
  // output_mask (here and in _trellis_aggregate_backward): (the inputs' gradients, the weights'
  // gradient); a masked output is not computed (an empty list, an undefined tensor).
  m.def("_mixed_sum_backward(Tensor grad, Tensor[] inputs, Tensor weights, bool[2] output_mask=[True, True]) -> "
        "(Tensor[], Tensor)");
  m.def("trellis_aggregate(Tensor[] blocks, int num_cells, Tensor betas) -> Tensor");
  m.def("_trellis_aggregate_backward(Tensor grad, Tensor[] blocks, int num_cells, Tensor betas, "
        "bool[2] output_mask=[True, True]) -> (Tensor[], Tensor)");
  // weights has no default: torch 2.11 drops an argument equal to its default before the Python
  // autograd formula runs, which then returns one gradient too many.
  m.def("resize_sum(Tensor[] inputs, SymInt[] size, Tensor? weights) -> Tensor");
  m.def("_resize_sum_backward(Tensor grad, Tensor[] inputs, Tensor? weights) -> (Tensor[], Tensor)");
  m.def("mixed_node(Tensor[] edge_inputs, int[] strides, Tensor[] conv_outputs, Tensor weights, int[] free_items, "
        "int[] free_kinds, int[] conv_items, Tensor? running_mean, Tensor? running_var, float eps) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("_mixed_node_backward(Tensor grad, Tensor[] edge_inputs, int[] strides, Tensor[] conv_outputs, "
        "Tensor weights, int[] free_items, int[] free_kinds, int[] conv_items, Tensor mean, Tensor var, float eps, "
        "bool batch_stats) -> (Tensor[], Tensor[], Tensor)");
  m.def("depthwise_conv2d(Tensor input, Tensor weight, int[2] stride=1, int[2] padding=0, int[2] dilation=1) -> Tensor");
  m.def("_depthwise_conv2d_input_grad(Tensor grad, Tensor weight, SymInt[] input_size, int[2] stride, int[2] padding, "
        "int[2] dilation) -> Tensor");
  m.def("_depthwise_conv2d_weight_grad(Tensor grad, Tensor input, SymInt[] weight_size, int[2] stride, "
        "int[2] padding, int[2] dilation) -> Tensor");
  // paddings and dilations: an (h, w) pair per segment, flat; kernel_sizes likewise (KH, KW).
  m.def("depthwise_conv2d_segments(Tensor input, Tensor[] weights, int[2] stride, int[] paddings, int[] dilations, "
        "int[] input_offsets) -> Tensor");
  m.def("_depthwise_conv2d_segments_input_grad(Tensor grad, Tensor[] weights, SymInt[] input_size, int[2] stride, "
        "int[] paddings, int[] dilations, int[] input_offsets) -> Tensor");
  m.def("_depthwise_conv2d_segments_weight_grad(Tensor grad, Tensor input, int[] kernel_sizes, int[2] stride, "
        "int[] paddings, int[] dilations, int[] input_offsets) -> Tensor");
}

}  // namespace fastdnas
