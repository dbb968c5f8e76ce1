"""The original scripts' search step (tests/original_scripts.py: architect.py's step, then
train_search.py's weight step) on three networks, interleaved step by step: the original-layout
stand-in (tests/original_layout.py, per-edge eager sums as the original code computes),
fastdnas.compat's Network on the reference backend, and on the fused backend. Prints each
median step time and the median per-round ratios original / fused.

    python -m benchmarks.compat_step [--method darts|pc_darts] [--unrolled] [--rounds N] [--threads N]
    python -m benchmarks.compat_step --passes    # the parts of the second-order step, one by one
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from fastdnas.compat import darts as compat_darts  # noqa: E402
from fastdnas.compat import pc_darts as compat_pc_darts  # noqa: E402
from original_layout import OriginalNetwork  # noqa: E402
from original_scripts import make_search, search_step  # noqa: E402

from .paired import interleaved_times  # noqa: E402
from .search_step import SETTINGS, describe  # noqa: E402

COMPAT = {"darts": (compat_darts.Network, None), "pc_darts": (compat_pc_darts.Network, 4)}


def paired(method="darts", unrolled=False, rounds=5, warmup=1):
    s = SETTINGS["darts"]["cpu"]
    cls, k = COMPAT[method]
    criterion = nn.CrossEntropyLoss()
    torch.manual_seed(0)
    nets = {"original layout": OriginalNetwork(s["C"], 10, s["layers"], criterion, k=k)}
    for backend in ("reference", "fused"):
        net = cls(s["C"], 10, s["layers"], criterion, backend=backend)
        net.load_state_dict(nets["original layout"].state_dict())
        nets[f"compat {backend}"] = net
    g = torch.Generator().manual_seed(1)
    batch = [(torch.randn(s["batch"], 3, s["image_size"], s["image_size"], generator=g),
              torch.randint(0, 10, (s["batch"],), generator=g)) for _ in range(2)]
    steps = {}
    for name, net in nets.items():
        optimizer, architect = make_search(net)
        steps[name] = (lambda net=net, o=optimizer, a=architect:
                       search_step(net, a, o, criterion, batch[0], batch[1], 0.025, unrolled))
    times = interleaved_times(steps, pairs=rounds, warmup=warmup)
    ratios = [o / f for o, f in zip(times["original layout"], times["compat fused"])]
    return describe("darts", s), {name: 1e3 * statistics.median(t) for name, t in times.items()}, statistics.median(ratios)


def passes(method="darts", rounds=3):
    """Median ms of the passes the original architect makes, original layout against compat fused:
    new(), a full forward and backward, and the forward with the gradients of the alphas only
    (its Hessian-vector product)."""
    s = SETTINGS["darts"]["cpu"]
    cls, k = COMPAT[method]
    criterion = nn.CrossEntropyLoss()
    torch.manual_seed(0)
    original = OriginalNetwork(s["C"], 10, s["layers"], criterion, k=k)
    fused = cls(s["C"], 10, s["layers"], criterion)
    fused.load_state_dict(original.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(s["batch"], 3, s["image_size"], s["image_size"], generator=g)
    y = torch.randint(0, 10, (s["batch"],), generator=g)
    rows = {}
    for name, net in (("original layout", original), ("compat fused", fused)):
        work = {"new()": net.new, "forward + backward": lambda net=net: net._loss(x, y).backward(),
                "forward + alpha gradients": lambda net=net: torch.autograd.grad(net._loss(x, y), net.arch_parameters())}
        for label, fn in work.items():
            fn()
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            rows.setdefault(label, {})[name] = 1e3 * statistics.median(times)
    return describe("darts", s), rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=list(COMPAT), action="append")
    parser.add_argument("--unrolled", action="store_true", help="second-order architecture step")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--passes", action="store_true", help="time the passes of the second-order step instead")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.passes:
        for method in args.method or list(COMPAT):
            case, rows = passes(method, args.rounds)
            for label, ms in rows.items():
                print(f"{method} {case} {label}: " + ", ".join(f"{name} {t:.0f} ms" for name, t in ms.items()), flush=True)
        return
    for method in args.method or list(COMPAT):
        case, ms, ratio = paired(method, args.unrolled, args.rounds)
        order = "second order" if args.unrolled else "first order"
        print(f"{method} {order} {case} (cpu, {torch.get_num_threads()} threads, {args.rounds} rounds): "
              + ", ".join(f"{name} {t:.0f} ms" for name, t in ms.items())
              + f"; median ratio original / compat fused {ratio:.2f}x", flush=True)


if __name__ == "__main__":
    main()
