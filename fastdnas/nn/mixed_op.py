"""MixedOp: the continuous relaxation of one DARTS edge, sum_k softmax(alpha)_k * op_k(x), and
``node_sum``: a search node, the sum of the mixed ops of all its incoming edges.

Backends (one model, the same parameters; switch any time):

- ``"fused"`` (default): the whole node is one ``mixed_node`` kernel call. Skip, max_pool_3x3,
  avg_pool_3x3 and every candidate's final BatchNorm are computed inside it, never stored; the
  convolution candidates of all the node's edges of one stride run as stacked tensors (see
  ``_StrideGroup``), with the weights stacked once per cell (``FusedCell``). BatchNorm running
  statistics are updated as ``nn.BatchNorm2d`` would. Least memory, fewest ops.
- ``"fused_sum"``: every candidate runs eagerly (as in the reference), only the node's weighted
  sum is one ``mixed_sum`` kernel call ('none' skipped).
- ``"reference"``: the original eager expression, 'none' included.
"""
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .operations import OPS, POINTWISE_MATMUL_DEVICES, PRIMITIVES, DilConv, SepConv, _is_plain_conv

BACKENDS = ("fused", "fused_sum", "reference")

# Parameter-free primitives computed inside mixed_node, by kind (fastdnas.ops.FREE_*);
# skip_connect only at stride 1 (at stride 2 it is a FactorizedReduce, a convolution).
_FREE_KINDS = {"max_pool_3x3": 0, "avg_pool_3x3": 1, "skip_connect": 2}
_FREE_SKIP = 2
_FREE_WITH_BN = (0, 1)  # the pools followed by a BatchNorm (kinds 3 and 4, pools without one, have none)


def check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


class MixedOp(nn.Module):
    """One edge of a DARTS search cell.

    ``MixedOp(C, stride)(x, weights)`` matches the original DARTS MixedOp: ``weights`` holds one
    (softmax) weight per primitive. ``backend`` is one of ``BACKENDS`` (see the module doc).
    """

    def __init__(self, C, stride, primitives=PRIMITIVES, backend="fused", ops=None, free_kinds=None):
        super().__init__()
        # ``ops``: name -> factory(C, stride, affine) of another search space's candidates (default:
        # the DARTS ones); ``free_kinds``: which of them mixed_node computes itself, by kind.
        ops = OPS if ops is None else ops
        free_kinds = _FREE_KINDS if free_kinds is None else free_kinds
        unknown = [p for p in primitives if p not in ops]
        if unknown:
            raise ValueError(f"primitives: unknown operation(s) {unknown}; known: {sorted(ops)}")
        if len(primitives) == 0:
            raise ValueError("primitives must name at least one operation")
        self.primitives = tuple(primitives)
        self.stride = stride
        self.backend = check_backend(backend)
        self._ops = nn.ModuleList(ops[p](C, stride, False) for p in self.primitives)
        # Indices of the primitives that produce something other than zeros.
        self.computed_indices = [i for i, p in enumerate(self.primitives) if p != "none"]
        if not self.computed_indices:
            raise ValueError("primitives: at least one operation other than 'none' is needed")
        # For the "fused" backend: (index, kind) of the parameter-free primitives, and the
        # indices of the convolution primitives (ReLU, convs, BN; FactorizedReduce included).
        self.free_primitives = [
            (i, free_kinds[p]) for i, p in enumerate(self.primitives)
            if p in free_kinds and not (p == "skip_connect" and stride != 1)
        ]
        free = {i for i, _ in self.free_primitives}
        self.conv_primitives = [i for i in self.computed_indices if i not in free]
        # Candidates mixed_node does not compute (neither free by ``free_kinds`` nor a convolution
        # ending in a BatchNorm, e.g. a bare pool left out of free_kinds): the "fused" node adds them
        # outside the kernel.
        self.outside_primitives = [i for i in self.conv_primitives if not hasattr(self._ops[i], "output_bn")]
        self.conv_primitives = [i for i in self.conv_primitives if i not in self.outside_primitives]
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


def node_sum(mixed_ops, states, weights, backend, cell=None):
    """``sum_e mixed_ops[e](states[e], weights[e])``: a search node over its incoming edges.

    ``weights`` is [E, len(primitives)], the node's rows of softmax(alpha); every mixed op has the
    same primitives. ``cell``: the ``FusedCell`` of the cell evaluation the node belongs to
    ("fused" backend: the weights stacked once per cell, the running statistics updated once
    per cell, when it finishes); None: the node on its own.
    """
    if backend == "reference":
        return sum(op(h, w) for op, h, w in zip(mixed_ops, states, weights))
    from .. import ops  # the compiled extension is needed only here

    plan = None
    if backend == "fused":
        planned = cell.plan_of(mixed_ops) if cell is not None else None
        edge_bns, plan = planned if planned is not None else ([_edge_batch_norms(op) for op in mixed_ops], None)
        if not all(type(bn) is nn.BatchNorm2d for pools, convs in edge_bns for bn in pools + convs):
            backend = "fused_sum"  # e.g. SyncBatchNorm: statistics over all ranks, which the kernel does not gather
    if backend == "fused_sum":
        inputs = [out for op, h in zip(mixed_ops, states) for out in op.candidate_outputs(h)]
        return mixed_sum_chunked(inputs, weights[:, mixed_ops[0].computed_index].reshape(-1))
    check_backend(backend)
    limit = ops.MAX_NODE_EDGES
    if len(states) <= limit:
        out = _mixed_node(mixed_ops, states, weights, edge_bns, cell, plan)
    else:  # wider than one kernel call takes (only with many steps): add up groups of edges
        out = sum(_mixed_node(mixed_ops[i : i + limit], states[i : i + limit], weights[i : i + limit],
                              edge_bns[i : i + limit], cell)
                  for i in range(0, len(states), limit))
    for e, op in enumerate(mixed_ops):
        for i in op.outside_primitives:
            out = out + weights[e, i] * op._ops[i](states[e])
    return out


def sampled_node_sum(mixed_ops, states, weights, picks, cell=None):
    """``sum_e weights[e, picks[e]] * mixed_ops[e]._ops[picks[e]](states[e])``, one candidate per
    edge (a GDAS sample), as one ``mixed_node`` call over the picked candidates: pools and skips
    inside the kernel, a convolution's BatchNorm too, a 'none' edge naming no item. ``weights``:
    [E, primitives]. None when the node cannot run fused: wider than one kernel call takes, no
    picked candidate the kernel computes (all 'none' or outside it), BatchNorms not plain or not
    in one mode."""
    from .. import ops

    edges = [_OneCandidate(op, k) for op, k in zip(mixed_ops, picks)]
    if len(edges) > ops.MAX_NODE_EDGES or not any(edge.free_primitives or edge.conv_primitives for edge in edges):
        return None
    edge_bns = [_edge_batch_norms(edge) for edge in edges]
    if not all(type(bn) is nn.BatchNorm2d for pools, convs in edge_bns for bn in pools + convs):
        return None
    groups = []  # one group per convolution edge: the picked candidates differ from edge to edge
    for e, edge in enumerate(edges):
        if edge.conv_primitives:
            group = _StrideGroup([e], edge.stride, [], edge.conv_primitives, 0)
            group.conv_bns = edge_bns[e][1]
            groups.append(group)
    node_bns = [bn for pools, _ in edge_bns for bn in pools] + [bn for group in groups for bn in group.conv_bns]
    mode = _batch_norm_mode(node_bns)
    if mode is None:
        return None
    out = _mixed_node(edges, states, weights, edge_bns, cell, (groups, node_bns, [], mode))
    for e, (op, k) in enumerate(zip(mixed_ops, picks)):
        if k in op.outside_primitives:
            out = out + weights[e, k] * op._ops[k](states[e])
    return out


class _OneCandidate:
    """A MixedOp restricted to its candidate k: what ``_mixed_node`` and ``_edge_batch_norms`` read of an edge."""

    __slots__ = ("stride", "_ops", "free_primitives", "conv_primitives")

    def __init__(self, op, k):
        self.stride, self._ops = op.stride, op._ops
        self.free_primitives = [(i, kind) for i, kind in op.free_primitives if i == k]
        self.conv_primitives = [k] if k in op.conv_primitives else []


def node_edge_slices(num_nodes):
    """The slices of a cell's edges (flattened node by node) that enter each of its nodes: node i
    has 2 + i incoming edges."""
    offset = 0
    for i in range(num_nodes):
        yield slice(offset, offset + 2 + i)
        offset += 2 + i


def cell_nodes(edges, states, weights, num_nodes, backend, cell=None):
    """The nodes of a search cell: node i is the node_sum of the mixed ops ``edges`` (flattened
    node by node: 2, 3, 4, ... edges) over the 2 + i states before it; returns ``states`` with
    the num_nodes nodes appended. ``weights``: [len(edges), primitives]. ``cell``: the
    ``fused_cell(edges, num_nodes)`` to use ("fused" backend), kept across the evaluations of one
    cell in a forward; None: a new one."""
    edges = list(edges)  # slicing a ModuleList builds a ModuleList, which torch 2.4's dynamo cannot trace
    nodes = _cell_node_edges(edges, num_nodes)
    # Fused: the weights of all nodes stacked at once, their running statistics updated at the end.
    if backend != "fused":
        cell = None
    elif cell is None:
        cell = FusedCell(nodes)
    states = list(states)
    # One split (not a slice per node): its backward is one op.
    for node_edges, node_weights in zip(nodes, weights.split([len(n) for n in nodes])):
        states.append(node_sum(node_edges, states, node_weights, backend, cell))
    if cell is not None:
        cell.finish()
    return states


def _cell_node_edges(edges, num_nodes):
    return [edges[edge_slice] for edge_slice in node_edge_slices(num_nodes)]


def fused_cell(edges, num_nodes):
    """A FusedCell of a search cell's edges (as cell_nodes takes them) for several evaluations of
    the cell in one forward (Auto-DeepLab evaluates a node's cell once per incoming transition):
    the cell's weights are stacked once for all of them, so each parameter's gradient arrives
    once, summed over the evaluations in the stacked weights' gradient, instead of once per
    evaluation (an add per parameter and evaluation)."""
    return FusedCell(_cell_node_edges(list(edges), num_nodes))


def mixed_sum_chunked(inputs, weights):
    """sum_i weights[i] * inputs[i] with the fused kernel: one call unless the node is very wide."""
    from .. import ops

    limit = ops.MAX_MIXED_SUM_INPUTS
    if len(inputs) <= limit:
        return ops.mixed_sum(inputs, weights)
    return sum(ops.mixed_sum(inputs[i : i + limit], weights[i : i + limit]) for i in range(0, len(inputs), limit))


def _append(groups, key, item):
    """groups[key].append(item), making the list first; dict.setdefault does not trace under
    torch.compile on torch 2.4."""
    if key not in groups:
        groups[key] = []
    groups[key].append(item)


def _edge_batch_norms(op):
    """(pool BatchNorms, conv BatchNorms) of one edge: those mixed_node computes inside (it may
    only when all are plain nn.BatchNorm2d, not, say, a SyncBatchNorm put in their place). Looked
    up on every call, so replaced modules count."""
    children = _children(op._ops)
    # A pool with BatchNorm is Sequential(pool, BN).
    pools = [_children(children[i])[1] for i, kind in op.free_primitives if kind in _FREE_WITH_BN]
    convs = [children[i].output_bn for i in op.conv_primitives]
    return pools, convs


def _children(module):
    """A module's children as a list, read from its ``_modules`` directly: a plan is made on every
    forward, and ``Sequential[i]`` / ``module.attribute`` take microseconds each."""
    return list(module._modules.values())


class FusedCell:
    """One cell evaluation of the "fused" backend: ``FusedCell(nodes)`` (each node the list of
    its incoming MixedOps) stacks the weights every node's stacked convolutions take in one
    ``torch.stack`` per weight shape, split into the nodes' pieces (views); the nodes pass it to
    ``node_sum`` and append their running-statistics updates to it; ``finish()`` applies them
    all in one stacked update. ``relu_of(state)``: the ReLU of a state, computed once per cell
    evaluation however many nodes read it edge by edge. One FusedCell may serve several
    evaluations of its cell in turn (``fused_cell``): the stacks are made once, split again for
    each evaluation (one gradient per stack and evaluation, summed once per stack), and each
    ``finish()`` ends an evaluation."""

    def __init__(self, nodes):
        from .. import ops

        self.running_updates = []
        self._relus = {}
        self._pieces = None  # {node key: {group index: [pieces]}}, split from the stacks per evaluation
        self._plans = {}  # node key: (edge BatchNorms, plan), made once
        requests = []  # (node key, group index, parameters)
        for mixed_ops in nodes:
            if len(mixed_ops) > ops.MAX_NODE_EDGES:
                continue  # split into several mixed_node calls: their groups stack their own weights
            edge_bns = [_edge_batch_norms(op) for op in mixed_ops]
            plan = _node_plan(mixed_ops, edge_bns)
            key = tuple(map(id, mixed_ops))
            self._plans[key] = (edge_bns, plan)
            for g, group in enumerate(plan[0] if plan else []):
                requests += [(key, g, params) for params in group.weight_requests(mixed_ops)]
        self._requests = [(key, g) for key, g, _ in requests]
        by_shape = {}
        for r, (_, _, params) in enumerate(requests):
            _append(by_shape, tuple(params[0].shape), r)
        # Per weight shape: (request indices, their stacked parameters, how many each took).
        self._stacks = [(rows, _stack_params([p for r in rows for p in requests[r][2]]),
                         [len(requests[r][2]) for r in rows]) for rows in by_shape.values()]

    def plan_of(self, mixed_ops):
        """(edge BatchNorms, _node_plan) of a node of this cell evaluation, or None if not prepared."""
        return self._plans.get(tuple(map(id, mixed_ops)))

    def weight_pieces(self, mixed_ops):
        """{group index: the stacked weights of its requests}, or {} if not prepared."""
        if self._pieces is None:
            pieces = [None] * len(self._requests)
            for rows, stacked, sizes in self._stacks:
                for r, piece in zip(rows, stacked.split(sizes)):
                    pieces[r] = piece
            self._pieces = {}
            for (key, g), piece in zip(self._requests, pieces):
                if key not in self._pieces:
                    self._pieces[key] = {}
                _append(self._pieces[key], g, piece)
        return self._pieces.get(tuple(map(id, mixed_ops)), {})

    def relu_of(self, state):
        """F.relu(state), once per state of this cell evaluation (the state is kept with it, so
        its id stays its own)."""
        hit = self._relus.get(id(state))
        if hit is None or hit[0] is not state:
            hit = self._relus[id(state)] = (state, F.relu(state))
        return hit[1]

    def finish(self):
        apply_running_updates(self.running_updates)
        self.running_updates = []
        self._relus = {}
        self._pieces = None


def _node_plan(mixed_ops, edge_bns):
    """(stride groups, node BatchNorms, inner BatchNorms, mode) of a "fused" node, or None when
    the node cannot run fused (a BatchNorm that is not a plain nn.BatchNorm2d). The convolution
    candidates run stacked where every BatchNorm of the node, the inner ones included, is in one
    mode; otherwise each candidate runs on its own, its inner BatchNorms as modules."""
    if not all(type(bn) is nn.BatchNorm2d for pools, convs in edge_bns for bn in pools + convs):
        return None
    pool_bns = [bn for pools, _ in edge_bns for bn in pools]
    groups = _StrideGroup.plan(mixed_ops, stack=True)
    inner_bns = [bn for group in groups for bn in group.inner_bns]
    mode = _batch_norm_mode(pool_bns + [bn for group in groups for bn in group.conv_bns] + inner_bns)
    if mode is None:
        groups, inner_bns = _StrideGroup.plan(mixed_ops, stack=False), []
        mode = _batch_norm_mode(pool_bns + [bn for group in groups for bn in group.conv_bns])
    if mode is None:
        raise ValueError("the 'fused' backend needs every BatchNorm of a node in the same mode (training, "
                         "track_running_stats, eps); use the 'fused_sum' or 'reference' backend otherwise")
    return groups, pool_bns + [bn for group in groups for bn in group.conv_bns], inner_bns, mode


def _mixed_node(mixed_ops, states, weights, edge_bns, cell=None, plan=None):
    """One mixed_node call over the edges (mixed_ops[e] applied to states[e]); edge_bns[e] is
    _edge_batch_norms(mixed_ops[e]); ``plan``: their _node_plan if already made. With ``cell``
    (a FusedCell) the weights come stacked from it and the running-statistics update goes to
    it, else both happen here."""
    from .. import ops

    P = weights.shape[1]
    strides, free_items, free_kinds = [], [], []
    for e, op in enumerate(mixed_ops):
        strides.append(op.stride)
        for i, kind in op.free_primitives:
            free_items.append(e * P + i)
            free_kinds.append(kind)
    groups, node_bns, inner_bns, mode = plan if plan is not None else _node_plan(mixed_ops, edge_bns)
    pieces = cell.weight_pieces(mixed_ops) if cell is not None else {}
    batch_stats, update, eps, momentum = mode
    N, C = states[0].shape[:2]
    out_h = (states[0].shape[2] - 1) // strides[0] + 1
    out_w = (states[0].shape[3] - 1) // strides[0] + 1
    count = N * out_h * out_w
    if batch_stats and node_bns and count == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got a node output of size "
                         f"{[N, C, out_h, out_w]}")
    # Eval: every BatchNorm normalises with its running statistics, stacked (rows: the means,
    # then the variances; the node's BatchNorms first, then the inner ones).
    bns = node_bns + inner_bns
    running = _stack_running(bns) if not batch_stats else None
    A, row = len(bns), len(node_bns)
    conv_items, conv_outputs, inner_means, inner_vars = [], [], [], []
    for g, group in enumerate(groups):
        rows = None
        if running is not None and group.inner_sets:
            n = len(group.inner_bns)
            rows = (running[row : row + n], running[A + row : A + row + n])
            row += n
        outputs, stats = group.conv_outputs(mixed_ops, states, rows, batch_stats, update, eps, pieces.get(g),
                                            cell.relu_of if cell is not None else None)
        conv_outputs += outputs
        conv_items += [e * P + i for e, i in group.conv_items]
        if stats is not None:
            inner_means.append(stats[0])
            inner_vars.append(stats[1])
    running_mean = running_var = None
    if running is not None:
        running_mean, running_var = running[: len(node_bns)], running[A : A + len(node_bns)]
    out, mean, var = ops.mixed_node(states, strides, conv_outputs, weights, free_items, free_kinds, conv_items,
                                    running_mean, running_var, eps)
    if update:
        with torch.no_grad():
            var = var * (count / (count - 1)) if count > 1 else var  # unbiased, as nn.BatchNorm2d records it
        update = RunningUpdate(bns, [mean] + inner_means, [var] + inner_vars, momentum, count)
        if cell is None:
            apply_running_updates([update])
        else:
            cell.running_updates.append(update)
    return out


class _StrideGroup:
    """The edges of one stride of a node and how their convolution candidates run.

    ``stacked``: primitives (SepConv first, then DilConv) whose candidates on all the group's
    edges run as stacked tensors, the edges' inputs concatenated on channels after one ReLU:
    one ``depthwise_conv2d_segments`` call for every first depthwise convolution (the SepConvs'
    and the DilConvs', each primitive a segment with its own geometry), one grouped convolution
    for all their 1x1 convolutions, then for the SepConvs' second halves one ``F.batch_norm`` (their inner
    BatchNorms: statistics are per channel, so stacking changes nothing), one ReLU, one
    ``depthwise_conv2d_segments`` call and one grouped convolution. ``single``: primitives that run edge by
    edge (FactorizedReduce, replaced modules). Conv outputs come in the order: stacked
    primitives x edges, then edges x single primitives.
    """

    def __init__(self, edges, stride, stacked, single, sep_count):
        self.edges, self.stride, self.stacked, self.single, self.sep_count = edges, stride, stacked, single, sep_count
        self.conv_items = ([(e, i) for i in stacked for e in edges] + [(e, i) for e in edges for i in single])
        self.conv_bns, self.inner_sets = [], []

    @property
    def inner_bns(self):
        return [bn for bns in self.inner_sets for bn in bns]

    @classmethod
    def plan(cls, mixed_ops, stack):
        by_stride = {}
        for e, op in enumerate(mixed_ops):
            _append(by_stride, op.stride, e)
        groups = []
        for stride, edges in by_stride.items():
            children = [_children(mixed_ops[e]._ops) for e in edges]
            sep, dil, single = [], [], []
            for i in mixed_ops[edges[0]].conv_primitives:
                kind = _stack_kind([c[i] for c in children]) if stack else None
                (sep if kind is SepConv else dil if kind is DilConv else single).append(i)
            group = cls(edges, stride, sep + dil, single, len(sep))
            group.conv_bns = [children[edges.index(e)][i].output_bn for e, i in group.conv_items]
            group.inner_sets = [[_children(c[i].op)[3] for c in children] for i in sep]
            groups.append(group)
        return groups

    def weight_requests(self, mixed_ops):
        """The lists of weights conv_outputs stacks, in the order it takes them: the first
        depthwise filters per primitive, all first 1x1 weights, the SepConvs' second depthwise
        filters per primitive, their second 1x1 weights."""
        if not self.stacked:
            return []
        S, layers = self.sep_count, [[_children(seq) for seq in kind] for kind in self._layers(mixed_ops)]
        requests = [[seq[1].weight for seq in kind] for kind in layers]  # first depthwise (SepConv and DilConv)
        requests.append([seq[2].weight for kind in layers for seq in kind])  # their 1x1 convolutions
        if S:
            requests += [[seq[5].weight for seq in kind] for kind in layers[:S]]  # SepConv second depthwise
            requests.append([seq[6].weight for kind in layers[:S] for seq in kind])  # and 1x1
        return requests

    def _layers(self, mixed_ops):
        children = [_children(mixed_ops[e]._ops) for e in self.edges]
        return [[c[i].op for c in children] for i in self.stacked]

    def conv_outputs(self, mixed_ops, states, inner_running, batch_stats, update, eps, pieces=None, relu_of=None):
        """(the group's conv outputs before their final BatchNorm, in conv_items order; the inner
        BatchNorms' batch mean and unbiased variance [len(inner_bns), C] when ``update``, else
        None). ``inner_running``: (means, variances) [len(inner_bns), C] to normalise with (eval),
        or None (batch statistics). ``pieces``: the weight_requests already stacked, or None.
        ``relu_of``: the ReLU of a state, shared by the nodes of a cell (FusedCell.relu_of), or None."""
        xs = [states[e] for e in self.edges]
        E, C = len(xs), xs[0].shape[1]
        per_edge = None
        if self.stacked or relu_of is None:
            x = F.relu(torch.cat(xs, 1) if E > 1 else xs[0])  # one ReLU of every edge input
        else:  # edge by edge only: no concatenation, each state's ReLU once per cell
            per_edge = [relu_of(h) for h in xs]
        outputs, stats = [], None
        if self.stacked:
            S, K = self.sep_count, len(self.stacked)
            firsts = [_children(kind[0]) for kind in self._layers(mixed_ops)]  # each primitive's layers, edge 0
            if pieces is None:
                pieces = [_stack_params(params) for params in self.weight_requests(mixed_ops)]
            pieces = iter(pieces)
            # [N, K*E*C, H, W], channels (primitive, edge, channel): the first depthwise and 1x1
            # convolutions of every primitive; the DilConvs' outputs are then done.
            first = _depthwise_segments(x, [seq[1] for seq in firsts], [next(pieces) for _ in range(K)], [0] * K)
            first = _stacked_pointwise(first, next(pieces))
            N, H, W = first.shape[0], first.shape[2], first.shape[3]
            # One split (its backward is one op, two slices' would be three). The BatchNorm saves
            # its input: a copy of the SepConvs' part, else it would keep all of `first` alive.
            y, done = first.split([S * E * C, (K - S) * E * C], 1) if 0 < S < K else (first, first)
            y = y.contiguous()
            if S:
                # In float32 under autocast, as nn.BatchNorm2d computes a half-precision input
                # with its float32 buffers: without them the half kernel loses precision.
                low = y.dtype in (torch.float16, torch.bfloat16)
                bn_input = y.float() if low else y
                rows, momentum = (None, None), 0.0
                if inner_running is not None:
                    rows = [r.reshape(-1) for r in inner_running]
                elif update:
                    # The running statistics' update, applied by the caller: batch_norm records
                    # the batch mean and unbiased variance it normalises with into zeroed buffers
                    # at momentum 1 (1 * statistic + 0 * 0: exact), no second pass over y.
                    rows = bn_input.new_zeros(2, S * E * C).unbind(0)
                    momentum = 1.0
                y = F.relu(F.batch_norm(bn_input, *rows, training=batch_stats, momentum=momentum, eps=eps)
                           .to(y.dtype))
                if update:
                    stats = (rows[0].view(S * E, C), rows[1].view(S * E, C))
                second = _depthwise_segments(y, [seq[5] for seq in firsts[:S]],
                                             [next(pieces) for _ in range(S)], [s * E * C for s in range(S)])
                second = _stacked_pointwise(second, next(pieces))
                parts = [second, done] if K > S else [second]
            else:
                parts = [first]
            # Slot-major [K*E, N, C, H*W]: every conv output one contiguous [N, C, H, W] tensor.
            slots = torch.cat([p.reshape(N, -1, C, H * W).transpose(0, 1) for p in parts])
            outputs += slots.view(K * E, N, C, H, W).unbind(0)
        if self.single:
            if per_edge is None:
                per_edge = x.split(C, 1) if E > 1 else [x]
            for e, x_relu in zip(self.edges, per_edge):
                children = list(mixed_ops[e]._ops)
                outputs += [children[i].pre_bn(x_relu) for i in self.single]
        return outputs, stats


def _stack_kind(candidates):
    """SepConv or DilConv if the candidates (one primitive on every edge of a group) can run
    stacked: the plain search-mode layers, one geometry; else None."""
    first = candidates[0]
    kind = type(first)
    if kind not in (SepConv, DilConv):
        return None
    dw_layers = (1, 5) if kind is SepConv else (1,)
    pw_layers = (2, 6) if kind is SepConv else (2,)
    first_seq = _children(first.op)
    for m in candidates:
        if type(m) is not kind:
            return None
        seq = _children(m.op)
        if len(seq) != len(first_seq):
            return None
        for d, p in zip(dw_layers, pw_layers):
            dw, pw = seq[d], seq[p]
            if not (_is_plain_conv(dw) and dw.groups == dw.in_channels == dw.out_channels
                    and _geometry(dw) == _geometry(first_seq[d])):
                return None
            if not (_is_plain_conv(pw) and pw.groups == 1 and pw.kernel_size == (1, 1) and pw.stride == (1, 1)
                    and pw.padding == (0, 0) and pw.in_channels == pw.out_channels == dw.out_channels):
                return None
        if kind is SepConv and (type(seq[3]) is not nn.BatchNorm2d or seq[3].affine or type(seq[4]) is not nn.ReLU):
            return None
    return kind


def _geometry(conv):
    return conv.kernel_size, conv.stride, conv.padding, conv.dilation


def _stack_params(params):
    """[len(params), *shape]: one op, none for a single tensor."""
    return torch.stack(params) if len(params) > 1 else params[0].unsqueeze(0)


def _depthwise_segments(x, convs, weights, offsets):
    """Depthwise convolutions of stacked channels in one call: segment g applies ``weights[g]``
    ([E, C, 1, KH, KW], the edges' filters stacked) with the geometry of ``convs[g]`` to the
    channels of x from ``offsets[g]`` on; returns [N, G*E*C, OH, OW]."""
    from .. import ops

    return ops.depthwise_conv2d_segments(x, [w.flatten(0, 1) for w in weights], convs[0].stride,
                                         [conv.padding for conv in convs], [conv.dilation for conv in convs], offsets)



def _stacked_pointwise(x, weights):
    """1x1 convolutions of stacked channels in one call: x is [N, J*C, H, W] (J slots of C
    channels), ``weights`` [J, C, C, 1, 1] the weight of each slot; returns [N, J*C, H, W]."""
    if x.device.type in POINTWISE_MATMUL_DEVICES:
        return _StackedPointwise.apply(x, weights)
    return F.conv2d(x, weights.flatten(0, 1), groups=weights.shape[0])


class _StackedPointwise(torch.autograd.Function):
    """y[n, j] = weights[j] @ x[n, j] ([C, C] times [C, H*W]) for every sample n and slot j. Its own
    backward so that only x and the weights are saved: torch.matmul's would keep the weights
    copied once per sample. Under autocast the products run in its dtype, as a convolution's."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x, weights):
        ctx.save_for_backward(x, weights)
        N, _, H, W = x.shape
        J, C = weights.shape[:2]
        return torch.matmul(weights.view(J, C, C), x.reshape(N, J, C, H * W)).view(N, J * C, H, W)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):
        x, weights = ctx.saved_tensors
        N, _, H, W = x.shape
        J, C = weights.shape[:2]
        g = grad.reshape(N, J, C, H * W)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            w_t = weights.view(J, C, C).transpose(1, 2)
            grad_x = torch.matmul(w_t.to(g.dtype), g).view(N, J * C, H, W).to(x.dtype)
        if ctx.needs_input_grad[1]:
            x_t = x.reshape(N, J, C, H * W).transpose(2, 3)
            grad_w = torch.matmul(g, x_t.to(g.dtype)).sum(0).view(weights.shape).to(weights.dtype)
        return grad_x, grad_w


def _batch_norm_mode(bns):
    """(batch statistics?, update running statistics?, eps, momentum) of the node's BatchNorms,
    as nn.BatchNorm2d decides them, momentum None unless all share one; None if the BatchNorms
    are not all in one mode (training, track_running_stats, eps)."""
    if not bns:
        return True, False, 1e-5, None
    first = bns[0]
    key = (first.training, first.track_running_stats, first.eps)
    momenta = set()
    for bn in bns:
        if (bn.training, bn.track_running_stats, bn.eps) != key:
            return None
        momenta.add(bn.momentum)
    training, tracking, eps = key
    momentum = momenta.pop() if len(momenta) == 1 else None
    return training or not tracking, training and tracking, eps, momentum


def _stack_running(bns):
    if not bns:
        return None
    return torch.stack([bn.running_mean for bn in bns] + [bn.running_var for bn in bns])


class RunningUpdate(NamedTuple):
    """A node's pending running-statistics update: its BatchNorms, their batch means and
    unbiased variances (lists of [rows, C] tensors, rows in the order of ``bns``), the momentum
    (None: each BatchNorm's own, e.g. the cumulative average) and the number of values per channel."""

    bns: list
    means: list
    variances: list
    momentum: float | None
    count: int


@torch.no_grad()
def apply_running_updates(updates):
    """running = (1 - momentum) * running + momentum * batch statistic (unbiased variance), and
    num_batches_tracked += 1, exactly as nn.BatchNorm2d does in training, for every RunningUpdate:
    all those of one momentum in one stacked update (a handful of ops for a whole cell)."""
    if not updates:
        return
    torch._foreach_add_([bn.num_batches_tracked for u in updates for bn in u.bns], 1)
    by_momentum = {}
    for u in updates:
        if u.count == 0 or not u.bns:  # nn.BatchNorm2d leaves the statistics of an empty batch alone
            continue
        if u.momentum is None:  # momentum=None or BatchNorms of different momenta: one by one
            stats = torch.cat(u.means + u.variances).to(u.bns[0].running_mean.dtype)
            B = len(u.bns)
            for bn, m, v in zip(u.bns, stats[:B], stats[B:]):
                factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                bn.running_mean.mul_(1 - factor).add_(m, alpha=factor)
                bn.running_var.mul_(1 - factor).add_(v, alpha=factor)
            continue
        _append(by_momentum, u.momentum, u)
    for momentum, group in by_momentum.items():
        bns = [bn for u in group for bn in u.bns]
        buffers = [bn.running_mean for bn in bns] + [bn.running_var for bn in bns]
        running = torch.stack(buffers)
        stats = torch.cat([m for u in group for m in u.means] + [v for u in group for v in u.variances])
        updated = torch.add(running * (1 - momentum), stats.to(running.dtype), alpha=momentum)
        torch._foreach_copy_(buffers, list(updated.unbind(0)))
