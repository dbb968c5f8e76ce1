"""DrNAS's progressive schedule (fastdnas.darts.progressive, SPEC 8.1): the pruning and the masked
Dirichlet draw against the formulas of fastdnas.reference_methods, the net2wider copies of every
candidate (weights, BatchNorm statistics, momentum buffers), every backend of the pruned and widened
supernet equal to the formulas in float64, the stage-local warm-up, and a search resumed across the
stage boundary equal to an uninterrupted one."""
import copy
import math

import pytest
import torch
import torch.nn as nn

from fastdnas import cli, reference_methods
from fastdnas.darts import progressive
from fastdnas.darts.composed import preset_network
from fastdnas.data.base import ImageSet
from fastdnas.nn.operations import DilConv, FactorizedReduce, SepConv
from fastdnas.search import Search, SearchConfig, load_checkpoint, save_checkpoint
from conftest import rel_err

pytestmark = pytest.mark.usefixtures("one_thread")
SCHEDULE = {"partial_channels": 4, "stage_partial_channels": (4, 2), "stage_keep_ops": (7, 4)}


def staged(backend="fused", seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    net = preset_network("drnas", SCHEDULE, C=8, num_classes=5, layers=3, backend=backend).to(dtype)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(torch.randn_like(p))
        for m in net.modules():  # distinct running statistics, so that a wrong copy shows
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn_like(m.running_mean))
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
    return net


def test_prune_equals_the_formula():
    torch.manual_seed(0)
    theta = torch.randn(14, 7, dtype=torch.float64)
    want_theta, want_mask = reference_methods.drnas_prune(theta, 4)
    mask = progressive.prune(theta, 4)
    assert torch.equal(mask, want_mask) and torch.equal(theta, want_theta)
    assert (mask.sum(1) == 4).all() and (theta[~mask] == 0).all()
    # A second pruning ranks the entries pruned before below every kept one, whatever their value.
    theta = torch.where(mask, theta, torch.full_like(theta, 50.0))
    want_theta, want_mask = reference_methods.drnas_prune(theta, 2, mask)
    new_mask = progressive.prune(theta, 2, mask)
    assert torch.equal(new_mask, want_mask) and torch.equal(theta, want_theta)
    assert not (new_mask & ~mask).any()


@pytest.mark.parametrize("backend", ["fused", "fused_sum", "reference"])
def test_pruned_and_widened_backends_equal_the_formulas(backend):
    net = staged(backend)
    net.enter_stage(1, torch.Generator().manual_seed(3))
    assert net.partial_channels == 2 and all(e.partial_channels == 2 for c in net.cells for e in c._ops)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    probe = torch.randn(2, 5, dtype=torch.float64)
    names, params = zip(*net.named_parameters())

    def logits_and_grads(logits):
        grads = torch.autograd.grad((logits * probe).sum(), params, allow_unused=True, materialize_grads=True)
        return logits.detach(), grads

    torch.manual_seed(5)  # the same Dirichlet draw for both
    logits, grads = logits_and_grads(net(x))
    torch.manual_seed(5)
    want_logits, want_grads = logits_and_grads(reference_methods.composed_forward(net, x,
                                                                                reference_methods.composed_weights(net)))
    assert rel_err(logits, want_logits) <= 1e-10
    for name, g, w in zip(names, grads, want_grads):
        assert rel_err(g, w) <= 1e-10, name
    theta_grad = dict(zip(names, grads))["alphas_normal"]
    assert theta_grad[net.mask_normal].abs().min() > 0  # the kept theta are reached
    # The masked draw: pruned operations weigh exactly 0, rows sum to 1, as the formula.
    torch.manual_seed(7)
    weights = net.sample_weights()
    torch.manual_seed(7)
    want = reference_methods.composed_weights(net)
    for w, ref, mask in zip(weights, want, (net.mask_normal, net.mask_reduce)):
        assert torch.equal(w[~mask], torch.zeros_like(w[~mask]))
        assert rel_err(w, ref) <= 1e-12 and rel_err(w.sum(1), torch.ones(14, dtype=w.dtype)) <= 1e-12
    # Decoding: the softmax of theta over the kept operations (the pruned ones never chosen).
    normal, _ = net.decode_weights()
    assert rel_err(normal, reference_methods.masked_rows(reference_methods.softmax_rows(net.alphas_normal.detach()),
                                                         net.mask_normal)) <= 1e-12


def test_widening_copies_as_net2wider(monkeypatch):
    """Every widened tensor is cat(old, old[index]) with the index chain of operations.py's wider():
    a depthwise convolution's new filters and the next 1x1 convolution's new input columns share an
    index, its BatchNorm the 1x1 convolution's output index; running statistics and momentum
    buffers grow with them."""
    net = staged()
    draws = []
    original = progressive._random_index
    monkeypatch.setattr(progressive, "_random_index", lambda *a: draws.append(original(*a)) or draws[-1])
    old = copy.deepcopy(net)
    weights = list(net.weight_parameters())
    sgd = torch.optim.SGD(weights, lr=0.1, momentum=0.9)
    for p in weights:  # an elementwise function of the weight: it must stay one after the growth
        sgd.state[p]["momentum_buffer"] = p.detach() ** 3
    progressive.widen_momentum(sgd, net.enter_stage(1, torch.Generator().manual_seed(1)))
    grow = reference_methods.net2wider
    draws = iter(draws)
    checked = set()
    for cell, old_cell in zip(net.cells, old.cells):
        for edge, old_edge in zip(cell._ops, old_cell._ops):
            new = edge.channels // 2
            for op, was in zip(edge._ops, old_edge._ops):
                if isinstance(op, (SepConv, DilConv)):
                    for dw, pw, bn in ((1, 2, 3), (5, 6, 7)) if isinstance(op, SepConv) else ((1, 2, 3),):
                        a, b = next(draws), next(draws)
                        assert torch.equal(op.op[dw].weight, grow(was.op[dw].weight, 0, a))
                        assert op.op[dw].groups == op.op[dw].in_channels == op.op[dw].out_channels == new
                        assert torch.equal(op.op[pw].weight, grow(grow(was.op[pw].weight, 1, a), 0, b))
                        for stat in ("running_mean", "running_var"):
                            assert torch.equal(getattr(op.op[bn], stat), grow(getattr(was.op[bn], stat), 0, b))
                    checked.add(type(op))
                elif isinstance(op, nn.Sequential):
                    c = next(draws)
                    assert torch.equal(op[1].running_mean, grow(was[1].running_mean, 0, c)) and op[1].num_features == new
                    checked.add("pool")
                elif isinstance(op, FactorizedReduce):
                    ins1, out1, ins2, out2 = (next(draws) for _ in range(4))
                    assert torch.equal(op.conv_1.weight, grow(grow(was.conv_1.weight, 1, ins1), 0, out1))
                    assert torch.equal(op.conv_2.weight, grow(grow(was.conv_2.weight, 1, ins2), 0, out2))
                    half = was.conv_1.out_channels
                    assert torch.equal(op.bn.running_var, torch.cat([grow(was.bn.running_var[:half], 0, out1),
                                                                     grow(was.bn.running_var[half:], 0, out2)]))
                    checked.add(FactorizedReduce)
    assert checked == {SepConv, DilConv, "pool", FactorizedReduce} and next(draws, None) is None
    for p in weights:
        assert torch.equal(sgd.state[p]["momentum_buffer"], p.detach() ** 3)
    # Outside the edges' candidates nothing changed (the cells' preprocessing keeps C channels).
    for (name, p), (_, q) in zip(net.named_parameters(), old.named_parameters()):
        if "._ops." not in name and not name.startswith("alphas"):
            assert torch.equal(p, q), name


def test_widened_dil_conv_duplicates_its_channels(monkeypatch):
    """The function of a widened candidate, up to the duplication rule: fed with its input's channels
    duplicated by the depthwise index, a DilConv's new output channels are copies of the channels
    its 1x1 index names (no Net2Net rescaling, so the old channels change: the new columns add in)."""
    torch.manual_seed(0)
    op = DilConv(4, 4, 3, 1, 2, 2, affine=False).double()
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    draws = []
    original = progressive._random_index
    monkeypatch.setattr(progressive, "_random_index", lambda *a: draws.append(original(*a)) or draws[-1])
    progressive.widen_candidate(op, 7, torch.Generator().manual_seed(2), [])
    a, b = draws
    y = op(torch.cat([x, x[:, a]], dim=1))
    assert y.shape[1] == 7
    assert rel_err(y[:, 4:], y[:, b]) <= 1e-12


def tiny_search(net, epochs=4, arch_start=1):
    data = ImageSet(torch.randn(8, 3, 8, 8), torch.arange(8) % 5, torch.zeros(3), torch.ones(3))
    config = SearchConfig(epochs=epochs, batch_size=4, arch_start_epoch=arch_start, arch_lr=0.05)
    return Search(net, data, data, config, progress=False, log=lambda *a: None)


def test_stage_boundary_in_the_search_loop():
    net = staged(dtype=torch.float32)
    search = tiny_search(net)
    start = [a.detach().clone() for a in net.arch_parameters()]
    history = search.run(until=2)
    alphas = history["alphas"]
    assert all(torch.equal(a, s) for a, s in zip(alphas[0], start))  # stage 1, local epoch 0: no theta update
    assert not torch.equal(alphas[1][0], start[0])
    search.run()
    assert [r["stage"] for r in history["epochs"]] == [0, 0, 1, 1]
    assert [r["arch_updates"] for r in history["epochs"]] == [False, True, False, True]
    # Stage 2, local epoch 0: theta is the pruned theta of epoch 2's end, not updated.
    assert torch.equal(alphas[2][0], reference_methods.drnas_prune(alphas[1][0], 4)[0])
    assert torch.equal(alphas[2][1], reference_methods.drnas_prune(alphas[1][1], 4)[0])
    assert not torch.equal(alphas[3][0], alphas[2][0])
    # The cosine schedule runs over all 4 epochs; the momentum buffers have the widened shapes.
    lrs = [r["lr"] for r in history["epochs"]]
    lr, lr_min = search.config.lr, search.config.lr_min
    assert lrs == [lr_min + (lr - lr_min) * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    for p in search.weights:
        assert search.weight_optimizer.state[p]["momentum_buffer"].shape == p.shape


TINY = ["search", "darts", "--dataset", "synthetic", "--method", "drnas", "--init-channels", "4", "--layers", "2",
        "--batch-size", "32", "--epochs", "4", "--arch-start-epoch", "1", "--device", "cpu", "--threads", "1"]


def test_resume_across_the_stage_boundary(tmp_path, monkeypatch, no_plots):
    assert cli.main([*TINY, "--out", str(tmp_path / "straight")]) == 0
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    assert straight["schedule"]["stage"] == 1 and straight["schedule"]["masks"][0].sum(1).eq(4).all()
    original_run = Search.run
    for stop in (2, 3):  # killed just before the boundary, and after it
        out = tmp_path / f"resumed-{stop}"
        monkeypatch.setattr(Search, "run", lambda self, until=None: original_run(self, until=stop))
        assert cli.main([*TINY, "--out", str(out)]) == 0
        assert load_checkpoint(out / "checkpoint.pt")["schedule"]["stage"] == (stop > 2)
        monkeypatch.setattr(Search, "run", original_run)
        assert cli.main([*TINY, "--out", str(out), "--resume"]) == 0
        resumed = load_checkpoint(out / "checkpoint.pt")
        assert resumed["epoch"] == 4
        for name, value in straight["model"].items():
            assert torch.equal(resumed["model"][name], value), name
        for a, b in zip(straight["arch_parameters"], resumed["arch_parameters"]):
            assert torch.equal(a, b)
        assert all(torch.equal(a, b) for a, b in zip(straight["schedule"]["masks"], resumed["schedule"]["masks"]))
        assert (out / "genotype.json").read_text() == (tmp_path / "straight" / "genotype.json").read_text()


def test_resume_of_a_one_stage_run_saved_before_the_schedule(tmp_path, monkeypatch, no_plots):
    out = tmp_path / "old"
    original_run = Search.run
    monkeypatch.setattr(Search, "run", lambda self, until=None: original_run(self, until=1))
    assert cli.main([*TINY, "--drnas-stages", "1", "--epochs", "2", "--out", str(out)]) == 0
    monkeypatch.setattr(Search, "run", original_run)
    state = load_checkpoint(out / "checkpoint.pt")
    for name in ("drnas_stages", "drnas_partial_channels", "drnas_keep_ops"):  # as an older fastdnas saved it
        del state["extra"]["settings"][name]
    save_checkpoint(state, out / "checkpoint.pt")
    assert cli.main([*TINY, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2


def test_cli_schedule_flags(tmp_path, capsys, monkeypatch, no_plots):
    monkeypatch.setattr(Search, "run", lambda self, until=None: self.history)  # the start lines only
    assert cli.main([*TINY, "--out", str(tmp_path / "a")]) == 0
    assert ("2 stages: K 2 -> 1, operations 7 -> 4, C=4, 2 cells, 4 epochs, arch lr 0.003, architecture updates "
            "from epoch 2 of each 2-epoch stage") in capsys.readouterr().out
    assert cli.main([*TINY, "--drnas-stages", "1", "--out", str(tmp_path / "b")]) == 0
    assert "stages" not in capsys.readouterr().out
    for flags, message in ((["--drnas-keep-ops", "4", "2"], "--drnas-keep-ops needs one value per stage after the first"),
                           (["--epochs", "3"], "--epochs 3 must split evenly into the --drnas-stages 2 stages"),
                           (["--drnas-partial-channels", "3"], "stage_partial_channels must be positive divisors"),
                           (["--drnas-keep-ops", "8"], "stage_keep_ops must start at the 7 operations and not grow"),
                           (["--arch-weights", "softmax"], "--arch-weights softmax needs --drnas-stages 1")):
        with pytest.raises(SystemExit):
            cli.main([*TINY, *flags, "--out", str(tmp_path / "c")])
        assert message in capsys.readouterr().err, flags
    with pytest.raises(SystemExit):
        cli.main([*TINY[:4], "--method", "darts", *TINY[6:], "--drnas-stages", "1", "--out", str(tmp_path / "d")])
    assert "--drnas-stages applies to --method drnas only" in capsys.readouterr().err
