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


class OriginalFinalCell(nn.Module):
    """The original final-network cell: two chosen ops per node (no drop-path here: eval only)."""

    def __init__(self, genotype, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        pairs = genotype.reduce if reduction else genotype.normal
        self._concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.multiplier = len(self._concat)
        self._indices = [index for _, index in pairs]
        self._ops = nn.ModuleList(FINAL_OPS[name](C, 2 if reduction and index < 2 else 1, True) for name, index in pairs)

    def forward(self, s0, s1, drop_prob):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(len(self._ops) // 2):
            states.append(sum(self._ops[k](states[self._indices[k]]) for k in (2 * i, 2 * i + 1)))
        return torch.cat([states[i] for i in self._concat], dim=1)


def original_auxiliary_head(C, num_classes, imagenet):
    """The original AuxiliaryHeadCIFAR / AuxiliaryHeadImageNet (the latter without its second BN)."""
    layers = [nn.ReLU(inplace=False), nn.AvgPool2d(5, stride=2 if imagenet else 3, padding=0, count_include_pad=False),
              nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
              nn.Conv2d(128, 768, 2, bias=False)]
    layers += [nn.ReLU(inplace=True)] if imagenet else [nn.BatchNorm2d(768), nn.ReLU(inplace=True)]
    head = nn.Module()
    head.features = nn.Sequential(*layers)
    head.classifier = nn.Linear(768, num_classes)
    return head


class OriginalFinalNetwork(nn.Module):
    """The original NetworkCIFAR (``imagenet=False``) or NetworkImageNet, in eval mode."""

    def __init__(self, C, num_classes, layers, auxiliary, genotype, imagenet=False):
        super().__init__()
        self._layers = layers
        if imagenet:
            self.stem0 = nn.Sequential(nn.Conv2d(3, C // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C // 2),
                                       nn.ReLU(inplace=True), nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
                                       nn.BatchNorm2d(C))
            self.stem1 = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                                       nn.BatchNorm2d(C))
            C_prev_prev, C_prev, C_curr, reduction_prev = C, C, C, True
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, 3 * C, 3, padding=1, bias=False), nn.BatchNorm2d(3 * C))
            C_prev_prev, C_prev, C_curr, reduction_prev = 3 * C, 3 * C, C, False
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in [layers // 3, 2 * layers // 3]
            C_curr = C_curr * 2 if reduction else C_curr
            cell = OriginalFinalCell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                C_aux = C_prev
        if auxiliary:
            self.auxiliary_head = original_auxiliary_head(C_aux, num_classes, imagenet)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        if hasattr(self, "stem0"):
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        else:
            s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, 0.0)
        return self.classifier(self.global_pooling(s1).flatten(1))


def randomise(module, std=0.5):
    """Random weights and BatchNorm statistics, as a trained network has."""
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            else:
                tensor.normal_(0, std)
    return module
