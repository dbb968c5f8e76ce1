"""The depthwise kernels pass by pass against what they replace, at the DARTS search sizes:
forward, input gradient and weight gradient timed separately, each side by side with torch's own
(``F.conv2d(groups=C)`` and ``aten.convolution_backward`` with one output asked for), the two
sides alternating sample by sample. Rows for depthwise_conv2d (every candidate geometry) and for
depthwise_conv2d_segments (a node's four first depthwise layers in one call, against four torch
calls and a cat or a sum). Each row gives the times, the speedup (torch / fastdnas) and the
multiply-add rate as a fraction of a float32 matrix product's, measured in the same run (TF32 off).

    python -m benchmarks.kernel_passes [--device cpu|cuda] [--threads N] [--min-run-time S] [--out FILE]
    python -m benchmarks.run --only passes
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from .report import perf

# (name, kernel, padding, dilation): the DARTS candidates' depthwise layers.
GEOMETRIES = [("sep3", 3, 1, 1), ("sep5", 5, 2, 1), ("dil3", 3, 2, 2), ("dil5", 5, 4, 2)]
# (stride, N, C, H): the DARTS search network at batch 64 (C=16 cells at 32 px, 32 at 16, 64 at 8;
# the reduction cells' stride-2 layers read the previous size).
SIZES = [(1, 64, 16, 32), (1, 64, 32, 16), (1, 64, 64, 8), (2, 64, 32, 32), (2, 64, 64, 16)]
CPU_SIZES = [(1, 16, 16, 16), (2, 16, 32, 16)]
PASSES = ("fwd", "igrad", "wgrad")


def _timed(fn, device, reps):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def paired_seconds(first, second, device, min_run_time):
    """(median seconds of first(), of second()): samples of `reps` calls, the sides alternating
    sample by sample (and which goes first), until both have run min_run_time in all."""
    first(), second()
    reps = max(1, int(2e-3 / max(_timed(first, device, 1), 1e-7)))  # samples of about 2 ms
    times = ([], [])
    spent = 0.0
    while spent < 2 * min_run_time or len(times[0]) < 5:
        order = (0, 1) if len(times[0]) % 2 == 0 else (1, 0)
        for side in order:
            t = _timed((first, second)[side], device, reps)
            times[side].append(t)
            spent += t * reps
    return statistics.median(times[0]), statistics.median(times[1])


def matmul_rate(device, min_run_time):
    """Multiply-adds per second of a float32 matrix product (TF32 off): the FP32 rate's yardstick."""
    n = 4096 if device == "cuda" else 512
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        seconds, _ = paired_seconds(lambda: a @ b, lambda: None, device, min_run_time)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return n ** 3 / seconds


def _conv_backward(grad, x, w, stride, padding, dilation, mask):
    return torch.ops.aten.convolution_backward(grad, x, w, None, [stride] * 2, [padding] * 2, [dilation] * 2, False,
                                               [0, 0], x.shape[1], mask)


def depthwise_sides(x, w, grad, stride, padding, dilation):
    """{pass: (torch side, fastdnas side)} of depthwise_conv2d."""
    ns = torch.ops.fastdnas
    s, p, d = [stride] * 2, [padding] * 2, [dilation] * 2
    C = x.shape[1]
    return {
        "fwd": (lambda: F.conv2d(x, w, None, stride, padding, dilation, C),
                lambda: ns.depthwise_conv2d(x, w, s, p, d)),
        "igrad": (lambda: _conv_backward(grad, x, w, stride, padding, dilation, [True, False, False]),
                  lambda: ns._depthwise_conv2d_input_grad(grad, w, list(x.shape), s, p, d)),
        "wgrad": (lambda: _conv_backward(grad, x, w, stride, padding, dilation, [False, True, False]),
                  lambda: ns._depthwise_conv2d_weight_grad(grad, x, list(w.shape), s, p, d)),
    }


def segments_sides(x, weights, grads, stride):
    """{pass: (torch side, fastdnas side)} of one depthwise_conv2d_segments call holding every
    geometry, all segments reading x, against a torch call per segment (then a cat or a sum)."""
    ns = torch.ops.fastdnas
    paddings = [p for _, _, p, _ in GEOMETRIES for _ in range(2)]
    dilations = [d for _, _, _, d in GEOMETRIES for _ in range(2)]
    offsets = [0] * len(GEOMETRIES)
    kernel_sizes = [k for _, k, _, _ in GEOMETRIES for _ in range(2)]
    grad = torch.cat(grads, 1)
    per_segment = list(zip(weights, grads, GEOMETRIES))
    C = x.shape[1]
    return {
        "fwd": (lambda: torch.cat([F.conv2d(x, w, None, stride, p, d, C) for w, _, (_, _, p, d) in per_segment], 1),
                lambda: ns.depthwise_conv2d_segments(x, weights, [stride] * 2, paddings, dilations, offsets)),
        "igrad": (lambda: sum(_conv_backward(g, x, w, stride, p, d, [True, False, False])[0]
                              for w, g, (_, _, p, d) in per_segment),
                  lambda: ns._depthwise_conv2d_segments_input_grad(grad, weights, list(x.shape), [stride] * 2,
                                                                   paddings, dilations, offsets)),
        "wgrad": (lambda: [_conv_backward(g, x, w, stride, p, d, [False, True, False])[1]
                           for w, g, (_, _, p, d) in per_segment],
                  lambda: ns._depthwise_conv2d_segments_weight_grad(grad, x, kernel_sizes, [stride] * 2, paddings,
                                                                    dilations, offsets)),
    }


def run(device, quick=False, min_run_time=1.0, **_):
    from fastdnas import ops  # noqa: F401  (loads the op library)

    sizes = SIZES if device == "cuda" else CPU_SIZES
    if quick:
        sizes = sizes[:1]
    rate = matmul_rate(device, min_run_time)
    perf("fp32_matmul", device, "GMACps", rate / 1e9, "G multiply-adds/s")
    rows, speedups = [], {p: [] for p in PASSES}
    for stride, N, C, H in sizes:
        x = torch.randn(N, C, H, H, device=device)
        weights, grads, cases = [], [], []
        for name, k, padding, dilation in GEOMETRIES:
            w = torch.randn(C, 1, k, k, device=device)
            out = F.conv2d(x, w, None, stride, padding, dilation, C)
            grad = torch.randn_like(out)
            weights.append(w)
            grads.append(grad)
            cases.append((f"{name} s{stride}", depthwise_sides(x, w, grad, stride, padding, dilation),
                          out.numel() * k * k))
        cases.append((f"segments s{stride}", segments_sides(x, weights, grads, stride),
                      sum(g.numel() * k * k for g, (_, k, _, _) in zip(grads, GEOMETRIES))))
        for case, sides, macs in cases:
            label = f"{case} {N}x{C}x{H}x{H}"
            for pass_name in PASSES:
                ref, fused = paired_seconds(*sides[pass_name], device, min_run_time)
                speedup = ref / fused
                speedups[pass_name].append(speedup)
                rows.append({"bench": f"depthwise {pass_name}", "case": label, "device": device,
                             "variant": "fastdnas", "ms": fused * 1e3, "torch_ms": ref * 1e3, "speedup": speedup,
                             "fp32_fraction": macs / fused / rate})
    for pass_name, values in speedups.items():
        perf("dw_passes", device, f"{pass_name}_min", min(values), "x torch (worst case)")
        perf("dw_passes", device, f"{pass_name}_geomean",
             math.exp(sum(map(math.log, values)) / len(values)), "x torch (geometric mean)")
    return rows


def main(argv=None):
    from .common import print_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = run(args.device, quick=args.quick, min_run_time=args.min_run_time)
    columns = ["bench", "case", "device", "ms", "torch_ms", "speedup", "fp32_fraction"]
    print_table(rows, columns)
    if args.out:
        from .common import machine, write_json

        write_json(args.out, {"machine": machine(args.device), "rows": rows})


if __name__ == "__main__":
    main()
