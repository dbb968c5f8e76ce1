"""depthwise_conv2d_segments against the calls it replaces (one depthwise_conv2d per segment,
then torch.cat), forward+backward, interleaved: the two sides alternate call by call, so a
machine shared with other jobs slows both alike. Prints each side's median time and the median
of the per-pair ratios (separate / segments) for the search node's two calls per stride group.

    python -m benchmarks.depthwise_segments [--pairs N] [--threads N] [--size N C H W]
"""
import argparse
import statistics
import time

import torch

from fastdnas import ops

FIRST = [(3, 1, 1), (5, 2, 1), (3, 2, 2), (5, 4, 2)]  # (kernel, padding, dilation): sep 3x3, sep 5x5, dil 3x3, dil 5x5
SECOND = [(3, 1, 1), (5, 2, 1)]  # the separable convolutions' second depthwise layers
CALLS = {"first layers": (FIRST, False), "second layers": (SECOND, True)}


def make_sides(size, geometry, stacked_input, stride):
    """(segments, separate): forward+backward closures over one set of inputs."""
    N, C, H, W = size
    offsets = [g * C for g in range(len(geometry))] if stacked_input else [0] * len(geometry)
    x = torch.randn(N, C * (len(geometry) if stacked_input else 1), H, W, requires_grad=True)
    weights = [torch.randn(C, 1, k, k, requires_grad=True) for k, _, _ in geometry]
    paddings, dilations = [p for _, p, _ in geometry], [d for _, _, d in geometry]
    grad = torch.randn_like(ops.depthwise_conv2d_segments(x, weights, stride, paddings, dilations, offsets))

    def segments():
        out = ops.depthwise_conv2d_segments(x, weights, stride, paddings, dilations, offsets)
        return torch.autograd.grad(out, [x, *weights], grad)

    def separate():
        out = torch.cat([ops.depthwise_conv2d(x[:, off:off + C], w, stride, p, d)
                         for w, p, d, off in zip(weights, paddings, dilations, offsets)], 1)
        return torch.autograd.grad(out, [x, *weights], grad)

    return segments, separate


def paired(sides, pairs, warmup=3):
    for _ in range(warmup):
        for side in sides:
            side()
    times = [[], []]
    for i in range(pairs):
        for s in ((0, 1) if i % 2 == 0 else (1, 0)):  # alternate which side goes first
            start = time.perf_counter()
            sides[s]()
            times[s].append(time.perf_counter() - start)
    ratios = [b / a for a, b in zip(*times)]
    return statistics.median(times[0]), statistics.median(times[1]), statistics.median(ratios)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=4, default=[32, 64, 16, 16], metavar=("N", "C", "H", "W"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"N, C, H, W = {args.size}, float32, CPU, {args.threads} threads, {args.pairs} pairs")
    for name, (geometry, stacked_input) in CALLS.items():
        for stride in (1, 2) if not stacked_input else (1,):
            segments, separate = make_sides(args.size, geometry, stacked_input, stride)
            got, want = segments(), separate()
            assert all(torch.allclose(g, w, rtol=1e-4, atol=1e-4) for g, w in zip(got, want))
            t_segments, t_separate, ratio = paired((segments, separate), args.pairs)
            print(f"{name} ({len(geometry)} segments), stride {stride}: segments {t_segments * 1e3:.2f} ms, "
                  f"separate + cat {t_separate * 1e3:.2f} ms, median ratio separate / segments {ratio:.2f}")


if __name__ == "__main__":
    main()
