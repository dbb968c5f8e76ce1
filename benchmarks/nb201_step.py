"""The NAS-Bench-201 search step, reference against the fused backends, interleaved (benchmarks.paired's
pairing: every round runs each backend once, the order alternating): the supernet at the benchmark's size (C=16, N=5), the authors' first-order DARTS step
(weight step, then architecture step; Nesterov SGD, clip with the alphas) or GDAS's.

    python -m benchmarks.nb201_step [--method darts|gdas] [--pairs N] [--batch N] [--size PIXELS] [--threads N]
"""
import argparse
import statistics

import torch

from fastdnas.nb201 import NB201GdasNetwork, NB201Network
from fastdnas.search import Search, SearchConfig

from .paired import interleaved_times
from .search_step import _Sized


def make_step(backend, method="darts", C=16, N=5, batch=16, size=32, device="cpu"):
    torch.manual_seed(0)
    model = (NB201GdasNetwork if method == "gdas" else NB201Network)(C=C, N=N, num_classes=10, backend=backend)
    config = SearchConfig(batch_size=batch, epochs=1, weight_decay=5e-4, nesterov=True, clip_with_arch=True,
                          weight_step_first=True)
    search = Search(model, _Sized(batch), _Sized(batch), config, device=device, progress=False, log=lambda *a: None)
    batches = [torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))] * 2

    def step():
        search.search_step(*batches)

    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=["darts", "gdas"], default="darts")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    steps = {backend: make_step(backend, args.method, batch=args.batch, size=args.size)
             for backend in ("reference", "fused", "fused_sum")}
    times = interleaved_times(steps, "cpu", args.pairs)
    parts = [f"reference {1e3 * statistics.median(times['reference']):.0f} ms"]
    for backend in ("fused", "fused_sum"):
        ratio = statistics.median(r / f for r, f in zip(times["reference"], times[backend]))
        parts.append(f"{backend} {1e3 * statistics.median(times[backend]):.0f} ms (median ratio {ratio:.2f}x)")
    print(f"nb201 {args.method} C16 N5 {args.batch}x3x{args.size}x{args.size} (cpu, {torch.get_num_threads()} "
          f"threads, {args.pairs} rounds): {', '.join(parts)}", flush=True)


if __name__ == "__main__":
    main()
