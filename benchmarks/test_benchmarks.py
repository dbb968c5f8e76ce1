"""The same benchmarks through pytest-benchmark, at the quick sizes: ``pytest benchmarks``
(``--benchmark-compare`` and the other pytest-benchmark options apply). Nothing here asserts a
time; ``python -m benchmarks.run`` is the full suite with its one table."""
import pytest
import torch

from benchmarks import kernels
from benchmarks.search_step import SETTINGS, make_step
from fastdnas import ops, reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def timed(fn, device):
    """fn, finished on the device before the clock stops."""
    if device != "cuda":
        return fn

    def synchronised():
        fn()
        torch.cuda.synchronize()

    return synchronised


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["reference", "fused"])
def test_mixed_sum_forward_backward(benchmark, variant, device):
    K, shape = (kernels.MIXED_SUM_CASES if device == "cuda" else kernels.MIXED_SUM_CPU_CASES)[0]
    inputs = [torch.randn(shape, device=device, requires_grad=True) for _ in range(K)]
    weights = torch.softmax(torch.randn(K, device=device), 0).requires_grad_()
    grad = torch.randn(shape, device=device)
    fn = ops.mixed_sum if variant == "fused" else reference.mixed_sum
    benchmark(timed(lambda: torch.autograd.grad(fn(inputs, weights), [*inputs, weights], grad), device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["reference", "fused"])
def test_depthwise_conv2d_forward_backward(benchmark, variant, device):
    _, shape, k, stride, padding, dilation = (kernels.DEPTHWISE_CASES if device == "cuda"
                                              else kernels.DEPTHWISE_CPU_CASES)[2]
    x = torch.randn(shape, device=device, requires_grad=True)
    w = torch.randn(shape[1], 1, k, k, device=device, requires_grad=True)
    args = dict(stride=stride, padding=padding, dilation=dilation)
    if variant == "fused":
        fn = lambda: ops.depthwise_conv2d(x, w, **args)  # noqa: E731
    else:
        fn = lambda: torch.nn.functional.conv2d(x, w, groups=shape[1], **args)  # noqa: E731
    grad = torch.randn_like(fn())
    benchmark(timed(lambda: torch.autograd.grad(fn(), [x, w], grad), device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["reference eager", "fused eager", "fused graphs"])
@pytest.mark.parametrize("space", sorted(SETTINGS))
def test_search_step(benchmark, space, variant, device):
    if variant.endswith("graphs") and device != "cuda":
        pytest.skip("CUDA graphs need a CUDA device")
    _, step, _ = make_step(space, variant, device, SETTINGS[space]["quick"])
    for _ in range(5):  # graph warm-up and capture, lazy optimizer state
        step()
    benchmark(timed(step, device))
