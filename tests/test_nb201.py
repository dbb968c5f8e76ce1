"""The NAS-Bench-201 space: supernet backends against the reference and the authors' formulas
(float64, forward and backward), genotype strings, the cell index, decoding, and the search
steps of DARTS (first and second order) and GDAS against the authors' step."""
import copy

import pytest
import torch
import torch.nn.functional as F

from fastdnas.nb201 import (
    NB201_PRIMITIVES,
    NUM_CELLS,
    NB201GdasNetwork,
    NB201Network,
    cell_from_index,
    cell_index,
    decode_argmax,
    genotype_string,
    parse_genotype_string,
)
from fastdnas.nb201.network import NB201Cell, ResNetBasicBlock

from conftest import OpNames, rel_err


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(cls=NB201Network, **kwargs):
    torch.manual_seed(1)
    net = cls(C=4, N=1, num_classes=5, in_channels=2, **kwargs).double()
    with torch.no_grad():  # alphas far enough apart that every op weight differs
        net.alphas.normal_()
    return net


def grads(net, loss):
    params = [p for p in net.parameters()]
    return torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True, retain_graph=True)


def test_space_structure():
    net = NB201Network(C=16, N=5, num_classes=10)
    kinds = [type(c) for c in net.cells]
    assert kinds == [NB201Cell] * 5 + [ResNetBasicBlock] + [NB201Cell] * 5 + [ResNetBasicBlock] + [NB201Cell] * 5
    assert net.alphas.shape == (6, 5)
    assert [c.edges[0]._ops[2].op[1].out_channels for c in net.search_cells()] == [16] * 5 + [32] * 5 + [64] * 5
    cell = net.cells[0]
    for edge in cell.edges:
        none, skip, conv1, conv3, pool = edge._ops
        assert type(skip).__name__ == "Identity"
        assert isinstance(pool, torch.nn.AvgPool2d) and not pool.count_include_pad  # no BatchNorm after it
        for conv, k in ((conv1, 1), (conv3, 3)):
            relu, c, bn = conv.op
            assert c.kernel_size == (k, k) and c.padding == (k // 2, k // 2) and c.bias is None
            assert not bn.affine and bn.track_running_stats
    assert not NB201Network(C=4, N=1, track_running_stats=False).cells[0].edges[0]._ops[2].op[2].track_running_stats
    block = net.cells[5]
    assert block.conv_a.op[2].affine and block.downsample[1].bias is None
    with pytest.raises(ValueError, match="backend must be one of"):
        NB201Network(C=4, N=1, backend="fast")


@pytest.mark.parametrize("backend", ["fused", "fused_sum"])
@pytest.mark.parametrize("train,track", [(True, True), (False, True), (True, False), (False, False)])
def test_backends_equal_reference_float64(backend, train, track):
    """Output, the gradients of the alphas and of every weight, and the running statistics after
    the step (training) or the running statistics used (eval), in float64."""
    net = tiny(track_running_stats=track)
    if not train and track:  # eval on running statistics away from their initial values
        with torch.no_grad():
            net(torch.randn(6, 2, 8, 8, dtype=torch.float64))
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    results = {}
    for name in ("reference", backend):
        model = copy.deepcopy(net)
        model.backend = name
        model.train(train)
        out = model(x)
        weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        results[name] = (out, grads(model, (out * weight).sum()), [b.clone() for b in model.buffers()])
    ref, fused = results["reference"], results[backend]
    assert rel_err(fused[0], ref[0]) <= 1e-12
    for (name, _), a, b in zip(net.named_parameters(), fused[1], ref[1]):
        assert rel_err(a, b) <= 1e-10, name
    for a, b in zip(fused[2], ref[2]):
        assert torch.allclose(a.double(), b.double(), rtol=1e-12, atol=1e-12)
    alpha_grad = fused[1][[n for n, _ in net.named_parameters()].index("alphas")]
    assert alpha_grad.abs().min() > 0



def test_fused_cell_takes_each_state_relu_once_without_concatenating():
    """The fused cell's convolutions run edge by edge: the ReLU of each of the 3 states that feed
    them is computed once per cell (node 0 feeds 3 edges, node 1 two), no input is concatenated."""
    cell = NB201Cell(4).double()
    weights = torch.randn(6, 5, dtype=torch.float64).softmax(-1)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    with OpNames() as seen:
        out = cell(x, weights)
    nodes = len(seen.names) - seen.names[::-1].index("mixed_node.default")  # then the running statistics' update
    assert seen.names.count("relu.default") == 3 and "cat.default" not in seen.names[:nodes]
    cell.backend = "reference"
    assert rel_err(out, cell(x, weights)) <= 1e-12

def authors_darts_forward(net, x):
    """The authors' DARTS supernet written from SPEC section 7, edge by edge."""
    w = F.softmax(net.alphas, dim=-1)
    feature = net.stem(x)
    for cell in net.cells:
        if not isinstance(cell, NB201Cell):
            feature = cell(feature)
            continue
        nodes = [feature]
        for i in range(1, 4):
            inter = []
            for j in range(i):
                e = {(1, 0): 0, (2, 0): 1, (2, 1): 2, (3, 0): 3, (3, 1): 4, (3, 2): 5}[i, j]
                inter.append(sum(op(nodes[j]) * wk for op, wk in zip(cell.edges[e]._ops, w[e])))
            nodes.append(sum(inter))
        feature = nodes[-1]
    out = net.global_pooling(F.relu(net.lastact[0](feature))).flatten(1)
    return net.classifier(out)


def test_reference_is_the_authors_darts_supernet():
    net = tiny()
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    ours = copy.deepcopy(net)
    ours.backend = "reference"
    a, b = ours(x), authors_darts_forward(copy.deepcopy(net), x)
    assert rel_err(a, b) <= 1e-13


@pytest.mark.parametrize("backend", ["reference", "fused_sum", "fused"])
def test_gdas_against_the_authors_formula(backend):
    net = tiny(NB201GdasNetwork, tau_max=5.0)
    net.backend = backend
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    # Gumbel noise that makes every edge sample an operation other than 'none' (skip, the convolutions,
    # the pool), so the gradient reaches every alpha; the rest of it random.
    g = -torch.empty(6, 5, dtype=torch.float64).exponential_().log()
    g[torch.arange(6), torch.tensor([1, 2, 3, 4, 3, 2])] += 40.0
    reference = copy.deepcopy(net)
    reference.backend = "reference"
    reference(x, gumbels=g)
    out = net(x, gumbels=g)
    reference_buffers = dict(reference.named_buffers())  # the running statistics the authors' forward records
    for name, buffer in net.named_buffers():
        torch.testing.assert_close(buffer, reference_buffers[name], rtol=1e-10, atol=1e-12, msg=name)
    # The authors' sample: h = one_hot(argmax) - p.detach() + p, p = softmax((log_softmax(a) + g) / tau).
    probs = F.softmax((net.alphas.log_softmax(dim=1) + g) / 5.0, dim=1)
    index = probs.max(-1, keepdim=True)[1]
    hard = torch.zeros_like(probs).scatter_(-1, index, 1.0) - probs.detach() + probs
    feature = net.stem(x)
    for cell in net.cells:
        if not isinstance(cell, NB201Cell):
            feature = cell(feature)
            continue
        nodes, e = [feature], 0
        for i in range(1, 4):
            inter = []
            for j in range(i):
                k = index[e].item()
                inter.append(sum(hard[e, o] * cell.edges[e]._ops[o](nodes[j]) if o == k else hard[e, o]
                                 for o in range(5)))
                e += 1
            nodes.append(sum(inter))
        feature = nodes[-1]
    expected = net.classifier(net.global_pooling(net.lastact(feature)).flatten(1))
    assert rel_err(out, expected) <= 1e-12
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    for a, b in zip(grads(net, (out * weight).sum()), grads(net, (expected * weight).sum())):
        assert rel_err(a, b) <= 1e-10
    # Every alpha of every edge gets a gradient (the unsampled entries through their zero-valued terms).
    assert (grads(net, (out * weight).sum())[[n for n, _ in net.named_parameters()].index("alphas")] != 0).all()


@pytest.mark.parametrize("backend", ["fused_sum", "fused"])
def test_gdas_all_none_edges_still_give_node_shape(backend):
    net = tiny(NB201GdasNetwork)
    net.backend = backend
    with torch.no_grad():
        net.alphas.zero_()
        net.alphas[:, 0] = 50.0  # every edge samples 'none'
    out = net(torch.randn(2, 2, 8, 8, dtype=torch.float64), gumbels=torch.zeros(6, 5, dtype=torch.float64))
    assert out.shape == (2, 5)


def test_genotype_string_round_trip_and_errors():
    ops = ["nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_3x3", "skip_connect"]
    text = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    assert genotype_string(ops) == text
    assert genotype_string([NB201_PRIMITIVES.index(o) for o in ops]) == text
    assert parse_genotype_string(text) == ops
    for bad, match in [("|nor_conv_3x3~0|", "3 nodes"),
                       ("|x~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown operation"),
                       ("|none~0|+|none~1|none~0|+|none~0|none~1|none~2|", "from node 0"),
                       ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2")]:
        with pytest.raises(ValueError, match=match):
            parse_genotype_string(bad)
    with pytest.raises(ValueError, match="6 operations"):
        genotype_string(ops[:5])


def test_cell_index_enumerates_the_space_in_the_authors_order():
    # The authors' gen_all: edge 1<-0 varies slowest, 3<-2 fastest, operations in NB201_PRIMITIVES order.
    assert cell_from_index(0) == ["none"] * 6
    assert cell_from_index(1) == ["none"] * 5 + ["skip_connect"]
    assert cell_from_index(5) == ["none"] * 4 + ["skip_connect", "none"]
    assert cell_from_index(NUM_CELLS - 1) == ["avg_pool_3x3"] * 6
    seen = {genotype_string(cell_from_index(i)) for i in range(0, NUM_CELLS, 7)}
    assert len(seen) == len(range(0, NUM_CELLS, 7))
    for i in (0, 1, 777, 15624):
        assert cell_index(cell_from_index(i)) == i
    with pytest.raises(ValueError, match="index"):
        cell_from_index(NUM_CELLS)


def test_decoding_is_the_raw_argmax_with_none():
    alphas = torch.zeros(6, 5)
    alphas[0, 0] = 1.0  # 'none' wins on edge 0
    alphas[1, 3] = alphas[1, 4] = 2.0  # a tie: the lower index
    alphas[2:, 2] = 0.5
    assert decode_argmax(alphas) == ["none", "nor_conv_3x3"] + ["nor_conv_1x1"] * 4
    net = NB201Network(C=4, N=1)
    with torch.no_grad():
        net.alphas.copy_(alphas)
    assert net.genotype() == "|none~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|nor_conv_1x1~0|nor_conv_1x1~1|nor_conv_1x1~2|"


# --- the search steps against the authors' step (same weights, alphas, batches and noise) ---

def make_search(net, unrolled=False, weight_step_first=True, seed=0):
    from fastdnas.data import ImageSet
    from fastdnas.search import Search, SearchConfig

    images = torch.randn(8, 2, 8, 8)
    data = ImageSet(images, torch.arange(8) % 5, torch.zeros(2), torch.ones(2))
    config = SearchConfig(epochs=1, batch_size=4, lr=0.3, weight_decay=5e-4, nesterov=True, clip_with_arch=True,
                          weight_step_first=weight_step_first, unrolled=unrolled, arch_lr=0.05, grad_clip=0.5)
    return Search(net, data, data, config, progress=False, log=lambda *a, **k: None)


def authors_first_order_step(net, x, y, vx, vy, lr, gumbels=None):
    """DARTS-V1 / GDAS on NAS-Bench-201: weight step (all parameters' gradients, clip over
    network.parameters(), SGD nesterov), then the architecture step (Adam)."""
    w_opt = torch.optim.SGD([p for n, p in net.named_parameters() if n != "alphas"], lr=lr, momentum=0.9,
                            weight_decay=5e-4, nesterov=True)
    a_opt = torch.optim.Adam([net.alphas], lr=0.05, betas=(0.5, 0.999), weight_decay=1e-3)
    call = (lambda inp, g: net(inp, gumbels=g)) if gumbels is not None else (lambda inp, g: net(inp))
    w_opt.zero_grad()
    F.cross_entropy(call(x, gumbels and gumbels[0]), y).backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
    w_opt.step()
    a_opt.zero_grad()
    F.cross_entropy(call(vx, gumbels and gumbels[1]), vy).backward()
    a_opt.step()


@pytest.mark.parametrize("method", ["darts", "gdas"])
def test_first_order_step_equals_the_authors(method, monkeypatch):
    cls = NB201Network if method == "darts" else NB201GdasNetwork
    net = tiny(cls)
    authors = copy.deepcopy(net)
    authors.backend = "reference"
    x, vx = torch.randn(4, 2, 8, 8, dtype=torch.float64), torch.randn(4, 2, 8, 8, dtype=torch.float64)
    y, vy = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 3, 2, 1])
    noise = None
    if method == "gdas":
        noise = [-torch.empty(6, 5, dtype=torch.float64).exponential_().log() for _ in range(2)]
        queue = list(noise)
        original = cls.forward
        monkeypatch.setattr(cls, "forward", lambda self, inp, gumbels=None: original(self, inp, queue.pop(0)))
    search = make_search(net)
    search.search_step(x, y, vx, vy)
    if method == "gdas":
        monkeypatch.setattr(cls, "forward", original)
    authors_first_order_step(authors, x, y, vx, vy, lr=0.3, gumbels=noise)
    for (name, a), b in zip(net.named_parameters(), authors.parameters()):
        assert rel_err(a, b) <= 1e-10, name
    assert decode_argmax(net.alphas) == decode_argmax(authors.alphas)


def test_second_order_step_equals_the_authors():
    """DARTS-V2: the unrolled architecture step first (virtual step with plain momentum, the
    finite-difference Hessian term), then the weight step (Nesterov SGD, clip with the alphas)."""
    net = tiny()  # the fused backend, the default
    authors = copy.deepcopy(net)
    authors.backend = "reference"
    x, vx = torch.randn(4, 2, 8, 8, dtype=torch.float64), torch.randn(4, 2, 8, 8, dtype=torch.float64)
    y, vy = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 3, 2, 1])
    search = make_search(net, unrolled=True, weight_step_first=False)
    # A momentum buffer first, so the virtual step's momentum term is exercised.
    search.weight_step(x, y)
    authors_weights = [p for n, p in authors.named_parameters() if n != "alphas"]
    w_opt = torch.optim.SGD(authors_weights, lr=0.3, momentum=0.9, weight_decay=5e-4, nesterov=True)
    a_opt = torch.optim.Adam([authors.alphas], lr=0.05, betas=(0.5, 0.999), weight_decay=1e-3)

    def loss(inp, tgt):
        return F.cross_entropy(authors(inp), tgt)

    def weight_step():
        w_opt.zero_grad()
        loss(x, y).backward()
        torch.nn.utils.clip_grad_norm_(authors.parameters(), 0.5)
        w_opt.step()

    weight_step()
    # The authors' unrolled step (DARTS-V2.py), written from SPEC section 7.
    buffers = [b.clone() for b in authors.buffers()]
    theta = [p.detach().clone() for p in authors_weights]
    g_train = torch.autograd.grad(loss(x, y), authors_weights)
    with torch.no_grad():
        for p, g, t in zip(authors_weights, g_train, theta):
            p.copy_(t - 0.3 * (0.9 * w_opt.state[p]["momentum_buffer"] + g + 5e-4 * t))
    val = loss(vx, vy)
    d_alpha, *v = torch.autograd.grad(val, [authors.alphas] + authors_weights)
    R = 0.01 / torch.cat([t.reshape(-1) for t in v]).norm()
    hessian = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, t, vi in zip(authors_weights, theta, v):
                p.copy_(t + sign * R * vi)
        hessian.append(torch.autograd.grad(loss(x, y), [authors.alphas])[0])
    with torch.no_grad():
        for p, t in zip(authors_weights, theta):
            p.copy_(t)
        for b, saved in zip(authors.buffers(), buffers):
            b.copy_(saved)
    a_opt.zero_grad()
    authors.alphas.grad = d_alpha - 0.3 * (hessian[0] - hessian[1]) / (2 * R)
    a_opt.step()
    weight_step()

    search.search_step(x, y, vx, vy)
    for (name, a), b in zip(net.named_parameters(), authors.parameters()):
        assert rel_err(a, b) <= 1e-8, name
