"""mixed_sum: the fused kernels against the reference, gradcheck, opcheck, compile, bad inputs."""
import os

import pytest
import torch

from fastdnas import ops, reference
from fastdnas._extension import cuda_kernels_built
from conftest import CUDA, DEVICES, over_thread_counts, rel_err

# Relative error bounds per dtype (forward and backward).
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
SHAPES = [(3, 5, 7), (1,), (2, 16, 33, 31), (4, 3, 8, 8)]


def make_inputs(K, shape, dtype, device, requires_grad=True):
    inputs = [torch.randn(shape, dtype=dtype, device=device, requires_grad=requires_grad) for _ in range(K)]
    weights = torch.softmax(torch.randn(K, dtype=torch.float32, device=device), 0)
    weights = weights.to(dtype if dtype == torch.float64 else torch.float32).requires_grad_(requires_grad)
    return inputs, weights


def forward_backward(fn, inputs, weights, grad):
    out = fn(inputs, weights)
    grads = torch.autograd.grad(out, [*inputs, weights], grad)
    return out, grads[:-1], grads[-1]


def check_against_reference(inputs, weights, dtype):
    grad = torch.randn(inputs[0].shape, dtype=dtype, device=inputs[0].device)
    out, grad_inputs, grad_weights = forward_backward(ops.mixed_sum, inputs, weights, grad)
    ref_out, ref_grad_inputs, ref_grad_weights = forward_backward(reference.mixed_sum, inputs, weights, grad)
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype and out.shape == inputs[0].shape
    assert rel_err(out, ref_out) <= tol
    for g, r in zip(grad_inputs, ref_grad_inputs):
        assert rel_err(g, r) <= tol
    assert grad_weights.dtype == weights.dtype
    assert rel_err(grad_weights, ref_grad_weights) <= max(tol, 1e-5 if dtype != torch.float64 else tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("K", [1, 8, 40])
def test_matches_reference(K, shape, dtype, device):
    inputs, weights = make_inputs(K, shape, dtype, device)
    check_against_reference(inputs, weights, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_float64_is_exact_to_1e12(device):
    inputs, weights = make_inputs(8, (64, 16, 8, 8), torch.float64, device)
    check_against_reference(inputs, weights, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_non_contiguous_inputs(dtype, device):
    base = [torch.randn(4, 9, 6, 10, dtype=dtype, device=device) for _ in range(5)]
    # A transpose, a strided slice and channels-last: three kinds of non-contiguous layout.
    inputs = [b.transpose(1, 3)[:, ::2] for b in base[:3]]
    inputs += [torch.randn(4, 9, 6, 5, dtype=dtype, device=device).to(memory_format=torch.channels_last).transpose(1, 3) for _ in range(2)]
    inputs = [x.detach().requires_grad_() for x in inputs]
    assert not any(x.is_contiguous() for x in inputs)
    weights = torch.randn(5, dtype=dtype, device=device, requires_grad=True)
    check_against_reference(inputs, weights, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_grad(device):
    inputs, weights = make_inputs(3, (5, 6), torch.float64, device)
    grad = torch.randn(6, 5, dtype=torch.float64, device=device).t()
    got = forward_backward(ops.mixed_sum, inputs, weights, grad)
    want = forward_backward(reference.mixed_sum, inputs, weights, grad)
    for g, r in zip(got[1], want[1]):
        assert rel_err(g, r) <= 1e-12
    assert rel_err(got[2], want[2]) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0,), (2, 0, 4), (0, 16, 8, 8)])
def test_empty(shape, device):
    inputs, weights = make_inputs(4, shape, torch.float32, device)
    out = ops.mixed_sum(inputs, weights)
    assert out.shape == shape
    grads = torch.autograd.grad(out.sum(), [*inputs, weights])
    assert all(g.shape == shape for g in grads[:-1])
    assert torch.equal(grads[-1], torch.zeros_like(weights))


@pytest.mark.parametrize("device", DEVICES)
def test_half_inputs_with_float32_weights_accumulate_in_float32(device):
    # 2048 terms of 1.0 * 1.0 overflow no half range but lose integers above 2048 in half sums.
    K = 64
    inputs = [torch.full((8,), 33.0, dtype=torch.float16, device=device) for _ in range(K)]
    weights = torch.ones(K, device=device)
    out = ops.mixed_sum(inputs, weights)
    assert out.dtype == torch.float16
    assert torch.equal(out.float(), torch.full((8,), 33.0 * K, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    inputs, weights = make_inputs(5, (3, 4, 5), torch.float64, device)
    assert torch.autograd.gradcheck(lambda *args: ops.mixed_sum(args[:-1], args[-1]), (*inputs, weights))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_opcheck(dtype, device):
    inputs, weights = make_inputs(6, (2, 3, 5, 7), dtype, device)
    torch.library.opcheck(torch.ops.fastdnas.mixed_sum, (inputs, weights))
    grad = torch.randn(2, 3, 5, 7, dtype=dtype, device=device)
    detached = [x.detach() for x in inputs]
    torch.library.opcheck(torch.ops.fastdnas._mixed_sum_backward, (grad, detached, weights.detach()))
    for mask in ([True, False], [False, True]):
        torch.library.opcheck(torch.ops.fastdnas._mixed_sum_backward, (grad, detached, weights.detach(), mask))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_backward_computes_only_what_autograd_needs(dtype, device):
    # output_mask leaves out the input gradients or the weight sums, bitwise the same otherwise;
    # the autograd formula asks for the weights' gradient only when they require grad.
    inputs, weights = make_inputs(5, (2, 3, 9, 7), dtype, device, requires_grad=False)
    grad = torch.randn(2, 3, 9, 7, dtype=dtype, device=device)
    grad_inputs, grad_weights = torch.ops.fastdnas._mixed_sum_backward(grad, inputs, weights)
    only_inputs, none = torch.ops.fastdnas._mixed_sum_backward(grad, inputs, weights, [True, False])
    empty, only_weights = torch.ops.fastdnas._mixed_sum_backward(grad, inputs, weights, [False, True])
    assert none is None and empty == [] and torch.equal(only_weights, grad_weights)
    assert all(torch.equal(a, b) for a, b in zip(only_inputs, grad_inputs, strict=True))
    leaves = [x.clone().requires_grad_() for x in inputs]
    assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(ops.mixed_sum(leaves, weights), leaves, grad),
                                                 grad_inputs, strict=True))
    with torch.no_grad():
        weights = weights.clone()
    weights.requires_grad_()
    assert torch.equal(torch.autograd.grad(ops.mixed_sum(inputs, weights), weights, grad)[0], grad_weights)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_is_deterministic_across_thread_counts(device):
    inputs, weights = make_inputs(8, (3, 16, 41, 37), torch.float32, device)
    grad = torch.randn(inputs[0].shape, device=device)
    results = over_thread_counts(lambda: forward_backward(ops.mixed_sum, inputs, weights, grad)[2], repeats=2)
    assert all(torch.equal(r, results[0]) for r in results)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    inputs, weights = make_inputs(8, (2, 4, 6, 6), torch.float32, device)

    def node(inputs, weights):
        return torch.relu(ops.mixed_sum(inputs, torch.softmax(weights, 0))).sum()

    compiled = torch.compile(node, fullgraph=True)
    got = torch.autograd.grad(compiled(inputs, weights), [*inputs, weights])
    want = torch.autograd.grad(node(inputs, weights), [*inputs, weights])
    for g, w in zip(got, want):
        assert rel_err(g, w) <= 1e-5


@pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine")
def test_cuda_graph_capture():
    inputs, weights = make_inputs(8, (16, 16, 16, 16), torch.float32, "cuda", requires_grad=False)
    grad = torch.randn_like(inputs[0])
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the graph
        ops.mixed_sum(inputs, weights)
        torch.ops.fastdnas._mixed_sum_backward(grad, inputs, weights)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.mixed_sum(inputs, weights)
        grad_inputs, grad_weights = torch.ops.fastdnas._mixed_sum_backward(grad, inputs, weights)
    for x in inputs:
        x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(out, reference.mixed_sum(inputs, weights)) <= 1e-5
    want = torch.stack([(grad * x).sum() for x in inputs])
    assert rel_err(grad_weights, want) <= 1e-5
    assert rel_err(grad_inputs[3], weights[3] * grad) <= 1e-6


def test_cuda_kernels_registered_when_built():
    # The test command sets FASTDNAS_EXPECT_CUDA_BUILD=1 where a toolkit exists: the CUDA
    # kernels must then have been compiled and registered, even on a machine without a GPU.
    if os.environ.get("FASTDNAS_EXPECT_CUDA_BUILD") == "1":
        assert cuda_kernels_built()
    info = torch._C._dispatch_dump("fastdnas::mixed_sum")
    assert "CPU: registered" in info
    if cuda_kernels_built():
        assert "CUDA: registered" in info
        assert "CUDA: registered" in torch._C._dispatch_dump("fastdnas::_mixed_sum_backward")


# --- bad inputs: each error names the argument and what was expected ---------------------------

def x(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, device=device).to(dtype)


BAD_INPUTS = [
    ([], torch.ones(0), "inputs must hold at least one tensor"),
    ([x(2, 3), x(2, 3)], torch.ones(3), r"weights must have shape \[2\]"),
    ([x(2, 3), x(2, 3)], torch.ones(2, 1), r"weights must have shape \[2\]"),
    ([x(2, 3), x(3, 2)], torch.ones(2), r"inputs\[1\] has shape"),
    ([x(2, 3), x(2, 3, dtype=torch.float64)], torch.ones(2), r"inputs\[1\] has dtype"),
    ([x(2, 3), x(2, 3)], torch.ones(2, dtype=torch.int64), "weights must be a floating-point tensor"),
    ([x(2, 3, dtype=torch.int32)], torch.ones(1), "inputs must be float64, float32, float16 or bfloat16"),
    ([x(2) for _ in range(129)], torch.ones(129), "at most 128"),
]


@pytest.mark.parametrize("inputs,weights,message", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(inputs, weights, message):
    with pytest.raises(RuntimeError, match=message):
        ops.mixed_sum(inputs, weights)


@pytest.mark.parametrize("inputs,weights,message", BAD_INPUTS[1:])
def test_bad_inputs_raise_under_fake_tensors(inputs, weights, message):
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    with pytest.raises(RuntimeError, match=message):
        with mode:
            ops.mixed_sum([mode.from_tensor(t) for t in inputs], mode.from_tensor(weights))


def test_device_mismatch_raises():
    device = "cuda" if CUDA else "meta"
    with pytest.raises(RuntimeError, match=r"inputs\[1\] is on .* must be on one device"):
        ops.mixed_sum([x(2, 3), x(2, 3, device=device)], torch.ones(2))
    with pytest.raises(RuntimeError, match="weights is on"):
        ops.mixed_sum([x(2, 3, device=device)], torch.ones(1))


def test_backward_checks_grad():
    # A grad on another device once passed (the fake kernel served the mixed call: uninitialised results).
    inputs = [x(2, 3), x(2, 3)]
    for grad, what in ((torch.empty(2, 3, device="meta"), "device"), (x(2, 3, dtype=torch.float64), "dtype"),
                       (x(3, 2), "shape")):
        with pytest.raises(RuntimeError, match=r"mixed_sum \(backward\): grad must match inputs\[0\]"):
            torch.ops.fastdnas._mixed_sum_backward(grad, inputs, torch.ones(2))


def test_backward_errors_name_the_forward_op():
    with pytest.raises(RuntimeError, match=r"mixed_sum \(backward\): weights must have shape \[2\]"):
        torch.ops.fastdnas._mixed_sum_backward(x(2, 3), [x(2, 3), x(2, 3)], torch.ones(3))
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    with pytest.raises(RuntimeError, match=r"mixed_sum \(backward\): inputs\[1\] has shape"):
        with mode:
            torch.ops.fastdnas._mixed_sum_backward(mode.from_tensor(x(2, 3)), [mode.from_tensor(x(2, 3)),
                                                   mode.from_tensor(x(3, 2))], mode.from_tensor(torch.ones(2)))


@pytest.mark.parametrize("inputs,message", [
    (None, "inputs must be a list or tuple of tensors, got None"),
    (3.0, "inputs must be a list or tuple of tensors, got float"),
    (torch.ones(2, 3), r"got torch.Tensor \(pass list\(t.unbind\(0\)\)"),
    (__import__("numpy").ones((2, 3)), "inputs must be a list or tuple of tensors, got numpy.ndarray"),
    ([torch.ones(3), __import__("numpy").ones(3)], r"inputs\[1\] must be a tensor, got numpy.ndarray"),
])
def test_inputs_of_the_wrong_type_raise_type_error(inputs, message):
    with pytest.raises(TypeError, match=message):
        ops.mixed_sum(inputs, torch.ones(2))


@pytest.mark.parametrize("weights,message", [
    (None, "weights must be a tensor, got None"),
    (__import__("numpy").ones(2), "weights must be a tensor, got numpy.ndarray"),
    ([0.5, 0.5], "weights must be a tensor, got list"),
])
def test_weights_of_the_wrong_type_raise_type_error(weights, message):
    with pytest.raises(TypeError, match="mixed_sum: " + message):
        ops.mixed_sum([torch.ones(3), torch.ones(3)], weights)
