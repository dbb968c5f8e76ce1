"""The final (retraining) network built from a genotype, as the original NetworkCIFAR.

Each node is the sum of its two chosen operations (``FINAL_OPS``: affine BN, pools without BN).
Training extras: drop-path on every non-identity op and an optional auxiliary head. Module and
parameter names are those of the original code, so its checkpoints load as they are.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.operations import FINAL_OPS, FactorizedReduce, Identity, ReLUConvBN


def drop_path(x, drop_prob):
    """Zeroes whole samples with probability ``drop_prob``, scaling the rest to keep the mean."""
    keep_prob = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x * mask / keep_prob


def _check_cell(name, pairs, concat):
    if not pairs or len(pairs) % 2:
        raise ValueError(f"genotype.{name}: expected two (op_name, state_index) pairs per node, got {len(pairs)} pairs")
    unknown = sorted({op for op, _ in pairs if op not in FINAL_OPS})
    if unknown:
        raise ValueError(f"genotype.{name}: unknown operation(s) {unknown}; known: {sorted(FINAL_OPS)}")
    for k, (op, index) in enumerate(pairs):
        node = k // 2
        if not 0 <= index < 2 + node:
            raise ValueError(f"genotype.{name}: node {node} cannot take state {index} (it sees states 0..{node + 1})")
    num_states = 2 + len(pairs) // 2
    if not concat or any(not 0 <= i < num_states for i in concat):
        raise ValueError(f"genotype.{name}_concat: expected state indices in 0..{num_states - 1}, got {list(concat)}")


def check_genotype(genotype):
    """ValueError naming the first field of ``genotype`` that no final network can build."""
    _check_cell("normal", genotype.normal, genotype.normal_concat)
    _check_cell("reduce", genotype.reduce, genotype.reduce_concat)


class FinalCell(nn.Module):
    def __init__(self, genotype, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        # After a reduction cell, s0 has twice the resolution of s1: halve it.
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)

        pairs = genotype.reduce if reduction else genotype.normal
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        op_names, indices = zip(*pairs)
        self.steps = len(pairs) // 2
        self.indices = list(indices)
        self.concat = list(concat)
        self.multiplier = len(self.concat)
        self._ops = nn.ModuleList(
            FINAL_OPS[name](C, 2 if reduction and index < 2 else 1, True) for name, index in zip(op_names, indices)
        )

    def forward(self, s0, s1, drop_prob):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self.steps):
            node = 0
            for k in (2 * i, 2 * i + 1):
                h = self._ops[k](states[self.indices[k]])
                # Identity edges are never dropped: they are the cell's shortcut.
                if self.training and drop_prob > 0 and not isinstance(self._ops[k], Identity):
                    h = drop_path(h, drop_prob)
                node = node + h
            states.append(node)
        return torch.cat([states[i] for i in self.concat], dim=1)


class _AuxiliaryPool(nn.Module):
    """The original head pools its map (CIFAR: 8x8, ImageNet: 7x7) with a 5x5 window (stride 3,
    ImageNet: 2) to 2x2; any other size (small inputs, other resolutions) is average pooled
    adaptively to the same 2x2."""

    def __init__(self, size=8, stride=3):
        super().__init__()
        self.size, self.stride = size, stride

    def forward(self, x):
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return F.avg_pool2d(x, 5, stride=self.stride, padding=0, count_include_pad=False)
        return F.adaptive_avg_pool2d(x, 2)


class AuxiliaryHead(nn.Module):
    """Extra classifier on the features after the second reduction (CIFAR: 8x8 there). The
    ImageNet head (``imagenet=True``) pools 7x7 maps at stride 2 and, as the original code, has no
    BatchNorm after its 2x2 convolution."""

    def __init__(self, C, num_classes, imagenet=False):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),  # its input also feeds the next cells: leave it unchanged
            _AuxiliaryPool(7, 2) if imagenet else _AuxiliaryPool(8, 3),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            *([] if imagenet else [nn.BatchNorm2d(768)]),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class FinalNetwork(nn.Module):
    """The network to retrain from scratch: ``layers`` cells of the genotype.

    ``forward(x)`` returns ``(logits, logits_aux)``; ``logits_aux`` is None unless the network
    has the auxiliary head and is training. Set ``drop_path_prob`` between epochs (the original
    schedule grows it linearly); drop-path acts in training only. The auxiliary head sits after
    cell 2*layers//3; it matches the original on the 8x8 maps of 32x32 inputs and pools any other
    size adaptively, so small inputs work too.
    """

    def __init__(self, C, num_classes, layers, genotype, auxiliary=False, drop_path_prob=0.0, in_channels=3,
                 stem_multiplier=3):
        super().__init__()
        self._set_up(C, num_classes, layers, genotype, auxiliary, drop_path_prob, in_channels=in_channels,
                     stem_multiplier=stem_multiplier)
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_curr),
        )
        self._build_cells(C_curr, C_curr, C, False, num_classes, AuxiliaryHead)

    def _set_up(self, C, num_classes, layers, genotype, auxiliary, drop_path_prob, **sizes):
        for name, value in [("C", C), ("num_classes", num_classes), ("layers", layers), *sizes.items()]:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= drop_path_prob < 1.0:
            raise ValueError(f"drop_path_prob must be in [0, 1), got {drop_path_prob}")
        check_genotype(genotype)
        self.layers = layers
        self.auxiliary = auxiliary
        self.drop_path_prob = drop_path_prob
        self.genotype = genotype

    def _build_cells(self, C_prev_prev, C_prev, C_curr, reduction_prev, num_classes, head):
        """The cells (reductions at layers//3 and 2*layers//3), the ``head`` class of auxiliary head
        after cell 2*layers//3 when ``auxiliary``, the pooling and the classifier."""
        self.cells = nn.ModuleList()
        for i in range(self.layers):
            reduction = i in (self.layers // 3, 2 * self.layers // 3)
            if reduction:
                C_curr *= 2
            cell = FinalCell(self.genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * self.layers // 3:
                C_auxiliary = C_prev
        if self.auxiliary:
            self.auxiliary_head = head(C_auxiliary, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def stems(self, x):
        """(s0, s1) of the first cell."""
        s = self.stem(x)
        return s, s

    def forward(self, x):
        logits_aux = None
        s0, s1 = self.stems(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self.layers // 3 and self.auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1)), logits_aux
