"""Public wrappers of the compiled ops, with their fake (meta) kernels and autograd formulas."""
from typing import Sequence

import torch
from torch import Tensor

from . import _extension

_extension.load()

_SUPPORTED_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
MAX_MIXED_SUM_INPUTS = 128  # csrc/mixed_sum/mixed_sum.h


def mixed_sum(inputs: Sequence[Tensor], weights: Tensor) -> Tensor:
    """``sum_i weights[i] * inputs[i]`` in one fused kernel.

    Args:
        inputs: K >= 1 (at most 128) tensors of one shape, dtype (float64, float32, float16 or
            bfloat16) and device; non-contiguous tensors are accepted.
        weights: a floating tensor of shape [K] on the same device.

    Half inputs accumulate in float32. The result is contiguous, in the inputs' dtype. The
    backward pass is one fused kernel giving ``weights[i] * grad`` for every input and
    ``sum(grad * inputs[i])`` for every weight (a deterministic reduction).
    """
    return torch.ops.fastdnas.mixed_sum(list(inputs), weights)


def _check_mixed_sum_args(inputs, weights):
    # Mirrors csrc/common/checks.h so fake tensors (torch.compile) fail with the same messages.
    torch._check(len(inputs) > 0, lambda: "mixed_sum: inputs must hold at least one tensor, got an empty list")
    torch._check(
        len(inputs) <= MAX_MIXED_SUM_INPUTS,
        lambda: f"mixed_sum: inputs holds {len(inputs)} tensors; at most {MAX_MIXED_SUM_INPUTS} are supported",
    )
    first = inputs[0]
    torch._check(
        first.dtype in _SUPPORTED_DTYPES,
        lambda: f"mixed_sum: inputs must be float64, float32, float16 or bfloat16, got {first.dtype}",
    )
    for i, x in enumerate(inputs):
        torch._check(
            x.dtype == first.dtype,
            lambda: f"mixed_sum: inputs[{i}] has dtype {x.dtype} but inputs[0] has dtype {first.dtype}; all must match",
        )
        torch._check(
            x.device == first.device,
            lambda: f"mixed_sum: inputs[{i}] is on {x.device} but inputs[0] is on {first.device}; "
            "all must be on one device",
        )
        torch._check(
            x.shape == first.shape,
            lambda: f"mixed_sum: inputs[{i}] has shape {list(x.shape)} but inputs[0] has shape {list(first.shape)}; "
            "all must match",
        )
    torch._check(
        weights.is_floating_point(), lambda: f"mixed_sum: weights must be a floating-point tensor, got {weights.dtype}"
    )
    torch._check(
        weights.dim() == 1 and weights.shape[0] == len(inputs),
        lambda: f"mixed_sum: weights must have shape [{len(inputs)}] (one weight per input), got {list(weights.shape)}",
    )
    torch._check(
        weights.device == first.device,
        lambda: f"mixed_sum: weights is on {weights.device} but the inputs are on {first.device}",
    )


@torch.library.register_fake("fastdnas::mixed_sum")
def _mixed_sum_fake(inputs, weights):
    _check_mixed_sum_args(inputs, weights)
    return torch.empty_like(inputs[0], memory_format=torch.contiguous_format)


@torch.library.register_fake("fastdnas::_mixed_sum_backward")
def _mixed_sum_backward_fake(grad, inputs, weights):
    _check_mixed_sum_args(inputs, weights)
    grad_inputs = [torch.empty_like(x, memory_format=torch.contiguous_format) for x in inputs]
    return grad_inputs, torch.empty_like(weights, memory_format=torch.contiguous_format)


def _mixed_sum_setup_context(ctx, inputs, output):
    tensors, weights = inputs
    ctx.num_inputs = len(tensors)
    ctx.save_for_backward(*tensors, weights)


def _mixed_sum_backward(ctx, grad):
    *tensors, weights = ctx.saved_tensors
    grad_inputs, grad_weights = torch.ops.fastdnas._mixed_sum_backward(grad, tensors, weights)
    return list(grad_inputs), grad_weights


torch.library.register_autograd(
    "fastdnas::mixed_sum", _mixed_sum_backward, setup_context=_mixed_sum_setup_context
)
