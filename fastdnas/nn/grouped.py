"""The candidate operations of all the edges that read one state, evaluated together.

In a DARTS (or Auto-DeepLab) cell each state feeds an edge to every later node, and every edge
holds the same candidate operations with weights of its own. Edge by edge, a pool computes the
same result once per edge and each convolution is a separate small call. Together, a pool runs
once per state (each edge keeps its own BatchNorm), and the convolutions of E edges become one
grouped convolution over their stacked channels: E times fewer calls, which is what costs the
most at search sizes. Outputs, gradients and BatchNorm running statistics are those of the
edge-by-edge evaluation (tests/test_darts_network.py compares them with the reference backend).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .operations import DilConv, Identity, ReLUConvBN, SepConv

_CONV_CHAINS = (SepConv, DilConv, ReLUConvBN)  # modules whose ``op`` is a chain of ReLU, Conv2d, BatchNorm2d
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def edges_candidate_outputs(edges, x):
    """``[edge.candidate_outputs(x) for edge in edges]`` for MixedOps that all read ``x``."""
    if len(edges) == 1 or any(e.primitives != edges[0].primitives or e.stride != edges[0].stride for e in edges):
        return [edge.candidate_outputs(x) for edge in edges]
    per_candidate = [_candidate_of_edges([edge._ops[i] for edge in edges], x) for i in edges[0].computed_indices]
    return [list(outputs) for outputs in zip(*per_candidate)]


def _candidate_of_edges(modules, x):
    """The outputs of ``modules`` (one candidate operation of each edge) on ``x``."""
    first = modules[0]
    if isinstance(first, Identity):
        return [x] * len(modules)
    if (isinstance(first, nn.Sequential) and len(first) == 2 and isinstance(first[0], _POOLS)
            and all(_pool_signature(m[0]) == _pool_signature(first[0]) for m in modules)):
        pooled = first[0](x)  # the pool has no parameters: the same for every edge
        return [module[1](pooled) for module in modules]
    if isinstance(first, _CONV_CHAINS) and _stackable([list(m.op) for m in modules]):
        return _conv_chain_of_edges([list(m.op) for m in modules], x)
    return [module(x) for module in modules]


def _pool_signature(pool):
    return (type(pool),) + tuple(getattr(pool, name, None) for name in (
        "kernel_size", "stride", "padding", "dilation", "ceil_mode", "count_include_pad", "divisor_override"))


def _layer_signature(layer):
    if isinstance(layer, nn.ReLU):
        return ("relu",)
    if isinstance(layer, nn.Conv2d):
        return ("conv", layer.weight.shape, layer.bias is None, layer.stride, layer.padding, layer.dilation,
                layer.groups, layer.padding_mode)
    if isinstance(layer, nn.BatchNorm2d):
        return ("bn", layer.num_features, layer.affine, layer.track_running_stats, layer.training, layer.momentum,
                layer.eps)
    return None


def _stackable(chains):
    signatures = [tuple(_layer_signature(layer) for layer in chain) for chain in chains]
    first = signatures[0]
    return (None not in first and all(s == first for s in signatures[1:])
            and all(s[0] != "bn" or s[5] is not None for s in first)  # cumulative BN averages: not stacked
            and first[0][0] == "relu")  # the shared input is activated once, before it is repeated


def _conv_chain_of_edges(chains, x):
    """Layer by layer over the E chains at once, on the edges' channels stacked: [N, E*C, H, W]."""
    E = len(chains)
    h = F.relu(x)  # every chain starts with a ReLU of the same input
    stacked = False
    for layers in list(zip(*chains))[1:]:
        first = layers[0]
        if not stacked:
            h = h.repeat(1, E, 1, 1)  # each edge's own copy of the input
            stacked = True
        if isinstance(first, nn.ReLU):
            h = F.relu(h)
        elif isinstance(first, nn.Conv2d):
            weight = torch.cat([layer.weight for layer in layers])
            bias = None if first.bias is None else torch.cat([layer.bias for layer in layers])
            h = F.conv2d(h, weight, bias, first.stride, first.padding, first.dilation, first.groups * E)
        else:
            h = _batch_norm_of_edges(h, layers)
    N, _, H, W = h.shape
    # One copy to [E, N, C, H, W]: each edge's output contiguous, as the node sum reads it.
    return list(h.view(N, E, -1, H, W).transpose(0, 1).contiguous().unbind(0))


def _batch_norm_of_edges(h, norms):
    """``norms[e]`` applied to the e-th block of channels of ``h``, running statistics updated as each
    module would update its own."""
    first = norms[0]
    track = first.track_running_stats
    means = torch.cat([n.running_mean for n in norms]) if track else None
    variances = torch.cat([n.running_var for n in norms]) if track else None
    weight = torch.cat([n.weight for n in norms]) if first.affine else None
    bias = torch.cat([n.bias for n in norms]) if first.affine else None
    use_batch_stats = first.training or not track
    out = F.batch_norm(h, means, variances, weight, bias, use_batch_stats, first.momentum, first.eps)
    if first.training and track:
        with torch.no_grad():  # the updated statistics back into every module, as BatchNorm2d.forward does
            E = len(norms)
            torch._foreach_copy_([n.running_mean for n in norms], list(means.chunk(E)))
            torch._foreach_copy_([n.running_var for n in norms], list(variances.chunk(E)))
            torch._foreach_add_([n.num_batches_tracked for n in norms], 1)
    return out
