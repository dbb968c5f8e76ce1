"""resize_sum, a weighted sum of bilinear resizes: its wrapper and fake kernels (the kernels and the autograd
formula: csrc/trellis/)."""
from typing import Sequence

import torch
from torch import Tensor

from ..precision import autocast_inputs
from .common import _check_input_list, _check_like_first, _check_storage_size, _check_weight_vector, _tensor, _tensor_list

MAX_RESIZE_SUM_INPUTS = 32  # csrc/trellis/resize_sum.h


def resize_sum(inputs: Sequence[Tensor], size: Sequence[int], weights: Tensor | None = None) -> Tensor:
    """``sum_i weights[i] * F.interpolate(inputs[i], size, mode="bilinear", align_corners=False)``
    in one fused kernel.

    Args:
        inputs: K >= 1 (at most 32) tensors [N, C, H_i, W_i] of any heights and widths, sharing
            N, C, dtype (float64, float32, float16 or bfloat16) and device.
        size: the output (height, width), two positive ints.
        weights: a floating tensor of shape [K] on the same device; ones when None.

    Resizing up or down follows PyTorch's bilinear source indices exactly (no antialias). Half
    inputs accumulate in float32. The backward pass gives each input the adjoint of its resize
    (gathered per input pixel: deterministic, no atomics) and each weight
    ``sum(grad * resized input)``, in one pass per input.
    """
    inputs = _tensor_list("resize_sum", "inputs", inputs)
    weights = _tensor("resize_sum", "weights", weights, optional=True)
    if not inputs:  # with no tensor and no weights the dispatcher could not pick a kernel
        raise ValueError("resize_sum: inputs must hold at least one tensor, got an empty list")
    if not isinstance(size, (tuple, list, torch.Size)) or len(size) != 2:
        raise ValueError(f"resize_sum: size must be 2 positive ints (height, width), got {size!r}")
    for s in size:
        if isinstance(s, bool) or not isinstance(s, (int, torch.SymInt)) or (isinstance(s, int) and s <= 0):
            raise ValueError(f"resize_sum: size must be 2 positive ints (height, width), got {size!r}")
    return torch.ops.fastdnas.resize_sum(autocast_inputs(inputs), list(size), weights)


def _check_resize_sum_args(inputs, size, weights, op="resize_sum"):
    """Mirrors csrc/trellis/resize_sum.h."""
    first = _check_input_list(op, inputs, MAX_RESIZE_SUM_INPUTS)
    for i, x in enumerate(inputs):
        torch._check(
            x.dim() == 4 and x.shape[2] > 0 and x.shape[3] > 0,
            lambda: f"{op}: inputs[{i}] must be 4-D [N, C, H, W] with H, W > 0, got shape {list(x.shape)}",
        )
        _check_like_first(op, f"inputs[{i}]", x, "inputs[0]", first)
        torch._check(
            x.shape[:2] == first.shape[:2],
            lambda: f"{op}: inputs[{i}] has shape {list(x.shape)} but inputs[0] has shape {list(first.shape)}; "
            "N and C must match",
        )
    torch._check(
        len(size) == 2 and size[0] > 0 and size[1] > 0,
        lambda: f"{op}: size must be 2 positive ints (height, width), got {list(size)}",
    )
    _check_storage_size(op, "the output (from size and inputs' N, C)", [*first.shape[:2], *size], first.dtype)
    if weights is not None:
        _check_weight_vector(weights, len(inputs), first.device, op, "weights", "one weight per input")


@torch.library.register_fake("fastdnas::resize_sum")
def _resize_sum_fake(inputs, size, weights=None):
    _check_resize_sum_args(inputs, size, weights)
    N, C = inputs[0].shape[:2]
    return inputs[0].new_empty((N, C, size[0], size[1]))


@torch.library.register_fake("fastdnas::_resize_sum_backward")
def _resize_sum_backward_fake(grad, inputs, weights):
    op = "resize_sum (backward)"
    torch._check(grad.dim() == 4, lambda: f"{op}: grad must be 4-D [N, C, H, W]")
    _check_resize_sum_args(inputs, grad.shape[2:], weights, op)
    first = inputs[0]
    torch._check(
        grad.shape[:2] == first.shape[:2] and grad.dtype == first.dtype and grad.device == first.device,
        lambda: f"{op}: grad must have N={first.shape[0]}, C={first.shape[1]}, dtype {first.dtype} "
        f"and device {first.device}",
    )
    grad_inputs = [torch.empty_like(x, memory_format=torch.contiguous_format) for x in inputs]
    grad_weights_dtype = weights.dtype if weights is not None else grad.dtype
    return grad_inputs, grad.new_empty((len(inputs),), dtype=grad_weights_dtype)


# Autograd: csrc/trellis/resize_sum_autograd.cpp.
