"""Stand-ins for the original DARTS and PC-DARTS search networks (model_search.Network), written
from SPEC.md sections 1 and 5 independently of fastdnas.darts: the same module tree, attribute
and method names, the per-edge eager sums, and the architecture tensors kept as plain tensors
outside parameters() and state_dict(). The candidate ops come from FINAL_OPS, whose classes
carry the original operations.py names.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastdnas.nn import FINAL_OPS, PRIMITIVES, FactorizedReduce, ReLUConvBN


def shuffle_channels(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class OriginalMixedOp(nn.Module):
    """All candidates on one edge; with ``k`` (PC-DARTS) only the first C/k channels go through
    them, the rest bypass (2x2 max pool on reduction edges) and the result is shuffled."""

    def __init__(self, C, stride, k=None):
        super().__init__()
        self.k = k
        if k is not None:
            self.mp = nn.MaxPool2d(2, 2)
        width = C if k is None else C // k
        self._ops = nn.ModuleList()
        for primitive in PRIMITIVES:
            op = FINAL_OPS[primitive](width, stride, False)
            if "pool" in primitive:
                op = nn.Sequential(op, nn.BatchNorm2d(width, affine=False))
            self._ops.append(op)

    def forward(self, x, weights):
        if self.k is None:
            return sum(w * op(x) for w, op in zip(weights, self._ops))
        width = x.shape[1] // self.k
        mixed = sum(w * op(x[:, :width]) for w, op in zip(weights, self._ops))
        rest = x[:, width:]
        if mixed.shape[2] != x.shape[2]:
            rest = self.mp(rest)
        return shuffle_channels(torch.cat([mixed, rest], dim=1), self.k)


class OriginalCell(nn.Module):
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, k=None):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps, self._multiplier = steps, multiplier
        self._ops = nn.ModuleList()
        self._bns = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                self._ops.append(OriginalMixedOp(C, 2 if reduction and j < 2 else 1, k))

    def forward(self, s0, s1, weights, edge_weights=None):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            if edge_weights is None:
                node = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            else:
                node = sum(edge_weights[offset + j] * self._ops[offset + j](h, weights[offset + j])
                           for j, h in enumerate(states))
            offset += len(states)
            states.append(node)
        return torch.cat(states[-self._multiplier:], dim=1)


class OriginalNetwork(nn.Module):
    """The original DARTS search network; ``k`` set: the PC-DARTS one (betas, partial channels)."""

    def __init__(self, C, num_classes, layers, criterion=None, steps=4, multiplier=4, stem_multiplier=3, k=None):
        super().__init__()
        self._C, self._num_classes, self._layers, self._criterion = C, num_classes, layers, criterion
        self._steps, self._multiplier, self._k = steps, multiplier, k
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in [layers // 3, 2 * layers // 3]
            C_curr = C_curr * 2 if reduction else C_curr
            self.cells.append(OriginalCell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, k))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        edges = sum(2 + i for i in range(steps))
        arch = [1e-3 * torch.randn(edges, len(PRIMITIVES)), 1e-3 * torch.randn(edges, len(PRIMITIVES))]
        if k is not None:
            arch += [1e-3 * torch.randn(edges), 1e-3 * torch.randn(edges)]
        self.set_arch([a.requires_grad_() for a in arch])

    def set_arch(self, tensors):
        """Plain tensors, as the original keeps them: not in parameters() or state_dict()."""
        self._arch_parameters = list(tensors)
        self.alphas_normal, self.alphas_reduce = tensors[:2]
        if self._k is not None:
            self.betas_normal, self.betas_reduce = tensors[2:]

    def arch_parameters(self):
        return self._arch_parameters

    def new(self):
        model_new = OriginalNetwork(self._C, self._num_classes, self._layers, self._criterion, self._steps,
                                    self._multiplier, k=self._k)
        model_new = model_new.to(self.alphas_normal)
        model_new.set_arch([a.detach().to(self.alphas_normal).requires_grad_() for a in model_new.arch_parameters()])
        for x, y in zip(model_new.arch_parameters(), self.arch_parameters()):
            x.data.copy_(y.data)
        return model_new

    def _edge_weights(self, betas):
        parts, start = [], 0
        for i in range(self._steps):
            parts.append(F.softmax(betas[start:start + 2 + i], dim=-1))
            start += 2 + i
        return torch.cat(parts)

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            weights = F.softmax(self.alphas_reduce if cell.reduction else self.alphas_normal, dim=-1)
            if self._k is None:
                s0, s1 = s1, cell(s0, s1, weights)
            else:
                betas = self.betas_reduce if cell.reduction else self.betas_normal
                s0, s1 = s1, cell(s0, s1, weights, self._edge_weights(betas))
        return self.classifier(self.global_pooling(s1).flatten(1))

    def _loss(self, input, target):
        return self._criterion(self(input), target)
