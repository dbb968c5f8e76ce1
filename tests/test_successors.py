"""PC-DARTS and GDAS: every backend equals the supernet written from the papers' formulas
(fastdnas.reference_methods) in float64, output and every gradient; edge normalisation and the
decoder; GDAS's sampling and temperature; the search loop and the command line."""
import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F

import fastdnas.ops
from fastdnas import cli, reference_methods
from fastdnas.darts import (GdasNetwork, PCDartsNetwork, channel_shuffle, edge_normalisation, genotype_from_text,
                            genotype_to_dict, hard_gumbel_softmax, load_genotype)
from fastdnas.darts.gdas import gumbel_noise
from fastdnas.darts.pc_darts import shuffle_cat
from fastdnas.data import load_synthetic
from fastdnas.decode import parse_cell
from fastdnas.search import Search, SearchConfig, load_checkpoint
from conftest import count_host_reads, package_files, rel_err, saved_bytes

pytestmark = pytest.mark.usefixtures("one_thread")
BACKENDS = ["fused", "fused_sum", "reference"]


def randomise_arch(net):
    with torch.no_grad():  # far from uniform, so a wrong weight shows
        for p in net.arch_parameters():
            p.copy_(torch.randn_like(p))
    return net


def pc_darts_network(backend="fused", partial_channels=4, **kwargs):
    # layers=3: a normal cell, then two reduction cells (the second after a reduction cell).
    # C=8: at least 2 channels per candidate (a 1x1 convolution of 1 channel before a BatchNorm has
    # a zero gradient, whose rounding noise no relative bound can hold).
    args = dict(C=8, num_classes=5, layers=3, backend=backend, partial_channels=partial_channels)
    args.update(kwargs)
    return randomise_arch(PCDartsNetwork(**args).double())


def gdas_network(backend="fused", **kwargs):
    net = randomise_arch(GdasNetwork(C=4, num_classes=5, layers=3, backend=backend, **kwargs).double())
    net.tau.fill_(0.7)
    return net


def output_and_grads(forward, net, x, probe):
    """(logits, gradients of every parameter by name; zeros where unused)."""
    logits = forward(x)
    names, params = zip(*net.named_parameters())
    grads = torch.autograd.grad((logits * probe).sum(), params, allow_unused=True, materialize_grads=True)
    return logits.detach(), dict(zip(names, grads))


def assert_equal_to_reference(got, want):
    (logits, grads), (want_logits, want_grads) = got, want
    assert rel_err(logits, want_logits) <= 1e-10
    assert grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        assert rel_err(grads[name], grad) <= 1e-10, name


# --- PC-DARTS -------------------------------------------------------------------------------


def test_channel_shuffle_and_one_copy_shuffle_cat():
    x = torch.randn(2, 12, 3, 5)
    assert torch.equal(channel_shuffle(x, 4), reference_methods.shuffle_channels(x, 4))
    # channel i * K + g of the shuffle is input channel g * c + i
    assert torch.equal(channel_shuffle(x, 4)[:, 1 * 4 + 2], x[:, 2 * 3 + 1])
    mixed, rest = torch.randn(2, 3, 4, 4), torch.randn(2, 9, 4, 4)
    assert torch.equal(shuffle_cat(mixed, rest, 4), channel_shuffle(torch.cat([mixed, rest], 1), 4))


def test_edge_normalisation_is_a_softmax_per_node():
    betas = torch.randn(14)
    weights = edge_normalisation(betas, 4)
    start = 0
    for node in range(4):
        n = 2 + node
        torch.testing.assert_close(weights[start : start + n], torch.softmax(betas[start : start + n], 0))
        start += n


@pytest.mark.parametrize("partial_channels", [2, 4])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [(8, 8), (8, 12)])
def test_pc_darts_backends_equal_the_papers_formulas(size, backend, partial_channels):
    """Logits and the gradients of the alphas, the betas and every weight, normal and reduction
    cells, training and eval mode."""
    torch.manual_seed(0)
    net = pc_darts_network(backend, partial_channels)
    probe = torch.randn(2, 5, dtype=torch.float64)
    for mode in ("train", "eval"):
        getattr(net, mode)()
        x = torch.randn(2, 3, *size, dtype=torch.float64)
        want = output_and_grads(lambda x: reference_methods.pc_darts_forward(net, x), net, x, probe)
        got = output_and_grads(net, net, x, probe)
        assert_equal_to_reference(got, want)
        for name in ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"):
            assert got[1][name].abs().min() > 0, name  # every entry reached


def test_pc_darts_fused_keeps_batchnorm_statistics_of_the_reference():
    torch.manual_seed(0)
    fused = pc_darts_network("fused")
    reference = copy.deepcopy(fused)
    reference.backend = "reference"
    for _ in range(2):
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
        fused(x), reference(x)
    reference_buffers = dict(reference.named_buffers())
    for name, buffer in fused.named_buffers():
        torch.testing.assert_close(buffer, reference_buffers[name], rtol=1e-10, atol=1e-12, msg=name)


def test_pc_darts_fused_node_is_one_mixed_node_and_one_mixed_sum_call(monkeypatch):
    calls = {"mixed_node": 0, "mixed_sum": 0}
    for name in calls:
        original = getattr(fastdnas.ops, name)

        def counting(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(fastdnas.ops, name, counting)
    net = pc_darts_network("fused")
    net(torch.randn(2, 3, 8, 8, dtype=torch.float64))
    nodes = len(net.cells) * net.steps
    assert calls == {"mixed_node": nodes, "mixed_sum": nodes}


def test_pc_darts_fused_saves_less_for_backward_than_the_reference():
    torch.manual_seed(0)
    net = PCDartsNetwork(C=8, num_classes=10, layers=5)
    x = torch.randn(4, 3, 16, 16)
    saved = {}
    for backend in BACKENDS:
        net.backend = backend
        saved[backend] = saved_bytes(lambda: net(x).sum())
    assert saved["fused"] <= 0.7 * saved["reference"]


def test_pc_darts_genotype_ranks_edges_by_alpha_times_beta():
    torch.manual_seed(0)
    net = pc_darts_network()
    normal, reduce = edge_normalisation(net.betas_normal, 4), edge_normalisation(net.betas_reduce, 4)
    want = [parse_cell(torch.softmax(a, -1) * b[:, None], 4) for a, b in
            ((net.alphas_normal, normal), (net.alphas_reduce, reduce))]
    genotype = net.genotype()
    assert (genotype.normal, genotype.reduce) == tuple(want)
    # Equal alphas: the betas alone decide which two edges each node keeps.
    with torch.no_grad():
        net.alphas_normal.zero_()
        net.alphas_normal[:, 4] = 1.0  # sep_conv_3x3 everywhere
        net.betas_normal.copy_(torch.arange(14.0))  # later edges of a node stronger
    kept = [j for _, j in net.genotype().normal]
    assert kept == [1, 0, 2, 1, 3, 2, 4, 3]


def test_pc_darts_arguments_are_checked():
    with pytest.raises(ValueError, match="partial_channels"):
        PCDartsNetwork(C=6, partial_channels=4)
    with pytest.raises(ValueError, match="partial_channels"):
        PCDartsNetwork(C=8, partial_channels=0)
    net = PCDartsNetwork(C=4, num_classes=3, layers=3)
    assert len(net.arch_parameters()) == 4
    arch = {id(p) for p in net.arch_parameters()}
    assert not any(id(p) in arch for p in net.weight_parameters())
    assert sum(p.numel() for p in net.parameters()) == (sum(p.numel() for p in net.weight_parameters())
                                                         + sum(p.numel() for p in net.arch_parameters()))


# --- GDAS -----------------------------------------------------------------------------------


def fixed_gumbels(net, forced=None):
    """Gumbel noise for both cells; ``forced`` [edges] of op indices makes those the samples."""
    gumbels = [gumbel_noise(net.alphas_normal), gumbel_noise(net.alphas_reduce)]
    if forced is not None:
        for g in gumbels:
            g[torch.arange(g.shape[0]), forced] += 1e3
    return gumbels


@pytest.mark.parametrize("forced", [None, "random", "none"])
@pytest.mark.parametrize("sampled_only", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gdas_backends_equal_the_papers_formulas(backend, sampled_only, forced):
    """The same fixed Gumbel noise: logits and the gradients of the alphas and every weight, normal
    and reduction cells; with samples forced to include 'none' edges, or 'none' everywhere."""
    torch.manual_seed(1)
    net = gdas_network(backend, sampled_only=sampled_only)
    edges = net.alphas_normal.shape[0]
    indices = {None: None, "random": torch.randint(0, 8, (edges,)), "none": torch.zeros(edges, dtype=torch.long)}
    gumbels = fixed_gumbels(net, indices[forced])
    probe = torch.randn(2, 5, dtype=torch.float64)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    want = output_and_grads(lambda x: reference_methods.gdas_forward(net, x, gumbels), net, x, probe)
    got = output_and_grads(lambda x: net(x, gumbels), net, x, probe)
    assert_equal_to_reference(got, want)
    if forced is None:  # the straight-through weight reaches every alpha of an edge (forced: saturated)
        assert got[1]["alphas_normal"].abs().min() > 0


def test_gdas_gradient_reaches_only_the_sampled_candidates_weights():
    torch.manual_seed(2)
    net = gdas_network()
    gumbels = fixed_gumbels(net, torch.full((14,), 4))  # sep_conv_3x3 on every edge
    grads = output_and_grads(lambda x: net(x, gumbels), net, torch.randn(2, 3, 8, 8, dtype=torch.float64),
                             torch.randn(2, 5, dtype=torch.float64))[1]
    for name, grad in grads.items():
        if "._ops." in name:
            op = int(name.split("._ops.")[2].split(".")[0])
            assert (grad.abs().sum() > 0) == (op == 4), name


def test_sampled_gdas_fused_node_is_one_mixed_node_call_and_keeps_batchnorm_statistics(monkeypatch):
    """Sampled pools, skips and convolutions (every kind somewhere, 'none' on some edges): one
    mixed_node call per node, and the BatchNorm running statistics of the reference after two
    forward passes with different samples."""
    torch.manual_seed(5)
    fused = gdas_network("fused")
    reference = copy.deepcopy(fused)
    reference.backend = "reference"
    calls = []
    original = fastdnas.ops.mixed_node
    monkeypatch.setattr(fastdnas.ops, "mixed_node", lambda *a, **k: calls.append(1) or original(*a, **k))
    for forced in (torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 0, 5]), torch.tensor([3, 7, 6, 5, 4, 3, 2] * 2)):
        gumbels = fixed_gumbels(fused, forced)
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
        fused(x, gumbels), reference(x, gumbels)
    assert len(calls) == 2 * len(fused.cells) * fused.steps
    reference_buffers = dict(reference.named_buffers())
    for name, buffer in fused.named_buffers():
        torch.testing.assert_close(buffer, reference_buffers[name], rtol=1e-10, atol=1e-12, msg=name)


def test_hard_gumbel_softmax_samples_the_softmax():
    torch.manual_seed(3)
    alphas = torch.randn(8)
    rows = alphas.expand(20000, 8).clone().requires_grad_()
    hardwts, index = hard_gumbel_softmax(rows, torch.tensor(0.5))
    frequency = torch.bincount(index, minlength=8).double() / index.numel()
    assert (frequency - torch.softmax(alphas.double(), 0)).abs().max() < 0.015
    assert torch.equal(hardwts.detach(), F.one_hot(index, 8).to(hardwts.dtype))  # value: exactly one-hot
    (hardwts * torch.randn(8)).sum().backward()
    assert rows.grad.abs().min() > 0


def test_gdas_tau_schedule_and_search_loop():
    net = GdasNetwork(C=4, num_classes=3, layers=3, tau_max=10.0, tau_min=0.1)
    for epoch, tau in [(0, 10.0), (2, 5.05), (4, 0.1)]:
        net.set_search_epoch(epoch, 5)
        assert net.tau.item() == pytest.approx(tau)
    with pytest.raises(ValueError, match="tau_min"):
        GdasNetwork(C=4, tau_min=2.0, tau_max=1.0)
    data = load_synthetic(num_classes=3)
    search = Search(net, data.search_train, data.search_val, SearchConfig(epochs=2, batch_size=16), progress=False,
                    log=lambda *a: None, describe=lambda m: {"tau": float(m.tau)})
    records = search.run()["epochs"]
    assert [r["tau"] for r in records] == pytest.approx([10.0, 0.1])


@pytest.mark.parametrize("method", ["pc-darts", "gdas-dense", "gdas"])
def test_host_reads_inside_steps(monkeypatch, method):
    """PC-DARTS and dense GDAS read nothing inside a step; sampled GDAS once per forward pass."""
    torch.manual_seed(0)
    if method == "pc-darts":
        net = PCDartsNetwork(C=4, num_classes=3, layers=2, partial_channels=2)
    else:
        net = GdasNetwork(C=4, num_classes=3, layers=2, sampled_only=method == "gdas")
    data = load_synthetic(num_classes=3)
    search = Search(net, data.search_train, data.search_val, SearchConfig(epochs=1, batch_size=32),
                    progress=False, log=lambda *a: None)
    forwards = []
    net.register_forward_hook(lambda *args: forwards.append(1))
    callers = count_host_reads(monkeypatch)
    search.train_epoch(0, 0.025)
    ours = package_files(callers)
    sampled = [f for f in ours if f == os.path.join("darts", "gdas.py")]
    assert len(ours) - len(sampled) == 1  # the loss and accuracy sums, once at the end of the epoch
    assert len(sampled) == (len(forwards) if method == "gdas" else 0)


def test_sampled_gdas_refuses_cuda_graphs():
    data = load_synthetic(num_classes=3)
    with pytest.raises(ValueError, match="sampled_only=False"):
        Search(GdasNetwork(C=4, num_classes=3, layers=2), data.search_train, data.search_val,
               SearchConfig(epochs=1, batch_size=16), cuda_graphs=True)


@pytest.mark.parametrize("make", [lambda: PCDartsNetwork(C=4, num_classes=3, layers=3),
                                  lambda: GdasNetwork(C=4, num_classes=3, layers=3)])
def test_bf16_autocast_forward_and_backward(make):
    torch.manual_seed(0)
    net = make()
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x)
    logits.float().sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
    assert all(p.grad.dtype == torch.float32 for p in net.arch_parameters())


# --- command line ---------------------------------------------------------------------------

TINY = ["--dataset", "synthetic", "--init-channels", "4", "--layers", "2", "--batch-size", "32", "--device", "cpu",
        "--threads", "1"]


def search(out, *flags):
    return cli.main(["search", "darts", *TINY, "--out", str(out), *flags])


@pytest.mark.parametrize("method", ["pc-darts", "gdas"])
def test_cli_search_then_retrain(tmp_path, method):
    assert search(tmp_path, "--method", method, "--epochs", "1") == 0
    for name in ("genotype.json", "genotype.txt", "normal.png", "reduce.png", "alphas.png", "log.jsonl",
                 "checkpoint.pt", "settings.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    genotype = load_genotype(tmp_path / "genotype.json")
    assert genotype_to_dict(genotype_from_text((tmp_path / "genotype.txt").read_text())) == genotype_to_dict(genotype)
    (record,) = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert record["genotype"] == genotype_to_dict(genotype)
    assert ("tau" in record) == (method == "gdas")
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["extra"]["settings"]["method"] == method
    assert len(checkpoint["arch_parameters"]) == (4 if method == "pc-darts" else 2)
    assert cli.main(["train", "darts", "--dataset", "synthetic", "--epochs", "1", "--init-channels", "4", "--layers",
                     "2", "--device", "cpu", "--threads", "1", "--genotype", str(tmp_path / "genotype.json"),
                     "--out", str(tmp_path / "retrain")]) == 0
    assert "test_acc" in json.loads((tmp_path / "retrain" / "result.json").read_text())


def test_cli_gdas_resume_equals_uninterrupted(tmp_path, monkeypatch):
    import fastdnas.viz

    for plot in ("plot_genotype", "plot_alpha_history"):
        monkeypatch.setattr(fastdnas.viz, plot, lambda *args, **kwargs: None)
    assert search(tmp_path / "straight", "--method", "gdas", "--epochs", "2") == 0
    original_run = Search.run
    monkeypatch.setattr(Search, "run", lambda self, until=None: original_run(self, until=1))
    assert search(tmp_path / "resumed", "--method", "gdas", "--epochs", "2") == 0
    monkeypatch.setattr(Search, "run", original_run)
    assert search(tmp_path / "resumed", "--method", "gdas", "--epochs", "2", "--resume") == 0
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    for a, b in zip(straight["arch_parameters"], resumed["arch_parameters"], strict=True):
        assert torch.equal(a, b)


def test_cli_method_defaults_and_bad_method_flags(tmp_path, capsys):
    parser = cli.build_parser()
    for dataset, method, expected in [("cifar10", "pc-darts", {"batch_size": 256, "lr": 0.1, "lr_min": 0.0,
                                                                "arch_lr": 6e-4, "arch_start_epoch": 15,
                                                                "partial_channels": 4, "epochs": 50}),
                                      ("cifar10", "gdas", {"epochs": 240, "tau_max": 10.0, "tau_min": 0.1}),
                                      ("digits", "pc-darts", {"arch_lr": 6e-3, "arch_start_epoch": 4, "epochs": 12, "init_channels": 16}),
                                      ("digits", "gdas", {"epochs": 12, "batch_size": 64, "arch_lr": 3e-3}),
                                      ("cifar10", "darts", {"batch_size": 64, "arch_lr": 3e-4})]:
        args = parser.parse_args(["search", "darts", "--dataset", dataset, "--method", method])
        settings, _ = cli.resolve_settings(args, *cli.SETTINGS["search", "darts"])
        assert {k: settings[k] for k in expected} == expected, (dataset, method)
    args = parser.parse_args(["search", "darts", "--dataset", "cifar10", "--method", "pc-darts", "--lr", "0.05"])
    assert cli.resolve_settings(args, *cli.SETTINGS["search", "darts"])[0]["lr"] == 0.05  # flags win
    bad = [(["--partial-channels", "2"], "applies to --method pc-darts or drnas only"),
           (["--method", "pc-darts", "--partial-channels", "3"], "divisor of --init-channels"),
           (["--method", "gdas", "--unrolled"], "--unrolled does not apply"),
           (["--method", "gdas", "--tau-min", "5", "--tau-max", "1"], "tau-min"),
           (["--method", "gdas", "--cuda-graphs"], "--cuda-graphs needs a CUDA device")]
    for flags, message in bad:
        with pytest.raises(SystemExit) as exit_info:
            search(tmp_path / "bad", *flags)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err, flags


# --- CUDA graphs (run wherever CUDA is present) ------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def graph_search(method, cuda_graphs):
    torch.manual_seed(0)
    if method == "pc-darts":
        model = PCDartsNetwork(C=8, num_classes=4, layers=3, partial_channels=4)
    else:
        model = GdasNetwork(C=4, num_classes=4, layers=3, sampled_only=False)
    data = load_synthetic(num_classes=4, image_size=8, train_size=64)
    return Search(model, data.search_train, data.search_val, SearchConfig(batch_size=8, epochs=2, arch_lr=3e-2),
                  device="cuda", progress=False, log=lambda *a: None, cuda_graphs=cuda_graphs)


def cuda_batches(steps):
    generator = torch.Generator().manual_seed(1)
    return [[t.cuda() for _ in range(2) for t in (torch.randn(8, 3, 8, 8, generator=generator),
                                                   torch.randint(0, 4, (8,), generator=generator))]
            for _ in range(steps)]


@needs_cuda
def test_pc_darts_graph_replay_equals_eager():
    torch.backends.cudnn.deterministic = True
    eager, graphed = graph_search("pc-darts", False), graph_search("pc-darts", True)
    for batch in cuda_batches(8):
        losses = [search.search_step(*batch)[0].clone() for search in (eager, graphed)]
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    assert graphed.graphed_step.captured == ["arch", "weight"]
    for a, b in zip(graphed.model.arch_parameters(), eager.model.arch_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@needs_cuda
def test_dense_gdas_samples_inside_the_captured_graph():
    """Each replay draws new Gumbel noise (the device generator's offset advances), and a new tau
    (a buffer) reaches the graph; nothing synchronises with the host."""
    search = graph_search("gdas", True)
    batches = cuda_batches(10)
    for batch in batches[:6]:  # warm-up and capture
        search.search_step(*batch)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        before = [a.clone() for a in search.model.arch_parameters()]
        search.model.set_search_epoch(1, 2)
        for batch in batches[6:]:
            search.search_step(*batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert search.graphed_step.captured == ["arch", "weight"]
    assert search.model.tau.item() == pytest.approx(0.1)
    assert all(torch.isfinite(a).all() and not torch.equal(a, b)
               for a, b in zip(search.model.arch_parameters(), before))
