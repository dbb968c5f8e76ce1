"""Data-parallel search on 2 CPU processes (gloo backend), spawned with torch.multiprocessing.

Each rank runs fastdnas's own ``distributed.setup`` from the environment torchrun would give it.
Checked: every rank holds bit-identical alphas and weights after every epoch (first and second
order); 2 ranks with half the batch each compute what 1 process computes with the whole batch
(with cross-rank BatchNorm, and measurably not without it); only rank 0 writes; a 2-rank
checkpoint resumes in 1 process; `search nb201 --seeds` on 4 ranks runs each seed on its group of 2
as that seed alone on 2 ranks, and resumes; `train darts` on 2 ranks (synthetic and an ImageNet
folder) ends with the same weights on both ranks, written once, and with cross-rank BatchNorm
trains what 1 process trains.
"""
import json
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from distributed_scenarios import (
    TOY_VARIANTS,
    TRAIN_FLAGS,
    batch_norm_case,
    cli_search_epoch,
    hang,
    nb201_seed_groups,
    search_state,
    tiny_shapes,
    toy_search,
    toy_searches,
    with_watchdog,
)
from conftest import write_image_folder

from fastdnas import cli
from fastdnas.data import load_synthetic
from fastdnas.data.base import epoch_generator, iterate_batches
from fastdnas.search import distributed, load_checkpoint

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                       reason="torch.distributed with gloo is not available"),
    pytest.mark.usefixtures("one_thread"),
]
WORLD_SIZE = 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Each scenario takes well under a minute on an idle 2-core machine; the limits leave room for a
# loaded one. A rank still alive after RANK_SECONDS prints its threads' stacks and exits (its
# watchdog); the parent kills what is left after PARENT_SECONDS.
RANK_SECONDS = 600
PARENT_SECONDS = RANK_SECONDS + 60


def spawn(scenario, out, rank_seconds=RANK_SECONDS, parent_seconds=PARENT_SECONDS, world_size=WORLD_SIZE):
    """Run ``scenario`` on ``world_size`` ranks, each under a watchdog; returns what each rank saved."""
    context = mp.start_processes(with_watchdog, args=(scenario, rank_seconds, world_size, free_port(), str(out)),
                                 nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + parent_seconds
    try:
        # join() raises ProcessRaisedException / ProcessExitedException (with the rank's exit
        # code) when a rank fails, its watchdog included; it returns True once all ranks exited.
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail(f"{scenario.__name__}: ranks still running after {parent_seconds} s (killed)\n"
                            + watchdog_stacks(out))
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as error:
        error.args = (f"{error.args[0]}\n{watchdog_stacks(out)}", *error.args[1:])
        raise
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(world_size)]


def watchdog_stacks(out):
    """The stacks the ranks' watchdogs wrote (empty when none fired)."""
    stacks = [(path.name, path.read_text()) for path in sorted(out.glob("rank*.stack"))]
    return "".join(f"--- {name} (watchdog)\n{text}" for name, text in stacks if text)


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    """The toy searches on 2 ranks (global batch 16: 8 per rank) and in 1 process (batch 16)."""
    ranks = spawn(toy_searches, tmp_path_factory.mktemp("toy"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    single = {}
    for name, settings in TOY_VARIANTS.items():
        search = toy_search(**settings)
        search.run()
        single[name] = search_state(search)
    torch.set_num_threads(threads)
    return ranks, single


def test_a_hanging_rank_fails_in_seconds_with_its_stack(tmp_path):
    start = time.monotonic()
    with pytest.raises(mp.ProcessExitedException, match="exit code 1") as failure:
        spawn(hang, tmp_path, rank_seconds=3, parent_seconds=120)
    assert time.monotonic() - start < 100
    assert "Timeout (0:00:03)!" in str(failure.value) and " in hang" in str(failure.value)  # a rank's stack


def test_shutdown_releases_the_ddp_wrappers_before_the_group(toy_runs):
    (rank0, rank1), _ = toy_runs
    assert rank0["ddp_released"] and rank1["ddp_released"]


def max_difference(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("variant", list(TOY_VARIANTS))
def test_every_rank_holds_bit_identical_alphas_and_weights(toy_runs, variant):
    (rank0, rank1), _ = toy_runs
    for key in ("alphas", "weights", "buffers"):
        assert all(torch.equal(a, b) for a, b in zip(rank0[variant][key], rank1[variant][key], strict=True)), key
    assert rank0[variant]["records"] == rank1[variant]["records"]  # metrics summed over the ranks
    initial = toy_search().model.alphas.detach()
    assert (rank0[variant]["alphas"][0] - initial).abs().max() > 1e-3  # the alphas did move


@pytest.mark.parametrize("order", ["first", "second"])
def test_two_ranks_with_half_batches_equal_one_process(toy_runs, order):
    (rank0, _), single = toy_runs
    synced, plain, reference = rank0[f"{order}_sync"], rank0[order], single[f"{order}_sync"]
    tolerance = 2e-5
    for key in ("alphas", "weights", "buffers"):
        assert max_difference(synced[key], reference[key]) < tolerance, key
    for got, want in zip(synced["records"], reference["records"], strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    # Without cross-rank BatchNorm each rank normalises over its own 8 images: a different search.
    assert max_difference(plain["weights"], reference["weights"]) > 100 * tolerance
    assert max_difference(plain["alphas"], reference["alphas"]) > 10 * tolerance


def test_cross_rank_batch_norm_equals_batch_norm_of_the_whole_batch(toy_runs):
    (rank0, rank1), _ = toy_runs
    x, upstream, bn = batch_norm_case()
    x.requires_grad_()
    outputs = []
    for _ in range(2):
        out = bn(x)
        (out * upstream).sum().backward()
        outputs.append(out.detach())
    for rank, got in enumerate((rank0["batch_norm"], rank1["batch_norm"])):
        for step in range(2):
            torch.testing.assert_close(got["outputs"][step], outputs[step][rank::WORLD_SIZE], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got["input_grad"], x.grad[rank::WORLD_SIZE], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got["running_mean"], bn.running_mean, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got["running_var"], bn.running_var, rtol=1e-12, atol=1e-14)
    # Parameter gradients are per rank (DDP adds them up): together they are the whole batch's.
    for name in ("weight_grad", "bias_grad"):
        torch.testing.assert_close(rank0["batch_norm"][name] + rank1["batch_norm"][name],
                                   getattr(bn, name[: -len("_grad")]).grad, rtol=1e-10, atol=1e-12)


def test_cli_search_on_two_ranks_writes_once_and_resumes_in_one_process(tmp_path, monkeypatch):
    import fastdnas.data
    import fastdnas.viz

    for plot in ("plot_genotype", "plot_alpha_history", "plot_trellis", "plot_cell"):
        monkeypatch.setattr(fastdnas.viz, plot, lambda *args, **kwargs: None)
    monkeypatch.setattr(fastdnas.data, "load_shapes", tiny_shapes())
    write_image_folder(tmp_path / "imagenet", split="train")
    write_image_folder(tmp_path / "imagenet", split="val")
    rank0, rank1 = spawn(cli_search_epoch, tmp_path)
    assert rank0["codes"] == rank1["codes"] == [0, 0, 0, 0]
    # One epoch of each search space, the 2 epochs of `train darts`, the epoch of its ImageNet training.
    assert rank0["writes"] == ["checkpoint", "log"] * 2 + ["train log"] * 2 + ["result"] + ["train log", "result"]
    assert rank1["writes"] == []
    for got, want in zip(rank0["states"], rank1["states"], strict=True):  # darts, autodeeplab
        for key in ("alphas", "weights", "buffers"):
            assert all(torch.equal(a, b) for a, b in zip(got[key], want[key], strict=True)), key

    # The same darts search in 1 process, straight through, and resumed from the 2-rank checkpoint.
    flags = ["--dataset", "synthetic", "--init-channels", "2", "--layers", "2", "--batch-size", "32", "--device",
             "cpu", "--threads", "1", "--epochs", "2", "--sync-bn"]
    assert cli.main(["search", "darts", *flags, "--out", str(tmp_path / "straight")]) == 0
    two_ranks = load_checkpoint(tmp_path / "darts" / "checkpoint.pt")
    assert two_ranks["epoch"] == 1
    assert cli.main(["search", "darts", *flags, "--out", str(tmp_path / "darts"), "--resume"]) == 0
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "darts" / "checkpoint.pt")
    assert resumed["epoch"] == 2 and len(resumed["history"]["epochs"]) == 2
    assert list(two_ranks["model"]) == list(straight["model"])  # no DDP prefix, no SyncBatchNorm trace
    for a, b in zip(straight["arch_parameters"], resumed["arch_parameters"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

    # `train darts` on 2 ranks: the same model on both, and what 1 process trains with the whole batch.
    for space in ("train", "imagenet"):
        train0, train1 = rank0[space], rank1[space]
        assert train0["records"] == train1["records"]
        assert train0["state"].keys() == train1["state"].keys()
        assert all(torch.equal(train0["state"][k], train1["state"][k]) for k in train0["state"]), space
    assert json.loads((tmp_path / "imagenet-run" / "result.json").read_text())["ranks"] == 2
    train0 = rank0["train"]
    assert cli.main(TRAIN_FLAGS + ["--out", str(tmp_path / "train-one")]) == 0
    one = torch.load(tmp_path / "train-one" / "model.pt", weights_only=True)
    assert one.keys() == train0["state"].keys()  # no DDP prefix, no cross-rank BatchNorm trace
    for name, value in one.items():
        torch.testing.assert_close(train0["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    result = json.loads((tmp_path / "train" / "result.json").read_text())
    assert result["ranks"] == 2 and result["epochs"] == 2
    one_result = json.loads((tmp_path / "train-one" / "result.json").read_text())
    assert abs(result["test_loss"] - one_result["test_loss"]) <= 1e-4 * abs(one_result["test_loss"])

    # Auto-DeepLab (per-rank BatchNorm) resumes in 1 process too.
    assert cli.main(["search", "autodeeplab", "--layers", "2", "--blocks", "2", "--filter-multiplier", "2",
                     "--batch-size", "4", "--device", "cpu", "--threads", "1", "--epochs", "2", "--arch-start-epoch",
                     "0", "--out", str(tmp_path / "autodeeplab"), "--resume"]) == 0
    assert load_checkpoint(tmp_path / "autodeeplab" / "checkpoint.pt")["epoch"] == 2


def test_nb201_seeds_on_groups_of_ranks_equal_each_seed_alone_and_resume(tmp_path):
    import json

    # Seeds 5 and 6 on ranks 0-1 and 2-3; then the reference, each seed alone on 2 ranks.
    groups = spawn(nb201_seed_groups, tmp_path, world_size=4)
    assert all(report["codes"] == [0, 0, 0] for report in groups)
    # Each group's rank 0 alone writes its seed's checkpoint, once per epoch (killed after 1, resumed).
    assert [report["writes"] for report in groups] == [["seed-5"] * 2, [], ["seed-6"] * 2, []]
    for rank, report in enumerate(groups):  # cross-rank BatchNorm over its group only, 2 steps
        x, upstream, bn = batch_norm_case(rank // 2)  # each group's own batch
        x.requires_grad_()
        for step in range(2):
            out = bn(x)
            (out * upstream).sum().backward()
            torch.testing.assert_close(report["batch_norm"]["outputs"][step], out.detach()[rank % 2::2], rtol=1e-12,
                                       atol=1e-12)
        torch.testing.assert_close(report["batch_norm"]["input_grad"], x.grad[rank % 2::2], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(report["batch_norm"]["running_var"], bn.running_var, rtol=1e-12, atol=1e-14)
    summary = json.loads((tmp_path / "groups" / "summary.json").read_text())
    assert [(row["seed"], row["epochs"]) for row in summary["seeds"]] == [(5, 2), (6, 2)]
    for seed in (5, 6):
        grouped = load_checkpoint(tmp_path / "groups" / f"seed-{seed}" / "checkpoint.pt")
        alone = load_checkpoint(tmp_path / "alone" / f"seed-{seed}" / "checkpoint.pt")
        assert grouped["epoch"] == alone["epoch"] == 2
        for a, b in zip(grouped["arch_parameters"], alone["arch_parameters"], strict=True):
            assert torch.equal(a, b), seed
        assert grouped["model"].keys() == alone["model"].keys()
        assert all(torch.equal(grouped["model"][k], alone["model"][k]) for k in alone["model"]), seed
        records = [[{k: v for k, v in r.items() if k != "time"} for r in run["history"]["epochs"]]
                   for run in (grouped, alone)]
        assert records[0] == records[1]
        assert summary["seeds"][seed - 5]["genotype"] == records[1][-1]["genotype"]
    assert summary["seeds"][0]["genotype"] != summary["seeds"][1]["genotype"] or \
        not torch.equal(load_checkpoint(tmp_path / "alone" / "seed-5" / "checkpoint.pt")["arch_parameters"][0],
                        load_checkpoint(tmp_path / "alone" / "seed-6" / "checkpoint.pt")["arch_parameters"][0])


def test_shards_of_a_batch_make_up_the_single_process_batch():
    data = load_synthetic(num_classes=3, in_channels=1, image_size=4, train_size=40).search_train  # 20 images
    whole = list(iterate_batches(data, 6, epoch_generator(0, 3), shuffle=True, drop_last=True))
    shards = [list(iterate_batches(data, 3, epoch_generator(0, 3), shuffle=True, drop_last=True, rank=r,
                                   world_size=2)) for r in range(2)]
    assert len(whole) == len(shards[0]) == len(shards[1]) == 3
    for (images, labels), (images0, labels0), (images1, labels1) in zip(whole, *shards):
        assert torch.equal(images, torch.stack([images0, images1], 1).flatten(0, 1))
        assert torch.equal(labels, torch.stack([labels0, labels1], 1).flatten())
    # Evaluation shards (no drop_last) cover every image once.
    evaluation = [torch.cat([b[1] for b in iterate_batches(data, 4, rank=r, world_size=3)]) for r in range(3)]
    assert sorted(torch.cat(evaluation).tolist()) == sorted(data.labels.tolist())
    # With augmentation each rank crops and flips with its own generator.
    augmented = data.with_augmentation(crop_padding=1, flip=True)
    first = [next(iterate_batches(augmented, 3, epoch_generator(0, 0), shuffle=True, rank=r, world_size=2))[0]
             for r in range(2)]
    again = next(iterate_batches(augmented, 3, epoch_generator(0, 0), shuffle=True, rank=1, world_size=2))[0]
    assert torch.equal(first[1], again) and not torch.equal(first[0], first[1])


def test_environment_detection(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.from_environment() == distributed.SINGLE
    assert distributed.setup("cpu") == (distributed.SINGLE, "cpu")  # no torchrun: nothing started
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    context = distributed.from_environment()
    assert (context.rank, context.world_size, context.local_rank, context.is_main) == (1, 4, 0, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK must be in"):
        distributed.from_environment()


def test_bad_distributed_settings(tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match="multiple of the 2 ranks"):
        toy_search(distributed.Distributed(rank=0, world_size=2), batch_size=15)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):  # refused before joining the process group (no rank 1 to wait for)
        cli.main(["train", "darts", "--dataset", "synthetic", "--genotype", "DARTS_V2", "--batch-size", "15"])
    assert "--batch-size 15 is the global batch: it must be a multiple of the 2 ranks" in capsys.readouterr().err
