"""The final network of the DARTS paper's ImageNet mobile setting, as the original NetworkImageNet.

Two stems take a 224x224 image to 28x28 (stem0: two stride-2 3x3 convolutions, stem1: one
more); the cells start as after a reduction (cell 0 halves its s0 input from stem0's 56x56);
reduction cells at layers//3 and 2*layers//3; the auxiliary head after cell 2*layers//3 (7x7
there) has no BatchNorm after its 2x2 convolution, as in the original code. C=48 and 14 cells
give the paper's 4.7 M parameters for DARTS_V2. Module and parameter names are the original
ones (``stem0``, ``stem1``, ``cells``, ``auxiliary_head``, ``classifier``).

Training on ImageNet uses label smoothing 0.1 (``label_smoothing_loss``), as the original.
"""
from functools import partial

import torch.nn as nn
import torch.nn.functional as F

from .final_network import AuxiliaryHead, FinalNetwork


class ImageNetNetwork(FinalNetwork):
    """``ImageNetNetwork(C, num_classes, layers, genotype, auxiliary=False, drop_path_prob=0.0)``;
    ``forward(x)`` returns ``(logits, logits_aux)`` as ``FinalNetwork`` does."""

    def __init__(self, C, num_classes, layers, genotype, auxiliary=False, drop_path_prob=0.0, in_channels=3):
        nn.Module.__init__(self)  # FinalNetwork's cells and head, with stems of its own
        self._set_up(C, num_classes, layers, genotype, auxiliary, drop_path_prob, in_channels=in_channels)
        if C % 2:
            raise ValueError(f"C must be even (stem0 first makes C/2 channels), got {C}")
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),  # stem0's output is also cell 0's s0
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        # Cell 0 starts as after a reduction: its s0 (stem0, 56x56) has twice s1's resolution.
        # The original pools with AvgPool2d(7) on the final 7x7 maps: the adaptive pooling there.
        self._build_cells(C, C, C, True, num_classes, partial(AuxiliaryHead, imagenet=True))

    def stems(self, x):
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


def label_smoothing_loss(logits, target, smoothing=0.1):
    """The original ImageNet training loss: cross entropy against (1 - smoothing) * one-hot +
    smoothing / num_classes."""
    return F.cross_entropy(logits, target, label_smoothing=smoothing)


def imagenet_training_loss(model, inputs, targets, auxiliary_weight, smoothing=0.1):
    """The original train_imagenet.py's loss: label-smoothed cross entropy of the logits, plus
    ``auxiliary_weight`` times that of the auxiliary logits; returns (loss, logits)."""
    logits, logits_aux = model(inputs)
    loss = label_smoothing_loss(logits, targets, smoothing)
    if logits_aux is not None:
        loss = loss + auxiliary_weight * label_smoothing_loss(logits_aux, targets, smoothing)
    return loss, logits
