"""depthwise_conv2d, the depthwise convolution of the separable and dilated candidates: its wrapper and fake
kernels (the kernels and the autograd formula: csrc/depthwise_conv/)."""
import torch
from torch import Tensor

from ..precision import autocast_inputs
from .common import _SUPPORTED_DTYPES, _check_storage_size, _tensor, _type_name

def _pair(value, what, op="depthwise_conv2d"):
    if not isinstance(value, (int, list, tuple)) or isinstance(value, bool):
        raise TypeError(f"{op}: {what} must be an int or a pair of ints, got {_type_name(value)}")
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{op}: {what} must be an int or a pair of ints, got {value!r}")
    return list(pair)


def depthwise_conv2d(input: Tensor, weight: Tensor, stride=1, padding=0, dilation=1) -> Tensor:
    """``F.conv2d(input, weight, stride=stride, padding=padding, dilation=dilation, groups=C)``:
    one filter per channel, zero padding, no bias.

    Args:
        input: [N, C, H, W], float64, float32, float16 or bfloat16 (non-contiguous accepted).
        weight: [C, 1, KH, KW], same dtype and device.
        stride, padding, dilation: an int or an (h, w) pair each.

    Returns [N, C, OH, OW] (contiguous), with the sizes of ``F.conv2d``. Half inputs accumulate in
    float32. Backward is two ops, the input gradient and the weight gradient, each computed only
    when autograd needs it; the weight gradient is a deterministic reduction. Under autocast
    both inputs are cast to the autocast dtype, as for ``F.conv2d``.
    """
    input, weight = _tensor("depthwise_conv2d", "input", input), _tensor("depthwise_conv2d", "weight", weight)
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    input, weight = autocast_inputs([input, weight])
    return torch.ops.fastdnas.depthwise_conv2d(input, weight, stride, padding, dilation)


MAX_DEPTHWISE_GEOMETRY = 2**31 - 1  # kMaxDepthwiseGeometry in csrc/depthwise_conv/depthwise_conv.h


def _depthwise_shape(op, x_shape, w_shape, stride, padding, dilation):
    """Mirrors depthwise_shape in csrc/depthwise_conv/depthwise_conv.h; returns (OH, OW)."""
    torch._check(len(x_shape) == 4, lambda: f"{op}: input must be a 4-D tensor [N, C, H, W], got shape {list(x_shape)}")
    torch._check(len(w_shape) == 4 and w_shape[0] == x_shape[1] and w_shape[1] == 1 and w_shape[2] > 0
                 and w_shape[3] > 0,
                 lambda: f"{op}: weight must have shape [C, 1, KH, KW] with C = {x_shape[1]} (one filter per input "
                 f"channel), got {list(w_shape)}")
    torch._check(x_shape[0] >= 0 and x_shape[1] >= 0,
                 lambda: f"{op}: input must have N, C >= 0, got shape {list(x_shape)}")
    for what, values, least in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        torch._check(len(values) in (1, 2), lambda: f"{op}: {what} must hold 1 or 2 values, got {len(values)}")
        torch._check(min(values) >= least, lambda: f"{op}: {what} must be >= {least}, got {list(values)}")
        torch._check(max(values) <= MAX_DEPTHWISE_GEOMETRY,
                     lambda: f"{op}: {what} must be at most {MAX_DEPTHWISE_GEOMETRY}, got {list(values)}")
    for what, sizes in (("input", x_shape), ("weight", w_shape)):
        torch._check(all(0 <= v <= MAX_DEPTHWISE_GEOMETRY for v in sizes[2:]),
                     lambda: f"{op}: {what} has spatial sizes {list(sizes[2:])}; each must be in "
                     f"[0, {MAX_DEPTHWISE_GEOMETRY}]")
    given_stride, given_padding, given_dilation = list(stride), list(padding), list(dilation)
    # One value stands for both dimensions (as pair_argument in the C++ check reads it).
    stride, padding, dilation = ([values[0], values[-1]] for values in (stride, padding, dilation))
    out = [(x_shape[2 + d] + 2 * padding[d] - dilation[d] * (w_shape[2 + d] - 1) - 1) // stride[d] + 1
           for d in (0, 1)]
    torch._check(x_shape[2] > 0 and x_shape[3] > 0 and out[0] > 0 and out[1] > 0,
                 lambda: f"{op}: input of spatial size {x_shape[2]}x{x_shape[3]} with kernel {w_shape[2]}x{w_shape[3]},"
                 f" stride {given_stride}, padding {given_padding} and dilation {given_dilation} gives an "
                 f"output of size {out[0]}x{out[1]}; "
                 "it must be at least 1x1")
    return out


def _check_depthwise_tensor(op, what, t, like):
    torch._check(t.dtype in _SUPPORTED_DTYPES,
                 lambda: f"{op}: {what} must be float64, float32, float16 or bfloat16, got {t.dtype}")
    torch._check(t.dtype == like.dtype and t.device == like.device,
                 lambda: f"{op}: {what} has dtype {t.dtype} on {t.device} but must match the other tensors "
                 f"({like.dtype} on {like.device})")


def _check_depthwise_grad(op, grad, x_shape, out):
    shape = [x_shape[0], x_shape[1], *out]
    torch._check(list(grad.shape) == shape, lambda: f"{op}: grad must have the output's shape {shape}, got "
                 f"{list(grad.shape)}")


@torch.library.register_fake("fastdnas::depthwise_conv2d")
def _depthwise_conv2d_fake(input, weight, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    op = "depthwise_conv2d"
    _check_depthwise_tensor(op, "input", input, input)
    _check_depthwise_tensor(op, "weight", weight, input)
    oh, ow = _depthwise_shape(op, input.shape, weight.shape, stride, padding, dilation)
    shape = (input.shape[0], input.shape[1], oh, ow)
    _check_storage_size(op, "the output (from input, weight, stride, padding and dilation)", shape, input.dtype)
    return input.new_empty(shape)


@torch.library.register_fake("fastdnas::_depthwise_conv2d_input_grad")
def _depthwise_conv2d_input_grad_fake(grad, weight, input_size, stride, padding, dilation):
    op = "depthwise_conv2d (input gradient)"
    _check_depthwise_tensor(op, "grad", grad, grad)
    _check_depthwise_tensor(op, "weight", weight, grad)
    _check_depthwise_grad(op, grad, input_size, _depthwise_shape(op, input_size, weight.shape, stride, padding,
                                                                 dilation))
    _check_storage_size(op, "the input gradient (input_size)", input_size, grad.dtype)
    return grad.new_empty(input_size)


@torch.library.register_fake("fastdnas::_depthwise_conv2d_weight_grad")
def _depthwise_conv2d_weight_grad_fake(grad, input, weight_size, stride, padding, dilation):
    op = "depthwise_conv2d (weight gradient)"
    _check_depthwise_tensor(op, "grad", grad, input)
    _check_depthwise_tensor(op, "input", input, input)
    _check_depthwise_grad(op, grad, input.shape, _depthwise_shape(op, input.shape, weight_size, stride, padding,
                                                                  dilation))
    _check_storage_size(op, "the weight gradient (weight_size)", weight_size, grad.dtype)
    return grad.new_empty(weight_size)


# Autograd: csrc/depthwise_conv/depthwise_conv_autograd.cpp (each gradient computed only when the
# running backward pass uses it).
