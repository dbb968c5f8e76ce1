"""GDAS (Dong and Yang, CVPR 2019) on the DARTS supernet: one sampled candidate per edge.

Every forward pass draws, per edge, a hard Gumbel-softmax sample of the edge's alphas:

    p = softmax((log_softmax(alpha) + g) / tau),  g = -log(E), E ~ Exponential(1)
    k = argmax p,  h = one_hot(k) - p.detach() + p      (straight-through: h_k = 1 in value)

and the edge's output is ``h_k * op_k(x)``: only the sampled candidate runs, and the gradient
reaches every alpha of the edge through p_k. A node sums its edges' outputs. The temperature tau
(a buffer, so a captured CUDA graph reads it) falls linearly from ``tau_max`` to ``tau_min`` over
the search (``set_search_epoch``), as in the paper's code.

The reduction cell is searched like the normal cell (the paper's "GDAS" row; its "FRC" variant
fixes a hand-designed reduction cell that is no DARTS genotype, which ``train darts`` could not
retrain).

Sampling runs on the device. Which candidate to run is a host decision, so the sampled forward
reads the sampled indices once per forward pass (one transfer of [2, edges] integers).
``sampled_only=False`` keeps everything on the device instead: every candidate runs and the
node weights are ``one_hot * h``, which gives the same output and the same gradients (the
unsampled candidates get weight 0) at the cost of a DARTS step; CUDA graphs need it.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.mixed_op import FusedCell, mixed_sum_chunked, node_edge_slices, sampled_node_sum
from ..nn.operations import PRIMITIVES
from .search_network import SearchCell, SearchNetwork


def gumbel_noise(like):
    """Standard Gumbel noise -log(E), E ~ Exponential(1), on like's device; E is kept above the
    smallest normal number, so no sample is infinite (the paper's code resamples instead, which
    would need a host check)."""
    exponential = torch.empty_like(like).exponential_()
    return exponential.clamp_min_(torch.finfo(like.dtype).tiny).log_().neg_()


def hard_gumbel_softmax(alphas, tau, gumbels=None):
    """(h [edges, ops], index [edges]): the straight-through hard sample of every row of alphas."""
    if gumbels is None:
        gumbels = gumbel_noise(alphas)
    elif gumbels.shape != alphas.shape:
        raise ValueError(f"gumbels must have the alphas' shape {list(alphas.shape)}, got {list(gumbels.shape)}")
    probs = F.softmax((F.log_softmax(alphas, dim=-1) + gumbels) / tau, dim=-1)
    index = probs.argmax(dim=-1, keepdim=True)
    one_hot = torch.zeros_like(probs).scatter_(-1, index, 1.0)
    return one_hot - probs.detach() + probs, index.squeeze(-1)


def sampled_node(edges, states, hardwts, index, backend, cell=None):
    """``sum_j hardwts[j, k_j] * edges[j]._ops[k_j](states[j])`` with k = ``index`` (host ints).

    The reference backend adds every edge as the paper writes it ('none' included). "fused":
    one ``mixed_node`` call over the sampled candidates (``sampled_node_sum``; ``cell`` the
    FusedCell that shares ReLUs and running-statistics updates within the cell evaluation).
    "fused_sum" (and "fused" where its BatchNorms cannot run in the kernel): 'none' edges left
    out, a sampled convolution run as the fused node does (``_candidate``), the edges added
    with one ``mixed_sum``.
    """
    if backend == "reference":
        return sum(op._ops[k](h) * w[k] for op, h, w, k in zip(edges, states, hardwts, index))
    chosen = [j for j, (op, k) in enumerate(zip(edges, index)) if op.primitives[k] != "none"]
    if not chosen:  # every edge sampled 'none': zeros of the output shape, still tied to the graph
        return edges[0]._ops[index[0]](states[0]) * hardwts[0, index[0]]
    if backend == "fused":
        out = sampled_node_sum(edges, states, hardwts, index, cell)
        if out is not None:
            return out
    outputs = [_candidate(edges[j]._ops[index[j]], states[j]) for j in chosen]
    return mixed_sum_chunked(outputs, torch.stack([hardwts[j, index[j]] for j in chosen]))


def _candidate(op, x):
    """``op(x)``; a convolution candidate (ReLU, its layers, a final BatchNorm) as the fused node
    runs it: depthwise layers through the fastdnas kernel (its backward several times faster than
    oneDNN's on the CPU), 1x1 convolutions as matrix products; the same value up to rounding."""
    if hasattr(op, "pre_bn") and hasattr(op, "output_bn"):
        return op.output_bn(op.pre_bn(F.relu(x)))
    return op(x)


class SampledSearchCell(SearchCell):
    """A DARTS search cell that runs one sampled candidate per edge:
    ``forward(s0, s1, hardwts, index)`` with ``index`` the sampled op of every edge (host ints).
    ``index=None`` runs every candidate with the weights ``hardwts`` (the DARTS cell)."""

    def forward(self, s0, s1, hardwts, index=None):
        if index is None:
            return super().forward(s0, s1, hardwts)
        expected = [len(self._ops), len(self.primitives)]
        if list(hardwts.shape) != expected or len(index) != expected[0]:
            raise ValueError(f"hardwts must have shape {expected} and index {expected[0]} entries, got "
                             f"{list(hardwts.shape)} and {len(index)}")
        states = self.preprocess(s0, s1)
        edges = list(self._ops)  # a plain list: slicing a ModuleList builds a new one
        cell = FusedCell([]) if self.backend == "fused" else None
        for edge_slice in node_edge_slices(self.steps):
            states.append(sampled_node(edges[edge_slice], states, hardwts[edge_slice], index[edge_slice],
                                       self.backend, cell))
        if cell is not None:
            cell.finish()
        return torch.cat(states[-self.multiplier :], dim=1)


class GdasNetwork(SearchNetwork):
    """The GDAS supernet: ``SearchNetwork`` whose forward samples one candidate per edge.

    ``forward(x, gumbels=None)``: ``gumbels`` may give the noise (normal, reduce), each
    [num_edges, ops] (tests; by default it is drawn on the device). ``tau`` is a buffer;
    ``set_search_epoch(epoch, epochs)`` sets it on the linear schedule from ``tau_max`` to
    ``tau_min``. ``sampled_only`` (see the module doc) may be switched at any time.
    """

    def __init__(self, C=16, num_classes=10, layers=8, steps=4, multiplier=4, stem_multiplier=3,
                 backend="fused", in_channels=3, primitives=PRIMITIVES, tau_max=10.0, tau_min=0.1,
                 sampled_only=True):
        if not (0 < tau_min <= tau_max):
            raise ValueError(f"need 0 < tau_min <= tau_max, got tau_min={tau_min!r}, tau_max={tau_max!r}")
        super().__init__(C, num_classes, layers, steps, multiplier, stem_multiplier, backend, in_channels, primitives)
        self.tau_max, self.tau_min = float(tau_max), float(tau_min)
        self.sampled_only = sampled_only
        self.register_buffer("tau", torch.tensor(self.tau_max))

    def make_cell(self, *args):
        return SampledSearchCell(*args)

    @property
    def uses_all_weights(self):
        """False while a forward pass leaves the unsampled candidates out (DDP must then look for
        unused parameters)."""
        return not self.sampled_only

    def set_search_epoch(self, epoch, epochs):
        """tau for epoch ``epoch`` of ``epochs``: tau_max, falling linearly to tau_min at the last epoch."""
        fraction = epoch / (epochs - 1) if epochs > 1 else 0.0
        self.tau.fill_(self.tau_max - (self.tau_max - self.tau_min) * fraction)

    def sample(self, gumbels=None):
        """[(hardwts, index) of the normal cells, (hardwts, index) of the reduction cells]."""
        gumbels = (None, None) if gumbels is None else gumbels
        return [hard_gumbel_softmax(alphas, self.tau, g)
                for alphas, g in zip((self.alphas_normal, self.alphas_reduce), gumbels, strict=True)]

    def forward(self, x, gumbels=None):
        (normal, normal_index), (reduce, reduce_index) = self.sample(gumbels)
        if self.sampled_only:
            normal_index, reduce_index = torch.stack([normal_index, reduce_index]).tolist()  # one transfer
        else:  # every candidate, weighted by the sample's straight-through weight or 0 (scatter: no host check)
            normal = normal * torch.zeros_like(normal).scatter_(-1, normal_index[:, None], 1.0)
            reduce = reduce * torch.zeros_like(reduce).scatter_(-1, reduce_index[:, None], 1.0)
            normal_index = reduce_index = None
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, (cell(s0, s1, reduce, reduce_index) if cell.reduction else cell(s0, s1, normal, normal_index))
        return self.head(s1)

    def head(self, feature):
        """The logits of the last cell's output: global average pooling, then the classifier."""
        return self.classifier(self.global_pooling(feature).flatten(1))
