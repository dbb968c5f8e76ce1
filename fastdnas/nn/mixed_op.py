"""MixedOp: the continuous relaxation of one DARTS edge, sum_k softmax(alpha)_k * op_k(x), and
``node_sum``: a search node, the sum of the mixed ops of all its incoming edges.

Backends (one model, the same parameters; switch any time):

- ``"fused"`` (default): the whole node is one ``mixed_node`` kernel call. Skip, max_pool_3x3,
  avg_pool_3x3 and every candidate's final BatchNorm are computed inside it, never stored; the
  convolution candidates of an edge share one ReLU of its input. BatchNorm running statistics
  are updated as ``nn.BatchNorm2d`` would. Least memory.
- ``"fused_sum"``: every candidate runs eagerly (as in the reference), only the node's weighted
  sum is one ``mixed_sum`` kernel call ('none' skipped).
- ``"reference"``: the original eager expression, 'none' included.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .operations import OPS, PRIMITIVES

BACKENDS = ("fused", "fused_sum", "reference")

# Parameter-free primitives computed inside mixed_node, by kind (fastdnas.ops.FREE_*);
# skip_connect only at stride 1 (at stride 2 it is a FactorizedReduce, a convolution).
_FREE_KINDS = {"max_pool_3x3": 0, "avg_pool_3x3": 1, "skip_connect": 2}
_FREE_SKIP = 2


def check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


class MixedOp(nn.Module):
    """One edge of a DARTS search cell.

    ``MixedOp(C, stride)(x, weights)`` matches the original DARTS MixedOp: ``weights`` holds one
    (softmax) weight per primitive. ``backend`` is one of ``BACKENDS`` (see the module doc).
    """

    def __init__(self, C, stride, primitives=PRIMITIVES, backend="fused"):
        super().__init__()
        unknown = [p for p in primitives if p not in OPS]
        if unknown:
            raise ValueError(f"primitives: unknown operation(s) {unknown}; known: {sorted(OPS)}")
        if len(primitives) == 0:
            raise ValueError("primitives must name at least one operation")
        self.primitives = tuple(primitives)
        self.stride = stride
        self.backend = check_backend(backend)
        self._ops = nn.ModuleList(OPS[p](C, stride, False) for p in self.primitives)
        # Indices of the primitives that produce something other than zeros.
        self.computed_indices = [i for i, p in enumerate(self.primitives) if p != "none"]
        if not self.computed_indices:
            raise ValueError("primitives: at least one operation other than 'none' is needed")
        # For the "fused" backend: (index, kind) of the parameter-free primitives, and the
        # indices of the convolution primitives (ReLU, convs, BN; FactorizedReduce included).
        self.free_primitives = [
            (i, _FREE_KINDS[p]) for i, p in enumerate(self.primitives)
            if p in _FREE_KINDS and not (p == "skip_connect" and stride != 1)
        ]
        free = {i for i, _ in self.free_primitives}
        self.conv_primitives = [i for i in self.computed_indices if i not in free]
        # The same selection as an index that costs no host-to-device copy per call (a Python list
        # index would build a tensor each time, which CUDA-graph capture forbids): a slice when the
        # computed primitives are contiguous (always for the DARTS set), else a buffer on the device.
        first, last = self.computed_indices[0], self.computed_indices[-1]
        contiguous = self.computed_indices == list(range(first, last + 1))
        self._computed_slice = slice(first, last + 1) if contiguous else None
        self.register_buffer("_computed_index_tensor", None if contiguous else torch.tensor(self.computed_indices),
                             persistent=False)

    @property
    def computed_index(self):
        """Index of the last dimension of the weights that selects ``computed_indices``."""
        return self._computed_slice if self._computed_slice is not None else self._computed_index_tensor

    def candidate_outputs(self, x):
        """Outputs of the computed (non-'none') candidates, in ``computed_indices`` order."""
        return [self._ops[i](x) for i in self.computed_indices]

    def forward(self, x, weights):
        if weights.dim() != 1 or weights.shape[0] != len(self.primitives):
            raise ValueError(
                f"weights must have shape [{len(self.primitives)}] (one per primitive), got {list(weights.shape)}"
            )
        if self.backend == "reference":
            return sum(w * op(x) for w, op in zip(weights, self._ops))
        return node_sum([self], [x], weights.unsqueeze(0), self.backend)


def node_sum(mixed_ops, states, weights, backend):
    """``sum_e mixed_ops[e](states[e], weights[e])``: a search node over its incoming edges.

    ``weights`` is [E, len(primitives)], the node's rows of softmax(alpha); every mixed op has the
    same primitives.
    """
    if backend == "reference":
        return sum(op(h, w) for op, h, w in zip(mixed_ops, states, weights))
    from .. import ops  # the compiled extension is needed only here

    if backend == "fused":
        edge_bns = [_edge_batch_norms(op) for op in mixed_ops]
        if not all(type(bn) is nn.BatchNorm2d for pools, convs in edge_bns for bn in pools + convs):
            backend = "fused_sum"  # e.g. SyncBatchNorm: statistics over all ranks, which the kernel does not gather
    if backend == "fused_sum":
        inputs = [out for op, h in zip(mixed_ops, states) for out in op.candidate_outputs(h)]
        return mixed_sum_chunked(inputs, weights[:, mixed_ops[0].computed_index].reshape(-1))
    check_backend(backend)
    limit = ops.MAX_NODE_EDGES
    if len(states) <= limit:
        return _mixed_node(mixed_ops, states, weights, edge_bns)
    # Wider than one kernel call takes (only with many steps): add up groups of edges.
    return sum(_mixed_node(mixed_ops[i : i + limit], states[i : i + limit], weights[i : i + limit],
                           edge_bns[i : i + limit])
               for i in range(0, len(states), limit))


def mixed_sum_chunked(inputs, weights):
    """sum_i weights[i] * inputs[i] with the fused kernel: one call unless the node is very wide."""
    from .. import ops

    limit = ops.MAX_MIXED_SUM_INPUTS
    if len(inputs) <= limit:
        return ops.mixed_sum(inputs, weights)
    return sum(ops.mixed_sum(inputs[i : i + limit], weights[i : i + limit]) for i in range(0, len(inputs), limit))


def _edge_batch_norms(op):
    """(pool BatchNorms, conv BatchNorms) of one edge: those mixed_node computes inside (it may
    only when all are plain nn.BatchNorm2d, not, say, a SyncBatchNorm put in their place). Looked
    up on every call, so replaced modules count."""
    children = list(op._ops)  # one pass: indexing a ModuleList takes microseconds each time
    pools = [children[i][1] for i, kind in op.free_primitives if kind != _FREE_SKIP]  # Sequential(pool, BN)
    convs = [children[i].output_bn for i in op.conv_primitives]
    return pools, convs


def _mixed_node(mixed_ops, states, weights, edge_bns):
    """One mixed_node call over the edges (mixed_ops[e] applied to states[e]); edge_bns[e] is
    _edge_batch_norms(mixed_ops[e])."""
    from .. import ops

    P = weights.shape[1]
    strides, free_items, free_kinds, conv_items, conv_outputs = [], [], [], [], []
    for e, (op, x) in enumerate(zip(mixed_ops, states)):
        strides.append(op.stride)
        for i, kind in op.free_primitives:
            free_items.append(e * P + i)
            free_kinds.append(kind)
        if op.conv_primitives:
            x_relu = F.relu(x)  # one ReLU shared by the edge's convolution candidates
            children = list(op._ops)
            for i in op.conv_primitives:
                conv_outputs.append(children[i].pre_bn(x_relu))
                conv_items.append(e * P + i)
    bns = [bn for pools, _ in edge_bns for bn in pools] + [bn for _, convs in edge_bns for bn in convs]
    batch_stats, update, eps = _batch_norm_mode(bns)
    running_mean = running_var = None
    if not batch_stats:
        running_mean = torch.stack([bn.running_mean for bn in bns])
        running_var = torch.stack([bn.running_var for bn in bns])
    N, C = states[0].shape[:2]
    out_h = (states[0].shape[2] - 1) // strides[0] + 1
    out_w = (states[0].shape[3] - 1) // strides[0] + 1
    count = N * out_h * out_w
    if batch_stats and bns and count == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got a node output of size "
                         f"{[N, C, out_h, out_w]}")
    out, mean, var = ops.mixed_node(states, strides, conv_outputs, weights, free_items, free_kinds, conv_items,
                                    running_mean, running_var, eps)
    if update:
        _update_running_stats(bns, mean, var, count)
    return out


def _batch_norm_mode(bns):
    """(batch statistics?, update running statistics?, eps) of the node's BatchNorms, as
    nn.BatchNorm2d decides them; all BatchNorms of a node must agree."""
    if not bns:
        return True, False, 1e-5
    first = bns[0]
    key = (first.training, first.track_running_stats, first.eps)
    for bn in bns:
        if (bn.training, bn.track_running_stats, bn.eps) != key:
            raise ValueError("the 'fused' backend needs every BatchNorm of a node in the same mode (training, "
                             "track_running_stats, eps); use the 'fused_sum' or 'reference' backend otherwise")
    training, tracking, eps = key
    return training or not tracking, training and tracking, eps


@torch.no_grad()
def _update_running_stats(bns, mean, var, count):
    """running = (1 - momentum) * running + momentum * batch statistic (unbiased variance), and
    num_batches_tracked += 1, exactly as nn.BatchNorm2d does in training."""
    torch._foreach_add_([bn.num_batches_tracked for bn in bns], 1)
    if count == 0:  # nn.BatchNorm2d leaves the statistics of an empty batch alone
        return
    dtype = bns[0].running_mean.dtype
    stats = torch.cat([mean, var * (count / (count - 1))]).to(dtype)  # rows: the means, then the variances
    momenta = {bn.momentum for bn in bns}
    if len(momenta) == 1 and None not in momenta:
        momentum = momenta.pop()
        # All buffers in one stacked update, copied back: a few ops instead of one per buffer.
        buffers = [bn.running_mean for bn in bns] + [bn.running_var for bn in bns]
        updated = torch.stack(buffers).mul_(1 - momentum).add_(stats, alpha=momentum)
        torch._foreach_copy_(buffers, list(updated.unbind(0)))
        return
    for bn, m, v in zip(bns, stats[: len(bns)], stats[len(bns) :]):
        # momentum=None: the cumulative average, as nn.BatchNorm2d.
        factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.mul_(1 - factor).add_(m, alpha=factor)
        bn.running_var.mul_(1 - factor).add_(v, alpha=factor)
