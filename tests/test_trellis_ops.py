"""trellis_aggregate and resize_sum: the fused kernels against the reference, gradcheck, opcheck,
compile, bad inputs."""
import contextlib

import pytest
import torch

from fastdnas import ops, reference
from fastdnas._extension import cuda_kernels_built
from conftest import CUDA, DEVICES, rel_err

# Relative error bounds per dtype (forward and backward).
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def weight_vector(K, dtype, device, requires_grad=True):
    """Softmax weights: float64 for float64 inputs, else float32 (half inputs keep float32 weights)."""
    weights = torch.softmax(torch.randn(K, dtype=torch.float64, device=device), 0)
    return weights.to(dtype if dtype == torch.float64 else torch.float32).requires_grad_(requires_grad)


def gradients(out, tensors, grad):
    return torch.autograd.grad(out, [t for t in tensors if t is not None], grad)


def assert_close(got, want, tol):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert rel_err(got, want) <= tol


# --- trellis_aggregate -------------------------------------------------------------------------

def make_cells(T, B, shape, dtype, device, requires_grad=True):
    cells = [[torch.randn(shape, device=device).to(dtype).requires_grad_(requires_grad) for _ in range(B)]
             for _ in range(T)]
    return cells, weight_vector(T, dtype, device, requires_grad)


def flat(cells):
    return [block for cell in cells for block in cell]


def check_trellis_against_reference(cells, betas, grad=None):
    dtype = cells[0][0].dtype
    out = ops.trellis_aggregate(cells, betas)
    want = reference.trellis_aggregate(cells, betas)
    tol = TOLERANCE[dtype]
    assert_close(out, want, tol)
    if grad is None:
        grad = torch.randn(want.shape, device=want.device).to(dtype)
    got_grads = gradients(out, [*flat(cells), betas], grad)
    want_grads = gradients(want, [*flat(cells), betas], grad)
    for g, w in zip(got_grads[:-1], want_grads[:-1]):
        assert_close(g, w, tol)
    assert_close(got_grads[-1], want_grads[-1], max(tol, 1e-5))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("T,B", [(1, 1), (1, 5), (3, 1), (3, 5), (2, 3)])
def test_trellis_matches_reference(T, B, dtype, device):
    cells, betas = make_cells(T, B, (2, 3, 7, 9), dtype, device)
    check_trellis_against_reference(cells, betas)


@pytest.mark.parametrize("device", DEVICES)
def test_trellis_float64_large_is_exact_to_1e12(device):
    # More than one backward chunk per block row, and many rows.
    cells, betas = make_cells(3, 5, (4, 8, 33, 31), torch.float64, device)
    check_trellis_against_reference(cells, betas)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_trellis_non_contiguous_inputs_and_grad(dtype, device):
    # A transpose, a strided slice and channels-last: three kinds of non-contiguous layout.
    layouts = [
        lambda: torch.randn(2, 9, 5, 4, dtype=dtype, device=device).transpose(1, 3),
        lambda: torch.randn(2, 8, 5, 9, dtype=dtype, device=device)[:, ::2],
        lambda: torch.randn(2, 4, 5, 9, dtype=dtype, device=device).to(memory_format=torch.channels_last),
    ]
    cells = [[layouts[(t + b) % 3]().requires_grad_() for b in range(4)] for t in range(3)]
    assert not any(x.is_contiguous() for x in flat(cells))
    betas = torch.randn(3, dtype=dtype, device=device, requires_grad=True)
    grad = torch.randn(2, 5, 16, 9, dtype=dtype, device=device).transpose(1, 2)
    check_trellis_against_reference(cells, betas, grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 5)])
def test_trellis_empty(shape, device):
    cells, betas = make_cells(2, 3, shape, torch.float32, device)
    out = ops.trellis_aggregate(cells, betas)
    assert out.shape == (shape[0], 3 * shape[1], *shape[2:])
    grads = torch.autograd.grad(out.sum(), [*flat(cells), betas])
    assert all(g.shape == shape for g in grads[:-1])
    assert torch.equal(grads[-1], torch.zeros_like(betas))


@pytest.mark.parametrize("device", DEVICES)
def test_trellis_gradcheck_float64(device):
    cells, betas = make_cells(3, 2, (2, 3, 4, 5), torch.float64, device)

    def fn(*args):
        return ops.trellis_aggregate([args[0:2], args[2:4], args[4:6]], args[6])

    assert torch.autograd.gradcheck(fn, (*flat(cells), betas))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_trellis_opcheck(dtype, device):
    cells, betas = make_cells(3, 2, (2, 3, 5, 7), dtype, device)
    torch.library.opcheck(torch.ops.fastdnas.trellis_aggregate, (flat(cells), 3, betas))
    grad = torch.randn(2, 6, 5, 7, device=device).to(dtype)
    detached = [x.detach() for x in flat(cells)]
    torch.library.opcheck(torch.ops.fastdnas._trellis_aggregate_backward, (grad, detached, 3, betas.detach()))
    for mask in ([True, False], [False, True]):
        torch.library.opcheck(torch.ops.fastdnas._trellis_aggregate_backward, (grad, detached, 3, betas.detach(), mask))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_trellis_backward_computes_only_what_autograd_needs(dtype, device):
    # output_mask leaves out the block gradients or the betas' sums, bitwise the same otherwise;
    # the autograd formula asks for the betas' gradient only when they require grad.
    cells, betas = make_cells(3, 2, (2, 3, 5, 7), dtype, device, requires_grad=False)
    blocks = flat(cells)
    grad = torch.randn(2, 6, 5, 7, device=device).to(dtype)
    backward = torch.ops.fastdnas._trellis_aggregate_backward
    grad_blocks, grad_betas = backward(grad, blocks, 3, betas)
    only_blocks, none = backward(grad, blocks, 3, betas, [True, False])
    empty, only_betas = backward(grad, blocks, 3, betas, [False, True])
    assert none is None and empty == [] and torch.equal(only_betas, grad_betas)
    assert all(torch.equal(a, b) for a, b in zip(only_blocks, grad_blocks, strict=True))
    leaves = [x.clone().requires_grad_() for x in blocks]
    out = ops.trellis_aggregate([leaves[0:2], leaves[2:4], leaves[4:6]], betas)
    assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(out, leaves, grad), grad_blocks, strict=True))
    betas = betas.detach().clone().requires_grad_()
    out = ops.trellis_aggregate(cells, betas)
    assert torch.equal(torch.autograd.grad(out, betas, grad)[0], grad_betas)


@pytest.mark.parametrize("device", DEVICES)
def test_trellis_backward_is_deterministic_across_thread_counts(device):
    cells, betas = make_cells(3, 5, (2, 8, 41, 37), torch.float32, device, requires_grad=False)
    grad = torch.randn(2, 40, 41, 37, device=device)
    results = run_with_thread_counts(
        lambda: torch.ops.fastdnas._trellis_aggregate_backward(grad, flat(cells), 3, betas)[1]
    )
    assert all(torch.equal(r, results[0]) for r in results)


# --- resize_sum --------------------------------------------------------------------------------

# (input heights and widths, output size): up, down, mixed, size kept, 1x1 source, ratios above 2.
RESIZE_CASES = [
    ([(7, 9)], (13, 5)),
    ([(13, 5)], (7, 9)),
    ([(7, 9), (13, 5), (3, 4)], (13, 5)),
    ([(6, 6), (6, 6)], (6, 6)),
    ([(1, 1), (2, 3)], (6, 5)),
    ([(20, 17), (5, 4), (9, 11)], (3, 7)),
    ([(4, 4), (8, 8), (2, 2)], (32, 32)),
]


def make_resize_inputs(sizes, dtype, device, N=2, C=3, with_weights=True, requires_grad=True):
    inputs = [torch.randn(N, C, h, w, device=device).to(dtype).requires_grad_(requires_grad) for h, w in sizes]
    weights = weight_vector(len(sizes), dtype, device, requires_grad) if with_weights else None
    return inputs, weights


def check_resize_against_reference(inputs, size, weights, grad=None):
    dtype = inputs[0].dtype
    out = ops.resize_sum(inputs, size, weights)
    want = reference.resize_sum(inputs, size, weights)
    tol = TOLERANCE[dtype]
    assert_close(out, want, tol)
    if grad is None:
        grad = torch.randn(want.shape, device=want.device).to(dtype)
    got_grads = gradients(out, [*inputs, weights], grad)
    want_grads = gradients(want, [*inputs, weights], grad)
    for g, w in zip(got_grads[: len(inputs)], want_grads[: len(inputs)]):
        assert_close(g, w, tol)
    if weights is not None:
        assert_close(got_grads[-1], want_grads[-1], max(tol, 1e-5))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("sizes,size", RESIZE_CASES)
def test_resize_sum_matches_reference(sizes, size, dtype, device):
    inputs, weights = make_resize_inputs(sizes, dtype, device)
    check_resize_against_reference(inputs, size, weights)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sizes,size", RESIZE_CASES[:3])
def test_resize_sum_default_weights_are_ones(sizes, size, device):
    inputs, _ = make_resize_inputs(sizes, torch.float64, device, with_weights=False)
    check_resize_against_reference(inputs, size, None)
    ones = torch.ones(len(inputs), dtype=torch.float64, device=device)
    assert torch.equal(ops.resize_sum(inputs, size), ops.resize_sum(inputs, size, ones))


@pytest.mark.parametrize("device", DEVICES)
def test_resize_sum_float64_large_is_exact_to_1e12(device):
    # The Auto-DeepLab head: four levels up to 8x, plus more than one backward chunk per plane.
    inputs, weights = make_resize_inputs([(81, 81), (41, 41), (21, 21), (11, 11)], torch.float64, device, C=4)
    check_resize_against_reference(inputs, (81, 81), weights)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_resize_sum_non_contiguous_inputs_and_grad(dtype, device):
    inputs = [
        torch.randn(2, 5, 6, 3, dtype=dtype, device=device).transpose(1, 3),
        torch.randn(2, 6, 11, 8, dtype=dtype, device=device)[:, ::2],
        torch.randn(2, 3, 4, 7, dtype=dtype, device=device).to(memory_format=torch.channels_last),
    ]
    inputs = [x.requires_grad_() for x in inputs]
    assert not any(x.is_contiguous() for x in inputs)
    weights = torch.randn(3, dtype=dtype, device=device, requires_grad=True)
    grad = torch.randn(2, 5, 3, 7, dtype=dtype, device=device).transpose(1, 2)
    check_resize_against_reference(inputs, (5, 7), weights, grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N,C", [(0, 3), (2, 0)])
def test_resize_sum_empty(N, C, device):
    inputs, weights = make_resize_inputs([(4, 5), (2, 3)], torch.float32, device, N=N, C=C)
    out = ops.resize_sum(inputs, (7, 6), weights)
    assert out.shape == (N, C, 7, 6)
    grads = torch.autograd.grad(out.sum(), [*inputs, weights])
    assert [g.shape for g in grads[:-1]] == [x.shape for x in inputs]
    assert torch.equal(grads[-1], torch.zeros_like(weights))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_weights", [True, False])
def test_resize_sum_gradcheck_float64(with_weights, device):
    inputs, weights = make_resize_inputs([(3, 4), (6, 2), (5, 5)], torch.float64, device, with_weights=with_weights)

    def fn(*args):
        return ops.resize_sum(args[:3], (5, 3), args[3] if with_weights else None)

    assert torch.autograd.gradcheck(fn, (*inputs, weights) if with_weights else tuple(inputs))


@pytest.mark.parametrize("device", DEVICES)
def test_resize_sum_backward_without_weights(device):
    """The op called without weights, as every fused Auto-DeepLab backward calls it. torch 2.11
    drops an argument equal to its schema default before the autograd formula runs, which then
    returned one gradient too many ("Expected the return from backward to be of the same
    structure as the inputs"); the schema gives weights no default."""
    inputs, _ = make_resize_inputs([(3, 4), (6, 2)], torch.float64, device, with_weights=False)
    grad = torch.randn(2, 3, 5, 3, dtype=torch.float64, device=device)
    for call in (lambda: ops.resize_sum(inputs, (5, 3)), lambda: torch.ops.fastdnas.resize_sum(inputs, [5, 3], None)):
        got = torch.autograd.grad(call(), inputs, grad)
        want = torch.autograd.grad(reference.resize_sum(inputs, (5, 3)), inputs, grad)
        for g, w in zip(got, want):
            assert rel_err(g, w) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_resize_sum_backward_gives_only_the_gradients_autograd_needs(device):
    inputs, weights = make_resize_inputs([(3, 4), (6, 2), (5, 5)], torch.float64, device, requires_grad=False)
    grad = torch.randn(2, 3, 5, 3, dtype=torch.float64, device=device)
    grad_inputs, grad_weights = torch.ops.fastdnas._resize_sum_backward(grad, inputs, weights)
    leaves = [inputs[0], inputs[1].clone().requires_grad_(), inputs[2]]
    weights = weights.clone().requires_grad_()
    ops.resize_sum(leaves, (5, 3), weights).backward(grad)
    assert leaves[0].grad is None and leaves[2].grad is None
    assert torch.equal(leaves[1].grad, grad_inputs[1]) and torch.equal(weights.grad, grad_weights)
    weights.grad = leaves[1].grad = None
    ops.resize_sum(leaves, (5, 3), weights.detach()).backward(grad)
    assert torch.equal(leaves[1].grad, grad_inputs[1]) and weights.grad is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("with_weights", [True, False])
def test_resize_sum_opcheck(with_weights, dtype, device):
    inputs, weights = make_resize_inputs([(3, 4), (7, 9)], dtype, device, with_weights=with_weights)
    torch.library.opcheck(torch.ops.fastdnas.resize_sum, (inputs, [5, 6], weights))
    grad = torch.randn(2, 3, 5, 6, device=device).to(dtype)
    detached = [x.detach() for x in inputs]
    weights = weights.detach() if with_weights else None
    torch.library.opcheck(torch.ops.fastdnas._resize_sum_backward, (grad, detached, weights))


@pytest.mark.parametrize("device", DEVICES)
def test_resize_sum_is_deterministic_across_thread_counts(device):
    # Up and down along each axis; the CPU forward reuses resampled rows within a thread's rows.
    inputs, weights = make_resize_inputs([(40, 33), (10, 9), (90, 5)], torch.float32, device, C=8,
                                         requires_grad=False)
    grad = torch.randn(2, 8, 37, 41, device=device)

    def run():
        grad_inputs, grad_weights = torch.ops.fastdnas._resize_sum_backward(grad, inputs, weights)
        return [torch.ops.fastdnas.resize_sum(inputs, [37, 41], weights), *grad_inputs, grad_weights]

    results = run_with_thread_counts(run)
    assert all(torch.equal(a, b) for r in results for a, b in zip(r, results[0]))


# --- both ops ----------------------------------------------------------------------------------

def run_with_thread_counts(fn):
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(3, threads)):
            torch.set_num_threads(n)
            results += [fn(), fn()]
    finally:
        torch.set_num_threads(threads)
    return results


def test_torch_compile_fullgraph():
    cells, betas = make_cells(3, 2, (2, 4, 6, 6), torch.float32, "cpu")
    features, weights = make_resize_inputs([(3, 3), (6, 6), (2, 2)], torch.float32, "cpu", C=8)

    def node(cells, betas, features, weights):
        out = ops.trellis_aggregate(cells, torch.softmax(betas, 0))
        head = ops.resize_sum(features, out.shape[-2:], torch.softmax(weights, 0))
        return (torch.relu(out) * head).sum()

    compiled = torch.compile(node, fullgraph=True)
    leaves = [*flat(cells), betas, *features, weights]
    got = torch.autograd.grad(compiled(cells, betas, features, weights), leaves)
    want = torch.autograd.grad(node(cells, betas, features, weights), leaves)
    for g, w in zip(got, want):
        assert rel_err(g, w) <= 1e-5


@pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine")
def test_cuda_graph_capture():
    cells, betas = make_cells(3, 5, (2, 16, 21, 21), torch.float32, "cuda", requires_grad=False)
    inputs, weights = make_resize_inputs([(21, 21), (11, 11), (6, 6)], torch.float32, "cuda", C=16,
                                         requires_grad=False)
    trellis_grad = torch.randn(2, 80, 21, 21, device="cuda")
    resize_grad = torch.randn(2, 16, 41, 41, device="cuda")

    def step():
        out = ops.trellis_aggregate(cells, betas)
        trellis_grads = torch.ops.fastdnas._trellis_aggregate_backward(trellis_grad, flat(cells), 3, betas)
        head = ops.resize_sum(inputs, (41, 41), weights)
        resize_grads = torch.ops.fastdnas._resize_sum_backward(resize_grad, inputs, weights)
        return out, trellis_grads, head, resize_grads

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the graph
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, (_, grad_betas), head, (grad_inputs, grad_weights) = step()
    for x in [*flat(cells), *inputs]:
        x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(out, reference.trellis_aggregate(cells, betas)) <= 1e-5
    slices = trellis_grad.chunk(5, dim=1)
    want_betas = torch.stack([sum((s * x).sum() for s, x in zip(slices, cell)) for cell in cells])
    assert rel_err(grad_betas, want_betas) <= 1e-5
    assert rel_err(head, reference.resize_sum(inputs, (41, 41), weights)) <= 1e-5
    leaves = [x.clone().requires_grad_() for x in inputs]
    want_inputs = torch.autograd.grad(reference.resize_sum(leaves, (41, 41), weights), leaves, resize_grad)
    assert all(rel_err(g, w) <= 1e-5 for g, w in zip(grad_inputs, want_inputs))
    resized = [torch.nn.functional.interpolate(x, (41, 41), mode="bilinear", align_corners=False) for x in inputs]
    assert rel_err(grad_weights, torch.stack([(resize_grad * r).sum() for r in resized])) <= 1e-5


@pytest.mark.parametrize("op", ["trellis_aggregate", "_trellis_aggregate_backward", "resize_sum", "_resize_sum_backward"])
def test_kernels_registered(op):
    info = torch._C._dispatch_dump(f"fastdnas::{op}")
    assert "CPU: registered" in info
    if cuda_kernels_built():
        assert "CUDA: registered" in info


# --- bad inputs: each error names the argument and what was expected ---------------------------

def x(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, device=device).to(dtype)


OTHER_DEVICE = "cuda" if CUDA else "meta"

TRELLIS_WRAPPER_ERRORS = [
    ([], torch.ones(0), "cells must hold 1 to 3 cell evaluations"),
    ([[x(1, 2, 3, 3)]] * 4, torch.ones(4), "cells must hold 1 to 3 cell evaluations"),
    ([[]], torch.ones(1), r"cells\[0\] holds no block outputs"),
    ([[x(1, 2, 3, 3)] * 2, [x(1, 2, 3, 3)]], torch.ones(2), r"cells\[1\] holds 1 blocks but cells\[0\] holds 2"),
]

TRELLIS_OP_ERRORS = [
    ([[x(1, 2, 3, 3)], [x(1, 2, 3, 4)]], torch.ones(2), r"cells\[1\]\[0\] has shape"),
    ([[x(1, 2, 3, 3), x(1, 2, 3, 3, dtype=torch.float64)]], torch.ones(1), r"cells\[0\]\[1\] has dtype"),
    ([[x(1, 2, 3, 3)], [x(1, 2, 3, 3, device=OTHER_DEVICE)]], torch.ones(2), r"cells\[1\]\[0\] is on"),
    ([[x(1, 2, 3, 3, dtype=torch.int32)]], torch.ones(1), "cells must be float64, float32, float16 or bfloat16"),
    ([[x(2, 3, 3)]], torch.ones(1), r"cells\[0\]\[0\] must be 4-D"),
    ([[x(1, 2, 3, 3)], [x(1, 2, 3, 3)]], torch.ones(3), r"betas must have shape \[2\]"),
    ([[x(1, 2, 3, 3)], [x(1, 2, 3, 3)]], torch.ones(2, 1), r"betas must have shape \[2\]"),
    ([[x(1, 2, 3, 3)]], torch.ones(1, dtype=torch.int64), "betas must be a floating-point tensor"),
    ([[x(1, 2, 3, 3)]], torch.ones(1, device=OTHER_DEVICE), "betas is on"),
    ([[x(1, 2, 3, 3)] * 33], torch.ones(1), "at most 32"),
    # B * C wraps int64 to 0: the output was once an empty [0, 0, 1, 1] tensor.
    ([[torch.empty(0, 2**62, 1, 1)] * 4], torch.ones(1), r"the output's 4 \* 4611686018427387904 channels .* overflow"),
]


@pytest.mark.parametrize("cells,betas,message", TRELLIS_WRAPPER_ERRORS)
def test_trellis_bad_nesting_raises_value_error(cells, betas, message):
    with pytest.raises(ValueError, match=message):
        ops.trellis_aggregate(cells, betas)


@pytest.mark.parametrize("cells,betas,message", TRELLIS_OP_ERRORS)
def test_trellis_bad_inputs_raise_clear_errors(cells, betas, message):
    with pytest.raises(RuntimeError, match=message):
        ops.trellis_aggregate(cells, betas)


@pytest.mark.parametrize("blocks,num_cells,message", [
    ([x(1, 2, 3, 3)] * 4, 4, "cells must hold 1 to 3 cell evaluations"),
    ([x(1, 2, 3, 3)] * 2, 0, "cells must hold 1 to 3 cell evaluations"),
    ([x(1, 2, 3, 3)] * 5, 2, "blocks holds 5 tensors, not a positive multiple of num_cells=2"),
    ([], 1, "blocks holds 0 tensors"),
])
def test_trellis_op_checks_the_flat_layout(blocks, num_cells, message):
    betas = torch.ones(max(num_cells, 1))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastdnas.trellis_aggregate(blocks, num_cells, betas)
    grad = x(1, 2, 3, 3)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fastdnas._trellis_aggregate_backward(grad, blocks, num_cells, betas)


@pytest.mark.parametrize("cells,betas,message", [c for c in TRELLIS_OP_ERRORS if "is on" not in c[-1]])
def test_trellis_bad_inputs_raise_under_fake_tensors(cells, betas, message):
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    fake_cells = [[mode.from_tensor(t) for t in cell] for cell in cells]
    with pytest.raises(RuntimeError, match=message):
        with mode:
            ops.trellis_aggregate(fake_cells, mode.from_tensor(betas))


@pytest.mark.parametrize("size", [(5,), (5, 6, 7), (5, 0), (-1, 4), 5, (5.0, 4), (True, 4), "56"])
def test_resize_sum_bad_size_raises_value_error(size):
    with pytest.raises(ValueError, match=r"resize_sum: size must be 2 positive ints \(height, width\)"):
        ops.resize_sum([x(1, 2, 3, 3)], size)


@pytest.mark.parametrize("size", [[5], [5, 6, 7], [5, 0], [-1, 4]])
def test_resize_sum_op_checks_size(size):
    with pytest.raises(RuntimeError, match="size must be 2 positive ints"):
        torch.ops.fastdnas.resize_sum([x(1, 2, 3, 3)], size, None)


def test_resize_sum_no_inputs_raises_value_error():
    with pytest.raises(ValueError, match="resize_sum: inputs must hold at least one tensor"):
        ops.resize_sum([], (4, 4))


RESIZE_ERRORS = [
    ([x(1, 2, 3, 3), x(1, 3, 3, 3)], None, r"inputs\[1\] has shape .* N and C must match"),
    ([x(1, 2, 3, 3), x(2, 2, 3, 3)], None, r"inputs\[1\] has shape .* N and C must match"),
    ([x(1, 2, 3, 3), x(1, 2, 3, 3, dtype=torch.float64)], None, r"inputs\[1\] has dtype"),
    ([x(1, 2, 3, 3), x(1, 2, 3, 3, device=OTHER_DEVICE)], None, r"inputs\[1\] is on"),
    ([x(2, 3, 3)], None, r"inputs\[0\] must be 4-D"),
    ([x(1, 2, 0, 3)], None, r"inputs\[0\] must be 4-D \[N, C, H, W\] with H, W > 0"),
    ([x(1, 2, 3, 3, dtype=torch.int32)], None, "inputs must be float64, float32, float16 or bfloat16"),
    ([x(1, 2, 3, 3), x(1, 2, 4, 5)], torch.ones(3), r"weights must have shape \[2\]"),
    ([x(1, 2, 3, 3)], torch.ones(1, dtype=torch.int64), "weights must be a floating-point tensor"),
    ([x(1, 2, 3, 3)], torch.ones(1, device=OTHER_DEVICE), "weights is on"),
    ([x(1, 2, 3, 3)] * 33, None, "at most 32"),
]


@pytest.mark.parametrize("inputs,weights,message", RESIZE_ERRORS)
def test_resize_sum_bad_inputs_raise_clear_errors(inputs, weights, message):
    with pytest.raises(RuntimeError, match=message):
        ops.resize_sum(inputs, (4, 4), weights)


@pytest.mark.parametrize("inputs,weights,message", [c for c in RESIZE_ERRORS if "is on" not in c[-1]])
def test_resize_sum_bad_inputs_raise_under_fake_tensors(inputs, weights, message):
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    fake_weights = None if weights is None else mode.from_tensor(weights)
    with pytest.raises(RuntimeError, match=message):
        with mode:
            ops.resize_sum([mode.from_tensor(t) for t in inputs], (4, 4), fake_weights)


def test_trellis_backward_checks_grad_and_names_the_forward_op():
    cells, betas = make_cells(2, 3, (1, 2, 3, 3), torch.float32, "cpu", requires_grad=False)
    for grad in (torch.empty(1, 6, 3, 3, device="meta"), x(1, 6, 3, 3, dtype=torch.float64), x(1, 6, 3, 4)):
        with pytest.raises(RuntimeError, match=r"trellis_aggregate \(backward\): grad must have shape \[1, 6, 3, 3\]"):
            torch.ops.fastdnas._trellis_aggregate_backward(grad, flat(cells), 2, betas)
    with pytest.raises(RuntimeError, match=r"trellis_aggregate \(backward\): betas must have shape \[2\]"):
        torch.ops.fastdnas._trellis_aggregate_backward(x(1, 6, 3, 3), flat(cells), 2, torch.ones(3))


def test_resize_sum_backward_checks_grad_and_names_the_forward_op():
    inputs = [x(1, 2, 3, 3), x(1, 2, 5, 4)]
    for grad in (torch.empty(1, 2, 4, 4, device="meta"), x(1, 2, 4, 4, dtype=torch.float64), x(1, 3, 4, 4)):
        with pytest.raises(RuntimeError, match=r"resize_sum \(backward\): grad must have N=1, C=2"):
            torch.ops.fastdnas._resize_sum_backward(grad, inputs, None)
    with pytest.raises(RuntimeError, match=r"resize_sum \(backward\): weights must have shape \[2\]"):
        torch.ops.fastdnas._resize_sum_backward(x(1, 2, 4, 4), inputs, torch.ones(3))


@pytest.mark.parametrize("cells,message", [
    (None, "cells must be a list of cell evaluations .* got None"),
    (x(1, 2, 3, 3), "cells must be a list of cell evaluations .* got torch.Tensor"),
    ([None], r"cells\[0\] must be a list or tuple of tensors, got None"),
    ([[x(1, 2, 3, 3)], x(1, 2, 3, 3)], r"cells\[1\] must be a list or tuple of tensors, got torch.Tensor"),
    ([[__import__("numpy").ones((1, 2, 3, 3))]], r"cells\[0\]\[0\] must be a tensor, got numpy.ndarray"),
])
def test_trellis_arguments_of_the_wrong_type_raise_type_error(cells, message):
    with pytest.raises(TypeError, match="trellis_aggregate: " + message):
        ops.trellis_aggregate(cells, torch.ones(1))


@pytest.mark.parametrize("betas,message", [
    (None, "betas must be a tensor, got None"),
    (__import__("numpy").ones(1), "betas must be a tensor, got numpy.ndarray"),
])
def test_trellis_betas_of_the_wrong_type_raise_type_error(betas, message):
    with pytest.raises(TypeError, match="trellis_aggregate: " + message):
        ops.trellis_aggregate([[x(1, 2, 3, 3)]], betas)


@pytest.mark.parametrize("inputs,message", [
    (None, "inputs must be a list or tuple of tensors, got None"),
    (__import__("numpy").ones((1, 2, 3, 3)), "inputs must be a list or tuple of tensors, got numpy.ndarray"),
    ([x(1, 2, 3, 3), 1.0], r"inputs\[1\] must be a tensor, got float"),
])
def test_resize_sum_arguments_of_the_wrong_type_raise_type_error(inputs, message):
    with pytest.raises(TypeError, match="resize_sum: " + message):
        ops.resize_sum(inputs, (4, 4))


@pytest.mark.parametrize("weights,message", [
    (__import__("numpy").ones(1), "weights must be a tensor or None, got numpy.ndarray"),
    ("ones", "weights must be a tensor or None, got str"),
])
def test_resize_sum_weights_of_the_wrong_type_raise_type_error(weights, message):
    with pytest.raises(TypeError, match="resize_sum: " + message):
        ops.resize_sum([x(1, 2, 3, 3)], (4, 4), weights)


@pytest.mark.parametrize("fake", [False, True])
def test_trellis_output_whose_bytes_overflow_raises(fake):
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    block = torch.ones(1, 1, 1, 1).expand(2**29, 2**30, 4, 1)  # 2**61 elements, none stored
    blocks = [mode.from_tensor(block) if fake else block] * 2
    with pytest.raises(RuntimeError, match=r"trellis_aggregate: the output \(from the cells' block shape and blocks "
                                           r"per cell\) would have shape \[536870912, 2147483648, 4, 1\]: more bytes"):
        with mode if fake else contextlib.nullcontext():
            ops.trellis_aggregate([blocks], torch.ones(1))


@pytest.mark.parametrize("fake", [False, True])
def test_resize_sum_output_whose_bytes_overflow_names_size(fake):
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    inputs = [mode.from_tensor(x(2, 4, 3, 3)) if fake else x(2, 4, 3, 3)]
    with pytest.raises(RuntimeError, match=r"resize_sum: the output \(from size and inputs' N, C\) would have shape "
                                           r"\[2, 4, 2147483648, 2147483648\]: more bytes than int64 can count"):
        if fake:
            with mode:
                ops.resize_sum(inputs, (2**31, 2**31))
        else:
            ops.resize_sum(inputs, (2**31, 2**31))


# --- resize_sum with non-finite values: what README says it shares with F.interpolate and where it differs

INF = float("inf")


@pytest.mark.parametrize("size", [(2, 2), (2, 3)])
def test_resize_sum_reads_pixels_of_weight_zero_as_interpolate_does(size):
    # Row 0 keeps its size: each output reads row 1 with weight 0 too, and 0 * inf is NaN in both.
    x = torch.tensor([[1.0, INF], [2.0, 3.0]], dtype=torch.float64).view(1, 1, 2, 2)
    got = ops.resize_sum([x], size)
    want = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    assert got[0, 0, 0].isnan().any()
    torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-12, atol=0)


def test_resize_sum_weight_exactly_zero_next_to_an_infinite_pixel():
    # Width 1 -> 5: source positions -0.4, -0.2 and 0 (rounded without FMA) give the second tap a
    # weight of exactly 0 (NaN with the infinite row mean); 0.2 and 0.4 give +inf.
    x = torch.tensor([1.0, INF, 2.0, 3.0], dtype=torch.float64).view(1, 1, 4, 1)
    got = ops.resize_sum([x], (1, 5))
    assert got[0, 0, 0, :3].isnan().all() and (got[0, 0, 0, 3:] == INF).all()


def test_resize_sum_non_finite_weight_spreads_over_its_whole_input_gradient():
    # Width 3 -> 1: the output reads columns 1 (weight 1) and 2 (weight 0); no output reads column 0.
    inputs = [torch.randn(1, 1, 1, 3, dtype=torch.float64, requires_grad=True)]
    weights = torch.tensor([float("nan")], dtype=torch.float64, requires_grad=True)
    grad = torch.randn(1, 1, 1, 1, dtype=torch.float64)
    (got,) = torch.autograd.grad(ops.resize_sum(inputs, (1, 1), weights), inputs, grad)
    (want,) = torch.autograd.grad(reference.resize_sum(inputs, (1, 1), weights), inputs, grad)
    assert got.isnan().all()
    assert want[0, 0, 0, 0] == 0 and want[0, 0, 0, 1:].isnan().all()
