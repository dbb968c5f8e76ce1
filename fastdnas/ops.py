"""Public wrappers of the compiled ops, with their fake (meta) kernels and autograd formulas."""
import math
from typing import Sequence

import torch
from torch import Tensor

from . import _extension
from .backward_needs import engine_needs
from .precision import autocast_inputs
from .reference import accumulation_dtype

_extension.load()

_SUPPORTED_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
MAX_MIXED_SUM_INPUTS = 128  # csrc/mixed_sum/mixed_sum.h


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
    torch._check(len(inputs) > 0, lambda: f"{op}: inputs must hold at least one tensor, got an empty list")
    torch._check(
        len(inputs) <= MAX_MIXED_SUM_INPUTS,
        lambda: f"{op}: inputs holds {len(inputs)} tensors; at most {MAX_MIXED_SUM_INPUTS} are supported",
    )
    first = inputs[0]
    torch._check(
        first.dtype in _SUPPORTED_DTYPES,
        lambda: f"{op}: inputs must be float64, float32, float16 or bfloat16, got {first.dtype}",
    )
    for i, x in enumerate(inputs):
        torch._check(
            x.dtype == first.dtype,
            lambda: f"{op}: inputs[{i}] has dtype {x.dtype} but inputs[0] has dtype {first.dtype}; all must match",
        )
        torch._check(
            x.device == first.device,
            lambda: f"{op}: inputs[{i}] is on {x.device} but inputs[0] is on {first.device}; "
            "all must be on one device",
        )
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


def _mixed_sum_setup_context(ctx, inputs, output):
    tensors, weights = inputs
    ctx.num_inputs = len(tensors)
    ctx.save_for_backward(*tensors, weights)


def _needed(flags, count):
    """One bool per tensor of a Tensor[] argument from its ``ctx.needs_input_grad`` entry (a list,
    or one bool for the whole list in older torch)."""
    return list(flags) if isinstance(flags, (list, tuple)) else [bool(flags)] * count


def _only_needed(grads, needed):
    """``grads`` with None where autograd needs no gradient."""
    return [g if need else None for g, need in zip(grads, needed)]


def _mixed_sum_backward(ctx, grad):
    *tensors, weights = ctx.saved_tensors
    need_inputs = _needed(ctx.needs_input_grad[0], len(tensors))
    # The kernel leaves out what no one needs: the input gradients, or the weights' sums.
    grad_inputs, grad_weights = torch.ops.fastdnas._mixed_sum_backward(grad, tensors, weights,
                                                                       [any(need_inputs), ctx.needs_input_grad[1]])
    return _only_needed(grad_inputs or [None] * len(tensors), need_inputs), grad_weights


torch.library.register_autograd(
    "fastdnas::mixed_sum", _mixed_sum_backward, setup_context=_mixed_sum_setup_context
)


# --- trellis_aggregate: the Auto-DeepLab node sum ---------------------------------------------

MAX_TRELLIS_CELLS = 3  # csrc/trellis/trellis_aggregate.h
MAX_TRELLIS_BLOCKS_PER_CELL = 32  # csrc/trellis/trellis_aggregate.h


def trellis_aggregate(cells: Sequence[Sequence[Tensor]], betas: Tensor) -> Tensor:
    """``torch.cat([sum_t betas[t] * cells[t][b] for b in range(B)], dim=1)`` in one fused kernel.

    Args:
        cells: T (1 to 3) cell evaluations, one per incoming transition, each the list of its B
            block outputs [N, C, H, W]; all T*B tensors share shape, dtype (float64, float32,
            float16 or bfloat16) and device. Non-contiguous tensors are accepted.
        betas: a floating tensor of shape [T] on the same device.

    Returns [N, B*C, H, W]: block b's channel slice holds ``sum_t betas[t] * cells[t][b]``,
    written straight into the concatenated output. Half inputs accumulate in float32. The
    backward pass is one fused kernel giving ``betas[t] * grad slice b`` for every block and
    ``sum_b sum(grad slice b * cells[t][b])`` for every beta (a deterministic reduction).
    """
    if not isinstance(cells, (list, tuple)):
        raise TypeError(f"trellis_aggregate: cells must be a list of cell evaluations (each a list of tensors), got "
                        f"{_type_name(cells)}")
    cells = [_tensor_list("trellis_aggregate", f"cells[{t}]", cell) for t, cell in enumerate(cells)]
    betas = _tensor("trellis_aggregate", "betas", betas)
    if not 1 <= len(cells) <= MAX_TRELLIS_CELLS:
        raise ValueError(
            f"trellis_aggregate: cells must hold 1 to {MAX_TRELLIS_CELLS} cell evaluations "
            f"(one per incoming transition), got {len(cells)}"
        )
    if not cells[0]:
        raise ValueError("trellis_aggregate: cells[0] holds no block outputs")
    for t, cell in enumerate(cells):
        if len(cell) != len(cells[0]):
            raise ValueError(
                f"trellis_aggregate: cells[{t}] holds {len(cell)} blocks but cells[0] holds {len(cells[0])}; "
                "every cell evaluation must give the same number of blocks"
            )
    # The schema takes one flat list, cell-major: blocks[t * B + b] = cells[t][b].
    blocks = autocast_inputs([block for cell in cells for block in cell])
    return torch.ops.fastdnas.trellis_aggregate(blocks, len(cells), betas)


def _check_trellis_aggregate_args(blocks, num_cells, betas, op="trellis_aggregate"):
    """Mirrors csrc/trellis/trellis_aggregate.h; returns the number of blocks per cell."""
    torch._check(
        1 <= num_cells <= MAX_TRELLIS_CELLS,
        lambda: f"{op}: cells must hold 1 to {MAX_TRELLIS_CELLS} cell evaluations (one per incoming transition), "
        f"got {num_cells}",
    )
    torch._check(
        len(blocks) > 0 and len(blocks) % num_cells == 0,
        lambda: f"{op}: blocks holds {len(blocks)} tensors, not a positive multiple of num_cells={num_cells}; "
        "every cell evaluation must give the same number of blocks",
    )
    B = len(blocks) // num_cells
    torch._check(
        B <= MAX_TRELLIS_BLOCKS_PER_CELL,
        lambda: f"{op}: each cell gives {B} blocks; at most {MAX_TRELLIS_BLOCKS_PER_CELL} are supported",
    )
    first = blocks[0]
    torch._check(
        first.dtype in _SUPPORTED_DTYPES,
        lambda: f"{op}: cells must be float64, float32, float16 or bfloat16, got {first.dtype}",
    )
    torch._check(first.dim() == 4, lambda: f"{op}: cells[0][0] must be 4-D [N, C, H, W], got shape {list(first.shape)}")
    torch._check(B * first.shape[1] < 2**63,
                 lambda: f"{op}: the output's {B} * {first.shape[1]} channels (blocks per cell * C) overflow int64")
    _check_storage_size(op, "the output (from the cells' block shape and blocks per cell)",
                        _trellis_output_shape(first, B), first.dtype)
    for i, x in enumerate(blocks):
        name = f"cells[{i // B}][{i % B}]"
        torch._check(
            x.dtype == first.dtype,
            lambda: f"{op}: {name} has dtype {x.dtype} but cells[0][0] has dtype {first.dtype}; all must match",
        )
        torch._check(
            x.device == first.device,
            lambda: f"{op}: {name} is on {x.device} but cells[0][0] is on {first.device}; all must be on one device",
        )
        torch._check(
            x.shape == first.shape,
            lambda: f"{op}: {name} has shape {list(x.shape)} but cells[0][0] has shape {list(first.shape)}; "
            "all must match",
        )
    _check_weight_vector(betas, num_cells, first.device, op, "betas", "one weight per cell evaluation")
    return B


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


def _trellis_output_shape(block, blocks_per_cell):
    N, C, H, W = block.shape
    return (N, blocks_per_cell * C, H, W)


@torch.library.register_fake("fastdnas::trellis_aggregate")
def _trellis_aggregate_fake(blocks, num_cells, betas):
    B = _check_trellis_aggregate_args(blocks, num_cells, betas)
    return blocks[0].new_empty(_trellis_output_shape(blocks[0], B))


@torch.library.register_fake("fastdnas::_trellis_aggregate_backward")
def _trellis_aggregate_backward_fake(grad, blocks, num_cells, betas, output_mask=(True, True)):
    op = "trellis_aggregate (backward)"
    B = _check_trellis_aggregate_args(blocks, num_cells, betas, op)
    shape = _trellis_output_shape(blocks[0], B)
    torch._check(
        grad.shape == shape and grad.dtype == blocks[0].dtype and grad.device == blocks[0].device,
        lambda: f"{op}: grad must have shape {list(shape)}, dtype {blocks[0].dtype} "
        f"and device {blocks[0].device}",
    )
    grad_blocks = [torch.empty_like(x, memory_format=torch.contiguous_format) for x in blocks] if output_mask[0] else []
    return grad_blocks, torch.empty_like(betas, memory_format=torch.contiguous_format) if output_mask[1] else None


def _trellis_aggregate_setup_context(ctx, inputs, output):
    blocks, num_cells, betas = inputs
    ctx.num_cells = num_cells
    ctx.save_for_backward(*blocks, betas)


def _trellis_aggregate_backward(ctx, grad):
    *blocks, betas = ctx.saved_tensors
    need_blocks = _needed(ctx.needs_input_grad[0], len(blocks))
    grad_blocks, grad_betas = torch.ops.fastdnas._trellis_aggregate_backward(
        grad, blocks, ctx.num_cells, betas, [any(need_blocks), ctx.needs_input_grad[2]])
    return _only_needed(grad_blocks or [None] * len(blocks), need_blocks), None, grad_betas


torch.library.register_autograd(
    "fastdnas::trellis_aggregate", _trellis_aggregate_backward, setup_context=_trellis_aggregate_setup_context
)


# --- resize_sum: a weighted sum of bilinear resizes --------------------------------------------

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
    torch._check(len(inputs) > 0, lambda: f"{op}: inputs must hold at least one tensor, got an empty list")
    torch._check(
        len(inputs) <= MAX_RESIZE_SUM_INPUTS,
        lambda: f"{op}: inputs holds {len(inputs)} tensors; at most {MAX_RESIZE_SUM_INPUTS} are supported",
    )
    first = inputs[0]
    torch._check(
        first.dtype in _SUPPORTED_DTYPES,
        lambda: f"{op}: inputs must be float64, float32, float16 or bfloat16, got {first.dtype}",
    )
    for i, x in enumerate(inputs):
        torch._check(
            x.dim() == 4 and x.shape[2] > 0 and x.shape[3] > 0,
            lambda: f"{op}: inputs[{i}] must be 4-D [N, C, H, W] with H, W > 0, got shape {list(x.shape)}",
        )
        torch._check(
            x.dtype == first.dtype,
            lambda: f"{op}: inputs[{i}] has dtype {x.dtype} but inputs[0] has dtype {first.dtype}; all must match",
        )
        torch._check(
            x.device == first.device,
            lambda: f"{op}: inputs[{i}] is on {x.device} but inputs[0] is on {first.device}; "
            "all must be on one device",
        )
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


def _resize_sum_setup_context(ctx, inputs, output):
    tensors, _size, weights = inputs
    ctx.has_weights = weights is not None
    ctx.save_for_backward(*tensors, weights)


def _resize_sum_backward(ctx, grad):
    *tensors, weights = ctx.saved_tensors
    grad_inputs, grad_weights = torch.ops.fastdnas._resize_sum_backward(grad, tensors, weights)
    need_inputs = _needed(ctx.needs_input_grad[0], len(tensors))
    need_weights = ctx.has_weights and ctx.needs_input_grad[2]
    return _only_needed(grad_inputs, need_inputs), None, grad_weights if need_weights else None


torch.library.register_autograd(
    "fastdnas::resize_sum", _resize_sum_backward, setup_context=_resize_sum_setup_context
)


# --- mixed_node: a DARTS node with its parameter-free ops and search-mode BatchNorms inside ----

# Limits of one call (csrc/mixed_node/mixed_node.h); fastdnas.nn splits wider nodes.
MAX_NODE_EDGES = 16
MAX_NODE_FREE_ITEMS = 3 * MAX_NODE_EDGES
MAX_NODE_CONV_OUTPUTS = 5 * MAX_NODE_EDGES
FREE_MAX_POOL, FREE_AVG_POOL, FREE_SKIP, FREE_PLAIN_AVG_POOL = 0, 1, 2, 3


def mixed_node(edge_inputs: Sequence[Tensor], strides: Sequence[int], conv_outputs: Sequence[Tensor],
               weights: Tensor, free_items: Sequence[int], free_kinds: Sequence[int], conv_items: Sequence[int],
               running_mean: Tensor | None = None, running_var: Tensor | None = None, eps: float = 1e-5):
    """A DARTS search node: ``sum_i weights_i * F_i(x_e(i)) + sum_k weights_k * BN_k(conv_outputs[k])``.

    Args:
        edge_inputs: E (1 to 16) tensors [N, C, H_e, W_e] (the states feeding the node), one
            dtype (float64, float32, float16 or bfloat16) and device.
        strides: one stride (1 or 2) per edge; every edge gives the same output size
            ``(H_e - 1) // stride + 1``.
        conv_outputs: the convolution candidates' outputs before their final BatchNorm, each
            [N, C, Ho, Wo].
        weights: [E, P], the node's rows of softmax(alpha).
        free_items, free_kinds: the parameter-free candidates: ``free_items[i] = e * P + p``
            names primitive p of edge e; ``free_kinds[i]`` is 0 (max_pool_3x3 then BN), 1
            (avg_pool_3x3, count_include_pad=False, then BN), 2 (skip_connect, stride 1 only) or 3
            (avg_pool_3x3, count_include_pad=False, without BN: the NAS-Bench-201 pool).
        conv_items: for each conv output, its flat index ``e * P + p`` into weights.
        running_mean, running_var: [B, C] statistics to normalise with (eval), one row per BN:
            the pooled free items in order, then the conv outputs; None: batch statistics.
        eps: the BatchNorm epsilon.

    Returns (out [N, C, Ho, Wo], mean [B, C], var [B, C]): the node, and the statistics every BN
    used (batch mean and biased variance in training, for the caller's running statistics;
    not differentiable). The pools' outputs are never stored: backward recomputes them from the
    edge inputs, and gives every conv output its BatchNorm input gradient directly.
    """
    op = "mixed_node"
    edge_inputs = _tensor_list(op, "edge_inputs", edge_inputs)
    conv_outputs = _tensor_list(op, "conv_outputs", conv_outputs)
    weights = _tensor(op, "weights", weights)
    running_mean = _tensor(op, "running_mean", running_mean, optional=True)
    running_var = _tensor(op, "running_var", running_var, optional=True)
    strides, free_items, free_kinds, conv_items = (_int_list(op, what, values) for what, values in (
        ("strides", strides), ("free_items", free_items), ("free_kinds", free_kinds), ("conv_items", conv_items)))
    if edge_inputs:  # under autocast: the edge inputs and the conv outputs in one dtype
        cast = autocast_inputs(edge_inputs + conv_outputs)
        edge_inputs, conv_outputs = cast[: len(edge_inputs)], cast[len(edge_inputs):]
    return torch.ops.fastdnas.mixed_node(edge_inputs, strides, conv_outputs, weights, free_items, free_kinds,
                                         conv_items, running_mean, running_var, eps)


def _check_mixed_node_args(op, edge_inputs, strides, conv_outputs, weights, free_items, free_kinds, conv_items):
    """Mirrors make_node_layout in csrc/mixed_node/mixed_node.h; returns (N, C, Ho, Wo, rows)."""
    torch._check(len(edge_inputs) > 0, lambda: f"{op}: edge_inputs must hold at least one tensor, got an empty list")
    E = len(edge_inputs)
    torch._check(E <= MAX_NODE_EDGES,
                 lambda: f"{op}: edge_inputs holds {E} tensors; at most {MAX_NODE_EDGES} are supported (split wider nodes)")
    first = edge_inputs[0]
    torch._check(first.dtype in _SUPPORTED_DTYPES,
                 lambda: f"{op}: edge_inputs must be float64, float32, float16 or bfloat16 tensors")
    torch._check(len(strides) == E, lambda: f"{op}: strides must hold one stride per edge input ({E}), got {len(strides)}")
    out_size = None
    for e, x in enumerate(edge_inputs):
        torch._check(x.dim() == 4, lambda: f"{op}: edge_inputs[{e}] must be a 4-D tensor [N, C, H, W]")
        torch._check(x.dtype == first.dtype,
                     lambda: f"{op}: edge_inputs[{e}] has dtype {x.dtype} but edge_inputs[0] has dtype {first.dtype}; "
                     "all must match")
        torch._check(x.device == first.device,
                     lambda: f"{op}: edge_inputs[{e}] is on {x.device} but edge_inputs[0] is on {first.device}; "
                     "all must be on one device")
        torch._check(x.shape[:2] == first.shape[:2],
                     lambda: f"{op}: edge_inputs[{e}] has shape {list(x.shape)} but edge_inputs[0] has shape "
                     f"{list(first.shape)}; N and C must match")
        torch._check(x.shape[2] > 0 and x.shape[3] > 0,
                     lambda: f"{op}: edge_inputs[{e}] must have H, W > 0, got shape {list(x.shape)}")
        torch._check(strides[e] in (1, 2), lambda: f"{op}: strides[{e}] must be 1 or 2, got {strides[e]}")
        size = ((x.shape[2] - 1) // strides[e] + 1, (x.shape[3] - 1) // strides[e] + 1)
        out_size = out_size or size
        torch._check(size == out_size,
                     lambda: f"{op}: edge_inputs[{e}] (shape {list(x.shape)}, stride {strides[e]}) gives a "
                     f"{size[0]}x{size[1]} output but edge_inputs[0] gives {out_size[0]}x{out_size[1]}; all must match")
    torch._check(weights is not None, lambda: f"{op}: weights must be a floating-point tensor [{E}, P] (one row of "
                 "primitive weights per edge), got None")
    torch._check(weights.is_floating_point() and weights.dim() == 2 and weights.shape[0] == E,
                 lambda: f"{op}: weights must be a floating-point tensor [{E}, P] (one row of primitive weights per "
                 f"edge), got {list(weights.shape)} {weights.dtype}")
    torch._check(weights.device == first.device,
                 lambda: f"{op}: weights is on {weights.device} but the edge inputs are on {first.device}; they must "
                 "be on one device")
    P = weights.shape[1]
    torch._check(len(free_items) == len(free_kinds),
                 lambda: f"{op}: free_items and free_kinds must have one entry per free item, got {len(free_items)} "
                 f"and {len(free_kinds)}")
    torch._check(len(free_items) <= MAX_NODE_FREE_ITEMS,
                 lambda: f"{op}: at most {MAX_NODE_FREE_ITEMS} free items are supported, got {len(free_items)}")
    torch._check(len(conv_outputs) <= MAX_NODE_CONV_OUTPUTS,
                 lambda: f"{op}: at most {MAX_NODE_CONV_OUTPUTS} conv outputs are supported, got {len(conv_outputs)}")
    torch._check(len(conv_items) == len(conv_outputs),
                 lambda: f"{op}: conv_items must have one entry per conv output ({len(conv_outputs)}), got "
                 f"{len(conv_items)}")
    torch._check(len(free_items) + len(conv_outputs) > 0,
                 lambda: f"{op}: at least one candidate (a free item or a conv output) is needed")
    rows = 0
    for i, (item, kind) in enumerate(zip(free_items, free_kinds)):
        torch._check(0 <= item < E * P,
                     lambda: f"{op}: free_items[{i}] = {item} is not a flat index into weights [{E}, {P}]")
        torch._check(kind in (FREE_MAX_POOL, FREE_AVG_POOL, FREE_SKIP, FREE_PLAIN_AVG_POOL),
                     lambda: f"{op}: free_kinds[{i}] must be 0 (max_pool_3x3), 1 (avg_pool_3x3), 2 "
                     f"(skip_connect) or 3 (avg_pool_3x3 without BatchNorm), got {kind}")
        torch._check(kind != FREE_SKIP or strides[item // P] == 1,
                     lambda: f"{op}: free item {i} is a skip on edge {item // P} of stride {strides[item // P]}; a "
                     "strided skip_connect is a FactorizedReduce (a conv output)")
        rows += kind in (FREE_MAX_POOL, FREE_AVG_POOL)
    N, C = first.shape[:2]
    for k, (y, item) in enumerate(zip(conv_outputs, conv_items)):
        shape = [N, C, *out_size]
        torch._check(list(y.shape) == shape,
                     lambda: f"{op}: conv_outputs[{k}] must have shape {shape} (the node's output), got {list(y.shape)}")
        torch._check(y.dtype == first.dtype and y.device == first.device,
                     lambda: f"{op}: conv_outputs[{k}] must have the edge inputs' dtype {first.dtype} and device "
                     f"{first.device}, got {y.dtype} on {y.device}")
        torch._check(0 <= item < E * P,
                     lambda: f"{op}: conv_items[{k}] = {item} is not a flat index into weights [{E}, {P}]")
    return N, C, out_size[0], out_size[1], rows + len(conv_outputs)


def _check_node_statistics(op, t, rows, C, device, what):
    torch._check(t.is_floating_point() and t.dim() == 2 and t.shape[0] == rows and t.shape[1] == C,
                 lambda: f"{op}: {what} must be a floating-point tensor [{rows}, {C}] (one row per BatchNorm: the "
                 f"pooled free items, then the conv outputs), got shape {list(t.shape)} and dtype {t.dtype}")
    torch._check(t.device == device, lambda: f"{op}: {what} is on {t.device} but the edge inputs are on {device}")


@torch.library.register_fake("fastdnas::mixed_node")
def _mixed_node_fake(edge_inputs, strides, conv_outputs, weights, free_items, free_kinds, conv_items,
                     running_mean, running_var, eps):
    op = "mixed_node"
    N, C, Ho, Wo, rows = _check_mixed_node_args(op, edge_inputs, strides, conv_outputs, weights, free_items,
                                                free_kinds, conv_items)
    first = edge_inputs[0]
    torch._check((running_mean is None) == (running_var is None),
                 lambda: f"{op}: running_mean and running_var must be given together (eval) or both None "
                 "(batch statistics)")
    if running_mean is not None:
        _check_node_statistics(op, running_mean, rows, C, first.device, "running_mean")
        _check_node_statistics(op, running_var, rows, C, first.device, "running_var")
    torch._check(eps >= 0, lambda: f"{op}: eps must be >= 0, got {eps}")
    acc = accumulation_dtype(first.dtype)
    return (first.new_empty((N, C, Ho, Wo)), first.new_empty((rows, C), dtype=acc),
            first.new_empty((rows, C), dtype=acc))


@torch.library.register_fake("fastdnas::_mixed_node_backward")
def _mixed_node_backward_fake(grad, edge_inputs, strides, conv_outputs, weights, free_items, free_kinds,
                              conv_items, mean, var, eps, batch_stats):
    op = "mixed_node (backward)"
    N, C, Ho, Wo, rows = _check_mixed_node_args(op, edge_inputs, strides, conv_outputs, weights, free_items,
                                                free_kinds, conv_items)
    first = edge_inputs[0]
    _check_node_statistics(op, mean, rows, C, first.device, "mean")
    _check_node_statistics(op, var, rows, C, first.device, "var")
    torch._check(eps >= 0, lambda: f"{op}: eps must be >= 0, got {eps}")
    torch._check(list(grad.shape) == [N, C, Ho, Wo] and grad.dtype == first.dtype and grad.device == first.device,
                 lambda: f"{op}: grad must have shape {[N, C, Ho, Wo]}, dtype {first.dtype} and device {first.device}")
    grad_edges = [torch.empty_like(x, memory_format=torch.contiguous_format) for x in edge_inputs]
    grad_convs = [torch.empty_like(y, memory_format=torch.contiguous_format) for y in conv_outputs]
    return grad_edges, grad_convs, torch.empty_like(weights, memory_format=torch.contiguous_format)


def _mixed_node_setup_context(ctx, inputs, output):
    edge_inputs, strides, conv_outputs, weights, free_items, free_kinds, conv_items, running_mean, _, eps = inputs
    _, mean, var = output
    ctx.mark_non_differentiable(mean, var)
    ctx.set_materialize_grads(False)  # no zero gradients made for the statistics (two ops per node)
    ctx.num_edges = len(edge_inputs)
    ctx.items = (list(strides), list(free_items), list(free_kinds), list(conv_items))
    ctx.eps = eps
    ctx.batch_stats = running_mean is None
    ctx.save_for_backward(*edge_inputs, *conv_outputs, weights, mean, var)


def _mixed_node_backward(ctx, grad, _grad_mean, _grad_var):
    strides, free_items, free_kinds, conv_items = ctx.items
    # No gradient for the int lists; an empty list must come back as an empty list.
    free_items_grad, free_kinds_grad, conv_items_grad = ([] if not items else None
                                                         for items in (free_items, free_kinds, conv_items))
    if grad is None:  # the sum's gradient is undefined (grads are not materialised): so are the inputs'
        return ([None] * ctx.num_edges, None, [None] * len(conv_items), None, free_items_grad, free_kinds_grad,
                conv_items_grad, None, None, None)
    saved = ctx.saved_tensors
    E = ctx.num_edges
    edge_inputs, conv_outputs = list(saved[:E]), list(saved[E:-3])
    weights, mean, var = saved[-3:]
    grad_edges, grad_convs, grad_weights = torch.ops.fastdnas._mixed_node_backward(
        grad, edge_inputs, strides, conv_outputs, weights, free_items, free_kinds, conv_items, mean, var, ctx.eps,
        ctx.batch_stats)
    need_edges, need_convs = (_needed(ctx.needs_input_grad[i], n) for i, n in ((0, E), (2, len(conv_outputs))))
    return (_only_needed(grad_edges, need_edges), None, _only_needed(grad_convs, need_convs),
            grad_weights if ctx.needs_input_grad[3] else None, free_items_grad, free_kinds_grad, conv_items_grad,
            None, None, None)


torch.library.register_autograd(
    "fastdnas::mixed_node", _mixed_node_backward, setup_context=_mixed_node_setup_context
)


# --- depthwise_conv2d: the depthwise convolution of the separable and dilated candidates -------


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


def _depthwise_conv2d_setup_context(ctx, inputs, output):
    input, weight, stride, padding, dilation = inputs
    ctx.geometry = (stride, padding, dilation)
    ctx.save_for_backward(input if ctx.needs_input_grad[1] else None, weight if ctx.needs_input_grad[0] else None)
    ctx.input_size, ctx.weight_size = list(input.shape), list(weight.shape)


def _depthwise_conv2d_backward(ctx, grad):
    input, weight = ctx.saved_tensors
    grad_input = grad_weight = None
    if ctx.needs_input_grad[0] and engine_needs(ctx, 0):
        grad_input = torch.ops.fastdnas._depthwise_conv2d_input_grad(grad, weight, ctx.input_size, *ctx.geometry)
    if ctx.needs_input_grad[1] and engine_needs(ctx, 1):
        grad_weight = torch.ops.fastdnas._depthwise_conv2d_weight_grad(grad, input, ctx.weight_size, *ctx.geometry)
    return grad_input, grad_weight, None, None, None


torch.library.register_autograd(
    "fastdnas::depthwise_conv2d", _depthwise_conv2d_backward, setup_context=_depthwise_conv2d_setup_context
)


# --- depthwise_conv2d_segments: several depthwise convolutions of one stride in one call ---------

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


def _depthwise_conv2d_segments_setup_context(ctx, inputs, output):
    input, weights, stride, paddings, dilations, input_offsets = inputs
    ctx.geometry = (stride, paddings, dilations, input_offsets)
    need_input, need_weights = ctx.needs_input_grad[0], any(w.requires_grad for w in weights)
    ctx.save_for_backward(input if need_weights else None, *(weights if need_input else []))
    ctx.input_size = list(input.shape)
    ctx.weight_shapes = [list(w.shape) for w in weights]
    ctx.need_weights = need_weights


def _depthwise_conv2d_segments_backward(ctx, grad):
    input, *weights = ctx.saved_tensors
    grad_input = None
    grad_weights = [None] * len(ctx.weight_shapes)
    if ctx.needs_input_grad[0] and engine_needs(ctx, 0):
        grad_input = torch.ops.fastdnas._depthwise_conv2d_segments_input_grad(grad, weights, ctx.input_size,
                                                                             *ctx.geometry)
    # The weights' gradients only where this backward pass uses them (not in torch.autograd.grad
    # of the alphas alone): engine_needs, tensor input 1 + g.
    need_weights = [ctx.need_weights and need and engine_needs(ctx, 1 + g)
                    for g, need in enumerate(_needed(ctx.needs_input_grad[1], len(ctx.weight_shapes)))]
    if any(need_weights):
        kernel_sizes = [k for shape in ctx.weight_shapes for k in shape[2:]]
        flat = torch.ops.fastdnas._depthwise_conv2d_segments_weight_grad(grad, input, kernel_sizes, *ctx.geometry)
        numels = [shape[0] * shape[2] * shape[3] for shape in ctx.weight_shapes]
        grad_weights = _only_needed([g.view(shape) for g, shape in zip(flat.split(numels), ctx.weight_shapes)],
                                    need_weights)
    return grad_input, grad_weights, None, None, None, None


torch.library.register_autograd(
    "fastdnas::depthwise_conv2d_segments", _depthwise_conv2d_segments_backward,
    setup_context=_depthwise_conv2d_segments_setup_context
)
