"""The bilevel search loop on a toy model: gradients, weight/alpha separation, schedule, checkpoints, resume."""
import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastdnas.data import load_synthetic
from fastdnas.search import (
    Architect,
    CheckpointError,
    Metrics,
    Search,
    SearchConfig,
    UnverifiedCheckpointError,
    cosine_lr,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

from conftest import ToySearchModel, count_host_reads, package_files


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_setup(lr=0.1, momentum=0.9, weight_decay=3e-4, unrolled=True, seed=0):
    torch.manual_seed(seed)
    model = ToySearchModel().double()
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                                foreach=True)
    architect = Architect(model, optimizer, unrolled=unrolled)
    batches = [(torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))) for _ in range(2)]
    return model, optimizer, architect, batches


def take_weight_step(model, optimizer, inputs, targets):
    optimizer.zero_grad()
    F.cross_entropy(model(inputs), targets).backward(inputs=model.weight_parameters())
    optimizer.step()


def test_cosine_lr_values():
    assert cosine_lr(0, 50, 0.025, 0.001) == 0.025
    assert math.isclose(cosine_lr(25, 50, 0.025, 0.001), 0.013)
    assert math.isclose(cosine_lr(49, 50, 0.025, 0.001), 0.001 + 0.012 * (1 + math.cos(math.pi * 49 / 50)))
    values = [cosine_lr(e, 10, 1.0, 0.1) for e in range(10)]
    assert all(a > b for a, b in zip(values, values[1:])) and values[-1] > 0.1
    with pytest.raises(ValueError):
        cosine_lr(10, 10, 1.0)


def test_first_order_grad_is_autograd_of_val_loss():
    model, _, architect, ((_, _), (val_x, val_y)) = toy_setup(unrolled=False)
    (expected,) = torch.autograd.grad(F.cross_entropy(model(val_x), val_y), model.alphas)
    (got,) = architect.first_order_grads(val_x, val_y)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("with_momentum_buffer", [False, True])
def test_unrolled_grad_matches_finite_difference(with_momentum_buffer):
    model, optimizer, architect, ((train_x, train_y), (val_x, val_y)) = toy_setup()
    if with_momentum_buffer:
        take_weight_step(model, optimizer, val_x, val_y)
    eta, momentum, weight_decay = 0.1, 0.9, 3e-4
    names = [name for name, _ in model.named_parameters() if name != "alphas"]
    weights = [p.detach().clone() for p in model.weight_parameters()]
    buffers = [optimizer.state[p]["momentum_buffer"] if with_momentum_buffer else torch.zeros_like(p)
               for p in model.weight_parameters()]

    def loss(params, alphas, x, y):
        return F.cross_entropy(functional_call(model, {**dict(zip(names, params)), "alphas": alphas}, (x,)), y)

    def unrolled_weights(alphas):
        """w' = w - eta * (momentum * buffer + dL_train(w, alpha)/dw + wd * w)."""
        params = [w.clone().requires_grad_() for w in weights]
        grads = torch.autograd.grad(loss(params, alphas, train_x, train_y), params)
        return [w - eta * (momentum * b + g + weight_decay * w) for w, b, g in zip(weights, buffers, grads)]

    def unrolled_val_loss(alphas):
        return loss(unrolled_weights(alphas), alphas, val_x, val_y)

    alphas = model.alphas.detach().clone()
    expected = torch.zeros_like(alphas)
    eps = 1e-6
    for i in range(alphas.numel()):
        delta = torch.zeros(alphas.numel(), dtype=alphas.dtype)
        delta[i] = eps
        delta = delta.view_as(alphas)
        expected.view(-1)[i] = (unrolled_val_loss(alphas + delta) - unrolled_val_loss(alphas - delta)) / (2 * eps)

    (got,) = architect.unrolled_grads(train_x, train_y, val_x, val_y)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)

    # The second-order term must be far above the tolerance, or the test proves nothing.
    alphas.requires_grad_()
    w_unrolled = [w.detach() for w in unrolled_weights(alphas)]
    (first_term,) = torch.autograd.grad(loss(w_unrolled, alphas, val_x, val_y), alphas)
    assert (got - first_term).abs().max() > 100 * (got - expected).abs().max()


def test_unrolled_step_restores_weights_and_buffers_exactly():
    model, optimizer, architect, ((train_x, train_y), (val_x, val_y)) = toy_setup()
    take_weight_step(model, optimizer, train_x, train_y)
    weights = [p.detach().clone() for p in model.weight_parameters()]
    buffers = [b.detach().clone() for b in model.buffers()]
    alphas = model.alphas.detach().clone()
    architect.step(train_x, train_y, val_x, val_y)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.weight_parameters()))
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert not torch.equal(alphas, model.alphas)


def synthetic_search(tmp_path=None, epochs=3, unrolled=False, arch_start_epoch=0, seed=0):
    torch.manual_seed(seed)
    data = load_synthetic(num_classes=3, in_channels=1, image_size=2, train_size=64, test_size=8)
    model = ToySearchModel(in_features=4, alpha_scale=1e-3)
    config = SearchConfig(epochs=epochs, batch_size=8, unrolled=unrolled, arch_start_epoch=arch_start_epoch,
                          arch_lr=3e-2, seed=seed)
    return Search(model, data.search_train, data.search_val, config, out_dir=tmp_path, progress=False, log=lambda _: None)


def test_weight_step_leaves_alphas_and_arch_step_leaves_weights():
    search = synthetic_search()
    inputs, targets = search.train_data.batch(torch.arange(8))
    alphas = search.model.alphas.detach().clone()
    search.weight_step(inputs, targets)
    assert torch.equal(alphas, search.model.alphas) and search.model.alphas.grad is None
    for unrolled in (False, True):
        search.architect.unrolled = unrolled
        weights = [p.detach().clone() for p in search.weights]
        search.architect.step(inputs, targets, inputs, targets)
        assert all(torch.equal(a, b) for a, b in zip(weights, search.weights))
    assert not torch.equal(alphas, search.model.alphas)


def test_alphas_never_in_weight_optimizer():
    model = ToySearchModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="architecture parameters"):
        Architect(model, optimizer)
    search = synthetic_search()
    arch_ids = {id(a) for a in search.model.arch_parameters()}
    assert not arch_ids & {id(p) for group in search.weight_optimizer.param_groups for p in group["params"]}


def test_arch_start_epoch_freezes_alphas_during_warm_up():
    search = synthetic_search(epochs=3, arch_start_epoch=2)
    search.run()
    alphas = [a[0] for a in search.history["alphas"]]
    assert torch.equal(alphas[0], alphas[1])
    assert not torch.equal(alphas[1], alphas[2])
    assert [r["arch_updates"] for r in search.history["epochs"]] == [False, False, True]


def test_epoch_records_and_lr_schedule():
    search = synthetic_search(epochs=2)
    history = search.run()
    records = history["epochs"]
    assert [r["epoch"] for r in records] == [0, 1]
    assert [r["lr"] for r in records] == [cosine_lr(e, 2, 0.025, 0.001) for e in range(2)]
    assert all(0 <= r[k] <= 1 for r in records for k in ("train_acc", "val_acc"))
    assert search.weight_optimizer.param_groups[0]["lr"] == records[-1]["lr"]


def test_no_host_sync_inside_steps(monkeypatch):
    """Our code reads device values once per log interval (Adam's own .item() is on its CPU step counter)."""
    search = synthetic_search(epochs=1)
    callers = count_host_reads(monkeypatch)
    search.train_epoch(0, 0.025)
    # The loss and accuracy sums, read once at the end of the epoch (Metrics.read).
    assert package_files(callers) == [os.path.join("search", "loop.py")]


def test_accuracy_ignores_unlabelled_targets():
    metrics = Metrics("cpu")
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]]]).view(1, 2, 1, 2)  # one image, 2 classes, 1x2 pixels
    metrics.update(torch.tensor(0.5), logits, torch.tensor([[[0, 255]]]))
    assert metrics.read() == {"loss": 0.5, "acc": 1.0}


@pytest.mark.parametrize("unrolled", [False, True])
def test_resume_is_bit_identical(tmp_path, unrolled):
    straight = synthetic_search(tmp_path / "straight", epochs=3, unrolled=unrolled)
    straight.run()

    interrupted = synthetic_search(tmp_path / "resumed", epochs=3, unrolled=unrolled)
    interrupted.run(until=2)
    torch.manual_seed(1234)  # a fresh process: different initial weights and RNG state
    resumed = synthetic_search(tmp_path / "resumed", epochs=3, unrolled=unrolled, seed=0)
    with torch.no_grad():
        for p in resumed.model.parameters():
            p.add_(1.0)
    resumed.resume()
    assert resumed.epoch == 2
    resumed.run()

    assert torch.equal(straight.model.alphas, resumed.model.alphas)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    drop_time = [{k: v for k, v in r.items() if k != "time"} for r in straight.history["epochs"]]
    assert drop_time == [{k: v for k, v in r.items() if k != "time"} for r in resumed.history["epochs"]]
    lines = (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_checkpoint_contents(tmp_path):
    search = synthetic_search(tmp_path, epochs=1)
    search.run()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 1
    assert set(state) >= {"model", "arch_parameters", "weight_optimizer", "arch_optimizer", "rng", "history", "config"}
    assert "bn.running_mean" in state["model"] and "alphas" in state["model"]
    assert state["weight_optimizer"]["state"] and state["arch_optimizer"]["state"]
    assert len(state["history"]["alphas"]) == 1
    assert set(os.listdir(tmp_path)) == {"checkpoint.pt", "log.jsonl"}


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"value": torch.tensor(1)}, path)
    with pytest.raises(Exception):
        save_checkpoint({"value": lambda: None}, path)  # cannot be pickled: fails mid-write
    assert load_checkpoint(path)["value"].item() == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        load_checkpoint(tmp_path / "missing.pt")


def damaged_copies(data):
    """What a checkpoint file may become: name -> (bytes, expected message)."""
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    return {
        "empty": (b"", "empty file"),
        "truncated": (data[: len(data) // 2], "damaged or not a checkpoint"),
        "garbage": (bytes(range(256)) * 8, "damaged or not a checkpoint"),
        "flipped": (bytes(flipped), "does not match its checksum"),
    }


def test_damaged_checkpoint_is_refused_in_one_line(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"value": torch.arange(1000)}, path)
    data = path.read_bytes()
    assert torch.equal(load_checkpoint(path)["value"], torch.arange(1000))
    for name, (content, message) in damaged_copies(data).items():
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=message) as error:
            load_checkpoint(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value), name
    save_checkpoint([1, 2], path)
    with pytest.raises(CheckpointError, match="holds a list, not a dict"):
        load_checkpoint(path)
    save_checkpoint({"epoch": 1}, path)
    with pytest.raises(CheckpointError, match="lacks model, history"):
        load_checkpoint(path, keys=("epoch", "model", "history"))


def test_checkpoint_without_checksum_loads_only_when_asked(tmp_path):
    # Written by torch.save alone, as fastdnas did before checkpoints carried a checksum.
    path = tmp_path / "checkpoint.pt"
    torch.save({"value": torch.tensor(3)}, path)
    with pytest.raises(UnverifiedCheckpointError, match="cannot be verified .it has no checksum"):
        load_checkpoint(path)
    with pytest.warns(UserWarning, match="it has no checksum.*loaded unverified as asked"):
        assert load_checkpoint(path, allow_unverified=True)["value"].item() == 3
    save_checkpoint({"value": torch.tensor(3)}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_checkpoint(path)["value"].item() == 3
    assert torch.load(path, weights_only=True)["value"].item() == 3  # still a plain torch.save archive
    # Cut by one byte, the checksum trailer no longer parses: the file must not pass as an older one.
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(UnverifiedCheckpointError, match="checksum at the end of the file is damaged"):
        load_checkpoint(path)


def test_killed_checkpoint_writes_are_cleaned_up(tmp_path):
    # A write killed before its rename leaves its temporary file: the next save or resume removes it.
    for name in (".checkpoint-a1b2c3.tmp", ".checkpoint-zz.tmp"):
        (tmp_path / name).write_bytes(b"half a checkpoint")
    (tmp_path / "other.tmp").write_bytes(b"not a checkpoint write")
    save_checkpoint({"value": torch.tensor(1)}, tmp_path / "checkpoint.pt")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "other.tmp"]

    run = tmp_path / "run"
    synthetic_search(run, epochs=1).run()
    (run / ".checkpoint-killed.tmp").write_bytes(b"")
    synthetic_search(run, epochs=1).resume()
    assert sorted(os.listdir(run)) == ["checkpoint.pt", "log.jsonl"]


def test_resume_refuses_a_damaged_checkpoint(tmp_path):
    search = synthetic_search(tmp_path, epochs=1)
    search.run()
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    del state["arch_optimizer"]
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match="lacks arch_optimizer"):
        synthetic_search(tmp_path, epochs=1).resume()


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and (first[1] == second[1]).all() and first[2] == second[2]


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="lr_min"):
        SearchConfig(lr=0.01, lr_min=0.1)
    data = load_synthetic(train_size=8)
    with pytest.raises(ValueError, match="batch_size 64 is larger than the search-train set"):
        Search(ToySearchModel(in_features=3 * 64), data.search_train, data.search_val, SearchConfig())
