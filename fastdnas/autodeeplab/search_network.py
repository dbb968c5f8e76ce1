"""The Auto-DeepLab search network (SPEC.md section 4): a trellis of cells over four levels.

Levels 0..3 hold the downsample rates 4, 8, 16, 32. A 2-layer stem brings the input to level 0
(layer 0); layers 1..L can be at levels 0..min(l, 3). A cell at level s works on F * 2**s
channels per block (F * rate / 4) and outputs the concat of its B blocks.

Node H^l_s sums, over its incoming transitions (from levels s-1, s, s+1 of layer l-1), the betas
times the node's cell evaluated on H^{l-1} of that level resampled to level s, with H^{l-2}_s as
the cell's other input (paper Eq. 6). The cell's operations are shared by those evaluations (one
cell per node, as in the public code); the resampling convs belong to each transition. Where
H^{l-2}_s does not exist (layer 1, and levels layer l-2 cannot reach), the cell sees its resampled
H^{l-1} input twice, as the first DARTS cell sees the stem twice.

The architecture is two parameters of the module, kept out of ``weight_parameters()``:
``alphas`` [num_edges(B), len(primitives)], one tensor shared by every cell, and ``betas``
[L, 4, 3], ``betas[l, s, d]`` the logit of leaving level s of layer l (layer 0 is the stem)
towards level s - 1 + d, softmaxed over the transitions that exist (paper Eq. 7).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops, reference
from ..decode import NUM_LEVELS, num_edges, parse_cell, reachable_levels, transition_mask, viterbi
from ..nn.mixed_op import MixedOp, cell_nodes, check_backend, fused_cell
from ..nn.operations import PRIMITIVES, ReLUConvBN
from .aspp import aspp_for_level


def _trellis_aggregate(cells, betas, backend):
    """[N, B*C, H, W], block b = sum_t betas[t] * cells[t][b]: the node's concat, written once."""
    return (reference if backend == "reference" else ops).trellis_aggregate(cells, betas)


def _resize_sum(inputs, size, backend):
    """sum_i bilinear_resize(inputs[i], size) (align_corners=False): the heads' logits merged."""
    return (reference if backend == "reference" else ops).resize_sum(inputs, size)


def make_stem(in_channels, channels):
    """Two stride-2 3x3 convs with BN and ReLU: the input at downsample rate 4 (level 0)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=False),
        nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=False),
    )


def level_sizes(stem_size):
    """(height, width) of every level: a stride-2 3x3 conv (padding 1) maps n to ceil(n / 2)."""
    sizes = [tuple(stem_size)]
    for _ in range(NUM_LEVELS - 1):
        sizes.append(tuple((n + 1) // 2 for n in sizes[-1]))
    return sizes


class Resample(nn.Module):
    """Brings a state from ``source_level`` to ``target_level`` with ``C_out`` channels: towards a
    coarser level one stride-2 3x3 conv per level, towards a finer one bilinear upsampling then a
    1x1 conv, on the same level a 1x1 conv; every conv is a ReLUConvBN."""

    def __init__(self, source_level, target_level, C_in, C_out, affine):
        super().__init__()
        levels_down = target_level - source_level
        if levels_down > 0:
            convs = [ReLUConvBN(C_in if i == 0 else C_out, C_out, 3, 2, 1, affine) for i in range(levels_down)]
        else:
            convs = [ReLUConvBN(C_in, C_out, 1, 1, 0, affine)]
        self.convs = nn.Sequential(*convs)
        self.upsample = levels_down < 0

    def forward(self, x, size):
        """``size``: (height, width) of the target level, used when upsampling."""
        if self.upsample:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.convs(x)


class TrellisCell(nn.Module):
    """The searched cell (mixed ops only; its inputs come preprocessed): ``blocks`` blocks, block i
    the mixed-op sum over the 2 + i earlier states [s0, s1, block 0, ..., block i-1].

    ``forward(s0, s1, weights)`` takes softmax(alphas) [num_edges(blocks), len(primitives)] and
    returns the list of the block outputs (the caller concatenates them).
    """

    def __init__(self, blocks, C, primitives=PRIMITIVES, backend="fused"):
        super().__init__()
        self.blocks = blocks
        # One MixedOp per edge, flattened block by block (edges 0-1, 2-4, 5-8, ...).
        self.edges = nn.ModuleList(MixedOp(C, 1, primitives, backend) for i in range(blocks) for _ in range(2 + i))
        self.primitives = self.edges[0].primitives
        self.backend = backend

    @property
    def backend(self):
        return self._backend

    @backend.setter
    def backend(self, backend):
        self._backend = check_backend(backend)
        for edge in self.edges:
            edge.backend = backend

    def forward(self, s0, s1, weights, evaluations=None):
        """``evaluations``: this cell's ``evaluations()`` of the current forward, shared by its
        evaluations on several inputs (None: this evaluation alone)."""
        expected = [len(self.edges), len(self.primitives)]
        if list(weights.shape) != expected:
            raise ValueError(f"weights must have shape {expected} (edges x primitives), got {list(weights.shape)}")
        states = [s0, s1]
        # Fused backends: each node one kernel call.
        states = cell_nodes(self.edges, states, weights, self.blocks, self.backend, evaluations)
        return states[2:]

    def evaluations(self):
        """What several evaluations of this cell in one forward share: the "fused" backend's
        FusedCell (the weights stacked once; fastdnas.nn.mixed_op.fused_cell), else None."""
        return fused_cell(self.edges, self.blocks) if self.backend == "fused" else None


class TrellisNode(nn.Module):
    """Node H^l_s: its cell evaluated once per incoming transition, the evaluations summed with the
    transitions' betas (paper Eq. 6)."""

    def __init__(self, layer, level, blocks, filter_multiplier, primitives=PRIMITIVES, backend="fused"):
        super().__init__()
        if layer < 1 or level not in reachable_levels(layer):
            raise ValueError(f"no trellis node at layer {layer}, level {level}")
        self.layer = layer
        self.level = level
        C = filter_multiplier * 2**level  # channels per block
        self.source_levels = [s for s in (level - 1, level, level + 1) if s in reachable_levels(layer - 1)]
        # Where each transition's beta sits in betas[layer - 1, source, d] (d = target - source + 1),
        # as flat indices kept on the network's device (no host-to-device copy per step).
        flat = [((layer - 1) * NUM_LEVELS + source) * 3 + level - source + 1 for source in self.source_levels]
        self.register_buffer("transition_index", torch.tensor(flat), persistent=False)
        self.resample = nn.ModuleList(
            Resample(source, level, blocks * filter_multiplier * 2**source, C, affine=False)
            for source in self.source_levels
        )
        # H^{l-2} at this level exists only if layer l-2 reaches it (layer 0, the stem, is at level 0).
        self.has_prev_prev = layer >= 2 and level in reachable_levels(layer - 2)
        if self.has_prev_prev:
            self.preprocess_prev_prev = ReLUConvBN(blocks * C, C, 1, 1, 0, affine=False)
        self.cell = TrellisCell(blocks, C, primitives, backend)

    def forward(self, prev_layer, prev_prev_layer, alpha_weights, beta_weights, sizes):
        """``prev_layer``/``prev_prev_layer``: the states of layers l-1 and l-2 by level;
        ``alpha_weights``: softmax(alphas); ``beta_weights``: the normalised betas [L, 4, 3];
        ``sizes``: (height, width) of every level."""
        # H^{l-2} is the same for every transition: preprocess it once.
        s0 = self.preprocess_prev_prev(prev_prev_layer[self.level]) if self.has_prev_prev else None
        evaluations, shared = [], self.cell.evaluations()
        for source, resample in zip(self.source_levels, self.resample):
            s1 = resample(prev_layer[source], sizes[self.level])
            evaluations.append(self.cell(s1 if s0 is None else s0, s1, alpha_weights, shared))
        transition_weights = beta_weights.flatten().index_select(0, self.transition_index)
        return _trellis_aggregate(evaluations, transition_weights, self.cell.backend)


def normalized_betas(betas, mask):
    """Softmax of each level's outgoing transition logits over the transitions that exist (paper
    Eq. 7), 0 where ``mask`` is False: ``betas`` [L, 4, 3], ``mask`` the same shape (bool)."""
    # Replace, not add to, the missing transitions' logits: their values (even NaN) never matter.
    logits = torch.where(mask, betas, torch.finfo(betas.dtype).min)
    # Levels with no transition at all (unreachable) get a uniform row; the mask zeroes it.
    return torch.softmax(logits, dim=-1) * mask


class SearchNetwork(nn.Module):
    """The Auto-DeepLab supernet for segmentation: ``forward(x)`` returns logits [N, num_classes, H, W].

    ``backend`` ("fused", "fused_sum" or "reference"; see ``fastdnas.nn.mixed_op``) chooses how
    block sums, node aggregations and the final resize-and-sum are computed; it can be switched at
    any time since all run the same parameters.
    BatchNorms are affine-free inside cells and resampling (as DARTS), affine in the stem and heads.
    """

    def __init__(self, num_classes, layers=12, blocks=5, filter_multiplier=8, backend="fused", in_channels=3,
                 primitives=PRIMITIVES):
        super().__init__()
        for name, value in [("num_classes", num_classes), ("layers", layers), ("blocks", blocks),
                            ("filter_multiplier", filter_multiplier), ("in_channels", in_channels)]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.num_classes = num_classes
        self.layers = layers
        self.blocks = blocks
        self.filter_multiplier = filter_multiplier
        self.in_channels = in_channels

        self.stem = make_stem(in_channels, blocks * filter_multiplier)
        self.trellis = nn.ModuleList(
            nn.ModuleList(TrellisNode(layer, level, blocks, filter_multiplier, primitives, backend)
                          for level in reachable_levels(layer))
            for layer in range(1, layers + 1)
        )
        # One ASPP per level of the last layer; their logits are resized to the input and summed.
        self.aspp = nn.ModuleList(aspp_for_level(level, blocks, filter_multiplier, num_classes)
                                  for level in reachable_levels(layers))

        self.primitives = self.trellis[0][0].cell.primitives
        self.alphas = nn.Parameter(1e-3 * torch.randn(num_edges(blocks), len(self.primitives)))
        self.register_buffer("beta_mask", torch.tensor(transition_mask(layers)), persistent=False)
        # Missing transitions start (and, having no gradient, stay) at 0 rather than holding noise.
        self.betas = nn.Parameter(1e-3 * torch.randn(layers, NUM_LEVELS, 3) * self.beta_mask)
        self.backend = backend

    @property
    def backend(self):
        return self._backend

    @backend.setter
    def backend(self, backend):
        self._backend = check_backend(backend)
        for nodes in self.trellis:
            for node in nodes:
                node.cell.backend = backend

    def arch_parameters(self):
        """[alphas, betas]: for the architecture optimizer only."""
        return [self.alphas, self.betas]

    def weight_parameters(self):
        """Every parameter except the architecture ones: for the weight optimizer."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def normalized_betas(self):
        """The transition probabilities [L, 4, 3] the forward pass uses (0 for missing transitions)."""
        return normalized_betas(self.betas, self.beta_mask)

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images [N, {self.in_channels}, H, W], got shape {list(x.shape)}")
        # Every cell shares one softmax, every node reads its betas from one normalisation.
        alpha_weights = F.softmax(self.alphas, dim=-1)
        beta_weights = self.normalized_betas()
        stem = self.stem(x)
        sizes = level_sizes(stem.shape[-2:])
        prev_prev_layer, prev_layer = None, [stem]  # states of layers l-2 and l-1, by level
        for nodes in self.trellis:
            states = [node(prev_layer, prev_prev_layer, alpha_weights, beta_weights, sizes) for node in nodes]
            prev_prev_layer, prev_layer = prev_layer, states
        level_logits = [aspp(state) for aspp, state in zip(self.aspp, prev_layer)]
        return _resize_sum(level_logits, tuple(x.shape[-2:]), self.backend)

    def decode(self):
        """The discrete architecture the current alphas and betas stand for (SPEC.md section 4):
        ``{"path": levels of layers 1..L (Viterbi), "cell": [(op_name, state_index)] x 2 per block}``."""
        return {
            "path": viterbi(self.betas.detach()),
            "cell": parse_cell(F.softmax(self.alphas.detach(), dim=-1), self.blocks, self.primitives),
        }

    genotype = decode  # the name the DARTS network uses
