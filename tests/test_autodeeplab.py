"""Auto-DeepLab search and decoded networks: trellis structure, backends agree, betas, shapes."""
import pytest
import torch

import fastdnas.ops
from fastdnas.autodeeplab import PAPER_PATH, ASPP, DecodedNetwork, SearchNetwork, aspp_for_level
from fastdnas.decode import NUM_LEVELS, num_edges, transition_mask, viterbi
from fastdnas.nn import PRIMITIVES
from conftest import rel_err, saved_bytes


def small_network(backend="fused", **kwargs):
    args = dict(num_classes=3, layers=3, blocks=5, filter_multiplier=2, backend=backend)
    args.update(kwargs)
    net = SearchNetwork(**args).double()
    with torch.no_grad():  # random, not tiny: softmaxes far from uniform
        for p in net.arch_parameters():
            p.copy_(torch.randn_like(p))
    return net


def outputs_and_grads(net, x, probe):
    net.zero_grad(set_to_none=True)
    logits = net(x)
    (logits * probe).sum().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in net.named_parameters()}


@pytest.mark.parametrize("size", [(32, 32), (40, 48)])
def test_search_network_outputs_logits_at_the_input_size(size):
    net = SearchNetwork(num_classes=4, layers=3, blocks=2, filter_multiplier=2)
    assert net(torch.randn(2, 3, *size)).shape == (2, 4, *size)


@pytest.mark.parametrize("backend", ["fused", "fused_sum"])
def test_fused_and_reference_backends_agree(backend):
    # 20x24: levels of 5x6, 3x3, 2x2 and 1x1, so odd sizes are resampled both ways.
    net = small_network(backend, blocks=3)
    x = torch.randn(2, 3, 20, 24, dtype=torch.float64)
    probe = torch.randn(2, 3, 20, 24, dtype=torch.float64)
    start = {name: b.clone() for name, b in net.named_buffers()}
    fused_logits, fused_grads = outputs_and_grads(net, x, probe)
    fused_buffers = {name: b.clone() for name, b in net.named_buffers()}
    net.load_state_dict(start, strict=False)
    net.backend = "reference"
    reference_logits, reference_grads = outputs_and_grads(net, x, probe)
    assert rel_err(fused_logits, reference_logits) <= 1e-10
    # Running statistics: every cell evaluation (up to 3 per node) updates them in turn. (Some
    # means are of normalised inputs, zero up to rounding: an absolute bound for those.)
    for name, b in net.named_buffers():
        torch.testing.assert_close(fused_buffers[name], b, rtol=1e-9, atol=1e-12, msg=name)
    assert fused_grads.keys() == reference_grads.keys()
    assert {"alphas", "betas"} <= fused_grads.keys()
    # The fused backends sum the depthwise and 1x1 convolutions in another order than ATen; at the
    # 1x1 level BatchNorm normalises over 2 values, which amplifies that rounding to ~1e-10.
    for name in reference_grads:
        assert rel_err(fused_grads[name], reference_grads[name]) <= 1e-9, name


@pytest.mark.parametrize("backend", ["fused", "fused_sum"])
def test_fused_backends_make_one_kernel_call_per_block_node_and_head(monkeypatch, backend):
    calls = {"mixed_sum": [], "mixed_node": [], "trellis_aggregate": [], "resize_sum": []}
    for name, record in calls.items():
        def counting(*args, _original=getattr(fastdnas.ops, name), _record=record):
            _record.append(len(args[0]))
            return _original(*args)

        monkeypatch.setattr(fastdnas.ops, name, counting)
    net = SearchNetwork(num_classes=3, layers=2, blocks=5, filter_multiplier=2, backend=backend)
    net(torch.randn(2, 3, 16, 16))
    # Incoming transitions per node: layer 1: 1, 1; layer 2: 2, 2, 1 (7 cell evaluations).
    assert calls["trellis_aggregate"] == [1, 1, 2, 2, 1]
    if backend == "fused":
        # One mixed_node per block, over its 2 + i edges.
        assert calls["mixed_node"] == [2 + i for i in range(5)] * 7 and calls["mixed_sum"] == []
    else:
        # Block i sums 2 + i edges of 7 computed ops each ('none' is skipped).
        assert calls["mixed_sum"] == [7 * (2 + i) for i in range(5)] * 7 and calls["mixed_node"] == []
    assert calls["resize_sum"] == [3]  # one call merges the heads of levels 0..2


def test_trellis_holds_only_reachable_nodes():
    net = SearchNetwork(num_classes=3, layers=5, blocks=2, filter_multiplier=2)
    assert [[node.level for node in nodes] for nodes in net.trellis] == [
        [0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    sources = {(node.layer, node.level): node.source_levels for nodes in net.trellis for node in nodes}
    assert sources[1, 0] == [0] and sources[1, 1] == [0]  # the stem is at level 0
    assert sources[2, 1] == [0, 1] and sources[2, 2] == [1]
    assert sources[3, 1] == [0, 1, 2] and sources[3, 3] == [2]
    assert sources[5, 0] == [0, 1] and sources[5, 3] == [2, 3]
    # Node (3, 1) weighs its evaluations with betas[2, 0, 2], betas[2, 1, 1] and betas[2, 2, 0].
    betas = torch.arange(5 * NUM_LEVELS * 3.0).reshape(5, NUM_LEVELS, 3)
    picked = betas.flatten()[net.trellis[2][1].transition_index]
    assert picked.tolist() == [betas[2, 0, 2].item(), betas[2, 1, 1].item(), betas[2, 2, 0].item()]
    with_prev_prev = {(node.layer, node.level) for nodes in net.trellis for node in nodes if node.has_prev_prev}
    assert with_prev_prev == {(2, 0), (3, 0), (3, 1), (4, 0), (4, 1), (4, 2)} | {(5, s) for s in range(4)}
    assert len(net.aspp) == NUM_LEVELS
    assert len(SearchNetwork(num_classes=3, layers=1, blocks=2, filter_multiplier=2).aspp) == 2


def test_channels_and_resampling_follow_the_levels():
    net = SearchNetwork(num_classes=3, layers=3, blocks=2, filter_multiplier=2)
    node = net.trellis[2][1]  # layer 3, level 1 (rate 8): inputs from levels 0, 1, 2
    from_finer, same, from_coarser = node.resample
    assert from_finer.convs[0].op[1].stride == (2, 2) and from_finer.convs[0].op[1].kernel_size == (3, 3)
    assert not from_finer.upsample and not same.upsample and from_coarser.upsample
    assert from_coarser.convs[0].op[1].kernel_size == (1, 1)
    # Inputs carry B*F*s/4 channels, the cell works on F*s/4 per block.
    assert [r.convs[0].op[1].in_channels for r in node.resample] == [4, 8, 16]
    assert {r.convs[0].op[1].out_channels for r in node.resample} == {4}
    x = torch.randn(2, 3, 32, 32)
    stem = net.stem(x)
    assert stem.shape == (2, 4, 8, 8)  # rate 4, B*F channels


def test_aspp_heads_follow_the_paper():
    for level, (rate, dilation) in enumerate([(4, 24), (8, 12), (16, 6), (32, 3)]):
        aspp = aspp_for_level(level, blocks=5, filter_multiplier=8, num_classes=19)
        assert aspp.conv3x3[0].dilation == (dilation, dilation)
        assert aspp.conv1x1[0].out_channels == 5 * 8 * rate // 4
    assert ASPP(6, 4, 2, 5)(torch.randn(2, 6, 5, 7)).shape == (2, 5, 5, 7)
    with pytest.raises(ValueError, match="dilation"):
        ASPP(6, 4, 0, 5)


def test_parameters_split_into_architecture_and_weights():
    net = SearchNetwork(num_classes=3, layers=2, blocks=5, filter_multiplier=2)
    alphas, betas = net.arch_parameters()
    assert alphas is net.alphas and betas is net.betas
    assert alphas.shape == (num_edges(5), len(PRIMITIVES)) == (20, 8)
    assert betas.shape == (2, NUM_LEVELS, 3)
    weights = net.weight_parameters()
    assert {id(p) for p in weights}.isdisjoint({id(alphas), id(betas)})
    assert len(weights) + 2 == len(list(net.parameters()))
    assert "beta_mask" not in net.state_dict()  # structure, not state
    # Initialised 1e-3 * randn where a transition exists, 0 where none does.
    mask = torch.tensor(transition_mask(2))
    assert (betas[~mask] == 0).all() and (betas[mask] != 0).all() and betas.abs().max() < 1e-2
    assert alphas.abs().max() < 1e-2


def test_beta_softmax_ignores_missing_transitions():
    net = small_network(layers=4, blocks=2)
    mask = net.beta_mask
    probabilities = net.normalized_betas()
    assert (probabilities[~mask] == 0).all()
    sums = probabilities.sum(-1)
    assert torch.allclose(sums[mask.any(-1)], torch.ones((), dtype=torch.float64))
    assert (sums[~mask.any(-1)] == 0).all()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    logits = net(x)
    with torch.no_grad():
        net.betas[~mask] = 1e6  # changing a missing transition's logit changes nothing
    assert torch.equal(net.normalized_betas(), probabilities)
    assert torch.equal(net(x), logits)
    logits.sum().backward()
    assert (net.betas.grad[~mask] == 0).all() and (net.betas.grad[mask] != 0).any()


def test_decode_gives_the_viterbi_path_and_the_parsed_cell():
    net = small_network(layers=4, blocks=3)
    decoded = net.decode()
    assert decoded == net.genotype()
    assert decoded["path"] == viterbi(net.betas)
    assert decoded["path"] == viterbi(net.normalized_betas(), normalized=True)
    assert len(decoded["cell"]) == 2 * 3
    assert all(op != "none" and 0 <= index < 2 + k // 2 for k, (op, index) in enumerate(decoded["cell"]))


def test_bad_search_arguments_raise():
    with pytest.raises(ValueError, match="layers"):
        SearchNetwork(num_classes=3, layers=0)
    with pytest.raises(ValueError, match="filter_multiplier"):
        SearchNetwork(num_classes=3, filter_multiplier=2.5)
    with pytest.raises(ValueError, match="backend"):
        SearchNetwork(num_classes=3, layers=1, blocks=1, filter_multiplier=1, backend="cuda")
    net = SearchNetwork(num_classes=3, layers=1, blocks=1, filter_multiplier=1)
    with pytest.raises(ValueError, match="expected images"):
        net(torch.randn(2, 1, 16, 16))


PAPER_CELL = [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_5x5", 1),
              ("sep_conv_3x3", 2), ("sep_conv_3x3", 1), ("dil_conv_5x5", 3), ("max_pool_3x3", 0),
              ("avg_pool_3x3", 4), ("dil_conv_3x3", 1)]


@pytest.mark.parametrize("size", [(32, 32), (40, 48)])
def test_decoded_network_forward_and_backward(size):
    net = DecodedNetwork(num_classes=4, path=PAPER_PATH, cell_genotype=PAPER_CELL, filter_multiplier=2)
    x = torch.randn(2, 3, *size, requires_grad=True)
    logits = net(x)
    assert logits.shape == (2, 4, *size)
    logits.square().mean().backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is not None for p in net.parameters())
    # Layer 5 (level 2) takes H^3 from level 0: two stride-2 convs.
    assert len(net.cells[4].preprocess0.convs) == 2


def test_decoded_network_from_a_search():
    search = small_network(layers=3, blocks=2)
    net = DecodedNetwork.from_genotype(search.decode(), num_classes=3, blocks=2, filter_multiplier=2)
    assert len(net.cells) == 3 and net.path == search.decode()["path"]
    assert net(torch.randn(2, 3, 24, 24)).shape == (2, 3, 24, 24)


@pytest.mark.parametrize("path, match", [
    ([], "at least one"), ([2], "jumps"), ([0, 1, 3], "jumps"), ([0, 1, 2, 3, 4], "levels are ints"),
    ("0123", "list of levels"),
])
def test_decoded_network_rejects_bad_paths(path, match):
    with pytest.raises(ValueError, match=match):
        DecodedNetwork(num_classes=3, path=path, cell_genotype=PAPER_CELL, filter_multiplier=2)


@pytest.mark.parametrize("cell, match", [
    (PAPER_CELL[:-2], "2 pairs per block"), ([("none", 0)] + PAPER_CELL[1:], "operation 'none'"),
    ([("sep_conv_3x3", 2)] + PAPER_CELL[1:], "cannot take state 2"), (["sep_conv_3x3"], "pairs"),
])
def test_decoded_network_rejects_bad_cells(cell, match):
    with pytest.raises(ValueError, match=match):
        DecodedNetwork(num_classes=3, path=[0, 1], cell_genotype=cell, filter_multiplier=2)


def test_fused_backend_saves_at_most_0_71_of_the_reference_for_backward():
    # A CPU-sized search step, counted (not timed): the fused nodes keep neither the pool, skip
    # nor BatchNorm outputs, and the convolutions of an edge share one ReLU. (0.699 before the
    # stacked inner BatchNorms recorded their running statistics in their own pass: batch_norm
    # then also keeps those per-channel buffers, 21 KB here, 0.702.)
    torch.manual_seed(0)
    net = SearchNetwork(5, layers=3, blocks=3, filter_multiplier=4)
    x = torch.randn(2, 3, 32, 32)
    saved = {}
    for backend in ("reference", "fused"):
        net.backend = backend
        saved[backend] = saved_bytes(lambda: net(x).sum())
    assert saved["fused"] <= 0.71 * saved["reference"], saved
