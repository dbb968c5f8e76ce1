"""What each rank does in the 2-process tests of test_distributed.py (spawned with torch.multiprocessing).

Each scenario takes (rank, world_size, port, out): it announces its rank in the environment as
torchrun would, so fastdnas's own ``distributed.setup`` joins the gloo group, and saves what the
test compares to out/rank{rank}.pt.
"""
import faulthandler
import os

import torch
import torch.nn as nn

from fastdnas.data import load_synthetic
from fastdnas.search import Search, SearchConfig, distributed

from conftest import ToySearchModel

# Toy searches: 128 training images -> halves of 64; global batch 16 -> 4 steps an epoch.
TOY_VARIANTS = {
    "first": {},
    "second": {"unrolled": True},
    "first_sync": {"sync_bn": True},
    "second_sync": {"unrolled": True, "sync_bn": True},
}


def with_watchdog(rank, scenario, seconds, world_size, port, out):
    """Run ``scenario(rank, world_size, port, out)`` under a watchdog: a rank still alive
    ``seconds`` from now (in the scenario or in the process's teardown after it) writes the stack
    of each of its threads to out/rank{rank}.stack and exits with status 1, so a hang fails the
    test instead of stopping it for good. (One file per rank: on a shared stderr the ranks' stacks
    interleave.)"""
    global _stack_file  # open until the process ends: the watchdog may fire during its teardown
    _stack_file = open(os.path.join(out, f"rank{rank}.stack"), "w")
    faulthandler.dump_traceback_later(seconds, exit=True, file=_stack_file)
    scenario(rank, world_size, port, out)


def announce_rank(rank, world_size, port):
    """The environment torchrun gives each worker."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)


def toy_search(context=distributed.SINGLE, out_dir=None, epochs=2, batch_size=16, **settings):
    torch.manual_seed(0)
    data = load_synthetic(num_classes=3, in_channels=1, image_size=2, train_size=128, test_size=8)
    config = SearchConfig(epochs=epochs, batch_size=batch_size, lr=0.1, arch_lr=3e-2, seed=0, **settings)
    return Search(ToySearchModel(in_features=4, hidden=6, alpha_scale=1e-3, affine=True), data.search_train, data.search_val, config, out_dir=out_dir, progress=False,
                  log=lambda _: None, distributed=context)


def search_state(search):
    """Everything that must agree between ranks (and with a single-process run)."""
    return {
        "alphas": [a.detach().clone() for a in search.model.arch_parameters()],
        "weights": [w.detach().clone() for w in search.weights],
        "buffers": [b.detach().clone() for b in search.model.buffers()],
        "records": [{k: v for k, v in r.items() if k != "time"} for r in search.history["epochs"]],
    }


def batch_norm_case(seed=0):
    """A float64 batch of 8, its upstream gradient, and an affine BatchNorm2d: the same on every rank."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, 4, 5, generator=generator, dtype=torch.float64)
    upstream = torch.randn(8, 3, 4, 5, generator=generator, dtype=torch.float64)
    bn = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(3, generator=generator, dtype=torch.float64) + 0.5)
        bn.bias.copy_(torch.randn(3, generator=generator, dtype=torch.float64))
    return x, upstream, bn


def cross_rank_batch_norm(rank, world_size, case=0, group=None):
    """Forward and backward of CrossRankBatchNorm on this rank's shard of the batch (two steps);
    ``group``: the ranks it normalises over (``rank`` and ``world_size`` those inside it)."""
    x, upstream, bn = batch_norm_case(case)
    bn = distributed.CrossRankBatchNorm.convert(bn, group)
    shard = x[rank::world_size].clone().requires_grad_()
    outputs = []
    for _ in range(2):
        out = bn(shard)
        (out * upstream[rank::world_size]).sum().backward()
        outputs.append(out.detach())
    return {"outputs": outputs, "input_grad": shard.grad, "weight_grad": bn.weight.grad, "bias_grad": bn.bias.grad,
            "running_mean": bn.running_mean, "running_var": bn.running_var}


def toy_searches(rank, world_size, port, out):
    """CrossRankBatchNorm alone, then every toy variant for 2 epochs: first and second order,
    with and without cross-rank BatchNorm."""
    announce_rank(rank, world_size, port)
    context, _ = distributed.setup("cpu")
    results = {"batch_norm": cross_rank_batch_norm(rank, world_size)}
    for name, settings in TOY_VARIANTS.items():
        search = toy_search(context, **settings)
        search.run()
        results[name] = search_state(search)
    # The last search (and its DDP wrapper) is still alive here and outlives the group, the
    # order in which torch 2.4's gloo teardown could hang: shutdown() must release it first.
    distributed.shutdown()
    results["ddp_released"] = not hasattr(search.train_model, "reducer")
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))


def hang(rank, world_size, port, out):
    """A rank that never finishes: the watchdog must end it."""
    import threading

    threading.Event().wait()


def tiny_shapes():
    """32 x 32 shapes, 8 + 8 images to search on, 4 to validate (as tests/test_autodeeplab_cli.py)."""
    from functools import partial

    import fastdnas.data

    return partial(fastdnas.data.load_shapes, train_size=16, val_size=4, size=32, radius=(4.0, 8.0),
                   period=(3.0, 5.0))


def cli_search_epoch(rank, world_size, port, out):
    """`fastdnas search darts` (and autodeeplab) as torchrun would start it, stopped after one of
    two epochs; records which files each rank wrote.

    The process group is made here, once for both commands (the commands then leave it alone):
    a group re-made on the same port right after another was destroyed can hang on a busy machine.
    """
    announce_rank(rank, world_size, port)
    torch.distributed.init_process_group("gloo")
    import fastdnas.data
    import fastdnas.viz
    from fastdnas import cli
    from fastdnas.search import loop

    for plot in ("plot_genotype", "plot_alpha_history", "plot_trellis", "plot_cell"):
        setattr(fastdnas.viz, plot, lambda *args, **kwargs: None)
    fastdnas.data.load_shapes = tiny_shapes()
    writes = []
    save, write_log = loop.save_checkpoint, loop.write_json_lines
    loop.save_checkpoint = lambda state, path: (writes.append("checkpoint"), save(state, path))
    loop.write_json_lines = lambda path, records: (writes.append("log"), write_log(path, records))
    run, searches = Search.run, []
    Search.run = lambda self, until=None: (searches.append(self), run(self, until=1))[1]  # "killed" after epoch 1
    darts = ["search", "darts", "--dataset", "synthetic", "--init-channels", "2", "--layers", "2", "--batch-size",
             "32", "--device", "cpu", "--epochs", "2", "--sync-bn", "--out", os.path.join(out, "darts")]
    autodeeplab = ["search", "autodeeplab", "--layers", "2", "--blocks", "2", "--filter-multiplier", "2",
                   "--batch-size", "4", "--device", "cpu", "--epochs", "2", "--arch-start-epoch", "0", "--out",
                   os.path.join(out, "autodeeplab")]
    codes = [cli.main(darts), cli.main(autodeeplab)]
    states = [search_state(search) for search in searches]
    # `fastdnas train darts` on the same ranks: which files each rank writes, its model and records.
    import fastdnas.train

    train_network, write_result, trained = fastdnas.train.train_network, fastdnas.train.write_result, []
    fastdnas.train.write_json_lines = lambda path, records: (writes.append("train log"), write_log(path, records))
    fastdnas.train.write_result = lambda *args, **kwargs: (writes.append("result"), write_result(*args, **kwargs))[1]

    def recording(model, *args, **kwargs):
        trained.extend([model, train_network(model, *args, **kwargs)])
        return trained[-1]

    fastdnas.train.train_network = recording
    codes.append(cli.main(TRAIN_FLAGS + ["--out", os.path.join(out, "train")]))
    # ImageNet (the test's ImageFolder of 6 + 6 images): the mobile network, 2 images per rank.
    codes.append(cli.main(["train", "darts", "--dataset", "imagenet", "--data", os.path.join(out, "imagenet"),
                           "--genotype", "DARTS_V2", "--epochs", "1", "--batch-size", "4", "--init-channels", "8",
                           "--layers", "3", "--threads", "1", "--device", "cpu",
                           "--out", os.path.join(out, "imagenet-run")]))
    train, imagenet = ({"state": {k: v.clone() for k, v in model.state_dict().items()},
                        "records": [{k: v for k, v in r.items() if k != "time"} for r in records]}
                       for model, records in (trained[:2], trained[2:]))
    distributed.shutdown(owned_only=False)  # the group made here, after the searches' DDP wrappers
    torch.save({"codes": codes, "writes": writes, "states": states, "train": train, "imagenet": imagenet},
               os.path.join(out, f"rank{rank}.pt"))


# `train darts` of a published cell, 2 epochs of 4 steps; cross-rank BatchNorm and no drop-path
# (its masks are drawn per rank), so 2 ranks compute what 1 process computes (synthetic: no augmentation).
TRAIN_FLAGS = ["train", "darts", "--dataset", "synthetic", "--genotype", "DARTS_V2", "--init-channels", "4",
               "--layers", "3", "--auxiliary", "--batch-size", "16", "--epochs", "2", "--device", "cpu",
               "--threads", "1", "--sync-bn", "--drop-path-prob", "0"]


# `search nb201 --seeds 5,6` (tests/test_distributed.py): tiny, 2 steps an epoch.
NB201_FLAGS = ["search", "nb201", "--dataset", "synthetic", "--device", "cpu", "--threads", "1", "--epochs", "2",
               "--batch-size", "32"]


def no_nb201_plots():
    import fastdnas.nb201.runs
    import fastdnas.viz

    fastdnas.viz.plot_alpha_history = lambda *args, **kwargs: None
    fastdnas.nb201.runs.plot_benchmark = lambda *args, **kwargs: None


def nb201_seed_groups(rank, world_size, port, out):
    """`search nb201 --seeds 5,6` on 4 ranks (two groups of 2), "killed" after the first of two
    epochs, then again with --resume; records which ranks wrote checkpoints. Then the reference,
    each seed alone on 2 ranks, straight through: ranks 0-1 and 2-3 leave the job and each pair
    starts a job of its own (on a fresh port that rank 0 picked) to run `--seed 5` and `--seed 6`.
    The process groups are made here, once for both commands (as in cli_search_epoch)."""
    announce_rank(rank, world_size, port)
    torch.distributed.init_process_group("gloo")
    from fastdnas import cli
    from fastdnas.search import loop

    # Cross-rank BatchNorm inside each group of 2, on a batch of the group's own.
    group = distributed.split(distributed.Distributed(rank, world_size, rank), 2)
    batch_norm = cross_rank_batch_norm(group.rank, group.world_size, case=rank // 2, group=group.group)
    no_nb201_plots()
    writes = []
    save = loop.save_checkpoint
    loop.save_checkpoint = lambda state, path: (writes.append(os.path.basename(os.path.dirname(path))),
                                                save(state, path))
    flags = [*NB201_FLAGS, "--seeds", "5,6", "--out", os.path.join(out, "groups")]
    run = Search.run
    Search.run = lambda self, until=None: run(self, until=1)  # "killed" after epoch 1
    codes = [cli.main(flags)]
    Search.run = run
    codes.append(cli.main([*flags, "--resume"]))
    ports = [free_ports(2) if rank == 0 else None]
    torch.distributed.broadcast_object_list(ports, src=0)
    distributed.shutdown(owned_only=False)  # the group made here, after the searches' DDP wrappers
    loop.save_checkpoint = save
    pair, seed = rank // 2, (5, 6)[rank // 2]
    announce_rank(rank % 2, 2, ports[0][pair])
    torch.distributed.init_process_group("gloo")
    codes.append(cli.main([*NB201_FLAGS, "--seed", str(seed), "--out", os.path.join(out, "alone", f"seed-{seed}")]))
    distributed.shutdown(owned_only=False)
    torch.save({"codes": codes, "writes": writes, "batch_norm": batch_norm}, os.path.join(out, f"rank{rank}.pt"))


def free_ports(count):
    """``count`` distinct free TCP ports of this machine."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
