"""PC-DARTS (Xu et al., ICLR 2020) on the DARTS supernet: partial channel connections and edge
normalisation.

An edge of C channels sends only its first C/K channels through the mixed op (whose candidates
have C/K channels); the other channels bypass it (through a 2x2 max pool on stride-2 edges); the
two parts are concatenated and channel-shuffled with K groups. A node is
``sum_j softmax(beta_i)_j * edge_j(h_j)``, the softmax taken over the betas of node i's edges.

The fused backends compute a node without building any edge's output. The shuffle is a fixed
permutation of channels and the concatenation is linear, so

    node = shuffle(cat(sum_j b_j * sum_k a_jk * op_jk(x_j[:C/K]),  sum_j b_j * bypass_j(x_j[C/K:])))

with b = softmax(beta) and a = softmax(alpha): the candidates run in one ``mixed_node`` call whose
per-edge weights are ``b_j * a_jk`` (the bypass is weighted by b_j alone, never by alpha), the
bypasses are one ``mixed_sum`` with the weights b, and the concatenation and the shuffle are one
``torch.cat`` writing straight into the shuffled order.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.mixed_op import MixedOp, mixed_sum_chunked, node_edge_slices, node_sum
from ..nn.operations import PRIMITIVES
from .search_network import SearchCell, SearchNetwork


def channel_shuffle(x, groups):
    """ShuffleNet's channel shuffle: [N, groups * c, H, W] -> channel i * groups + g is input g * c + i."""
    N, C, H, W = x.shape
    return x.view(N, groups, C // groups, H, W).transpose(1, 2).reshape(N, C, H, W)


def shuffle_cat(mixed, rest, groups):
    """``channel_shuffle(torch.cat([mixed, rest], 1), groups)`` in one copy: mixed is the first group
    of c channels, rest the other groups - 1."""
    if groups == 1:
        return mixed
    N, c, H, W = mixed.shape
    rest = rest.view(N, groups - 1, c, H, W).transpose(1, 2)
    return torch.cat([mixed.unsqueeze(2), rest.to(mixed.dtype)], dim=2).view(N, groups * c, H, W)


def edge_normalisation(betas, steps):
    """softmax of each node's edge betas over that node's incoming edges: [num_edges]."""
    parts, start = [], 0
    for i in range(steps):
        parts.append(F.softmax(betas[start : start + 2 + i], dim=-1))
        start += 2 + i
    return torch.cat(parts)


class PartialMixedOp(MixedOp):
    """A PC-DARTS edge of ``C`` channels: a ``MixedOp`` of ``C // partial_channels`` channels on the
    first channels, the rest bypassing it (max-pooled 2x2 at stride 2), then shuffled.

    ``forward(x, weights)`` is the edge as the paper writes it; search cells compute whole nodes
    with ``partial_node``. Module names follow the paper's code (``_ops``, ``mp``).
    """

    def __init__(self, C, stride, partial_channels=4, primitives=PRIMITIVES, backend="fused"):
        if not isinstance(partial_channels, int) or partial_channels < 1 or C % partial_channels:
            raise ValueError(f"partial_channels must be a positive integer dividing the channels C={C}, "
                             f"got {partial_channels!r}")
        super().__init__(C // partial_channels, stride, primitives, backend)
        self.channels = C
        self.partial_channels = partial_channels
        # ceil_mode: the candidates' output size (H - 1) // 2 + 1 also for odd H (equal for even H).
        self.mp = nn.MaxPool2d(2, 2, ceil_mode=True) if stride == 2 else None

    def bypass(self, x):
        """The channels that skip the candidates, at the output resolution."""
        rest = x[:, self.channels // self.partial_channels :]
        return self.mp(rest) if self.mp is not None else rest

    def forward(self, x, weights):
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x must be [N, {self.channels}, H, W], got {list(x.shape)}")
        mixed = super().forward(x[:, : self.channels // self.partial_channels], weights)
        if self.partial_channels == 1:
            return mixed
        return channel_shuffle(torch.cat([mixed, self.bypass(x)], dim=1), self.partial_channels)


def partial_node(edges, states, weights, edge_weights, backend):
    """A PC-DARTS node: ``sum_j edge_weights[j] * edges[j](states[j], weights[j])``.

    ``weights`` [E, P]: the node's rows of softmax(alpha); ``edge_weights`` [E]: the node's
    normalised betas. See the module doc for how the fused backends factor it.
    """
    if backend == "reference":
        return sum(b * op(h, w) for op, h, w, b in zip(edges, states, weights, edge_weights))
    K = edges[0].partial_channels
    c = edges[0].channels // K
    mixed = node_sum(edges, [h[:, :c] for h in states], edge_weights[:, None] * weights, backend)
    if K == 1:
        return mixed
    rest = mixed_sum_chunked([op.bypass(h) for op, h in zip(edges, states)], edge_weights)
    return shuffle_cat(mixed, rest, K)


class PartialSearchCell(SearchCell):
    """A DARTS search cell of PC-DARTS edges; ``forward(s0, s1, weights, edge_weights)``."""

    def __init__(self, *args, partial_channels=4, **kwargs):
        self.partial_channels = partial_channels  # read by make_edge during SearchCell.__init__
        super().__init__(*args, **kwargs)

    def make_edge(self, C, stride, primitives, backend):
        return PartialMixedOp(C, stride, self.partial_channels, primitives, backend)

    def forward(self, s0, s1, weights, edge_weights):
        expected = [len(self._ops), len(self.primitives)]
        if list(weights.shape) != expected or list(edge_weights.shape) != expected[:1]:
            raise ValueError(f"weights must have shape {expected} and edge_weights {expected[:1]}, got "
                             f"{list(weights.shape)} and {list(edge_weights.shape)}")
        states = self.preprocess(s0, s1)
        edges = list(self._ops)  # a plain list: slicing a ModuleList builds a new one
        for edge_slice in node_edge_slices(self.steps):
            states.append(partial_node(edges[edge_slice], states, weights[edge_slice], edge_weights[edge_slice],
                                       self.backend))
        return torch.cat(states[-self.multiplier :], dim=1)


class PCDartsNetwork(SearchNetwork):
    """The PC-DARTS supernet: ``SearchNetwork`` with partial channel edges (``partial_channels`` K)
    and one beta per edge (``betas_normal``, ``betas_reduce``, [num_edges]), architecture
    parameters next to the alphas. Every backend of ``SearchNetwork`` applies.
    """

    def __init__(self, C=16, num_classes=10, layers=8, steps=4, multiplier=4, stem_multiplier=3,
                 backend="fused", in_channels=3, primitives=PRIMITIVES, partial_channels=4):
        if not isinstance(partial_channels, int) or partial_channels < 1 or not isinstance(C, int) or C % partial_channels:
            raise ValueError(f"partial_channels must be a positive integer dividing C={C!r}, got {partial_channels!r}")
        self.partial_channels = partial_channels  # read by make_cell during SearchNetwork.__init__
        super().__init__(C, num_classes, layers, steps, multiplier, stem_multiplier, backend, in_channels, primitives)
        self.betas_normal = nn.Parameter(1e-3 * torch.randn(self.alphas_normal.shape[0]))
        self.betas_reduce = nn.Parameter(1e-3 * torch.randn(self.alphas_reduce.shape[0]))

    def make_cell(self, *args):
        return PartialSearchCell(*args, partial_channels=self.partial_channels)

    def arch_parameters(self):
        """[alphas_normal, alphas_reduce, betas_normal, betas_reduce]."""
        return [self.alphas_normal, self.alphas_reduce, self.betas_normal, self.betas_reduce]

    def edge_weights(self):
        """(normal, reduce): the normalised betas, [num_edges] each."""
        return (edge_normalisation(self.betas_normal, self.steps), edge_normalisation(self.betas_reduce, self.steps))

    def forward(self, x):
        normal_edges, reduce_edges = self.edge_weights()
        normal = (F.softmax(self.alphas_normal, dim=-1), normal_edges)
        reduce = (F.softmax(self.alphas_reduce, dim=-1), reduce_edges)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, *(reduce if cell.reduction else normal))
        return self.classifier(self.global_pooling(s1).flatten(1))

    def decode_weights(self):
        """Edges ranked by softmax(alpha) x normalised beta, as the paper's code decodes."""
        normal_edges, reduce_edges = (b.detach() for b in self.edge_weights())
        normal, reduce = super().decode_weights()
        return normal * normal_edges[:, None], reduce * reduce_edges[:, None]
