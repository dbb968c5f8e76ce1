"""DARTS search and final networks: backends agree, parameters are split right, shapes hold."""
import pytest
import torch

import fastdnas.ops
from fastdnas.darts import DARTS_V2, FinalNetwork, Genotype, SearchNetwork, drop_path
from fastdnas.darts.final_network import FinalCell
from fastdnas.nn import MixedOp
from conftest import DEVICES, rel_err, saved_bytes


def small_network(backend="fused", **kwargs):
    # layers=3 puts reduction cells at 1 and 2, so a cell follows a reduction cell too.
    args = dict(C=4, num_classes=5, layers=3, backend=backend)
    args.update(kwargs)
    net = SearchNetwork(**args).double()
    with torch.no_grad():  # random, not tiny: softmax far from uniform
        for alphas in net.arch_parameters():
            alphas.copy_(torch.randn_like(alphas))
    return net


def logits_and_grads(net, x, probe):
    net.zero_grad(set_to_none=True)
    logits = net(x)
    (logits * probe).sum().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in net.named_parameters()}


def buffers(net):
    return {name: b.clone() for name, b in net.named_buffers()}


def stat_err(actual, expected):
    """Error of running statistics relative to max(1, their size): a mean of ~1e-18 is zero."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1.0)).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["fused", "fused_sum"])
@pytest.mark.parametrize("size", [(8, 8), (8, 12)])
def test_fused_and_reference_backends_agree(size, backend, device):
    # Logits, every weight and alpha gradient, and the BatchNorm running statistics (normal and
    # reduction cells, a cell after a reduction cell), over two training steps and in eval mode.
    torch.manual_seed(0)
    net = small_network(backend).to(device)
    reference = small_network("reference").to(device)
    reference.load_state_dict(net.state_dict())
    for step in range(2):
        x = torch.randn(2, 3, *size, dtype=torch.float64, device=device)
        probe = torch.randn(2, 5, dtype=torch.float64, device=device)
        fused_logits, fused_grads = logits_and_grads(net, x, probe)
        ref_logits, ref_grads = logits_and_grads(reference, x, probe)
        assert rel_err(fused_logits, ref_logits) <= 1e-10
        assert fused_grads.keys() == ref_grads.keys()
        assert {"alphas_normal", "alphas_reduce"} <= fused_grads.keys()
        for name in ref_grads:
            assert rel_err(fused_grads[name], ref_grads[name]) <= 1e-10, name
        fused_buffers, ref_buffers = buffers(net), buffers(reference)
        assert fused_buffers.keys() == ref_buffers.keys()
        for name in ref_buffers:
            assert stat_err(fused_buffers[name], ref_buffers[name]) <= 1e-10, name
    net.eval()
    reference.eval()
    x = torch.randn(2, 3, *size, dtype=torch.float64, device=device)
    probe = torch.randn(2, 5, dtype=torch.float64, device=device)
    fused_logits, fused_grads = logits_and_grads(net, x, probe)
    ref_logits, ref_grads = logits_and_grads(reference, x, probe)
    assert rel_err(fused_logits, ref_logits) <= 1e-10
    for name in ref_grads:
        assert rel_err(fused_grads[name], ref_grads[name]) <= 1e-10, name


@pytest.mark.parametrize("device", DEVICES)
def test_fused_backend_float32_agrees_with_reference(device):
    torch.manual_seed(3)
    net = small_network().float().to(device)
    reference = small_network("reference").float().to(device)
    reference.load_state_dict(net.state_dict())
    x = torch.randn(4, 3, 12, 12, device=device)
    probe = torch.randn(4, 5, device=device)
    fused_logits, fused_grads = logits_and_grads(net, x, probe)
    ref_logits, ref_grads = logits_and_grads(reference, x, probe)
    assert rel_err(fused_logits, ref_logits) <= 1e-4
    for name in ref_grads:
        assert rel_err(fused_grads[name], ref_grads[name]) <= 1e-4, name
    fused_buffers, ref_buffers = buffers(net), buffers(reference)
    for name in ref_buffers:
        assert stat_err(fused_buffers[name], ref_buffers[name]) <= 1e-4, name


def test_fused_backend_under_torch_compile_equals_eager():
    torch.manual_seed(4)
    net = small_network(steps=2, multiplier=2)
    eager = small_network("fused", steps=2, multiplier=2)
    eager.load_state_dict(net.state_dict())
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    probe = torch.randn(2, 5, dtype=torch.float64)
    compiled_logits, compiled_grads = logits_and_grads(compiled, x, probe)
    eager_logits, eager_grads = logits_and_grads(eager, x, probe)
    assert rel_err(compiled_logits, eager_logits) <= 1e-12
    for name in eager_grads:
        assert rel_err(compiled_grads["_orig_mod." + name], eager_grads[name]) <= 1e-12, name
    compiled_buffers, eager_buffers = buffers(net), buffers(eager)
    for name in eager_buffers:
        assert stat_err(compiled_buffers[name], eager_buffers[name]) <= 1e-12, name
    assert int(net.cells[0].preprocess1.op[2].num_batches_tracked) == 1


def test_fused_backend_makes_one_mixed_node_call_per_node(monkeypatch):
    calls = []
    original = fastdnas.ops.mixed_node

    def counting_mixed_node(edge_inputs, strides, conv_outputs, *args):
        calls.append((tuple(strides), len(conv_outputs)))
        return original(edge_inputs, strides, conv_outputs, *args)

    monkeypatch.setattr(fastdnas.ops, "mixed_node", counting_mixed_node)
    net = SearchNetwork(C=4, num_classes=5, layers=3, steps=4)
    net(torch.randn(2, 3, 8, 8))
    # Node i has 2 + i edges of 4 conv candidates, plus FactorizedReduce on strided edges (the
    # first two edges of a reduction cell; cells 1 and 2 of 3 are reduction cells).
    normal = [((1,) * (2 + i), 4 * (2 + i)) for i in range(4)]
    reduce = [((2, 2) + (1,) * i, 4 * (2 + i) + 2) for i in range(4)]
    assert calls == normal + reduce + reduce


def test_fused_sum_backend_makes_one_kernel_call_per_node(monkeypatch):
    calls = []
    original = fastdnas.ops.mixed_sum

    def counting_mixed_sum(inputs, weights):
        calls.append(len(inputs))
        return original(inputs, weights)

    monkeypatch.setattr(fastdnas.ops, "mixed_sum", counting_mixed_sum)
    net = SearchNetwork(C=4, num_classes=5, layers=3, steps=4, backend="fused_sum")
    net(torch.randn(2, 3, 8, 8))
    # 4 nodes per cell; node i sums 2 + i edges of 7 computed ops each ('none' is skipped).
    assert calls == [7 * (2 + i) for i in range(4)] * 3


@pytest.mark.parametrize("backend,limit", [("fused_sum", "MAX_MIXED_SUM_INPUTS"), ("fused", "MAX_NODE_EDGES")])
def test_nodes_wider_than_one_kernel_call_are_summed_in_chunks(monkeypatch, backend, limit):
    # Only very wide nodes (many steps) need chunks; a small limit shows the path.
    monkeypatch.setattr(fastdnas.ops, limit, 2)
    torch.manual_seed(2)
    net = small_network(backend, steps=2, multiplier=2)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    fused = net(x)
    net.backend = "reference"
    assert rel_err(fused, net(x)) <= 1e-10


def test_state_dict_runs_on_either_backend():
    torch.manual_seed(1)
    fused = small_network("fused", steps=2, multiplier=2)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    fused(x)  # moves the BatchNorm running statistics away from their initial values
    reference = SearchNetwork(C=4, num_classes=5, layers=3, steps=2, multiplier=2, backend="reference").double()
    reference.load_state_dict(fused.state_dict())
    fused.eval()
    reference.eval()
    assert rel_err(fused(x), reference(x)) <= 1e-10


def test_backend_switch_reaches_every_mixed_op():
    net = SearchNetwork(C=4, num_classes=5, layers=3)
    mixed_ops = [m for m in net.modules() if isinstance(m, MixedOp)]
    assert len(mixed_ops) == 3 * 14
    assert all(m.backend == "fused" for m in mixed_ops)
    net.backend = "reference"
    assert net.backend == "reference"
    assert all(m.backend == "reference" for m in mixed_ops)
    net.backend = "fused_sum"
    assert all(m.backend == "fused_sum" for m in mixed_ops)
    with pytest.raises(ValueError, match="backend"):
        net.backend = "cuda"
    with pytest.raises(ValueError, match="backend"):
        SearchNetwork(C=4, layers=3, backend="eager")


def test_weight_parameter_count_of_the_darts_search_network():
    net = SearchNetwork(16, 10, 8)
    assert sum(p.numel() for p in net.weight_parameters()) == 1_930_618


def test_arch_and_weight_parameters_partition_the_parameters():
    net = SearchNetwork(C=4, num_classes=5, layers=3)
    arch = net.arch_parameters()
    weights = net.weight_parameters()
    assert arch == [net.alphas_normal, net.alphas_reduce]
    assert all(isinstance(a, torch.nn.Parameter) and a.shape == (14, 8) for a in arch)
    assert all(a.abs().max() < 0.01 for a in arch)  # 1e-3 * randn
    ids = [id(p) for p in arch + weights]
    assert len(set(ids)) == len(ids)
    assert set(ids) == {id(p) for p in net.parameters()}


def test_search_network_shapes_and_bad_arguments():
    net = SearchNetwork(C=4, num_classes=7, layers=2, steps=3, multiplier=2, in_channels=1)
    assert net.alphas_normal.shape == (2 + 3 + 4, 8)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 7)
    with pytest.raises(ValueError, match="multiplier"):
        SearchNetwork(C=4, layers=3, steps=2, multiplier=3)
    with pytest.raises(ValueError, match="layers"):
        SearchNetwork(C=4, layers=0)
    with pytest.raises(ValueError, match="weights must have shape"):
        net.cells[0](torch.randn(1, 12, 8, 8), torch.randn(1, 12, 8, 8), torch.randn(14, 8))


def test_genotype_of_the_search_network():
    net = SearchNetwork(C=4, num_classes=5, layers=3)
    with torch.no_grad():
        net.alphas_normal.zero_()
        net.alphas_normal[:, 4] = 1.0  # sep_conv_3x3 everywhere; ties keep the lower states
    genotype = net.genotype()
    assert genotype.normal == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)] * 4
    assert genotype.normal_concat == range(2, 6)
    assert repr(genotype).startswith("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ")
    assert "normal_concat=range(2, 6), reduce=[(" in repr(genotype)


@pytest.mark.parametrize("size", [8, 32])  # 8: adaptive auxiliary pooling; 32: the original 8x8 head
def test_final_network_shapes(size):
    torch.manual_seed(0)
    net = FinalNetwork(4, 10, 3, DARTS_V2, auxiliary=True, drop_path_prob=0.2)
    x = torch.randn(2, 3, size, size)
    logits, logits_aux = net(x)
    assert logits.shape == (2, 10) and logits_aux.shape == (2, 10)
    net.eval()
    logits, logits_aux = net(x)
    assert logits.shape == (2, 10) and logits_aux is None
    logits, logits_aux = FinalNetwork(4, 10, 3, DARTS_V2)(x)
    assert logits.shape == (2, 10) and logits_aux is None


def test_final_network_parameter_count_of_darts_v2():
    # DARTS_V2 at C=36, 20 layers: the 3.3M of the paper (the original training log says 3.349342 MB).
    with torch.device("meta"):
        net = FinalNetwork(36, 10, 20, DARTS_V2, auxiliary=True)
    assert sum(p.numel() for name, p in net.named_parameters() if "auxiliary" not in name) == 3_349_342


def test_drop_path_acts_in_training_only():
    torch.manual_seed(0)
    net = FinalNetwork(4, 10, 3, DARTS_V2, drop_path_prob=0.5)
    x = torch.randn(4, 3, 8, 8)
    net.eval()
    with torch.no_grad():
        dropped_eval = net(x)[0]
        net.drop_path_prob = 0.0
        assert torch.equal(dropped_eval, net(x)[0])
        net.train()
        clean_train = net(x)[0]
        net.drop_path_prob = 0.5
        assert not torch.allclose(net(x)[0], clean_train)


def test_drop_path_never_drops_identity_edges():
    skip_only = Genotype(normal=[("skip_connect", 0), ("skip_connect", 1)] * 2, normal_concat=[2, 3],
                         reduce=[("skip_connect", 0), ("skip_connect", 1)] * 2, reduce_concat=[2, 3])
    cell = FinalCell(skip_only, 6, 6, 4, reduction=False, reduction_prev=False)
    s0, s1 = torch.randn(3, 6, 4, 4), torch.randn(3, 6, 4, 4)
    assert torch.equal(cell(s0, s1, 0.9), cell(s0, s1, 0.0))


def test_drop_path_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.ones(10000, 1, 1, 1, dtype=torch.float64)
    out = drop_path(x, 0.25)
    assert set(out.flatten().tolist()) == {0.0, 1 / 0.75}
    assert abs(out.mean().item() - 1.0) < 0.05


def test_final_network_rejects_bad_genotypes():
    unknown_op = DARTS_V2._replace(normal=[("sep_conv_7x7", 0)] + DARTS_V2.normal[1:])
    with pytest.raises(ValueError, match="sep_conv_7x7"):
        FinalNetwork(4, 10, 3, unknown_op)
    future_state = DARTS_V2._replace(reduce=[("max_pool_3x3", 2)] + DARTS_V2.reduce[1:])
    with pytest.raises(ValueError, match="node 0 cannot take state 2"):
        FinalNetwork(4, 10, 3, future_state)
    odd = DARTS_V2._replace(normal=DARTS_V2.normal[:3])
    with pytest.raises(ValueError, match="two"):
        FinalNetwork(4, 10, 3, odd)
    with pytest.raises(ValueError, match="concat"):
        FinalNetwork(4, 10, 3, DARTS_V2._replace(normal_concat=[2, 3, 4, 6]))


def test_fused_backend_saves_at_most_0_55_of_the_reference_for_backward():
    # The memory goal of the fused backend, counted (not timed): pools, skip and BN outputs are
    # never saved, the convolution candidates of an edge share one ReLU, and stacking the
    # candidates saves nothing more (0.53 measured; the stacked 1x1 weights are not saved per sample).
    torch.manual_seed(0)
    net = SearchNetwork(C=8, num_classes=10, layers=5)
    x = torch.randn(4, 3, 16, 16)
    saved = {}
    for backend in ("reference", "fused_sum", "fused"):
        net.backend = backend
        saved[backend] = saved_bytes(lambda: net(x).sum())
    assert saved["fused"] <= 0.55 * saved["reference"]
    assert saved["fused_sum"] <= saved["reference"]


@pytest.mark.parametrize("device", DEVICES)
def test_fused_backend_keeps_every_edges_batchnorm_statistics(device):
    """The fused backend evaluates the edges leaving a state together; each BatchNorm still sees
    (and records) exactly what it sees edge by edge, in training and in evaluation."""
    import copy

    torch.manual_seed(0)
    fused = small_network().to(device)
    reference = copy.deepcopy(fused)
    reference.backend = "reference"
    for _ in range(2):
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64, device=device)
        fused(x), reference(x)
    fused_buffers, reference_buffers = dict(fused.named_buffers()), dict(reference.named_buffers())
    assert fused_buffers.keys() == reference_buffers.keys()
    for name, buffer in reference_buffers.items():  # some running means are rounding noise around 0
        torch.testing.assert_close(fused_buffers[name], buffer, rtol=1e-10, atol=1e-12, msg=name)
    assert any(b.dtype == torch.long and b.item() == 2 for b in fused_buffers.values())
    fused.eval(), reference.eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, device=device)
    assert rel_err(fused(x), reference(x)) <= 1e-10


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("bias", [False, True], ids=["plain", "biased"])
def test_preprocessing_as_matrix_products_equals_the_modules(bias, mode):
    """run_fused (a cell's ReLUConvBN and FactorizedReduce, 1x1 convolutions as matrix products,
    biased ones too, as in the GDAS authors' supernet) against the modules' own forward, float64:
    output and the gradients of the input and of every parameter (in eval mode, where a bias
    before the BatchNorm has a gradient; in training the batch mean cancels it)."""
    from fastdnas.darts.gdas_authors import with_conv_biases
    from fastdnas.nn.operations import FactorizedReduce, ReLUConvBN, run_fused

    torch.manual_seed(0)
    for module in (ReLUConvBN(6, 4, 1, 1, 0, affine=False), FactorizedReduce(6, 4, affine=True)):
        module = getattr((with_conv_biases(module) if bias else module).double(), mode)()
        x = torch.randn(3, 6, 6, 8, dtype=torch.float64, requires_grad=True)
        probe = torch.randn(3, 4, *((6, 8) if isinstance(module, ReLUConvBN) else (3, 4)), dtype=torch.float64)
        inputs = [x] + (list(module.parameters()) if mode == "eval" else [])
        results = []
        for forward in (module, lambda x: run_fused(module, x)):
            out = forward(x)
            results.append([out] + list(torch.autograd.grad((out * probe).sum(), inputs)))
        for got, want in zip(results[1], results[0], strict=True):
            assert rel_err(got, want) <= 1e-12
