"""The DARTS search network (SPEC.md section 1): a stack of cells whose edges are mixed ops.

Module and parameter names are those of the original DARTS code (``stem``, ``cells.{i}``,
``preprocess0``, ``_ops.{edge}._ops.{op}``, ``classifier``), so its checkpoints load as they are
(see ``interop.convert_state_dict``). The two architecture tensors are parameters of the module
too (``alphas_normal``, ``alphas_reduce``): they travel with the state dict, but they are not
network weights. Give the weight optimizer ``weight_parameters()``, never ``parameters()``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..decode import num_edges, parse_cell
from ..nn.mixed_op import MixedOp, cell_nodes, check_backend
from ..nn.operations import PRIMITIVES, FactorizedReduce, ReLUConvBN, run_fused
from .genotype import Genotype


class SearchCell(nn.Module):
    """One DARTS cell: two preprocessed inputs, ``steps`` nodes, each the mixed-op sum of all
    earlier states; the output concatenates the last ``multiplier`` nodes on channels.

    ``forward(s0, s1, weights)`` takes the softmax weights [num_edges(steps), len(primitives)].
    """

    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev,
                 primitives=PRIMITIVES, backend="fused"):
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        # After a reduction cell, s0 has twice the resolution of s1: halve it.
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        # One MixedOp per edge, flattened node by node; named `_ops` as in the original code.
        self._ops = nn.ModuleList(
            self.make_edge(C, 2 if reduction and j < 2 else 1, primitives, backend)
            for i in range(steps)
            for j in range(2 + i)
        )
        self.primitives = self._ops[0].primitives
        self.backend = backend

    def make_edge(self, C, stride, primitives, backend):
        """One edge of the cell (subclasses of other methods put their own edge here)."""
        return MixedOp(C, stride, primitives, backend)

    @property
    def backend(self):
        return self._backend

    @backend.setter
    def backend(self, backend):
        self._backend = check_backend(backend)
        for op in self._ops:
            op.backend = backend

    def preprocess(self, s0, s1):
        """[preprocess0(s0), preprocess1(s1)]; the fused backends run their 1x1 convolutions as
        matrix products (``run_fused``)."""
        if self.backend == "reference":
            return [self.preprocess0(s0), self.preprocess1(s1)]
        return [run_fused(self.preprocess0, s0), run_fused(self.preprocess1, s1)]

    def forward(self, s0, s1, weights):
        expected = [len(self._ops), len(self.primitives)]
        if list(weights.shape) != expected:
            raise ValueError(f"weights must have shape {expected} (edges x primitives), got {list(weights.shape)}")
        states = self.preprocess(s0, s1)
        # Fused backends: each node one kernel call.
        states = cell_nodes(self._ops, states, weights, self.steps, self.backend)
        return torch.cat(states[-self.multiplier :], dim=1)


class SearchNetwork(nn.Module):
    """The DARTS supernet for classification.

    ``backend`` ("fused", "fused_sum" or "reference"; see ``fastdnas.nn.mixed_op``) chooses how
    every node is computed; it can be switched at any time (``net.backend = "reference"``) since
    all run the same parameters.
    """

    def __init__(self, C=16, num_classes=10, layers=8, steps=4, multiplier=4, stem_multiplier=3,
                 backend="fused", in_channels=3, primitives=PRIMITIVES):
        super().__init__()
        for name, value in [("C", C), ("num_classes", num_classes), ("layers", layers), ("steps", steps),
                            ("multiplier", multiplier), ("stem_multiplier", stem_multiplier),
                            ("in_channels", in_channels)]:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if multiplier > steps:
            raise ValueError(f"multiplier ({multiplier}) cannot exceed steps ({steps}): the output concatenates "
                             "the last `multiplier` nodes")
        self.C = C
        self.num_classes = num_classes
        self.layers = layers
        self.steps = steps
        self.multiplier = multiplier

        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_curr),
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            self.cells.append(self.make_cell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction,
                                             reduction_prev, primitives, backend))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        self.primitives = self.cells[0].primitives
        shape = (num_edges(steps), len(self.primitives))
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(shape))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(shape))
        self.backend = backend

    def make_cell(self, *args):
        """One cell (``SearchCell``'s arguments); subclasses of other methods put their own cell here."""
        return SearchCell(*args)

    @property
    def backend(self):
        return self._backend

    @backend.setter
    def backend(self, backend):
        self._backend = check_backend(backend)
        for cell in self.cells:
            cell.backend = backend

    def arch_parameters(self):
        """[alphas_normal, alphas_reduce]: for the architecture optimizer only."""
        return [self.alphas_normal, self.alphas_reduce]

    def weight_parameters(self):
        """Every parameter except the architecture ones: for the weight optimizer."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x):
        # Every cell of a kind shares the same softmax, computed once.
        normal_weights = F.softmax(self.alphas_normal, dim=-1)
        reduce_weights = F.softmax(self.alphas_reduce, dim=-1)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, reduce_weights if cell.reduction else normal_weights)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1))

    def decode_weights(self):
        """(normal, reduce): the [edges, ops] weights the genotype is decoded from (softmax(alpha))."""
        return F.softmax(self.alphas_normal.detach(), dim=-1), F.softmax(self.alphas_reduce.detach(), dim=-1)

    def genotype(self):
        """The discrete architecture the current alphas stand for (SPEC.md section 3)."""
        normal, reduce = (self.decode_cell(w) for w in self.decode_weights())
        concat = range(2 + self.steps - self.multiplier, self.steps + 2)
        return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)

    def decode_cell(self, weights):
        """One cell's pairs from its [edges, ops] weights: the DARTS rule (``decode.parse_cell``)."""
        return parse_cell(weights, self.steps, self.primitives)
