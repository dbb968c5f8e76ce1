"""mixed_sum forward+backward, fused kernel vs the eager reference, at DARTS sizes.

On CUDA it also reports the achieved memory bandwidth against a device-to-device copy measured
in the same run (bytes the fused kernels must move / time).
"""
import torch

from fastdnas import ops, reference

from .common import median_seconds

# K=8: one edge's ops; K=40: a whole DARTS node (5 edges x 8 ops). N x C x H x W.
CASES = [(8, (64, 16, 32, 32)), (40, (64, 16, 32, 32)), (8, (64, 64, 32, 32)), (40, (64, 32, 32, 32))]


def _forward_backward(fn, inputs, weights, grad):
    def run():
        out = fn(inputs, weights)
        torch.autograd.grad(out, [*inputs, weights], grad)

    return run


def copy_bandwidth(device, numel):
    src = torch.empty(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / seconds


def bench_mixed_sum(device, dtype=torch.float32, cases=CASES, min_run_time=1.0):
    rows = []
    copy_bw = None
    for K, shape in cases:
        inputs = [torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(K)]
        weights = torch.softmax(torch.randn(K, device=device), 0).requires_grad_()
        grad = torch.randn(shape, device=device, dtype=dtype)
        fused = median_seconds(_forward_backward(ops.mixed_sum, inputs, weights, grad), device, min_run_time)
        ref = median_seconds(_forward_backward(reference.mixed_sum, inputs, weights, grad), device, min_run_time)
        row = {
            "op": "mixed_sum fwd+bwd",
            "K": K,
            "shape": "x".join(map(str, shape)),
            "dtype": str(dtype).replace("torch.", ""),
            "device": device,
            "reference_ms": ref * 1e3,
            "fused_ms": fused * 1e3,
            "speedup": ref / fused,
        }
        if device == "cuda":
            n = inputs[0].numel() * inputs[0].element_size()
            # forward reads K inputs, writes 1; backward reads grad + K inputs, writes K grads.
            moved = (K + 1) * n + (2 * K + 1) * n
            if copy_bw is None:
                copy_bw = copy_bandwidth(device, 64 * 1024 * 1024)
            row["fused_GBps"] = moved / fused / 1e9
            row["copy_GBps"] = copy_bw / 1e9
            row["fraction_of_copy"] = moved / fused / copy_bw
        rows.append(row)
        del inputs, grad
    return rows
