"""Argument checks and autograd helpers every op module shares (csrc/common/checks.h's Python side)."""
import math

import torch
from torch import Tensor

from ..reference import accumulation_dtype

_SUPPORTED_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _type_name(value):
    kind = type(value)
    if value is None:
        return "None"
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def _tensor_list(op, what, values):
    """``values`` (a list or tuple of tensors) as a list; a TypeError naming the argument otherwise."""
    if not isinstance(values, (list, tuple)):
        hint = " (pass list(t.unbind(0)) for the slices of one tensor)" if isinstance(values, Tensor) else ""
        raise TypeError(f"{op}: {what} must be a list or tuple of tensors, got {_type_name(values)}{hint}")
    for i, value in enumerate(values):
        if not isinstance(value, Tensor):
            raise TypeError(f"{op}: {what}[{i}] must be a tensor, got {_type_name(value)}")
    return list(values)


def _tensor(op, what, value, optional=False):
    """``value`` if it is a tensor (or None where ``optional``); a TypeError naming the argument otherwise."""
    if isinstance(value, Tensor) or (optional and value is None):
        return value
    raise TypeError(f"{op}: {what} must be a tensor{' or None' if optional else ''}, got {_type_name(value)}")


INT64_MAX = 2**63 - 1


def _checked_size_product(op, what, a, b):
    # Mirrors checked_size_product in csrc/common/checks.h (Python ints do not wrap: compare).
    torch._check(a * b <= INT64_MAX, lambda: f"{op}: {what} ({a} * {b}) overflows int64")
    return a * b


def _checked_size_sum(op, what, a, b):
    # Mirrors checked_size_sum in csrc/common/checks.h.
    torch._check(a + b <= INT64_MAX, lambda: f"{op}: {what} ({a} + {b}) overflows int64")
    return a + b


def _check_storage_size(op, what, shape, dtype):
    # Mirrors check_storage_size in csrc/common/checks.h: counted in the accumulation dtype.
    torch._check(math.prod(shape) * accumulation_dtype(dtype).itemsize <= INT64_MAX,
                 lambda: f"{op}: {what} would have shape {list(shape)}: more bytes than int64 can count")


def _int_list(op, what, values):
    """``values`` (a list or tuple of ints) as a list; a TypeError naming the argument otherwise."""
    if not isinstance(values, (list, tuple, torch.Size)):
        raise TypeError(f"{op}: {what} must be a list or tuple of ints, got {_type_name(values)}")
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
            raise TypeError(f"{op}: {what}[{i}] must be an int, got {_type_name(value)}")
    return list(values)


def _check_weight_vector(weights, length, device, op, what, length_meaning):
    # Mirrors check_weight_vector in csrc/common/checks.h.
    torch._check(
        weights.is_floating_point(), lambda: f"{op}: {what} must be a floating-point tensor, got {weights.dtype}"
    )
    torch._check(
        weights.dim() == 1 and weights.shape[0] == length,
        lambda: f"{op}: {what} must have shape [{length}] ({length_meaning}), got {list(weights.shape)}",
    )
    torch._check(
        weights.device == device,
        lambda: f"{op}: {what} is on {weights.device} but the inputs are on {device}; they must be on one device",
    )


def _check_input_list(op, inputs, max_inputs):
    """The number of a list of inputs and the first one's dtype (mixed_sum, resize_sum); returns
    inputs[0]."""
    torch._check(len(inputs) > 0, lambda: f"{op}: inputs must hold at least one tensor, got an empty list")
    torch._check(
        len(inputs) <= max_inputs,
        lambda: f"{op}: inputs holds {len(inputs)} tensors; at most {max_inputs} are supported",
    )
    first = inputs[0]
    torch._check(
        first.dtype in _SUPPORTED_DTYPES,
        lambda: f"{op}: inputs must be float64, float32, float16 or bfloat16, got {first.dtype}",
    )
    return first


def _check_like_first(op, name, x, first_name, first):
    """A tensor of a list has the dtype and device of the list's first."""
    torch._check(
        x.dtype == first.dtype,
        lambda: f"{op}: {name} has dtype {x.dtype} but {first_name} has dtype {first.dtype}; all must match",
    )
    torch._check(
        x.device == first.device,
        lambda: f"{op}: {name} is on {x.device} but {first_name} is on {first.device}; all must be on one device",
    )
