"""The first-order architecture pass (forward and backward on a val batch, gradients of the alphas)
as ``Architect.first_order_grads`` runs it, against the same pass with every weight still requiring
grad (as before issue 21: the backward also computed every weight gradient). The two sides
alternate in one process, so a shared machine slows both alike; prints each side's median and the
median of the per-pair ratios (all weights / alphas only). Both sides give the same alpha gradients.

    python -m benchmarks.arch_pass [--backend fused] [--pairs N] [--threads N] [--C 8] [--layers 5]
"""
import argparse
import statistics

import torch

from fastdnas import darts
from fastdnas.search import Architect

from .paired import interleaved_times


def make_architect(backend, C, layers, batch, image_size):
    torch.manual_seed(0)
    net = darts.SearchNetwork(C=C, num_classes=10, layers=layers, backend=backend)
    weight_optimizer = torch.optim.SGD(list(net.weight_parameters()), lr=0.025)
    batch = torch.randn(batch, 3, image_size, image_size), torch.randint(0, 10, (batch,))
    return Architect(net, weight_optimizer), batch


def passes(architect, batch):
    """{side: the architecture pass}: "all weights" differentiates as the pass did before."""
    return {
        "all weights": lambda: architect.grad(architect.loss(*batch), architect.arch_params),
        "alphas only": lambda: architect.first_order_grads(*batch),
    }


def paired(backend="fused", pairs=10, warmup=2, C=8, layers=5, batch=16, image_size=16):
    architect, batch = make_architect(backend, C, layers, batch, image_size)
    sides = passes(architect, batch)
    times = interleaved_times(sides, pairs=pairs, warmup=warmup)
    ratios = [a / b for a, b in zip(times["all weights"], times["alphas only"])]
    return {side: 1e3 * statistics.median(t) for side, t in times.items()} | {"ratio": statistics.median(ratios)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["reference", "fused_sum", "fused"], default="fused")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--C", type=int, default=8)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=16)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    row = paired(args.backend, args.pairs, C=args.C, layers=args.layers, batch=args.batch,
                 image_size=args.image_size)
    print(f"darts {args.backend} C{args.C} L{args.layers} {args.batch}x3x{args.image_size}x{args.image_size} "
          f"({torch.get_num_threads()} threads, {args.pairs} pairs): all weights {row['all weights']:.1f} ms, "
          f"alphas only {row['alphas only']:.1f} ms, median ratio {row['ratio']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
