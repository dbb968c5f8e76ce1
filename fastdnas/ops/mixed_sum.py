"""mixed_sum: its wrapper and fake kernels (the kernels and the autograd formula: csrc/mixed_sum/)."""
from typing import Sequence

import torch
from torch import Tensor

from ..precision import autocast_inputs
from .common import _check_input_list, _check_like_first, _check_weight_vector, _tensor, _tensor_list

MAX_MIXED_SUM_INPUTS = 128  # csrc/mixed_sum/mixed_sum.h


def mixed_sum(inputs: Sequence[Tensor], weights: Tensor) -> Tensor:
    """``sum_i weights[i] * inputs[i]`` in one fused kernel.

    Args:
        inputs: K >= 1 (at most 128) tensors of one shape, dtype (float64, float32, float16 or
            bfloat16) and device; non-contiguous tensors are accepted.
        weights: a floating tensor of shape [K] on the same device.

    Half inputs accumulate in float32. The result is contiguous, in the inputs' dtype (under
    autocast the inputs are first cast to the autocast dtype; the weights never are). The
    backward pass is one fused kernel giving ``weights[i] * grad`` for every input and
    ``sum(grad * inputs[i])`` for every weight (a deterministic reduction).
    """
    inputs = _tensor_list("mixed_sum", "inputs", inputs)
    weights = _tensor("mixed_sum", "weights", weights)
    return torch.ops.fastdnas.mixed_sum(autocast_inputs(inputs) if inputs else inputs, weights)


def _check_mixed_sum_args(inputs, weights, op="mixed_sum"):
    # Mirrors csrc/mixed_sum/mixed_sum.h so fake tensors (torch.compile) fail with the same messages.
    first = _check_input_list(op, inputs, MAX_MIXED_SUM_INPUTS)
    for i, x in enumerate(inputs):
        _check_like_first(op, f"inputs[{i}]", x, "inputs[0]", first)
        torch._check(
            x.shape == first.shape,
            lambda: f"{op}: inputs[{i}] has shape {list(x.shape)} but inputs[0] has shape {list(first.shape)}; "
            "all must match",
        )
    _check_weight_vector(weights, len(inputs), first.device, op, "weights", "one weight per input")


@torch.library.register_fake("fastdnas::mixed_sum")
def _mixed_sum_fake(inputs, weights):
    _check_mixed_sum_args(inputs, weights)
    return torch.empty_like(inputs[0], memory_format=torch.contiguous_format)


@torch.library.register_fake("fastdnas::_mixed_sum_backward")
def _mixed_sum_backward_fake(grad, inputs, weights, output_mask=(True, True)):
    op = "mixed_sum (backward)"
    _check_mixed_sum_args(inputs, weights, op)
    first = inputs[0]
    torch._check(
        grad.shape == first.shape and grad.dtype == first.dtype and grad.device == first.device,
        lambda: f"{op}: grad must match inputs[0] (shape {list(first.shape)}, dtype {first.dtype}, device "
        f"{first.device})",
    )
    # A masked output is not computed: an empty list, None.
    grad_inputs = [torch.empty_like(x, memory_format=torch.contiguous_format) for x in inputs] if output_mask[0] else []
    return grad_inputs, torch.empty_like(weights, memory_format=torch.contiguous_format) if output_mask[1] else None


# Autograd: csrc/mixed_sum/mixed_sum_autograd.cpp (the kernel asked only for the gradients the
# running backward pass uses).
