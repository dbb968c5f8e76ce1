"""The NAS-Bench-201 search supernet (SPEC section 7), for DARTS and GDAS.

Macro skeleton: stem (3x3 convolution, BatchNorm) -> N search cells at C -> residual block
(stride 2) -> N cells at 2C -> residual block -> N cells at 4C -> BatchNorm-ReLU -> global
average pooling -> linear classifier. One [6, 5] tensor of architecture parameters is shared by
all 3N cells. In the cells every BatchNorm has ``affine=False``; ``track_running_stats`` is the
authors' command-line choice (True: their NAS-Bench-201 runs; False: NATS-Bench's script). Every
convolution is bias-free.

Backends: ``"fused"`` (default: each node one ``mixed_node`` call: the skips, the average pools
(without BatchNorm, ``mixed_node``'s kind 3) and the convolutions' final BatchNorms computed
inside it; the convolutions' ReLU once per state and cell), ``"fused_sum"`` (every candidate eager,
each node one ``mixed_sum`` call, 'none' never computed) and ``"reference"`` (every candidate
eager, the node a Python sum, as the authors' code writes it).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..darts.gdas import hard_gumbel_softmax
from ..nn.mixed_op import FusedCell, MixedOp, mixed_sum_chunked, node_sum, sampled_node_sum
from ..nn.operations import Identity, Zero, _run_layers
from .space import EDGES, NB201_PRIMITIVES, NUM_EDGES, NUM_NODES, decode_argmax, genotype_string

NB201_BACKENDS = ("fused", "fused_sum", "reference")
# The candidates mixed_node computes itself, by kind (fastdnas.ops.FREE_SKIP, FREE_PLAIN_AVG_POOL).
NB201_FREE_KINDS = {"skip_connect": 2, "avg_pool_3x3": 3}


def check_nb201_backend(backend):
    if backend not in NB201_BACKENDS:
        raise ValueError(f"backend must be one of {NB201_BACKENDS}, got {backend!r}")
    return backend


class _Switchable(nn.Module):
    """``backend`` may be switched at any time; it reaches every part listed by ``_backend_parts``."""

    @property
    def backend(self):
        return self._backend

    @backend.setter
    def backend(self, backend):
        self._backend = check_nb201_backend(backend)
        for part in self._backend_parts():
            part.backend = backend


class ReLUConvBN(nn.Module):
    """ReLU -> Conv (no bias) -> BatchNorm, the ``nor_conv`` operations and the residual blocks' layers."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True, track_running_stats=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )

    def forward(self, x):
        return self.op(x)

    def pre_bn(self, x_relu):
        """The output before the BatchNorm, from the already ReLU'd input (the fused backend)."""
        return _run_layers(self.op, 1, 2, x_relu)

    @property
    def output_bn(self):
        return self.op[2]


def nb201_ops(track_running_stats=True):
    """name -> factory(C, stride, affine) of the five candidates (cells use stride 1 only)."""
    track = track_running_stats

    def conv(k):
        return lambda C, stride, affine: ReLUConvBN(C, C, k, stride, k // 2, affine, track)

    return {
        "none": lambda C, stride, affine: Zero(stride),
        "skip_connect": lambda C, stride, affine: Identity(),
        "nor_conv_1x1": conv(1),
        "nor_conv_3x3": conv(3),
        # No BatchNorm after the pool in this space.
        "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    }


class ResNetBasicBlock(nn.Module):
    """The reduction between stages: ReLU-conv3x3(stride 2)-BN, ReLU-conv3x3-BN, plus the shortcut
    AvgPool2d(2, 2) -> conv1x1 (no BatchNorm); no ReLU after the sum. Affine, running statistics."""

    def __init__(self, C_in, C_out, stride=2):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, stride, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                                        nn.Conv2d(C_in, C_out, 1, bias=False))

    def forward(self, x):
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NB201Cell(_Switchable):
    """A search cell: ``forward(x, weights)`` with weights [6, 5] (softmax(alpha) for DARTS);
    ``forward_sampled(x, hardwts, index)`` runs only the sampled operation of every edge (GDAS)."""

    def __init__(self, C, backend="fused", track_running_stats=True):
        super().__init__()
        ops = nb201_ops(track_running_stats)
        self.edges = nn.ModuleList(MixedOp(C, 1, NB201_PRIMITIVES, backend, ops=ops, free_kinds=NB201_FREE_KINDS)
                                   for _ in EDGES)
        self.backend = backend

    def _backend_parts(self):
        return self.edges

    def node_edges(self):
        """Per node 1..3, (its edges, their rows of the architecture parameters)."""
        edges, start = list(self.edges), 0
        for i in range(1, NUM_NODES):
            yield edges[start : start + i], slice(start, start + i)
            start += i

    def forward(self, x, weights):
        if list(weights.shape) != [NUM_EDGES, len(NB201_PRIMITIVES)]:
            raise ValueError(f"weights must have shape [{NUM_EDGES}, {len(NB201_PRIMITIVES)}], got {list(weights.shape)}")
        nodes = [x]
        # Fused: each state's ReLU once per cell, the running statistics updated at the end.
        cell = FusedCell([edges for edges, _ in self.node_edges()]) if self.backend == "fused" else None
        for edges, rows in self.node_edges():
            nodes.append(node_sum(edges, nodes, weights[rows], self.backend, cell))
        if cell is not None:
            cell.finish()
        return nodes[-1]

    def forward_sampled(self, x, hardwts, index):
        """Node i = sum_j (hardwts[e, k_e] * op_{k_e}(node_j) + sum_{o != k_e} hardwts[e, o]), with
        k = ``index`` (host ints): only the sampled operations run, the other entries of the
        straight-through weights (0 in value) still pass their gradient on."""
        nodes = [x]
        cell = FusedCell([]) if self.backend == "fused" else None  # each state's ReLU once, one statistics update
        for edges, rows in self.node_edges():
            h, k = hardwts[rows], index[rows]
            if self.backend == "reference":  # as the authors' code writes it
                node = sum(sum(w[o] * op._ops[o](nodes[j]) if o == kj else w[o] for o in range(len(w)))
                           for j, (op, w, kj) in enumerate(zip(edges, h, k)))
            else:
                node = gdas_node(edges, nodes, h, k, self.backend, cell)
            nodes.append(node)
        if cell is not None:
            cell.finish()
        return nodes[-1]


def gdas_node(edges, states, hardwts, index, backend, cell=None):
    """The GDAS node on the fused backends: the sampled non-'none' operations added ("fused": one
    ``mixed_node`` call over them, ``cell`` the cell evaluation's FusedCell; "fused_sum", or
    where the kernel cannot run them: one ``mixed_sum``), plus one scalar: the sum of every other
    entry of the straight-through weights."""
    chosen = [j for j, (op, k) in enumerate(zip(edges, index)) if op.primitives[k] != "none"]
    picked = torch.zeros_like(hardwts).index_put_(
        (torch.arange(len(index), device=hardwts.device), torch.tensor(index, device=hardwts.device)),
        torch.ones((), dtype=hardwts.dtype, device=hardwts.device))
    rest = (hardwts * (1 - picked)).sum()
    if not chosen:  # every edge sampled 'none': zeros of the node's shape, still tied to the graph
        none = sum(op._ops[k](states[j]) * hardwts[j, k] for j, (op, k) in enumerate(zip(edges, index)))
        return none + rest
    node = sampled_node_sum(edges, states, hardwts, index, cell) if backend == "fused" else None
    if node is None:
        outputs = [edges[j]._ops[index[j]](states[j]) for j in chosen]
        node = mixed_sum_chunked(outputs, torch.stack([hardwts[j, index[j]] for j in chosen]))
    return node + rest


class NB201Network(_Switchable):
    """The NAS-Bench-201 supernet for DARTS (``forward`` uses softmax(alpha) on every edge).

    ``C`` (16) channels in the first stage, ``N`` (5) search cells per stage; the architecture
    parameters ``arch_parameters`` [6, 5] start at 1e-3 * N(0, 1).
    """

    def __init__(self, C=16, N=5, num_classes=10, in_channels=3, backend="fused", track_running_stats=True):
        super().__init__()
        for name, value in [("C", C), ("N", N), ("num_classes", num_classes), ("in_channels", in_channels)]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.C, self.N, self.num_classes = C, N, num_classes
        self.primitives = NB201_PRIMITIVES
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        channels = [C] * N + [2 * C] + [2 * C] * N + [4 * C] + [4 * C] * N
        reductions = [False] * N + [True] + [False] * N + [True] + [False] * N
        self.cells = nn.ModuleList()
        C_prev = C
        for C_curr, reduction in zip(channels, reductions):
            self.cells.append(ResNetBasicBlock(C_prev, C_curr, 2) if reduction
                              else NB201Cell(C_curr, backend, track_running_stats))
            C_prev = C_curr
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self.alphas = nn.Parameter(1e-3 * torch.randn(NUM_EDGES, len(NB201_PRIMITIVES)))
        self.backend = backend

    def _backend_parts(self):
        return self.search_cells()

    def search_cells(self):
        return [cell for cell in self.cells if isinstance(cell, NB201Cell)]

    def arch_parameters(self):
        return [self.alphas]

    def weight_parameters(self):
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def head(self, feature):
        return self.classifier(self.global_pooling(self.lastact(feature)).flatten(1))

    def forward(self, x):
        weights = F.softmax(self.alphas, dim=-1)
        feature = self.stem(x)
        for cell in self.cells:
            feature = cell(feature, weights) if isinstance(cell, NB201Cell) else cell(feature)
        return self.head(feature)

    def cell_ops(self):
        """The decoded cell: 6 operation names, edge order (argmax of the raw alphas, 'none' included)."""
        return decode_argmax(self.alphas)

    def genotype(self):
        """The decoded cell as the benchmark's genotype string."""
        return genotype_string(self.cell_ops())


class NB201GdasNetwork(NB201Network):
    """The NAS-Bench-201 supernet for GDAS: every forward pass draws one hard Gumbel-softmax
    sample of the alphas (shared by all cells and images), ``tau`` falls linearly from
    ``tau_max`` to ``tau_min`` over the epochs (``set_search_epoch``)."""

    def __init__(self, C=16, N=5, num_classes=10, in_channels=3, backend="fused", track_running_stats=True,
                 tau_max=10.0, tau_min=0.1):
        if not 0 < tau_min <= tau_max:
            raise ValueError(f"need 0 < tau_min <= tau_max, got tau_min={tau_min!r}, tau_max={tau_max!r}")
        super().__init__(C, N, num_classes, in_channels, backend, track_running_stats)
        self.tau_max, self.tau_min = float(tau_max), float(tau_min)
        self.register_buffer("tau", torch.tensor(self.tau_max))

    @property
    def uses_all_weights(self):
        return False  # only the sampled operations run: DDP must look for unused parameters

    def set_search_epoch(self, epoch, epochs):
        fraction = epoch / (epochs - 1) if epochs > 1 else 0.0
        self.tau.fill_(self.tau_max - (self.tau_max - self.tau_min) * fraction)

    def forward(self, x, gumbels=None):
        hardwts, index = hard_gumbel_softmax(self.alphas, self.tau, gumbels)
        index = index.tolist()  # which operations run is a host decision: one transfer per forward
        feature = self.stem(x)
        for cell in self.cells:
            feature = cell.forward_sampled(feature, hardwts, index) if isinstance(cell, NB201Cell) else cell(feature)
        return self.head(feature)
