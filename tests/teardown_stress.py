"""Stress of the distributed teardown order (not collected by pytest; run by hand):

    python tests/teardown_stress.py old|new ROUNDS

Each round spawns 2 fresh gloo ranks that wrap a tiny model in DDP, step, all-reduce temporaries,
then tear down: 'old' destroys the process group while the DDP wrapper lives and frees the
wrapper afterwards (the order in which torch 2.4 could hang: the Reducer's dealloc, holding the
GIL, ran the group's destructor, which joined a gloo worker waiting for the GIL); 'new' calls
fastdnas.search.distributed.shutdown first. A rank alive 60 s after its start prints its stacks and
exits (faulthandler): such a round counts as failed.
"""
import faulthandler
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn


class Net(nn.Linear):
    def arch_parameters(self):
        return []


def rank_main(rank, mode, port):
    faulthandler.dump_traceback_later(60, exit=True)
    torch.set_num_threads(1)
    from fastdnas.search import distributed
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo")
    ctx = distributed.Distributed(rank, 2, rank)
    model = distributed.data_parallel(Net(8, 4), ctx, "cpu")
    for _ in range(3):
        model(torch.randn(16, 8)).sum().backward()
    for _ in range(4):
        dist.all_reduce(torch.ones(3))  # temporaries: a worker may hold the last reference
    if mode == "old":
        dist.destroy_process_group()
    else:
        distributed.shutdown(owned_only=False)
    del model


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    mode, rounds = sys.argv[1], int(sys.argv[2])
    start, failures = time.time(), 0
    for i in range(rounds):
        try:
            mp.start_processes(rank_main, args=(mode, free_port()), nprocs=2, join=True, start_method="spawn")
        except Exception as error:
            failures += 1
            print(f"round {i}: {error}", flush=True)
        else:
            print(f"round {i}: ok", flush=True)
    print(f"{mode}: {rounds} rounds, {failures} failed, {time.time() - start:.0f} s", flush=True)
