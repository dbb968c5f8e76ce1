"""GDAS on the DARTS space as its authors' code runs it (AutoDL-Projects: the DARTS-space GDAS
supernet, its search cells and operations, exps/algos/GDAS.py; SPEC section 5b).

``AuthorsGdasNetwork`` is ``GdasNetwork`` (the same sampling, temperature schedule and sampled
forward) with the authors' supernet:

- no BatchNorm after the pools (``max_pool_3x3`` and ``avg_pool_3x3`` are the bare pools);
- every convolution that is not depthwise has a bias (their ``bias=not affine`` in search mode):
  the preprocessing 1x1 convolutions, the 1x1 convolutions of the separable and dilated
  convolutions and both convolutions of FactorizedReduce;
- a BatchNorm-ReLU (``lastact``) before the global pooling;
- N cells per stage with the reductions after N and 2N cells: ``layers`` must be 3N (6 in their
  CIFAR configuration, C=16);
- Gumbel noise drawn as ``-log(E)`` with an infinite draw resampled (ours clamps E above the
  smallest normal number instead, so that no host check is needed);
- the genotype ranks (operation, input) pairs per node (``decode.parse_cell_pairs``): a node may
  take the same input twice.

The step (weights first, the clip over the weights' and the alphas' gradients, Nesterov SGD) is
the search loop's (``SearchConfig(weight_step_first=True, nesterov=True, clip_with_arch=True)``).

Backends: "fused" runs each node as one ``mixed_node`` call with the skip and the bare pools
inside the kernel (kind 3, the average pool without BatchNorm; kind 4, the max pool without
BatchNorm), over the sampled candidates (sampled form) or all of them (dense form,
``sampled_only=False``); the biased convolutions run candidate by candidate, their 1x1 layers as
matrix products on the CPU. "fused_sum" runs the sampled candidate modules and adds a node's
edges with ``mixed_sum``; "reference" as a Python sum.
"""
import torch
import torch.nn as nn

from ..decode import parse_cell_pairs
from ..nn.mixed_op import MixedOp
from ..nn.operations import FINAL_OPS, OPS, PRIMITIVES
from .gdas import GdasNetwork, SampledSearchCell


def with_conv_biases(module):
    """``module`` with every dense (``groups == 1``) convolution replaced by the same convolution
    with a bias (freshly initialised as ``nn.Conv2d`` does); depthwise convolutions keep none."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and child.groups == 1 and child.bias is None:
            setattr(module, name, nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                             child.padding, child.dilation, bias=True))
        else:
            with_conv_biases(child)
    return module


def _biased(factory):
    return lambda C, stride, affine: with_conv_biases(factory(C, stride, affine))


# name -> factory(C, stride, affine): the authors' search candidates (pools bare, dense convolutions biased).
AUTHORS_OPS = {name: _biased(factory) for name, factory in OPS.items()}
AUTHORS_OPS["max_pool_3x3"] = FINAL_OPS["max_pool_3x3"]
AUTHORS_OPS["avg_pool_3x3"] = FINAL_OPS["avg_pool_3x3"]
# What mixed_node computes itself: the skip and the pools without BatchNorm.
AUTHORS_FREE_KINDS = {"skip_connect": 2, "avg_pool_3x3": 3, "max_pool_3x3": 4}  # fastdnas.ops.FREE_SKIP, FREE_PLAIN_*


def finite_gumbel_noise(like):
    """Standard Gumbel noise -log(E), E ~ Exponential(1), of ``like``'s shape; a draw with an
    infinite entry (E = 0) is drawn again, as the authors' code does (one host check per call)."""
    while True:
        gumbels = torch.empty_like(like).exponential_().log_().neg_()
        if bool(torch.isfinite(gumbels).all()):
            return gumbels


class AuthorsGdasCell(SampledSearchCell):
    """A search cell of the authors' GDAS supernet: their candidates, biased preprocessing convolutions."""

    def __init__(self, *args):
        super().__init__(*args)
        with_conv_biases(self.preprocess0)
        with_conv_biases(self.preprocess1)

    def make_edge(self, C, stride, primitives, backend):
        return MixedOp(C, stride, primitives, backend, ops=AUTHORS_OPS, free_kinds=AUTHORS_FREE_KINDS)


class AuthorsGdasNetwork(GdasNetwork):
    """GDAS's DARTS-space supernet as in the authors' code (see the module doc); ``GdasNetwork``'s
    arguments, ``layers`` = 3N (N cells per stage)."""

    checks_noise_on_host = True  # finite_gumbel_noise: no CUDA-graph capture of its forward

    def __init__(self, C=16, num_classes=10, layers=6, steps=4, multiplier=4, stem_multiplier=3,
                 backend="fused", in_channels=3, primitives=PRIMITIVES, tau_max=10.0, tau_min=0.1,
                 sampled_only=True):
        if not isinstance(layers, int) or layers < 3 or layers % 3:
            raise ValueError(f"layers must be 3N (N cells per stage, the reductions after N and 2N cells, as in the "
                             f"authors' supernet), got {layers!r}")
        super().__init__(C, num_classes, layers, steps, multiplier, stem_multiplier, backend, in_channels,
                         primitives, tau_max, tau_min, sampled_only)
        features = self.classifier.in_features
        self.lastact = nn.Sequential(nn.BatchNorm2d(features), nn.ReLU(inplace=False))

    def make_cell(self, *args):
        return AuthorsGdasCell(*args)

    def sample(self, gumbels=None):
        if gumbels is None:
            gumbels = (finite_gumbel_noise(self.alphas_normal), finite_gumbel_noise(self.alphas_reduce))
        return super().sample(gumbels)

    def head(self, feature):
        return super().head(self.lastact(feature))

    def decode_cell(self, weights):
        """The authors' decoding: per node the 2 strongest (operation, input) pairs of softmax(alpha)."""
        return parse_cell_pairs(weights, self.steps, self.primitives)
