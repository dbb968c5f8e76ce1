"""GDAS as its authors run it on the DARTS space (--gdas-variant authors): the supernet's parts,
every backend equal to the formulas (fastdnas.reference_methods) in float64, the authors'
decoding and a final network built from it, one search step against the authors' loop, the CLI."""
import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastdnas import cli, reference_methods
from fastdnas.darts import FinalNetwork, GdasNetwork, Genotype, load_genotype
from fastdnas.darts.gdas_authors import AuthorsGdasNetwork, finite_gumbel_noise
from fastdnas.decode import parse_cell, parse_cell_pairs
from fastdnas.nn.operations import PRIMITIVES
from conftest import rel_err
from test_successors import BACKENDS, fixed_gumbels, output_and_grads, randomise_arch

pytestmark = pytest.mark.usefixtures("one_thread")


def authors_network(backend="fused", **kwargs):
    net = randomise_arch(AuthorsGdasNetwork(C=4, num_classes=5, layers=3, backend=backend, **kwargs).double())
    net.tau.fill_(0.7)
    return net


def test_the_authors_supernet_differs_where_their_code_does():
    net, ours = AuthorsGdasNetwork(C=4, num_classes=5, layers=6), GdasNetwork(C=4, num_classes=5, layers=6)
    assert [c.reduction for c in net.cells] == [False, False, True, False, True, False]  # N = 2: after 2 and 4
    reduce_edge = net.cells[2]._ops[0]._ops
    for edge in (net.cells[0]._ops[0]._ops, reduce_edge):
        assert type(edge[PRIMITIVES.index("max_pool_3x3")]) is nn.MaxPool2d  # no BatchNorm after the pools
        assert type(edge[PRIMITIVES.index("avg_pool_3x3")]) is nn.AvgPool2d
    convs = [m for m in net.cells.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all((m.bias is not None) == (m.groups == 1) for m in convs)  # dense biased, depthwise not
    skip = reduce_edge[PRIMITIVES.index("skip_connect")]  # FactorizedReduce at stride 2
    assert skip.conv_1.bias is not None and net.cells[3].preprocess0.conv_2.bias is not None
    assert net.cells[0].preprocess1.op[1].bias is not None
    assert all(m.bias is None for m in ours.cells.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(net.lastact[0], nn.BatchNorm2d) and isinstance(net.lastact[1], nn.ReLU)
    assert not hasattr(ours, "lastact")
    for layers in (5, 2, 7):
        with pytest.raises(ValueError, match="layers must be 3N"):
            AuthorsGdasNetwork(C=4, layers=layers)


@pytest.mark.parametrize("forced", [None, "random"])
@pytest.mark.parametrize("sampled_only", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_equal_the_formulas(backend, sampled_only, forced):
    """The same fixed Gumbel noise: logits and the gradients of the alphas and every weight (the
    biases and lastact included), normal and reduction cells, sampled and dense forms."""
    torch.manual_seed(4)
    net = authors_network(backend, sampled_only=sampled_only)
    edges = net.alphas_normal.shape[0]
    # "random": every candidate kind sampled somewhere (the bare max pool on edges 0 and 5)
    forced = None if forced is None else torch.tensor([1, 2, 3, 4, 5, 1, 6, 7, 2, 3, 4, 5, 6, 7][:edges])
    gumbels = fixed_gumbels(net, forced)
    probe = torch.randn(2, 5, dtype=torch.float64)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    want = output_and_grads(lambda x: reference_methods.gdas_forward(net, x, gumbels), net, x, probe)
    got = output_and_grads(lambda x: net(x, gumbels), net, x, probe)
    (logits, grads), (want_logits, want_grads) = got, want
    assert rel_err(logits, want_logits) <= 1e-10
    assert grads.keys() == want_grads.keys()
    scale = max(float(g.abs().max()) for g in want_grads.values())
    for name, grad in want_grads.items():
        if name.startswith("cells.") and name.endswith(".bias"):
            # A bias before a BatchNorm on batch statistics: the mean subtracts it, its gradient is 0
            # (both sides: rounding noise only); it only moves the running mean.
            assert max(float(grads[name].abs().max()), float(grad.abs().max())) <= 1e-12 * scale, name
        else:
            assert rel_err(grads[name], grad) <= 1e-10, name
    assert grads["lastact.0.weight"].abs().sum() > 0
    if forced is None:  # forced samples saturate the softmax: no alpha gradient
        assert grads["alphas_normal"].abs().sum() > 0 and grads["alphas_reduce"].abs().sum() > 0


def test_infinite_gumbel_noise_is_drawn_again(monkeypatch):
    draws = []
    original = torch.Tensor.exponential_

    def exponential_(self, *args, **kwargs):
        draws.append(1)
        out = original(self, *args, **kwargs)
        return out.zero_() if len(draws) == 1 else out  # E = 0 first: -log(0) = inf

    monkeypatch.setattr(torch.Tensor, "exponential_", exponential_)
    gumbels = finite_gumbel_noise(torch.zeros(14, 8))
    assert len(draws) == 2 and bool(torch.isfinite(gumbels).all())


def test_the_authors_decoding_ranks_op_input_pairs():
    torch.manual_seed(5)
    weights = torch.softmax(torch.randn(14, 8), -1)
    # node 0: both winners on input 1 (none's weight, the largest, never counts)
    weights[0] = torch.tensor([0.9, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.04])
    weights[1] = torch.tensor([0.5, 0.3, 0.1, 0.02, 0.02, 0.02, 0.02, 0.02])
    weights[1, 4] = 0.25
    got = parse_cell_pairs(weights, 4)
    assert got == reference_methods.gdas_authors_cell(weights, 4, PRIMITIVES)
    assert got[:2] == [("max_pool_3x3", 1), ("sep_conv_3x3", 1)]  # the same input twice
    assert parse_cell(weights, 4)[:2] != got[:2]  # DARTS's rule takes two edges
    for seed in range(20):  # random cells: always the formula's
        w = torch.softmax(torch.randn(14, 8, generator=torch.Generator().manual_seed(seed)), -1)
        assert parse_cell_pairs(w, 4) == reference_methods.gdas_authors_cell(w, 4, PRIMITIVES)
    net = AuthorsGdasNetwork(C=4, num_classes=5, layers=3)
    with torch.no_grad():
        net.alphas_normal.copy_(weights.log())
    assert net.genotype().normal == got


def test_a_cell_taking_one_input_twice_retrains(tmp_path):
    twice = [("sep_conv_3x3", 1), ("skip_connect", 1), ("max_pool_3x3", 0), ("dil_conv_3x3", 0),
             ("skip_connect", 2), ("avg_pool_3x3", 2), ("sep_conv_5x5", 3), ("sep_conv_3x3", 1)]
    genotype = Genotype(normal=twice, normal_concat=[2, 3, 4, 5], reduce=twice, reduce_concat=[2, 3, 4, 5])
    net = FinalNetwork(4, 5, 3, genotype, in_channels=3).double()
    net.drop_path_prob = 0.2
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    logits, _ = net(x)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    with torch.no_grad():  # node 0 = sep_conv_3x3(s1) + skip(s1): both ops of the node run on state 1
        s, cell = net.stem(x), net.cells[0]
        node0 = cell._ops[0](cell.preprocess1(s)) + cell._ops[1](cell.preprocess1(s))
        out = cell(s, s, 0.0)
    assert cell.indices[:2] == [1, 1] and rel_err(out[:, :4], node0) <= 1e-12
    from fastdnas.viz import plot_genotype  # the two edges of one input drawn apart

    for path in plot_genotype(genotype, tmp_path):
        assert (tmp_path / path).stat().st_size > 0


def authors_loop(net, batches, gumbels, lr, clip):
    """exps/algos/GDAS.py's loop: per step the weight step on the training batch (every parameter's
    gradient, clip_grad_norm_ over network.parameters(), Nesterov SGD with weight decay 5e-4), then
    the architecture step on the validation batch (Adam, betas (0.5, 0.999), wd 1e-3). Only the
    weight optimizer's gradients are cleared before the weight step: the alphas' gradient of the
    previous architecture step is still there and counts in the clip's norm."""
    alphas = net.arch_parameters()
    w_opt = torch.optim.SGD([p for p in net.parameters() if all(p is not a for a in alphas)], lr=lr, momentum=0.9,
                            weight_decay=5e-4, nesterov=True)
    a_opt = torch.optim.Adam(alphas, lr=0.05, betas=(0.5, 0.999), weight_decay=1e-3)
    noise = iter(gumbels)
    for x, y, vx, vy in batches:
        w_opt.zero_grad()
        F.cross_entropy(net(x, next(noise)), y).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        w_opt.step()
        a_opt.zero_grad()
        F.cross_entropy(net(vx, next(noise)), vy).backward()
        a_opt.step()


def make_search(net, **config):
    from fastdnas.data import ImageSet
    from fastdnas.search import Search, SearchConfig

    data = ImageSet(torch.randn(8, 3, 8, 8), torch.arange(8) % 5, torch.zeros(3), torch.ones(3))
    options = dict(epochs=1, batch_size=4, lr=0.3, weight_decay=5e-4, arch_lr=0.05, grad_clip=0.5)
    return Search(net, data, data, SearchConfig(**{**options, **config}), progress=False, log=lambda *a, **k: None)


def test_two_search_steps_equal_the_authors_loop(monkeypatch):
    """Search with the variant's step (weight step first, clip over weights and alphas, Nesterov)
    gives the authors' loop's weights and alphas after two steps (the second one's clip norm holds
    the first architecture step's gradient, as theirs); the other order or the weights-only clip do not."""
    torch.manual_seed(6)
    net = authors_network()  # fused
    batches = [(torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3]),
                torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([4, 3, 2, 1])) for _ in range(2)]
    noise = [[finite_gumbel_noise(a) for a in net.arch_parameters()] for _ in range(4)]
    want = {}
    for steps in (1, 2):
        authors = copy.deepcopy(net)
        authors.backend = "reference"
        authors_loop(authors, batches[:steps], noise, lr=0.3, clip=0.5)
        want[steps] = dict(authors.named_parameters())
    original = AuthorsGdasNetwork.forward
    for name, steps, config in [("authors", 2, dict(weight_step_first=True, clip_with_arch=True, nesterov=True)),
                                ("arch first", 1, dict(weight_step_first=False, clip_with_arch=True, nesterov=True)),
                                ("weights-only clip", 1, dict(weight_step_first=True, clip_with_arch=False,
                                                              nesterov=True))]:
        queue = list(noise)
        monkeypatch.setattr(AuthorsGdasNetwork, "forward", lambda self, inp, gumbels=None: original(self, inp, queue.pop(0)))
        model = copy.deepcopy(net)
        search = make_search(model, **config)
        for batch in batches[:steps]:
            search.search_step(*batch)
        errors = {key: rel_err(value, want[steps][key]) for key, value in model.named_parameters()}
        if name == "authors":
            assert max(errors.values()) <= 1e-10, max(errors, key=errors.get)
        else:
            assert max(errors.values()) > 1e-6, name


def test_cuda_graphs_refuse_the_host_checked_noise():
    from fastdnas.data import ImageSet
    from fastdnas.search import Search, SearchConfig

    data = ImageSet(torch.randn(8, 3, 8, 8), torch.arange(8) % 5, torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="host check"):
        Search(AuthorsGdasNetwork(C=4, num_classes=5, layers=3, sampled_only=False), data, data,
               SearchConfig(batch_size=4), cuda_graphs=True, progress=False, log=lambda *a, **k: None)


TINY = ["--dataset", "synthetic", "--device", "cpu", "--threads", "1", "--epochs", "1"]


def test_cli_search_with_the_authors_variant_then_retrain(tmp_path):
    out = tmp_path / "search"
    assert cli.main(["search", "darts", *TINY, "--method", "gdas", "--gdas-variant", "authors", "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["gdas_variant"] == "authors" and settings["weight_decay"] == 5e-4
    from fastdnas.search import load_checkpoint

    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert {k: checkpoint["config"][k] for k in ("weight_step_first", "nesterov", "clip_with_arch")} == \
        {"weight_step_first": True, "nesterov": True, "clip_with_arch": True}
    assert any(k.startswith("lastact.") for k in checkpoint["model"])
    genotype = load_genotype(out / "genotype.json")
    assert cli.main(["train", "darts", *TINY, "--init-channels", "4", "--layers", "2", "--genotype",
                     str(out / "genotype.json"), "--out", str(tmp_path / "retrain")]) == 0
    assert genotype.normal and "test_acc" in json.loads((tmp_path / "retrain" / "result.json").read_text())


def test_cli_variant_defaults_and_refusals(tmp_path, capsys):
    parser = cli.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["search", "darts", "--help"])
    assert "--method gdas --gdas-variant authors: 250 on cifar10 and cifar100" in " ".join(capsys.readouterr().out.split())
    for dataset, expected in [("cifar10", {"epochs": 250, "batch_size": 256, "weight_decay": 5e-4,
                                           "init_channels": 16, "layers": 6, "lr": 0.025, "lr_min": 0.001}),
                              ("digits", {"weight_decay": 5e-4, "layers": 6, "epochs": 12})]:
        args = parser.parse_args(["search", "darts", "--dataset", dataset, "--method", "gdas", "--gdas-variant",
                                  "authors"])
        settings, _ = cli.resolve_settings(args, *cli.SETTINGS["search", "darts"])
        assert {k: settings[k] for k in expected} == expected, dataset
    args = parser.parse_args(["search", "darts", "--dataset", "cifar10", "--method", "gdas"])
    settings, _ = cli.resolve_settings(args, *cli.SETTINGS["search", "darts"])
    assert (settings["epochs"], settings["weight_decay"], settings["gdas_variant"]) == (240, 3e-4, "default")
    bad = [(["--gdas-variant", "authors"], "--gdas-variant applies to --method gdas only"),
           (["--method", "gdas", "--gdas-variant", "authors", "--layers", "4"], "must be a multiple of 3"),
           (["--method", "gdas", "--gdas-variant", "authors", "--arch-weights", "softmax"], "takes no part flags"),
           (["--method", "gdas", "--gdas-variant", "other"], "invalid choice")]
    for flags, message in bad:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["search", "darts", *TINY, "--out", str(tmp_path / "bad"), *flags])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err, flags
