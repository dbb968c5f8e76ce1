"""The step path: CUDA-graph replay equals the eager step, no host reads inside a step, batches
prefetched to the device unchanged, and clear errors where graphs cannot be used."""
import copy
import sys

import pytest
import torch

from fastdnas import autodeeplab, cli, darts
from fastdnas.data import load_synthetic
from fastdnas.data.base import ImageSet, iterate_batches
from fastdnas.data.prefetch import DevicePrefetcher
from fastdnas.search import Architect, Search, SearchConfig, set_lr
from fastdnas.segmentation import segmentation_loss
from conftest import CUDA, DEVICES

needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine")


pytestmark = pytest.mark.usefixtures("one_thread")


def darts_search(device, unrolled=False, cuda_graphs=False, batch=8):
    torch.manual_seed(0)
    model = darts.SearchNetwork(C=4, num_classes=4, layers=3)
    data = load_synthetic(num_classes=4, image_size=8, train_size=64)
    config = SearchConfig(batch_size=batch, epochs=2, unrolled=unrolled, arch_lr=3e-2)
    return Search(model, data.search_train, data.search_val, config, device=device, progress=False,
                  log=lambda *a: None, cuda_graphs=cuda_graphs)


def autodeeplab_search(device, unrolled=False, cuda_graphs=False, batch=4):
    torch.manual_seed(0)
    model = autodeeplab.SearchNetwork(num_classes=3, layers=3, blocks=2, filter_multiplier=2)
    images = torch.randn(16, 3, 24, 24)
    labels = torch.randint(0, 3, (16,))  # placeholder set: the tests feed their own batches
    data = ImageSet(images, labels, torch.zeros(3), torch.ones(3))
    config = SearchConfig(batch_size=batch, epochs=2, unrolled=unrolled, arch_lr=3e-2)
    return Search(model, data, data, config, loss_fn=segmentation_loss, device=device, progress=False,
                  log=lambda *a: None, cuda_graphs=cuda_graphs)


def random_batches(space, steps, device, batch):
    generator = torch.Generator().manual_seed(1)
    if space == "darts":
        size, target_shape, classes = 8, (batch,), 4
    else:
        # 48x48: the coarsest level is 2x2, so its BatchNorms see 4 values per sample; at 24x24 and
        # batch 2 they see 2 in all, and rounding-level changes moved the losses by 5-10% within
        # 11 steps (test_replay_comparison_is_well_conditioned).
        size, target_shape, classes = 48, (batch, 48, 48), 3
    batches = []
    for _ in range(steps):
        batch_ = []
        for _ in range(2):  # train, val
            batch_ += [torch.randn(batch, 3, size, size, generator=generator).to(device),
                       torch.randint(0, classes, target_shape, generator=generator).to(device)]
        batches.append(batch_)
    return batches


SPACES = {"darts": (darts_search, 8), "autodeeplab": (autodeeplab_search, 4)}


def state_tensors(search):
    """Everything a step changes: parameters, BatchNorm statistics, optimizer state."""
    tensors = dict(search.model.state_dict())
    for name, optimizer in (("sgd", search.weight_optimizer), ("adam", search.architect.optimizer)):
        for i, state in enumerate(optimizer.state_dict()["state"].values()):
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{name}.{i}.{key}"] = value
    return tensors


# --- CUDA graphs: replay equals eager --------------------------------------------------------


REPLAY_STEPS = [False] * 5 + [True] * 6  # update_arch per step: weight graph replayed before the arch graph exists


def replay_learning_rate(step):
    # The next epoch's learning rate reaches the captured graph. Small rates: at 0.05 the tiny
    # Auto-DeepLab network's losses move by 1e-3 under a rounding-level change within 11 steps,
    # and at 0.01 / 0.005 by 2e-4 with one thread on the 2-core AMD EPYC VM (6e-7 with two);
    # at 0.005 / 0.0025 by at most 2e-7 with either.
    return 0.005 if step < 7 else 0.0025


@pytest.mark.parametrize("space", ["darts", "autodeeplab"])
def test_replay_comparison_is_well_conditioned(space):
    """The replay test below compares two runs that differ only by rounding (fused SGD, graphs);
    its tolerance means something only if a rounding-level change moves the losses by far less.
    Here: foreach SGD against fused SGD, on the CPU, with the replay test's setting."""
    make, batch = SPACES[space]
    batches = random_batches(space, len(REPLAY_STEPS), "cpu", batch)
    losses = []
    for fused in (False, True):
        search = make("cpu")
        for group in search.weight_optimizer.param_groups:
            group["fused"], group["foreach"] = fused, not fused
        run = []
        for step, (batch_, arch) in enumerate(zip(batches, REPLAY_STEPS)):
            set_lr(search.weight_optimizer, replay_learning_rate(step))
            run.append(search.search_step(*batch_, update_arch=arch)[0].detach())
        losses.append(torch.stack(run))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("unrolled", [False, True], ids=["first_order", "second_order"])
@pytest.mark.parametrize("space", ["darts", "autodeeplab"])
def test_graph_replay_equals_eager(space, unrolled):
    """Weight-only steps, then architecture updates, with a learning-rate change in between: the
    graphed search (3 eager warm-up calls per part, capture, replays) ends where the eager one does."""
    torch.backends.cudnn.deterministic = True
    make, batch = SPACES[space]
    eager, graphed = make("cuda", unrolled), make("cuda", unrolled, cuda_graphs=True)
    batches = random_batches(space, len(REPLAY_STEPS), "cuda", batch)
    losses = {"eager": [], "graphed": []}
    for step, (batch_, arch) in enumerate(zip(batches, REPLAY_STEPS)):
        for name, search in (("eager", eager), ("graphed", graphed)):
            set_lr(search.weight_optimizer, replay_learning_rate(step))
            loss, logits = search.search_step(*batch_, update_arch=arch)
            losses[name].append(loss.clone())
    assert graphed.graphed_step.captured == ["arch", "weight"]
    torch.testing.assert_close(torch.stack(losses["graphed"]), torch.stack(losses["eager"]), rtol=1e-4, atol=1e-5)
    expected, actual = state_tensors(eager), state_tensors(graphed)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key].float(), expected[key].float(), rtol=1e-4, atol=1e-5, msg=key)
    # The alphas moved: the comparison above is not between two untouched models.
    assert not torch.allclose(graphed.model.arch_parameters()[0], make("cuda").model.arch_parameters()[0].cuda())


@needs_cuda
def test_graphed_search_run_equals_eager():
    """Whole epochs through ``Search.run`` (prefetching, metrics on the device, the lr schedule)."""
    torch.backends.cudnn.deterministic = True
    histories = [darts_search("cuda", cuda_graphs=graphs).run() for graphs in (False, True)]
    for eager, graphed in zip(*(h["epochs"] for h in histories)):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert graphed[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-5), key
    for eager, graphed in zip(histories[0]["alphas"][-1], histories[1]["alphas"][-1]):
        torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphed"])
def test_cuda_step_never_synchronises(graphs):
    """torch's sync debug mode turns any host synchronisation inside the steps into an error."""
    search = darts_search("cuda", cuda_graphs=graphs)
    batches = random_batches("darts", 6, "cuda", 8)
    metrics = search.metrics(search.device)
    for batch_ in batches[:4]:  # warm-up and capture synchronise once, by design
        search.search_step(*batch_)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch_ in batches[4:]:
            loss, logits = search.search_step(*batch_)
            metrics.update(loss, logits, batch_[1])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert metrics.read()["loss"] > 0


@needs_cuda
def test_graphed_step_rejects_another_batch_shape():
    search = darts_search("cuda", cuda_graphs=True)
    batch_ = random_batches("darts", 1, "cuda", 8)[0]
    search.search_step(*batch_)
    with pytest.raises(ValueError, match="captured for"):
        search.search_step(*(t[:4] for t in batch_))


def test_cuda_graphs_need_cuda():
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        darts_search("cpu", cuda_graphs=True)


def test_cli_cuda_graphs_need_cuda(tmp_path, capsys):
    for space, flags in (("darts", ["--dataset", "synthetic"]), ("autodeeplab", [])):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["search", space, *flags, "--device", "cpu", "--cuda-graphs", "--out", str(tmp_path / space)])
        assert exit_info.value.code == 2
        assert "--cuda-graphs needs a CUDA device" in capsys.readouterr().err


# --- no host reads in a step -------------------------------------------------------------------


@pytest.fixture
def no_host_reads(monkeypatch):
    """Any read of a tensor's value by fastdnas code (``.item()``, ``bool(t)``, ...) raises: on a GPU
    each would stall the host until the device catches up."""

    def forbid(name, original):
        def guarded(self, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("fastdnas"):
                raise AssertionError(f"Tensor.{name} called from {caller} inside a search step")
            return original(self, *args, **kwargs)

        return guarded

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbid(name, getattr(torch.Tensor, name)))


@pytest.mark.parametrize("unrolled", [False, True], ids=["first_order", "second_order"])
@pytest.mark.parametrize("space", ["darts", "autodeeplab"])
def test_step_reads_nothing_back(space, unrolled, request):
    make, batch = SPACES[space]
    search = make("cpu", unrolled)
    batches = random_batches(space, 2, "cpu", batch)
    metrics = search.metrics(search.device) if space == "darts" else None
    request.getfixturevalue("no_host_reads")
    for batch_ in batches:
        loss, logits = search.search_step(*batch_)
        if metrics is not None:
            metrics.update(loss, logits, batch_[1])


def test_the_guard_catches_host_reads(no_host_reads):
    """The fixture above is not vacuous."""
    from fastdnas.search.loop import Metrics

    metrics = Metrics("cpu")
    with pytest.raises(AssertionError, match="inside a search step"):
        metrics.read()


# --- the pieces the graphed step relies on ------------------------------------------------------


def test_unrolled_step_takes_a_learning_rate_tensor():
    """The virtual step reads the weight learning rate from a tensor when the graph gives it one."""
    results = []
    for as_tensor in (False, True):
        search = darts_search("cpu", unrolled=True)
        batch_ = random_batches("darts", 1, "cpu", 8)[0]
        search.search_step(*batch_)  # momentum buffers exist from here on
        if as_tensor:
            for group in search.weight_optimizer.param_groups:
                group["lr"] = torch.tensor(group["lr"], dtype=torch.float32)
        results.append(search.architect.unrolled_grads(*batch_))
    # float32 rounding differs (lr * grad in float32 or from a double), and the unrolled gradient's
    # finite-difference Hessian term divides such differences by its small step: 4e-5 relative seen.
    for float_lr, tensor_lr in zip(*results):
        torch.testing.assert_close(tensor_lr, float_lr, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_prefetcher_yields_the_same_batches(device):
    data = load_synthetic(train_size=40).train
    generators = [torch.Generator().manual_seed(3) for _ in range(2)]
    plain = list(zip(iterate_batches(data, 8, generators[0], shuffle=True),
                     iterate_batches(data, 8, generators[0], shuffle=True)))
    prefetcher = DevicePrefetcher(device)
    fetched = list(prefetcher.prefetch(zip(iterate_batches(data, 8, generators[1], shuffle=True),
                                           iterate_batches(data, 8, generators[1], shuffle=True))))
    assert len(fetched) == len(plain) == 5
    for (a, b), (c, d) in zip(plain, fetched):
        for expected, actual in zip((*a, *b), (*c, *d)):
            assert actual.device.type == device
            assert torch.equal(actual.cpu(), expected)
    assert list(prefetcher.prefetch([])) == []


def test_optimizers_use_one_kernel_per_step_on_cuda():
    """Fused optimizers where they run as one kernel (CUDA); foreach elsewhere."""
    search = darts_search("cpu")
    assert search.weight_optimizer.param_groups[0]["foreach"] is True
    assert search.architect.optimizer.param_groups[0]["foreach"] is True
    if CUDA:
        search = darts_search("cuda")
        assert search.weight_optimizer.param_groups[0]["fused"] is True
        assert search.architect.optimizer.param_groups[0]["fused"] is True


def test_resume_uses_this_runs_optimizer_implementations():
    """A checkpoint written with CUDA graphs (fused, capturable) resumes on the CPU, and vice versa."""
    batches = random_batches("darts", 2, "cpu", 8)
    search = darts_search("cpu")
    search.search_step(*batches[0])
    state = copy.deepcopy(search.state_dict())  # as from disk: no tensor shared with the running search
    for group in state["weight_optimizer"]["param_groups"]:
        group.update(fused=True, foreach=False)
    for group in state["arch_optimizer"]["param_groups"]:
        group.update(fused=True, foreach=False, capturable=True)
    resumed = darts_search("cpu")
    resumed.load_state_dict(state)
    for optimizer in (resumed.weight_optimizer, resumed.architect.optimizer):
        assert all(g["foreach"] is True and not g["fused"] and not g.get("capturable") for g in optimizer.param_groups)
    resumed.search_step(*batches[1])
    search.search_step(*batches[1])
    for a, b in zip(resumed.model.arch_parameters(), search.model.arch_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
