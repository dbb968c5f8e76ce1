"""The fused kernels (forward + backward) against their eager references, at the sizes the search
networks use and at sizes large enough to measure bandwidth.

Bandwidth is the least number of bytes an op must move (each input read once, each output
written once) over its median time, next to a device copy measured in the same run: the fraction
of the copy's bandwidth says how close a memory-bound kernel is to the memory system's limit.
"""
import torch
import torch.nn.functional as F

from fastdnas import ops, reference

from .common import median_seconds
from .report import perf

# mixed_sum: K=8 one edge's ops, K=40 a whole DARTS node (5 edges x 8 ops); N x C x H x W.
MIXED_SUM_CASES = [(8, (64, 16, 32, 32)), (40, (64, 16, 32, 32)), (8, (64, 64, 32, 32)), (40, (64, 32, 32, 32))]
MIXED_SUM_CPU_CASES = MIXED_SUM_CASES[:2]  # the DARTS sizes: one edge (K=8) and one node (K=40)
# trellis_aggregate: T cell evaluations of B blocks [N, C, H, W]. The first is an Auto-DeepLab node at
# the paper's search setting (F=8, B=5, level 0 of a 321 x 321 crop, batch 2); the second is large.
TRELLIS_CASES = [(3, 5, (2, 8, 81, 81)), (3, 5, (8, 64, 64, 64))]
TRELLIS_CPU_CASES = [(3, 5, (2, 8, 81, 81))]
# resize_sum: the ASPP merge (one logit map per level, resized to the crop and summed), at the paper
# setting (19 classes, 321 x 321) and a large one.
RESIZE_SUM_CASES = [((2, 19), [81, 41, 21, 11], 321), ((8, 64), [128, 64, 32, 16], 256)]
RESIZE_SUM_CPU_CASES = [((2, 19), [81, 41, 21, 11], 321)]
# depthwise_conv2d: (name, N x C x H x W, kernel, stride, padding, dilation): the DARTS candidates'
# depthwise convolutions at the search sizes (C=16, batch 64, 32x32 on a GPU; the CPU step's size on a CPU).
DEPTHWISE_CASES = [("sep3", (64, 16, 32, 32), 3, 1, 1, 1), ("sep5", (64, 16, 32, 32), 5, 1, 2, 1),
                   ("dil5", (64, 16, 32, 32), 5, 1, 4, 2), ("dil5 s2", (64, 32, 16, 16), 5, 2, 4, 2)]
DEPTHWISE_CPU_CASES = [("sep3", (16, 8, 16, 16), 3, 1, 1, 1), ("sep5", (16, 8, 16, 16), 5, 1, 2, 1),
                       ("dil5", (16, 8, 16, 16), 5, 1, 4, 2), ("sep5", (16, 16, 32, 32), 5, 1, 2, 1)]
# The stacked 1x1 convolutions of a stride group (J = primitives x edges slots of C channels), as one
# grouped convolution (the "reference" rows: cuDNN / oneDNN) and as the broadcast matrix products
# the CPU runs (fastdnas.nn.mixed_op._StackedPointwise): the GPU rows decide POINTWISE_MATMUL_DEVICES.
POINTWISE_CASES = [(64, 20, 16, 32), (64, 8, 32, 16), (64, 20, 64, 8)]  # N, J, C, H=W
POINTWISE_CPU_CASES = [(16, 20, 8, 16), (16, 20, 16, 8)]
# A search cell's preprocessing 1x1 convolution (4C -> C after a normal cell; stride 2: one half of a
# FactorizedReduce), as a convolution (the "reference" rows) and as the batched matrix product the
# CPU runs (fastdnas.nn.operations.run_fused): the GPU rows decide POINTWISE_MATMUL_DEVICES there too.
PREPROCESS_CASES = [(64, 64, 16, 32, 1), (64, 128, 32, 16, 1), (64, 64, 8, 32, 2)]  # N, C_in, C_out, H=W, stride
PREPROCESS_CPU_CASES = [(16, 32, 8, 16, 1), (16, 64, 16, 8, 1), (16, 32, 4, 16, 2)]


def _forward_backward(fn, inputs, grad):
    """fn() builds the output from ``inputs`` (tensors requiring grad); backward with ``grad``."""

    def run():
        torch.autograd.grad(fn(), inputs, grad)

    return run


def copy_bandwidth(device, numel, min_run_time):
    """Bytes per second of a device-to-device (or memory-to-memory) copy: read + write."""
    src = torch.empty(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device, min_run_time)
    return 2 * src.numel() * src.element_size() / seconds


def _rows(op, case, device, dtype, reference_fn, fused_fn, grad_inputs, grad, moved_bytes, copy_bw, min_run_time):
    fused = median_seconds(_forward_backward(fused_fn, grad_inputs, grad), device, min_run_time)
    ref = median_seconds(_forward_backward(reference_fn, grad_inputs, grad), device, min_run_time)
    name = case + ("" if dtype == torch.float32 else f" {dtype}")  # PERF <op>.<case>.ref_ms / fused_ms / frac
    perf(op, name, "ref_ms", ref * 1e3, "ms")
    perf(op, name, "fused_ms", fused * 1e3, "ms")
    perf(op, name, "frac", moved_bytes / fused / copy_bw, "of the copy's bandwidth")
    rows = []
    for variant, seconds in (("reference", ref), ("fused", fused)):
        rows.append({
            "bench": f"{op} fwd+bwd",
            "case": f"{case} {str(dtype).replace('torch.', '')}",
            "device": device,
            "variant": variant,
            "ms": seconds * 1e3,
            "speedup": ref / seconds,
            "GBps": moved_bytes / seconds / 1e9,
            "copy_fraction": moved_bytes / seconds / copy_bw,
        })
    return rows


def bench_mixed_sum(device, cases, copy_bw, dtype=torch.float32, min_run_time=1.0):
    rows = []
    for K, shape in cases:
        inputs = [torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(K)]
        weights = torch.softmax(torch.randn(K, device=device), 0).requires_grad_()
        grad = torch.randn(shape, device=device, dtype=dtype)
        n = inputs[0].numel() * inputs[0].element_size()
        moved = (K + 1) * n + (2 * K + 1) * n  # forward: K in, 1 out; backward: grad + K inputs in, K grads out
        rows += _rows("mixed_sum", f"K{K} {'x'.join(map(str, shape))}", device, dtype,
                      lambda: reference.mixed_sum(inputs, weights), lambda: ops.mixed_sum(inputs, weights),
                      [*inputs, weights], grad, moved, copy_bw, min_run_time)
    return rows


def bench_trellis_aggregate(device, cases, copy_bw, dtype=torch.float32, min_run_time=1.0):
    rows = []
    for T, B, shape in cases:
        cells = [[torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(B)]
                 for _ in range(T)]
        betas = torch.softmax(torch.randn(T, device=device), 0).requires_grad_()
        N, C, H, W = shape
        grad = torch.randn(N, B * C, H, W, device=device, dtype=dtype)
        n = grad.numel() // B * grad.element_size()  # one block
        # forward: T*B blocks in, B out; backward: grad (B) and the T*B blocks in, T*B block grads out.
        moved = (T * B + B) * n + (B + 2 * T * B) * n
        rows += _rows("trellis_aggregate", f"T{T} B{B} {'x'.join(map(str, shape))}", device, dtype,
                      lambda: reference.trellis_aggregate(cells, betas), lambda: ops.trellis_aggregate(cells, betas),
                      [t for cell in cells for t in cell] + [betas], grad, moved, copy_bw, min_run_time)
    return rows


def bench_resize_sum(device, cases, copy_bw, dtype=torch.float32, min_run_time=1.0):
    rows = []
    for (N, C), sides, size in cases:
        inputs = [torch.randn(N, C, s, s, device=device, dtype=dtype, requires_grad=True) for s in sides]
        grad = torch.randn(N, C, size, size, device=device, dtype=dtype)
        element = grad.element_size()
        inputs_bytes = sum(x.numel() for x in inputs) * element
        out_bytes = grad.numel() * element
        moved = (inputs_bytes + out_bytes) + (out_bytes + inputs_bytes)  # forward in/out; backward grad in, grads out
        rows += _rows("resize_sum", f"{N}x{C}x{sides}->{size}", device, dtype,
                      lambda: reference.resize_sum(inputs, (size, size)), lambda: ops.resize_sum(inputs, (size, size)),
                      inputs, grad, moved, copy_bw, min_run_time)
    return rows


def bench_depthwise_conv2d(device, cases, copy_bw, dtype=torch.float32, min_run_time=1.0):
    rows = []
    for name, shape, k, stride, padding, dilation in cases:
        x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
        w = torch.randn(shape[1], 1, k, k, device=device, dtype=dtype, requires_grad=True)
        args = dict(stride=stride, padding=padding, dilation=dilation)
        out_shape = F.conv2d(x.detach(), w.detach(), groups=shape[1], **args).shape
        grad = torch.randn(out_shape, device=device, dtype=dtype)
        # forward: x in, out written; backward: grad and x in, input gradient out (weights negligible).
        moved = (2 * x.numel() + 2 * grad.numel()) * x.element_size() + x.numel() * x.element_size()
        rows += _rows("depthwise_conv2d", f"{name} {'x'.join(map(str, shape))}", device, dtype,
                      lambda: F.conv2d(x, w, groups=shape[1], **args), lambda: ops.depthwise_conv2d(x, w, **args),
                      [x, w], grad, moved, copy_bw, min_run_time)
    return rows


def bench_stacked_pointwise(device, cases, copy_bw, dtype=torch.float32, min_run_time=1.0):
    from fastdnas.nn.mixed_op import _StackedPointwise

    rows = []
    for N, J, C, size in cases:
        x = torch.randn(N, J * C, size, size, device=device, dtype=dtype, requires_grad=True)
        w = torch.randn(J, C, C, 1, 1, device=device, dtype=dtype, requires_grad=True)
        grad = torch.randn_like(x)
        moved = 5 * x.numel() * x.element_size()  # forward: x in, y out; backward: grad and x in, x's gradient out
        rows += _rows("stacked_pointwise", f"J{J} {N}x{J * C}x{size}x{size}", device, dtype,
                      lambda: F.conv2d(x, w.flatten(0, 1), groups=J), lambda: _StackedPointwise.apply(x, w),
                      [x, w], grad, moved, copy_bw, min_run_time)
    return rows


def bench_preprocess_pointwise(device, cases, copy_bw, dtype=torch.float32, min_run_time=1.0):
    from fastdnas.nn.operations import _pointwise_conv

    rows = []
    for N, C_in, C_out, size, stride in cases:
        x = torch.randn(N, C_in, size, size, device=device, dtype=dtype, requires_grad=True)
        w = torch.randn(C_out, C_in, 1, 1, device=device, dtype=dtype, requires_grad=True)
        out = size // stride
        grad = torch.randn(N, C_out, out, out, device=device, dtype=dtype)
        # forward: x in, y out; backward: grad and x in, x's gradient out
        moved = (3 * x.numel() + 2 * grad.numel()) * x.element_size()
        rows += _rows("preprocess_pointwise", f"s{stride} {N}x{C_in}x{size}x{size} -> {C_out}", device, dtype,
                      lambda: F.conv2d(x, w, stride=stride),
                      lambda: _pointwise_conv(x[:, :, ::stride, ::stride] if stride > 1 else x, w),
                      [x, w], grad, moved, copy_bw, min_run_time)
    return rows


def run(device, quick=False, min_run_time=1.0, **_):
    """Every kernel row for ``device``, after the copy row they are compared with."""
    on_cuda = device == "cuda"
    copy_numel = (64 if on_cuda else 16) * 2**20
    copy_bw = copy_bandwidth(device, copy_numel, min_run_time)
    perf("copy", device, "GBps", copy_bw / 1e9, "GB/s")
    rows = [{"bench": "copy", "case": f"{copy_numel * 4 // 2**20} MB float32", "device": device, "variant": "copy",
             "ms": 2 * copy_numel * 4 / copy_bw * 1e3, "GBps": copy_bw / 1e9, "copy_fraction": 1.0}]

    def pick(cases, cpu_cases):
        chosen = cases if on_cuda else cpu_cases
        return chosen[:1] if quick else chosen

    rows += bench_mixed_sum(device, pick(MIXED_SUM_CASES, MIXED_SUM_CPU_CASES), copy_bw, min_run_time=min_run_time)
    rows += bench_trellis_aggregate(device, pick(TRELLIS_CASES, TRELLIS_CPU_CASES), copy_bw,
                                    min_run_time=min_run_time)
    rows += bench_resize_sum(device, pick(RESIZE_SUM_CASES, RESIZE_SUM_CPU_CASES), copy_bw, min_run_time=min_run_time)
    rows += bench_depthwise_conv2d(device, pick(DEPTHWISE_CASES, DEPTHWISE_CPU_CASES), copy_bw,
                                   min_run_time=min_run_time)
    rows += bench_stacked_pointwise(device, pick(POINTWISE_CASES, POINTWISE_CPU_CASES), copy_bw,
                                    min_run_time=min_run_time)
    rows += bench_preprocess_pointwise(device, pick(PREPROCESS_CASES, PREPROCESS_CPU_CASES), copy_bw,
                                       min_run_time=min_run_time)
    return rows
