"""The successors' parts (fastdnas.darts.parts) and the composed supernet: every backend equals the
formulas of fastdnas.reference_methods in float64 (logits, gradients of every weight and every
architecture parameter, one full search step), with fixed noise for the sampled parts; the
presets; refused combinations; the command line."""
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fastdnas import cli, reference_methods
from fastdnas.darts import GdasNetwork, PCDartsNetwork, SearchNetwork, parts
from fastdnas.darts.composed import PRESETS, ComposedNetwork, check_parts, preset_network
from fastdnas.data.base import ImageSet
from fastdnas.search import Search, SearchConfig
from conftest import rel_err

pytestmark = pytest.mark.usefixtures("one_thread")
BACKENDS = ["fused", "fused_sum", "reference"]
# (sampler, partial_channels, edge normalisation): every sampler, partial channels with and
# without edge normalisation (DrNAS: Dirichlet with partial channels, no normalisation).
CONFIGS = [("softmax", 1, False), ("sigmoid", 1, False), ("dirichlet", 1, False), ("gumbel", 1, False),
           ("dirichlet", 2, False), ("sigmoid", 2, True)]


def composed(backend="fused", seed=0, **kwargs):
    torch.manual_seed(seed)
    args = dict(C=8, num_classes=5, layers=3, backend=backend)
    args.update(kwargs)
    net = ComposedNetwork(**args).double()
    with torch.no_grad():  # far from uniform, so a wrong weight shows
        for p in net.arch_parameters():
            p.copy_(torch.randn_like(p))
    net.tau.fill_(0.7)
    return net


def logits_and_grads(logits, net, probe):
    names, params = zip(*net.named_parameters())
    grads = torch.autograd.grad((logits * probe).sum(), params, allow_unused=True, materialize_grads=True)
    return logits.detach(), dict(zip(names, grads))


def assert_close_all(got, want, bound=1e-10):
    (logits, grads), (want_logits, want_grads) = got, want
    assert rel_err(logits, want_logits) <= bound
    assert grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        assert rel_err(grads[name], grad) <= bound, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampler,k,edge_norm", CONFIGS)
def test_backends_equal_the_formulas(sampler, k, edge_norm, backend):
    net = composed(backend, sampler=sampler, partial_channels=k, edge_normalisation=edge_norm)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    probe = torch.randn(2, 5, dtype=torch.float64)
    noise = tuple(torch.randn_like(a) for a in (net.alphas_normal, net.alphas_reduce))
    torch.manual_seed(5)  # the same Dirichlet draw for both
    got = logits_and_grads(net(x, noise=noise), net, probe)
    torch.manual_seed(5)
    weights = reference_methods.composed_weights(net, noise)
    want = logits_and_grads(reference_methods.composed_forward(net, x, weights), net, probe)
    assert_close_all(got, want)
    for name in ("alphas_normal", "alphas_reduce") + (("betas_normal", "betas_reduce") if edge_norm else ()):
        assert got[1][name].abs().sum() > 0, name  # reached


def test_plain_parts_are_the_existing_networks():
    """softmax alone is DARTS, partial channels + edge normalisation PC-DARTS, gumbel dense GDAS:
    same parameters (names and values from the same seed) and the same logits."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for make, parts_ in ((lambda: SearchNetwork(C=8, num_classes=5, layers=3), dict(sampler="softmax")),
                         (lambda: PCDartsNetwork(C=8, num_classes=5, layers=3, partial_channels=4),
                          dict(sampler="softmax", partial_channels=4, edge_normalisation=True)),
                         (lambda: GdasNetwork(C=8, num_classes=5, layers=3, sampled_only=False),
                          dict(sampler="gumbel"))):
        torch.manual_seed(1)
        old = make().double()
        torch.manual_seed(1)
        new = ComposedNetwork(C=8, num_classes=5, layers=3, **parts_).double()
        old_state = old.state_dict()
        new_state = {k: v for k, v in new.state_dict().items() if k in old_state}
        assert new_state.keys() == old_state.keys()
        assert all(torch.equal(new_state[k], old_state[k]) for k in old_state)
        new.load_state_dict(old_state, strict=False)
        if parts_["sampler"] == "gumbel":
            gumbels = (torch.randn(14, 8, dtype=torch.float64), torch.randn(14, 8, dtype=torch.float64))
            old.tau.fill_(0.7), new.tau.fill_(0.7)
            assert torch.equal(old(x, gumbels), new(x, noise=gumbels))
        else:
            assert torch.equal(old(x), new(x))


def test_regularisers_equal_the_formulas():
    torch.manual_seed(0)
    alphas = [torch.randn(14, 7, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    for ours, formula in ((lambda a: parts.beta_decay_weight(7) * parts.beta_decay_loss(a),
                           lambda a: reference_methods.beta_decay(a, 7)),
                          (lambda a: parts.ZERO_ONE_WEIGHT * parts.zero_one_loss(a), reference_methods.zero_one),
                          (lambda a: parts.DIRICHLET_KL_WEIGHT * parts.dirichlet_kl(a), reference_methods.dirichlet_kl)):
        got, want = ours(alphas), formula(alphas)
        assert rel_err(got, want) <= 1e-12
        for g, w in zip(torch.autograd.grad(got, alphas), torch.autograd.grad(want, alphas)):
            assert rel_err(g, w) <= 1e-12
    # beta-decay's gradient is softmax / |E| per cell, times lambda; lambda_t = 50 t / 100
    grad = torch.autograd.grad(parts.beta_decay_loss(alphas), alphas[0])[0]
    torch.testing.assert_close(grad, F.softmax(alphas[0], -1) / 14)
    assert parts.beta_decay_weight(0) == 0 and parts.beta_decay_weight(99) == 49.5
    assert parts.sdarts_epsilon(0, 50) == 0.03 and abs(parts.sdarts_epsilon(49, 50) - (0.03 + 0.27 * 49 / 50)) < 1e-15


def test_simplex_clip_and_random_smoothing():
    w = torch.tensor([[0.5, -0.2, 0.9], [-0.1, -0.3, -0.05], [1.4, 0.2, 0.0]], dtype=torch.float64)
    clipped = parts.simplex_clip(w)
    assert torch.equal(clipped, reference_methods.clip_rows(w))
    assert torch.equal(clipped[1], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))  # argmax of the raw row
    simplex = F.softmax(torch.randn(14, 7, dtype=torch.float64), -1)
    u = torch.rand_like(simplex)
    got = parts.random_smoothing(simplex, 0.2, u)
    assert torch.equal(got, reference_methods.sdarts_random(simplex, 0.2, u))
    torch.testing.assert_close(got.sum(-1), torch.ones(14, dtype=torch.float64))


def test_adversarial_perturbation_equals_the_formula():
    net = composed("fused", sampler="softmax", perturbation="adversarial", primitives=PRESETS["sdarts-adv"]["primitives"])
    net.set_search_epoch(40, 50)  # a large epsilon
    x, y = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (2,))
    simplex = [F.softmax(a.detach(), -1) for a in (net.alphas_normal, net.alphas_reduce)]
    uniform = [torch.rand_like(a) for a in simplex]
    loss_fn = lambda model, inputs, targets: F.cross_entropy(model(inputs), targets)
    with net.perturbed(loss_fn, x, y, noise=uniform):
        got = [w.clone() for w in net.override]
        assert net.training  # back in training mode for the weight step
    assert net.override is None
    reference = copy.deepcopy(net).eval()
    want = reference_methods.sdarts_adversarial(
        lambda w: F.cross_entropy(reference_methods.composed_forward(reference, x, w), y), simplex,
        parts.sdarts_epsilon(40, 50), uniform)
    for g, w, a0 in zip(got, want, simplex):
        assert rel_err(g, w) <= 1e-10
        assert not torch.equal(g, a0)  # this attack raised the loss: kept
        torch.testing.assert_close(g.sum(-1), torch.ones(len(g), dtype=torch.float64))


def test_threshold_selection():
    sig = torch.sigmoid(torch.randn(14, 7) * 3)
    primitives = PRESETS["fair-darts"]["primitives"]
    assert parts.threshold_cell(sig, 4, primitives) == reference_methods.fair_threshold(sig, 4, primitives)
    sig = torch.full((14, 7), 0.5)
    sig[0, 3] = sig[1, 4] = 0.9  # node 0 keeps both edges; the other nodes none
    assert parts.threshold_cell(sig, 4, primitives) == [(primitives[3], 2, 0), (primitives[4], 2, 1)]


def oracle_step(net, batches, config, opt_state=None):
    """One search step written out: Adam on d/dalpha [CE(val) + regulariser], then SGD (momentum,
    weight decay, clip 5) on the weights with the perturbed weights of the weight step."""
    x, y, vx, vy = batches
    arch, weights = net.arch_parameters(), net.weight_parameters()
    alphas = [net.alphas_normal, net.alphas_reduce]
    loss = F.cross_entropy(reference_methods.composed_forward(net, vx, reference_methods.composed_weights(net)), vy)
    if net.regulariser == "beta-decay":
        loss = loss + reference_methods.beta_decay(alphas, net.epoch)
    elif net.regulariser == "zero-one":
        loss = loss + reference_methods.zero_one(alphas)
    elif net.regulariser == "dirichlet-kl":
        loss = loss + reference_methods.dirichlet_kl(alphas)
    grads = torch.autograd.grad(loss, arch)
    adam = torch.optim.Adam(arch, lr=config.arch_lr, betas=config.arch_betas, weight_decay=config.arch_weight_decay)
    for p, g in zip(arch, grads):
        p.grad = g
    adam.step()
    if net.perturbation == "random":
        simplex = [reference_methods.softmax_rows(a.detach()) for a in alphas]
        w = [reference_methods.sdarts_random(a, parts.sdarts_epsilon(net.epoch, net.epochs), torch.rand_like(a))
             for a in simplex]
    else:
        w = [t.detach() for t in reference_methods.composed_weights(net)]
    loss = F.cross_entropy(reference_methods.composed_forward(net, x, w), y)
    grads = torch.autograd.grad(loss, weights)
    sgd = torch.optim.SGD(weights, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    for p, g in zip(weights, grads):
        p.grad = g * min(1.0, config.grad_clip / (float(norm) + 1e-6))
    sgd.step()


@pytest.mark.parametrize("method,backend", [("drnas", "fused"), ("sdarts-rs", "fused"), ("sdarts-rs", "fused_sum"),
                                            ("sdarts-rs", "reference"), ("beta-darts", "fused"),
                                            ("fair-darts", "fused"), ("dirichlet-kl", "fused")])
def test_one_search_step_equals_the_formulas(method, backend):
    overrides = {"partial_channels": 2}
    if method == "dirichlet-kl":
        method, overrides = "drnas", {"partial_channels": 2, "regulariser": "dirichlet-kl"}
    torch.manual_seed(0)
    net = preset_network(method, overrides, C=8, num_classes=5, layers=3, backend=backend).double()
    oracle = copy.deepcopy(net)
    config = SearchConfig(batch_size=4, epochs=10)
    search = Search(net, [0] * 4, [0] * 4, config, progress=False, log=lambda *a: None)
    net.set_search_epoch(3, 10), oracle.set_search_epoch(3, 10)
    batches = (torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (4,)),
               torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (4,)))
    torch.manual_seed(9)  # the same draws (Dirichlet, smoothing) in the same order
    search.search_step(*batches)
    torch.manual_seed(9)
    oracle_step(oracle, batches, config)
    want = dict(oracle.named_parameters())
    for name, p in net.named_parameters():
        assert rel_err(p, want[name]) <= 1e-9, name


def test_refused_combinations_name_the_part():
    with pytest.raises(ValueError, match="perturbation 'random'.*sampler 'softmax'"):
        check_parts(sampler="dirichlet", perturbation="random")
    with pytest.raises(ValueError, match="regulariser 'zero-one'"):
        check_parts(sampler="softmax", regulariser="zero-one")
    with pytest.raises(ValueError, match="gumbel"):
        check_parts(sampler="gumbel", partial_channels=2)
    with pytest.raises(ValueError, match="selection 'threshold'"):
        check_parts(selection="threshold")
    with pytest.raises(ValueError, match="sampler must be one of"):
        check_parts(sampler="sparsemax")
    with pytest.raises(ValueError, match="partial_channels must divide"):
        ComposedNetwork(C=8, partial_channels=3)


def test_cli_presets_and_refusals(tmp_path, capsys):
    # a preset replaced by a part that does not fit it: refused, naming the flags
    with pytest.raises(SystemExit):
        cli.main(["search", "darts", "--dataset", "synthetic", "--method", "drnas", "--perturbation", "random",
                  "--out", str(tmp_path / "a")])
    assert "--perturbation random" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["search", "darts", "--dataset", "synthetic", "--method", "gdas", "--partial-channels", "2",
                  "--out", str(tmp_path / "b")])
    assert "applies to --method pc-darts or drnas only" in capsys.readouterr().err
    assert set(PRESETS) <= set(cli.SEARCH_METHODS)
    settings = {**cli.SEARCH_DEFAULTS, **cli.SEARCH_DATASET_DEFAULTS["cifar10"],
                **cli.SEARCH_METHOD_DEFAULTS["fair-darts", "cifar10"], "method": "fair-darts"}
    assert (settings["arch_lr"], settings["arch_betas"], settings["lr"], settings["batch_size"]) == (3e-3, [0.9, 0.999],
                                                                                                   0.005, 128)
    assert cli.method_parts({**settings, "method": "sdarts-adv"})["perturbation"] == "adversarial"


def test_cli_fair_darts_search_writes_the_threshold_cell(tmp_path, monkeypatch):
    import fastdnas.viz

    for plot in ("plot_genotype", "plot_alpha_history"):  # the pictures take seconds; tested in test_cli.py
        monkeypatch.setattr(fastdnas.viz, plot, lambda *args, **kwargs: None)
    out = tmp_path / "fair"
    assert cli.main(["search", "darts", "--dataset", "synthetic", "--method", "fair-darts", "--epochs", "1",
                     "--batch-size", "8", "--threads", "1", "--out", str(out)]) == 0
    import json

    selected = json.loads((out / "selected.json").read_text())
    assert selected["selection"] == "threshold" and set(selected) == {"selection", "normal", "reduce"}
    assert (out / "genotype.json").exists()


# --- DARTS-PT ----------------------------------------------------------------------------------


class DoubleImages(ImageSet):
    """Batches in float64."""

    def batch(self, indices, generator=None):
        images, labels = super().batch(indices, generator)
        return images.double(), labels


def tiny_pt_search(backend):
    from fastdnas.data import load_synthetic

    torch.manual_seed(0)
    net = preset_network("darts-pt", C=4, num_classes=5, layers=3, steps=2, multiplier=2, backend=backend).double()
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(torch.randn_like(p))
    data = load_synthetic(num_classes=5, image_size=8, train_size=16, test_size=4)
    train, val = (DoubleImages(**{f.name: getattr(d, f.name) for f in dataclasses.fields(d)})
                  for d in (data.search_train, data.search_val))
    return Search(net, train, val, SearchConfig(batch_size=8, epochs=1), progress=False, log=lambda *a: None)


def test_darts_pt_projection_equals_the_formula():
    from fastdnas.darts.perturbation_selection import projected

    soft = F.softmax(torch.randn(5, 7, dtype=torch.float64), -1)
    ops = torch.tensor([-1, 3, -1, 0, -1])
    removed = torch.tensor([False, False, True, False, False])
    assert torch.equal(projected(soft, ops, removed), reference_methods.darts_pt_weights(soft, ops, removed))


def test_darts_pt_selection_rules(monkeypatch):
    """An op decision keeps the op whose removal costs the most accuracy; an edge decision removes,
    one at a time, the edge whose removal leaves the highest accuracy, until two remain."""
    from fastdnas.darts.perturbation_selection import PerturbationSelection

    search = tiny_pt_search("fused")
    selection = PerturbationSelection(search, interval=1, log=lambda *a: None)
    assert selection.epochs == 6  # steps=2: 5 op decisions and 1 edge decision, one per epoch
    drop = [0.1, 0.0, 0.5, 0.2, 0.0, 0.3, 0.05]  # accuracy lost without op k
    base = selection.weights()[0]
    monkeypatch.setattr(selection, "accuracy", lambda w: 1.0 - drop[int((w[0] != base).nonzero()[0, 1])])
    edge, op, scores = selection.decide_op(0)
    assert op == 2 and selection.ops[0][edge] == 2
    # edges of node 1 (states 0, 1, 2 = edges 2, 3, 4): removing edge 3 hurts least
    losses = {2: 0.3, 3: 0.01, 4: 0.2}
    monkeypatch.setattr(selection, "accuracy", lambda w: 1.0 - sum(l for e, l in losses.items() if not w[0][e].any()))
    node, kept = selection.decide_edges(0)
    assert node == 1 and kept == [2, 4] and selection.removed[0].tolist() == [False, False, False, True, False]


def test_darts_pt_fused_and_reference_decide_alike():
    """The whole selection phase (decisions and fine-tuning) on the fused and on the reference
    backend: the same decisions, the same weights at the end (float64)."""
    from fastdnas.darts.perturbation_selection import PerturbationSelection

    results = []
    for backend in ("fused", "reference"):
        search = tiny_pt_search(backend)
        selection = PerturbationSelection(search, interval=1, seed=3, log=lambda *a: None).run()
        results.append((selection, dict(search.model.named_parameters())))
    (fused, fused_params), (reference, reference_params) = results
    assert [o.tolist() for o in fused.ops] == [o.tolist() for o in reference.ops]
    assert [r.tolist() for r in fused.removed] == [r.tolist() for r in reference.removed]
    assert all((o >= 0).all() for o in fused.ops)  # every edge decided
    for name, p in fused_params.items():
        assert rel_err(p, reference_params[name]) <= 1e-9, name
    assert fused.genotype() == reference.genotype()
