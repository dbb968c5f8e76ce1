"""mixed_node, a DARTS node with its parameter-free ops and search-mode BatchNorms inside: its wrapper and fake
kernels (the kernels and the autograd formula: csrc/mixed_node/)."""
from typing import Sequence

import torch
from torch import Tensor

from ..precision import autocast_inputs
from ..reference import accumulation_dtype
from .common import _SUPPORTED_DTYPES, _int_list, _tensor, _tensor_list

# Limits of one call (csrc/mixed_node/mixed_node.h); fastdnas.nn splits wider nodes.
MAX_NODE_EDGES = 16
MAX_NODE_FREE_ITEMS = 3 * MAX_NODE_EDGES
MAX_NODE_CONV_OUTPUTS = 5 * MAX_NODE_EDGES
FREE_MAX_POOL, FREE_AVG_POOL, FREE_SKIP, FREE_PLAIN_AVG_POOL, FREE_PLAIN_MAX_POOL = 0, 1, 2, 3, 4


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
            (avg_pool_3x3, count_include_pad=False, without BN: the NAS-Bench-201 pool) or 4
            (max_pool_3x3 without BN: the GDAS authors' search pool).
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
        torch._check(kind in (FREE_MAX_POOL, FREE_AVG_POOL, FREE_SKIP, FREE_PLAIN_AVG_POOL, FREE_PLAIN_MAX_POOL),
                     lambda: f"{op}: free_kinds[{i}] must be 0 (max_pool_3x3), 1 (avg_pool_3x3), 2 "
                     f"(skip_connect), 3 (avg_pool_3x3 without BatchNorm) or 4 (max_pool_3x3 without BatchNorm), "
                     f"got {kind}")
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


# Autograd: csrc/mixed_node/mixed_node_autograd.cpp (mean and var not differentiable; every input's
# gradient from one _mixed_node_backward call).
