"""depthwise_conv2d_segments, several depthwise convolutions of one stride in one call: its wrapper and fake
kernels (the kernels and the autograd formula: csrc/depthwise_segments/)."""
from typing import Sequence

import torch
from torch import Tensor

from ..precision import autocast_inputs
from .common import (_check_storage_size, _checked_size_product, _checked_size_sum, _int_list, _tensor, _tensor_list,
                     _type_name)
from .depthwise_conv import MAX_DEPTHWISE_GEOMETRY, _check_depthwise_tensor, _depthwise_shape, _pair

MAX_DEPTHWISE_SEGMENTS = 8  # kMaxDepthwiseSegments in csrc/depthwise_segments/depthwise_segments.h


def _pairs(op, what, values, count):
    """``values`` (one int or pair per segment) as the flat list of (h, w) pairs the op takes."""
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{op}: {what} must be a list with one int or pair per segment, got {_type_name(values)}")
    if len(values) != count:
        raise ValueError(f"{op}: {what} must hold one int or pair per segment ({count} = len(weights)), "
                         f"got {len(values)}")
    return [v for g, value in enumerate(values) for v in _pair(value, f"{what}[{g}]", op)]


def depthwise_conv2d_segments(input: Tensor, weights: Sequence[Tensor], stride, paddings, dilations,
                              input_offsets) -> Tensor:
    """G depthwise convolutions of one stride in one call: output channels ``[g*C, (g+1)*C)`` are
    ``F.conv2d(input[:, off:off+C], weights[g], stride=stride, padding=paddings[g],
    dilation=dilations[g], groups=C)`` with ``off = input_offsets[g]``.

    Args:
        input: [N, Cx, H, W], float64, float32, float16 or bfloat16 (non-contiguous accepted).
        weights: 1 to 8 tensors [C, 1, KH_g, KW_g] (one C, any kernel sizes), input's dtype and device.
        stride: an int or an (h, w) pair, shared by all segments.
        paddings, dilations: one int or (h, w) pair per segment.
        input_offsets: one int per segment, the first input channel it reads (segments may share channels).

    Returns [N, G*C, OH, OW] (contiguous); every segment must give the same OH, OW. Each segment
    computes exactly what ``depthwise_conv2d`` computes. Backward is two ops (input gradient,
    summed over the segments that read a channel in ascending segment order; and all weight
    gradients in one flat tensor), each computed only when autograd needs it. Under autocast
    the inputs are cast to the autocast dtype.
    """
    op = "depthwise_conv2d_segments"
    input = _tensor(op, "input", input)
    weights = _tensor_list(op, "weights", weights)
    input_offsets = _int_list(op, "input_offsets", input_offsets)
    if len(input_offsets) != len(weights):
        raise ValueError(f"{op}: input_offsets must hold one int per segment ({len(weights)} = len(weights)), "
                         f"got {len(input_offsets)}")
    stride = _pair(stride, "stride", op)
    paddings = _pairs(op, "paddings", paddings, len(weights))
    dilations = _pairs(op, "dilations", dilations, len(weights))
    input, *weights = autocast_inputs([input, *weights])
    return torch.ops.fastdnas.depthwise_conv2d_segments(input, weights, stride, paddings, dilations, input_offsets)


def _depthwise_segments(op, x_shape, w_shapes, stride, paddings, dilations, input_offsets):
    """Mirrors depthwise_segments in csrc/depthwise_segments/depthwise_segments.h; returns (G * C, OH, OW,
    flat weight-gradient size)."""
    G = len(input_offsets)
    torch._check(1 <= G <= MAX_DEPTHWISE_SEGMENTS, lambda: f"{op}: input_offsets must hold 1 to "
                 f"{MAX_DEPTHWISE_SEGMENTS} values (one per segment), got {G}")
    torch._check(len(w_shapes) == G,
                 lambda: f"{op}: weights must hold one tensor per segment ({G} = len(input_offsets)), got {len(w_shapes)}")
    for what, values in (("paddings", paddings), ("dilations", dilations)):
        torch._check(len(values) == 2 * G, lambda: f"{op}: {what} must hold an (h, w) pair per segment ({2 * G} "
                     f"values), got {len(values)}")
    torch._check(len(x_shape) == 4, lambda: f"{op}: input must be a 4-D tensor [N, C, H, W], got shape {list(x_shape)}")
    torch._check(len(w_shapes[0]) == 4 and w_shapes[0][1] == 1,
                 lambda: f"{op}: weights[0] must have shape [C, 1, KH, KW], got {list(w_shapes[0])}")
    torch._check(len(stride) in (1, 2), lambda: f"{op}: stride must hold 1 or 2 values, got {len(stride)}")
    torch._check(min(stride) >= 1, lambda: f"{op}: stride must be >= 1, got {list(stride)}")
    torch._check(max(stride) <= MAX_DEPTHWISE_GEOMETRY,
                 lambda: f"{op}: stride must be at most {MAX_DEPTHWISE_GEOMETRY}, got {list(stride)}")
    C, Cx = w_shapes[0][0], x_shape[1]
    out_channels = _checked_size_product(op, "the output's G * C channels (segments * channels of weights[0])", G, C)
    flat, flat_size = "the flat weight gradient's size (the sum of C * KH * KW over the segments)", 0
    out = None
    for g in range(G):
        w_shape, off = w_shapes[g], input_offsets[g]
        torch._check(len(w_shape) == 4 and w_shape[0] == C and w_shape[1] == 1,
                     lambda: f"{op}: weights[{g}] must have shape [C, 1, KH, KW] with C = {C} (the C of weights[0]), "
                     f"got {list(w_shape)}")
        torch._check(0 <= off <= Cx - C, lambda: f"{op}: input_offsets[{g}] = {off} reads {C} input channels from "
                     f"channel {off} but the input has {Cx} channels; each offset must be in [0, {Cx - C}]")
        size = _depthwise_shape(f"{op} (segment {g})", [x_shape[0], C, *x_shape[2:]], w_shape, stride,
                                paddings[2 * g:2 * g + 2], dilations[2 * g:2 * g + 2])
        out = size if out is None else out
        torch._check(size == out, lambda: f"{op}: segment {g} gives an output of size {size[0]}x{size[1]} but "
                     f"segment 0 gives {out[0]}x{out[1]}; every segment must give the same size")
        taps = _checked_size_product(op, flat, _checked_size_product(op, flat, C, w_shape[2]), w_shape[3])
        flat_size = _checked_size_sum(op, flat, flat_size, taps)
    return out_channels, *out, flat_size


def _check_segments_grad(op, grad, x_shape, out_channels, oh, ow):
    shape = [x_shape[0], out_channels, oh, ow]
    torch._check(list(grad.shape) == shape, lambda: f"{op}: grad must have the output's shape {shape}, got "
                 f"{list(grad.shape)}")


def _check_segments_weights(op, weights, like):
    for g, w in enumerate(weights):
        _check_depthwise_tensor(op, f"weights[{g}]", w, like)


@torch.library.register_fake("fastdnas::depthwise_conv2d_segments")
def _depthwise_conv2d_segments_fake(input, weights, stride, paddings, dilations, input_offsets):
    op = "depthwise_conv2d_segments"
    _check_depthwise_tensor(op, "input", input, input)
    _check_segments_weights(op, weights, input)
    out_channels, oh, ow, _ = _depthwise_segments(op, input.shape, [w.shape for w in weights], stride, paddings,
                                                  dilations, input_offsets)
    shape = (input.shape[0], out_channels, oh, ow)
    _check_storage_size(op, "the output (from input, weights, stride, paddings and dilations)", shape, input.dtype)
    return input.new_empty(shape)


@torch.library.register_fake("fastdnas::_depthwise_conv2d_segments_input_grad")
def _depthwise_conv2d_segments_input_grad_fake(grad, weights, input_size, stride, paddings, dilations, input_offsets):
    op = "depthwise_conv2d_segments (input gradient)"
    _check_depthwise_tensor(op, "grad", grad, grad)
    _check_segments_weights(op, weights, grad)
    out_channels, oh, ow, _ = _depthwise_segments(op, input_size, [w.shape for w in weights], stride, paddings,
                                                  dilations, input_offsets)
    _check_segments_grad(op, grad, input_size, out_channels, oh, ow)
    _check_storage_size(op, "the input gradient (input_size)", input_size, grad.dtype)
    return grad.new_empty(input_size)


@torch.library.register_fake("fastdnas::_depthwise_conv2d_segments_weight_grad")
def _depthwise_conv2d_segments_weight_grad_fake(grad, input, kernel_sizes, stride, paddings, dilations,
                                                input_offsets):
    op = "depthwise_conv2d_segments (weight gradient)"
    _check_depthwise_tensor(op, "grad", grad, input)
    _check_depthwise_tensor(op, "input", input, input)
    G = len(input_offsets)
    torch._check(1 <= G <= MAX_DEPTHWISE_SEGMENTS, lambda: f"{op}: input_offsets must hold 1 to "
                 f"{MAX_DEPTHWISE_SEGMENTS} values (one per segment), got {G}")
    torch._check(len(kernel_sizes) == 2 * G, lambda: f"{op}: kernel_sizes must hold a (KH, KW) pair per segment "
                 f"({2 * G} values), got {len(kernel_sizes)}")
    torch._check(grad.dim() == 4 and grad.shape[1] % G == 0, lambda: f"{op}: grad must be a 4-D tensor with G * C "
                 f"channels (G = {G}), got shape {list(grad.shape)}")
    C = grad.shape[1] // G
    w_shapes = [[C, 1, kernel_sizes[2 * g], kernel_sizes[2 * g + 1]] for g in range(G)]
    out_channels, oh, ow, flat_size = _depthwise_segments(op, input.shape, w_shapes, stride, paddings, dilations,
                                                          input_offsets)
    _check_segments_grad(op, grad, input.shape, out_channels, oh, ow)
    _check_storage_size(op, "the flat weight gradient (from kernel_sizes and grad's channels)", [flat_size], grad.dtype)
    return grad.new_empty((flat_size,))


# Autograd: csrc/depthwise_segments/depthwise_segments_autograd.cpp (the input gradient summed over the
# segments that read a channel; all weight gradients from one flat tensor; each only where the
# running backward pass uses it).
