"""The CUDA kernels and their host code, run on the CPU by the emulator of tests/cuda_emu: each
op's forward and backward ops (torch.ops.fastdnas_emu) against the CPU kernels and the reference
in several schedules, bitwise determinism across schedules and multiprocessor counts, the
emulator's own checks, and a reduced AddressSanitizer run.

The emulated tensors stay small: every thread switch costs about 100-150 ns."""
import os
import subprocess
import sys

import pytest
import torch

import test_depthwise_conv
import test_depthwise_segments
import test_mixed_node
import test_mixed_sum
import test_trellis_ops
from conftest import rel_err
from cuda_emu import build
from fastdnas import reference

# The reduced run under AddressSanitizer: this module, in a subprocess that preloads the runtime.
ASAN = os.environ.get("FASTDNAS_EMU_ASAN") == "1"
MODES = ["forward", "reverse", "greedy-shuffle"]
ALL_MODES = ["forward", "reverse", "shuffle", "greedy-forward", "greedy-reverse", "greedy-shuffle"]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
SEED = 7


@pytest.fixture(scope="module")
def emu():
    module = build.load(asan=ASAN)
    yield module
    module.set_schedule("forward")
    module.set_multiprocessor_count(132)


@pytest.fixture(params=MODES[:1] if ASAN else MODES)
def mode(request, emu):
    emu.set_schedule(request.param, SEED)
    yield request.param
    emu.set_schedule("forward")


def strided(t):
    """A non-contiguous view with t's values."""
    return torch.stack([t, torch.zeros_like(t)], -1)[..., 0]


def misaligned(t):
    """A contiguous copy of t whose data starts one element past a 16-byte boundary."""
    return torch.empty(t.numel() + 1, dtype=t.dtype)[1:].view(t.shape).copy_(t)


def leaves(tensors):
    return [t.detach().requires_grad_() for t in tensors]


class Problem:
    """One op on fixed inputs: ``run(ns)`` gives the forward output(s) and every gradient from the
    op library ``ns`` (fastdnas_emu or fastdnas), ``reference()`` the same from the reference
    (None where it cannot take the inputs), compared with tolerance ``tol``; ``weight_tol`` bounds the
    weight gradients (accumulated in float32)."""

    def __init__(self, run, reference, tol, weight_tol=None):
        self.run, self.reference, self.tol = run, reference, tol
        self.weight_tol = max(tol, 1e-5) if weight_tol is None else weight_tol


def mixed_sum_problem(K, shape, dtype, non_contiguous=False):
    inputs = [torch.randn(shape).to(dtype) for _ in range(K)]
    if non_contiguous:
        inputs = [strided(x) for x in inputs]
    weights = test_trellis_ops.weight_vector(K, dtype, "cpu", requires_grad=False)
    grad = torch.randn(shape).to(dtype)

    def run(ns):
        grad_inputs, grad_weights = ns._mixed_sum_backward(grad, inputs, weights)
        # Each output alone (output_mask) is bitwise the one computed with the other.
        only_inputs, no_weights = ns._mixed_sum_backward(grad, inputs, weights, [True, False])
        no_inputs, only_weights = ns._mixed_sum_backward(grad, inputs, weights, [False, True])
        assert no_weights is None and no_inputs == [] and torch.equal(only_weights, grad_weights)
        assert len(only_inputs) == K and all(torch.equal(a, b) for a, b in zip(only_inputs, grad_inputs))
        return [ns.mixed_sum(inputs, weights), *grad_inputs, grad_weights]

    def ref():
        xs = leaves([*inputs, weights])
        out = reference.mixed_sum(xs[:-1], xs[-1])
        return [out, *torch.autograd.grad(out, xs, grad)]

    return Problem(run, ref, test_mixed_sum.TOLERANCE[dtype])


def trellis_problem(T, B, shape, dtype, non_contiguous=False):
    cells, betas = test_trellis_ops.make_cells(T, B, shape, dtype, "cpu", requires_grad=False)
    blocks = [strided(x) if non_contiguous else x for x in test_trellis_ops.flat(cells)]
    out_shape = torch.ops.fastdnas.trellis_aggregate(blocks, T, betas).shape
    grad = torch.randn(out_shape).to(dtype)

    def run(ns, offset=False):
        """``offset``: blocks and grad moved off 16-byte boundaries (no 128-bit loads)."""
        blocks_, grad_ = ([misaligned(x) for x in blocks], misaligned(grad)) if offset else (blocks, grad)
        return run_on(ns, blocks_, grad_)

    def run_on(ns, blocks, grad):
        grad_blocks, grad_betas = ns._trellis_aggregate_backward(grad, blocks, T, betas)
        # Each output alone (output_mask) is bitwise the one computed with the other.
        only_blocks, no_betas = ns._trellis_aggregate_backward(grad, blocks, T, betas, [True, False])
        no_blocks, only_betas = ns._trellis_aggregate_backward(grad, blocks, T, betas, [False, True])
        assert no_betas is None and no_blocks == [] and torch.equal(only_betas, grad_betas)
        assert len(only_blocks) == T * B and all(torch.equal(a, b) for a, b in zip(only_blocks, grad_blocks))
        return [ns.trellis_aggregate(blocks, T, betas), *grad_blocks, grad_betas]

    def ref():
        xs = leaves([*blocks, betas])
        out = reference.trellis_aggregate([xs[t * B:(t + 1) * B] for t in range(T)], xs[-1])
        return [out, *torch.autograd.grad(out, xs, grad)]

    problem = Problem(run, ref, test_trellis_ops.TOLERANCE[dtype])
    problem.forward_args = (blocks, T, betas)
    return problem


def resize_problem(sizes, size, dtype, N=2, C=3, with_weights=True, non_contiguous=False):
    inputs, weights = test_trellis_ops.make_resize_inputs(sizes, dtype, "cpu", N=N, C=C, with_weights=with_weights,
                                                          requires_grad=False)
    if non_contiguous:
        inputs = [strided(x) for x in inputs]
    grad = torch.randn(N, C, *size).to(dtype)

    def run(ns):
        grad_inputs, grad_weights = ns._resize_sum_backward(grad, inputs, weights)
        return [ns.resize_sum(inputs, size, weights), *grad_inputs] + ([grad_weights] if with_weights else [])

    def ref():
        xs = leaves(inputs + ([weights] if with_weights else []))
        out = reference.resize_sum(xs[:len(inputs)], size, xs[-1] if with_weights else None)
        return [out, *torch.autograd.grad(out, xs, grad)]

    # The reference (F.interpolate) rejects planes without channels.
    return Problem(run, ref if C > 0 else None, test_trellis_ops.TOLERANCE[dtype],
                   None if with_weights else test_trellis_ops.TOLERANCE[dtype])


def misaligned(t):
    """A contiguous copy of t that starts one element past an aligned address (no 128-bit loads)."""
    out = torch.empty(t.numel() + 1, dtype=t.dtype)[1:].view(t.shape).copy_(t)
    assert out.is_contiguous() and out.data_ptr() % 16 != 0
    return out


def mixed_node_problem(strides, dtype, non_contiguous=False, misaligned_inputs=False, **node_args):
    node = test_mixed_node.make_node(strides, dtype=dtype, requires_grad=False, **node_args)
    for make, wanted in ((strided, non_contiguous), (misaligned, misaligned_inputs)):
        if wanted:
            node["edge_inputs"] = [make(x) for x in node["edge_inputs"]]
            node["conv_outputs"] = [make(y) for y in node["conv_outputs"]]
    args = test_mixed_node.as_args(node)
    batch_stats = node["running_mean"] is None
    grad = torch.randn(torch.ops.fastdnas.mixed_node(*args)[0].shape, dtype=torch.float64).to(dtype)

    def run(ns):
        out, mean, var = ns.mixed_node(*args)
        grad_edges, grad_convs, grad_weights = ns._mixed_node_backward(grad, *args[:7], mean, var, args[-1],
                                                                       batch_stats)
        return [out, mean, var, *grad_edges, *grad_convs, grad_weights]

    def ref():
        differentiable = leaves(test_mixed_node.differentiable(node))
        E, K = len(node["edge_inputs"]), len(node["conv_outputs"])
        with_grad = dict(node, edge_inputs=differentiable[:E], conv_outputs=differentiable[E:E + K],
                         weights=differentiable[-1])
        out, mean, var, grads = test_mixed_node.forward_backward(reference.mixed_node, with_grad, grad)
        return [out, mean, var, *grads]

    tol = test_mixed_node.TOLERANCE[dtype]
    # The reference (F.max_pool2d) rejects planes without channels.
    return Problem(run, ref if node_args.get("C", 4) > 0 else None, tol, tol)


def depthwise_problem(case, dtype, non_contiguous=False):
    x, w, geometry = test_depthwise_conv.make_case(case, dtype, "cpu", requires_grad=False)
    if non_contiguous:
        x, w = strided(x), strided(w)
    stride, padding, dilation = geometry["stride"], geometry["padding"], geometry["dilation"]
    grad = torch.randn(test_depthwise_conv.reference(x, w, **geometry).shape).to(dtype)

    def run(ns):
        return [ns.depthwise_conv2d(x, w, stride, padding, dilation),
                ns._depthwise_conv2d_input_grad(grad, w, list(x.shape), stride, padding, dilation),
                ns._depthwise_conv2d_weight_grad(grad, x, list(w.shape), stride, padding, dilation)]

    def ref():
        return list(test_depthwise_conv.forward_backward(test_depthwise_conv.reference, *leaves([x, w]), geometry,
                                                         grad))

    tol = test_depthwise_conv.TOLERANCE[dtype]
    return Problem(run, ref, tol, tol)


def depthwise_segments_problem(case, dtype, non_contiguous=False):
    x, weights, args = test_depthwise_segments.make_case(case, dtype, "cpu", requires_grad=False)
    if non_contiguous:
        x, weights = strided(x), [strided(w) for w in weights]
    geometry = test_depthwise_segments.op_arguments(args)
    kernel_sizes = test_depthwise_segments.kernel_sizes(weights)
    C = weights[0].shape[0]
    grad = torch.randn(x.shape[0], len(weights) * C, *torch.ops.fastdnas.depthwise_conv2d_segments(
        x, weights, *geometry).shape[2:]).to(dtype)

    def run(ns):
        return [ns.depthwise_conv2d_segments(x, weights, *geometry),
                ns._depthwise_conv2d_segments_input_grad(grad, weights, list(x.shape), *geometry),
                ns._depthwise_conv2d_segments_weight_grad(grad, x, kernel_sizes, *geometry)]

    def ref():
        xs = leaves([x, *weights])
        out, grad_x, *grad_weights = test_depthwise_segments.forward_backward(test_depthwise_segments.reference,
                                                                              xs[0], xs[1:], args, grad)
        return [out, grad_x, torch.cat([g.flatten() for g in grad_weights])]

    tol = test_depthwise_conv.TOLERANCE[dtype]
    # The reference (F.conv2d with groups = C) rejects segments without channels.
    return Problem(run, ref if C > 0 else None, tol, tol)


def named(op, cases):
    """(op, id, builder) triples; ``cases`` maps ids to builders."""
    return [pytest.param(op, build_problem, id=f"{op}-{name}") for name, build_problem in cases]


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


# Small sizes that still cover what the CPU tests cover: odd sizes, one-element and one-pixel
# planes, strides 1 and 2, empty tensors, non-contiguous inputs, every dtype, the largest counts.
MIXED_SUM = named("mixed_sum", [
    *[(f"K{K}-{'x'.join(map(str, shape))}-{dtype_name(dt)}",
       lambda K=K, shape=shape, dt=dt: mixed_sum_problem(K, shape, dt))
      for dt in DTYPES for K in (1, 8, 40) for shape in ((3, 5, 7), (1,), (4, 3, 8, 8))],
    *[(f"K{K}-{'x'.join(map(str, shape))}", lambda K=K, shape=shape: mixed_sum_problem(K, shape, torch.float32))
      for K, shape in ((128, (2, 3, 5)), (40, (2, 7, 33, 31)), (3, (0,)), (2, (2, 0, 4)))],
    ("non_contiguous", lambda: mixed_sum_problem(5, (4, 3, 7), torch.float64, non_contiguous=True)),
])

# Group layouts of 128-bit accesses (4 float32, 2 float64, 8 float16 elements a thread step):
# Auto-DeepLab's 41 x 41 node (F=8: C=16; 10 planes of 27 tiles of 1024 elements; T=2 here), a float64 one
# (10 planes of 27 tiles of 512) and a float16 one (4 planes of 66 tiles of 2048).
TRELLIS_VECTOR = {
    torch.float32: lambda: trellis_problem(2, 5, (2, 16, 41, 41), torch.float32),
    torch.float64: lambda: trellis_problem(2, 5, (2, 16, 29, 29), torch.float64),
    torch.float16: lambda: trellis_problem(1, 2, (2, 33, 64, 64), torch.float16),
}
TRELLIS_VECTOR_TILES = {torch.float32: 270, torch.float64: 270, torch.float16: 264}

TRELLIS = named("trellis_aggregate", [
    *[(f"T{T}-B{B}-{dtype_name(dt)}", lambda T=T, B=B, dt=dt: trellis_problem(T, B, (2, 3, 7, 9), dt))
      for dt in DTYPES for T, B in ((1, 1), (1, 5), (3, 1), (3, 5), (2, 3))],
    ("largest-T3-B32", lambda: trellis_problem(3, 32, (2, 3, 5, 5), torch.float32)),
    *[(f"empty-{'x'.join(map(str, shape))}", lambda shape=shape: trellis_problem(2, 3, shape, torch.float32))
      for shape in ((0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 5))],
    ("non_contiguous", lambda: trellis_problem(3, 2, (2, 3, 5, 4), torch.float64, non_contiguous=True)),
    # The Auto-DeepLab node at 1/32 of a 321 x 321 crop (F=8: C=64, 11 x 11), several tiles per
    # plane; and one large enough for tiles of 2 elements per thread.
    ("paper-level3-T3-B5", lambda: trellis_problem(3, 5, (2, 64, 11, 11), torch.float32)),
    ("two-items-per-thread", lambda: trellis_problem(1, 1, (1, 1, 1025, 1025), torch.float32)),
    # Planes of whole 16-byte groups and enough tiles (264 or more) for a group per thread step:
    # 128-bit loads and stores (the arrays come aligned); every dtype's in
    # test_trellis_128_bit_and_element_accesses_give_the_same_bits.
    ("vector-float64", TRELLIS_VECTOR[torch.float64]),
])

# The backward's bands of output rows hold one row where planes are few (the cases above); here
# several: 128 planes of 33 rows in bands of 5 (the last of 3), 1024 planes in bands of 16 (the
# most) and 4 (with 32,768 rows of one input: 2 rows per warp and tile), 64 planes in bands of 2
# (the last of 1); inputs that upsample, keep the size, downsample (input rows no output reads,
# inside a band's span) and have a single row.
RESIZE_BANDS = {
    5: lambda: resize_problem([(5, 5), (40, 13), (33, 29), (1, 3)], (33, 29), torch.float64, N=1, C=128),
    16: lambda: resize_problem([(3, 2), (32, 3)], (20, 3), torch.float32, N=1, C=1024),
    2: lambda: resize_problem([(6, 4), (21, 9), (30, 5)], (21, 9), torch.float32, N=1, C=64),
}

RESIZE = named("resize_sum", [
    *[(f"case{i}-{dtype_name(dt)}", lambda sizes=sizes, size=size, dt=dt: resize_problem(sizes, size, dt))
      for dt in DTYPES for i, (sizes, size) in enumerate(test_trellis_ops.RESIZE_CASES)],
    ("no_weights", lambda: resize_problem([(7, 9), (3, 4)], (5, 6), torch.float64, with_weights=False)),
    ("largest-32-inputs", lambda: resize_problem([(1 + k % 5, 2 + k % 3) for k in range(32)], (3, 4), torch.float32,
                                                 N=1, C=2)),
    ("empty-batch", lambda: resize_problem([(4, 5), (2, 3)], (7, 6), torch.float32, N=0)),
    ("empty-channels", lambda: resize_problem([(4, 5), (2, 3)], (7, 6), torch.float32, C=0)),
    ("non_contiguous", lambda: resize_problem([(5, 4), (3, 7)], (6, 5), torch.float64, non_contiguous=True)),
    # Large upsampling factors (the ASPP merge's 41 -> 321 scaled down): an input pixel read by 1 to
    # about 27 output rows and columns (67 x 61, 33 x 31, 25 x 23, 17 x 13, 13 x 11 and 5 x 5 into
    # 67 x 61), rows and columns reaching far apart (3 x 11 -> 67 x 23), K = 1..3, every dtype.
    *[(f"upsample-K{K}-{dtype_name(dt)}", lambda K=K, dt=dt: resize_problem(
        [(5, 5), (3, 11), (17, 13)][:K], (67, 23) if K == 2 else (67, 61), dt, N=1, C=2))
      for dt in DTYPES for K in (1, 2, 3)],
    ("upsample-factors-1-to-13", lambda: resize_problem([(67, 61), (33, 31), (25, 23), (17, 13), (13, 11), (5, 5)],
                                                        (67, 61), torch.float32, N=1, C=2)),
    ("upsample-empty-batch", lambda: resize_problem([(5, 5), (3, 11)], (67, 61), torch.float32, N=0)),
    *[(f"bands-of-{rows}-rows", build) for rows, build in RESIZE_BANDS.items()],
])

MIXED_NODE = named("mixed_node", [
    *[(f"{'-'.join(map(str, strides))}-{stats}-{dtype_name(dt)}",
       lambda strides=strides, dt=dt, running=running: mixed_node_problem(strides, dt, N=2, C=3, running=running))
      for dt in DTYPES for strides in ((1,), (2, 2, 1)) for running, stats in ((False, "batch"), (True, "running"))],
    *[(f"out{h}x{w}-odd{int(odd)}", lambda h=h, w=w, odd=odd: mixed_node_problem(
        (2, 1), torch.float64, N=2, C=3, out_size=(h, w), odd_inputs=odd))
      for (h, w), odd in (((1, 7), False), ((7, 3), True), ((3, 1), True), ((13, 11), True))],
    ("free_only", lambda: mixed_node_problem((1, 2), torch.float64, N=2, C=2, convs=False)),
    *[(f"plain_avg-{dtype_name(dt)}-{'running' if running else 'batch'}",
       lambda dt=dt, running=running: mixed_node_problem((2, 1), dt, N=2, C=3, running=running, plain_avg=True))
      for dt in (torch.float64, torch.float32) for running in (False, True)],
    *[(f"plain_max-{dtype_name(dt)}-{'running' if running else 'batch'}",
       lambda dt=dt, running=running: mixed_node_problem((2, 1), dt, N=2, C=3, running=running, plain_max=True))
      for dt in (torch.float64, torch.float32) for running in (False, True)],
    ("plain_max-odd", lambda: mixed_node_problem((2, 1, 1), torch.float64, N=2, C=2, out_size=(3, 5), odd_inputs=True,
                                                 plain_max=True, plain_avg=True)),
    ("convs_only", lambda: mixed_node_problem((1, 2), torch.float64, N=2, C=2, free=False)),
    ("largest-16-edges", lambda: mixed_node_problem((1,) * 8 + (2,) * 8, torch.float32, N=1, C=2, out_size=(3, 2))),
    ("empty-batch", lambda: mixed_node_problem((2, 1), torch.float32, N=0, C=3)),
    ("empty-channels", lambda: mixed_node_problem((2, 1), torch.float32, N=2, C=0)),
    ("non_contiguous", lambda: mixed_node_problem((2, 1), torch.float64, N=2, C=3, non_contiguous=True)),
    # The reductions' chunks of 1024 elements of a channel: 2 (the last partial) with planes of a
    # multiple of 4 elements (128-bit loads) and with odd planes (elements of a thread in two
    # planes), aligned planes on misaligned inputs (element loads), and 33 (over a warp's lanes).
    ("chunks-8x8", lambda: mixed_node_problem((2, 1), torch.float32, N=17, C=2, out_size=(8, 8))),
    ("chunks-5x7", lambda: mixed_node_problem((2, 1), torch.float32, N=31, C=2, out_size=(5, 7))),
    ("chunks-8x8-misaligned", lambda: mixed_node_problem((2, 1), torch.float64, N=17, C=2, out_size=(8, 8),
                                                         misaligned_inputs=True)),
    ("chunks-33", lambda: mixed_node_problem((1,), torch.float32, N=2, C=1, out_size=(128, 130))),
])

CHUNKED = (7, 150, 12, 12, 3, 1, 1, 1)
DEPTHWISE = named("depthwise_conv2d", [
    *[(f"case{i}-{dtype_name(dt)}", lambda case=case, dt=dt: depthwise_problem(case, dt))
      for dt in DTYPES for i, case in enumerate(test_depthwise_conv.CASES)],
    ("empty-batch", lambda: depthwise_problem((0, 4, 8, 8, 3, 1, 1, 1), torch.float32)),
    ("non_contiguous", lambda: depthwise_problem((2, 3, 9, 8, 3, 2, 1, 1), torch.float64, non_contiguous=True)),
    # Enough channels and positions for the weight gradient's batch chunks (3 of 3, 3 and 1 images).
    ("chunks", lambda: depthwise_problem(CHUNKED, torch.float32)),
])

DEPTHWISE_SEGMENTS = named("depthwise_conv2d_segments", [
    *[(f"case{i}-{dtype_name(dt)}", lambda case=case, dt=dt: depthwise_segments_problem(case, dt))
      for dt in DTYPES for i, case in enumerate(test_depthwise_segments.CASES)],
    ("empty-batch", lambda: depthwise_segments_problem((0, 4, 8, 8, 1, test_depthwise_segments.CASES[0][5]),
                                                       torch.float32)),
    ("empty-channels", lambda: depthwise_segments_problem((2, 3, 5, 5, 1, [(3, 1, 1, 3), (5, 2, 1, 0)]),
                                                          torch.float32)),
    ("non_contiguous", lambda: depthwise_segments_problem(test_depthwise_segments.CASES[5], torch.float64,
                                                          non_contiguous=True)),
])

ALL_CASES = MIXED_SUM + TRELLIS + RESIZE + MIXED_NODE + DEPTHWISE + DEPTHWISE_SEGMENTS
# Under AddressSanitizer: the float32 and float64 cases, the largest counts and the edge cases.
ASAN_CASES = [c for c in ALL_CASES if not any(s in c.id for s in ("float16", "bfloat16"))]


def assert_close(got, want, tol, what):
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape, got.dtype, want.dtype)
    err = rel_err(got, want)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("op,build_problem", ASAN_CASES if ASAN else ALL_CASES)
def test_matches_cpu_kernels_and_reference(emu, mode, op, build_problem):
    problem = build_problem()
    got = problem.run(torch.ops.fastdnas_emu)
    cpu = problem.run(torch.ops.fastdnas)
    want = problem.reference() if problem.reference else cpu
    assert len(got) == len(cpu) == len(want)
    last = len(got) - 1
    for i, (g, c, w) in enumerate(zip(got, cpu, want)):
        tol = problem.weight_tol if i == last else problem.tol
        assert_close(g, c, tol, f"{op} output {i} against the CPU kernel")
        assert_close(g, w.to(g.dtype), tol, f"{op} output {i} against the reference")


# One case per op with several blocks and reductions: bitwise the same in every schedule and for
# 1 and 132 multiprocessors (the grids of the element-wise kernels follow the count).
DETERMINISM_CASES = [
    pytest.param(lambda: mixed_sum_problem(11, (3, 7, 131), torch.float32), id="mixed_sum"),
    pytest.param(lambda: trellis_problem(3, 4, (2, 3, 11, 13), torch.float32), id="trellis_aggregate"),
    pytest.param(lambda: resize_problem([(7, 9), (13, 5), (3, 4)], (13, 11), torch.float32, N=3, C=5),
                 id="resize_sum"),
    # More band tasks (201) and combine tiles (37) than the 32 blocks one multiprocessor gets:
    # blocks loop.
    pytest.param(lambda: resize_problem([(5, 5), (17, 13), (3, 11), (67, 61)], (67, 61), torch.float32, N=1, C=3),
                 id="resize_sum-upsample"),
    pytest.param(lambda: trellis_problem(3, 5, (2, 16, 11, 11), torch.float32), id="trellis_aggregate-tiles"),
    pytest.param(RESIZE_BANDS[2], id="resize_sum-bands"),
    pytest.param(lambda: mixed_node_problem((2, 1), torch.float32, N=3, C=4, out_size=(9, 7)), id="mixed_node"),
    pytest.param(lambda: mixed_node_problem((2, 1), torch.float32, N=17, C=2, out_size=(8, 8)), id="mixed_node-chunks"),
    pytest.param(lambda: depthwise_problem((3, 5, 13, 11, 3, 2, 1, 1), torch.float32), id="depthwise_conv2d"),
    pytest.param(lambda: depthwise_segments_problem((3, 5, 13, 11, 2, test_depthwise_segments.CASES[0][5]),
                                                    torch.float32), id="depthwise_conv2d_segments"),
    pytest.param(lambda: depthwise_problem(CHUNKED, torch.float32), id="depthwise_conv2d-chunks"),
]


@pytest.mark.skipif(ASAN, reason="not part of the reduced AddressSanitizer run")
@pytest.mark.parametrize("build_problem", DETERMINISM_CASES)
def test_bitwise_identical_in_every_schedule_and_multiprocessor_count(emu, build_problem):
    problem = build_problem()
    results = []
    try:
        for sms in (1, 132):
            emu.set_multiprocessor_count(sms)
            for mode in ALL_MODES:
                emu.set_schedule(mode, SEED)
                results.append((mode, sms, problem.run(torch.ops.fastdnas_emu)))
    finally:
        emu.set_schedule("forward")
        emu.set_multiprocessor_count(132)
    first = results[0][2]
    for mode, sms, result in results[1:]:
        for i, (a, b) in enumerate(zip(first, result)):
            assert torch.equal(a, b), f"output {i} differs in schedule {mode} with {sms} multiprocessors"


# The 64-bit index paths, taken by tensors of over 2^30 elements (too large to emulate), on small
# ones: FASTDNAS_EMU_INDEX64 sends every call there. They add the same products in the same order
# as the 32-bit paths (constant geometries included): bitwise their results.
INDEX64_CASES = [
    *[pytest.param(lambda case=case: depthwise_problem(case, torch.float32), id=f"depthwise_conv2d-case{i}")
      for i, case in enumerate(test_depthwise_conv.CASES[:4])],
    pytest.param(lambda: depthwise_problem(CHUNKED, torch.float32), id="depthwise_conv2d-chunks"),
    *[pytest.param(lambda case=case: depthwise_segments_problem(case, torch.float64),
                   id=f"depthwise_conv2d_segments-case{i}") for i, case in enumerate(test_depthwise_segments.CASES)
      if i in (0, 2, 5)],
    pytest.param(lambda: trellis_problem(3, 4, (2, 3, 11, 13), torch.float32), id="trellis_aggregate"),
    pytest.param(TRELLIS_VECTOR[torch.float64], id="trellis_aggregate-vector"),
    pytest.param(RESIZE_BANDS[5], id="resize_sum-bands"),
    pytest.param(lambda: resize_problem([(5, 5), (17, 13), (3, 11)], (67, 61), torch.float32, N=1, C=3),
                 id="resize_sum-upsample"),
]


@pytest.mark.skipif(ASAN, reason="not part of the reduced AddressSanitizer run")
@pytest.mark.parametrize("build_problem", INDEX64_CASES)
def test_64_bit_indices_give_the_32_bit_results(emu, monkeypatch, build_problem):
    problem = build_problem()
    narrow = problem.run(torch.ops.fastdnas_emu)
    monkeypatch.setenv("FASTDNAS_EMU_INDEX64", "1")
    wide = problem.run(torch.ops.fastdnas_emu)
    for i, (a, b) in enumerate(zip(narrow, wide)):
        assert torch.equal(a, b), f"output {i} differs between the 32-bit and 64-bit index paths"


# mixed_node's element-by-element loads, taken where a plane is not a multiple of 4 elements or a
# pointer is misaligned, on aligned tensors: FASTDNAS_EMU_SCALAR sends every call there. A thread
# takes the same elements in the same order on both paths: bitwise their results.
@pytest.mark.skipif(ASAN, reason="not part of the reduced AddressSanitizer run")
@pytest.mark.parametrize("running", [False, True], ids=["batch", "running"])
def test_mixed_node_element_loads_give_the_128_bit_results(emu, monkeypatch, running):
    problem = mixed_node_problem((2, 1, 1), torch.float32, N=17, C=2, out_size=(4, 8), running=running)
    emu.take_launched_kernels()
    vector = problem.run(torch.ops.fastdnas_emu)
    monkeypatch.setenv("FASTDNAS_EMU_SCALAR", "1")
    assert vector_paths(emu.take_launched_kernels()) == {True}
    scalar = problem.run(torch.ops.fastdnas_emu)
    assert vector_paths(emu.take_launched_kernels()) == {False}
    for i, (a, b) in enumerate(zip(vector, scalar)):
        assert torch.equal(a, b), f"output {i} differs between the 128-bit and element loads"


def vector_paths(kernels):
    """Whether each mixed_node kernel with both load paths ran its 128-bit one (kernel<true, ...>)."""
    return {name.split("<")[1].startswith("true") for name in kernels if "<true," in name or "<false," in name}


@pytest.mark.skipif(ASAN, reason="not part of the reduced AddressSanitizer run")
@pytest.mark.parametrize("out_size,misaligned_inputs,vector", [((8, 8), False, True), ((5, 7), False, False),
                                                               ((8, 8), True, False)],
                         ids=["aligned", "odd-plane", "misaligned"])
def test_mixed_node_takes_128_bit_loads_where_planes_and_pointers_allow(emu, out_size, misaligned_inputs, vector):
    problem = mixed_node_problem((2, 1), torch.float32, N=2, C=2, out_size=out_size,
                                 misaligned_inputs=misaligned_inputs)
    emu.take_launched_kernels()
    problem.run(torch.ops.fastdnas_emu)
    assert vector_paths(emu.take_launched_kernels()) == {vector}


@pytest.mark.skipif(ASAN, reason="not part of the reduced AddressSanitizer run")
@pytest.mark.parametrize("running", [False, True], ids=["batch", "running"])
def test_mixed_node_backward_is_three_launches(emu, running):
    # The sums of every row in one pass, their chunks merged (with the weight-gradient terms and
    # invstd), then every input gradient and the weight gradients: 3 launches for any node.
    node = test_mixed_node.make_node((2, 2, 1), N=2, C=3, dtype=torch.float32, requires_grad=False, running=running)
    args = test_mixed_node.as_args(node)
    out, mean, var = torch.ops.fastdnas_emu.mixed_node(*args)
    emu.take_launched_kernels()
    torch.ops.fastdnas_emu._mixed_node_backward(torch.ones_like(out), *args[:7], mean, var, args[-1], not running)
    kernels = emu.take_launched_kernels()
    assert len(kernels) == 3, kernels


@pytest.mark.skipif(ASAN, reason="not part of the reduced AddressSanitizer run")
@pytest.mark.parametrize("dtype", list(TRELLIS_VECTOR), ids=dtype_name)
def test_trellis_128_bit_and_element_accesses_give_the_same_bits(emu, dtype):
    """The group layout's 128-bit accesses match the CPU kernel and the reference, and on arrays off
    16-byte boundaries the element-wise accesses of the same layout give the same bits (the same
    elements per thread, added in the same order)."""
    problem = TRELLIS_VECTOR[dtype]()
    # The group layout is the one taken: one fiber per thread of each tile (the forward kernel has
    # no barriers), 270 or 264 tiles where one element per step would take 4 to 8 times as many.
    before = emu.switches()
    torch.ops.fastdnas_emu.trellis_aggregate(*problem.forward_args)
    assert emu.switches() - before == 256 * TRELLIS_VECTOR_TILES[dtype]
    aligned = problem.run(torch.ops.fastdnas_emu)
    for i, (got, cpu, want) in enumerate(zip(aligned, problem.run(torch.ops.fastdnas), problem.reference())):
        assert_close(got, cpu, problem.tol if i < len(aligned) - 1 else problem.weight_tol, f"output {i}")
        assert_close(got, want.to(got.dtype), problem.tol if i < len(aligned) - 1 else problem.weight_tol,
                     f"output {i}")
    offset = problem.run(torch.ops.fastdnas_emu, offset=True)
    for i, (a, b) in enumerate(zip(aligned, offset)):
        assert torch.equal(a, b), f"output {i} differs between 128-bit and element accesses"


@pytest.mark.parametrize("kinds", ["all", (test_mixed_node.MAX,), (test_mixed_node.AVG,)],
                         ids=["all", "max_pool", "avg_pool"])
def test_mixed_node_eval_gradients_keep_a_nan_as_local_as_the_reference(emu, mode, kinds):
    # Running statistics: one NaN in the output gradient reaches the elements the reference's
    # gradient reaches, no more (no batch-statistics sums in the BatchNorm input gradients).
    node, grad = test_mixed_node.nan_grad_node(kinds, "cpu")
    args = test_mixed_node.as_args(node)
    detached = [[t.detach() for t in a] if isinstance(a, list) and a and torch.is_tensor(a[0])
                else a.detach() if torch.is_tensor(a) else a for a in args]
    out, mean, var = torch.ops.fastdnas_emu.mixed_node(*detached)
    grad_edges, grad_convs, grad_weights = torch.ops.fastdnas_emu._mixed_node_backward(
        grad, *detached[:7], mean, var, detached[-1], False)
    want = test_mixed_node.forward_backward(reference.mixed_node, node, grad)[3]
    test_mixed_node.assert_same_nans([*grad_edges, *grad_convs, grad_weights], want,
                                     test_mixed_node.TOLERANCE[torch.float64])


# ---- the emulator's own checks --------------------------------------------------------------

CHECK_FAILURES = [
    ("different_barriers", "threads wait at different barriers"),
    ("exit_before_barrier", r"exited while thread .* waits at __syncthreads|waits at __syncthreads .* has exited"),
    ("shuffle_with_exited_lane", r"which has exited|exited while .* waits for it at __shfl_down_sync"),
    ("shuffle_with_missing_lanes", r"names lanes that do not exist \(warp 1 has 16 lanes\)"),
    ("shuffle_reads_outside_mask", r"reads lane 1\d in __shfl_down_sync .* not in the mask"),
    ("shuffle_mask_without_own_lane", "leaves out its own lane"),
    ("deadlock", r"deadlock: no thread can go on; .* waits at (__syncthreads|__shfl_sync)"),
    ("raises", "raised: an error raised in device code"),
    ("empty_grid", r"invalid configuration argument .* empty grid \(0, 1, 1\)"),
    ("too_many_threads", r"invalid configuration argument .* 1056 threads; at most 1024"),
    ("too_much_shared_memory", r"invalid configuration argument .* 65536 bytes of dynamic shared memory"),
]


@pytest.mark.skipif(ASAN, reason="not part of the reduced AddressSanitizer run")
@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("kernel,message", CHECK_FAILURES)
def test_broken_kernels_fail_with_a_clear_message(emu, kernel, message, mode):
    emu.set_schedule(mode, SEED)
    try:
        with pytest.raises(RuntimeError, match=message):
            emu.run_check_kernel(kernel)
        # The emulator is usable again after a failed launch.
        assert emu.run_check_kernel("atomics") == [300.0, 300.0]
    finally:
        emu.set_schedule("forward")


def test_an_unchecked_launch_error_shows_at_the_next_launch(emu):
    emu.run_check_kernel("empty_grid", check_launch=False)
    with pytest.raises(RuntimeError, match="after a failed launch that was never checked"):
        emu.run_check_kernel("atomics")
    assert emu.run_check_kernel("atomics") == [300.0, 300.0]


def test_shared_memory_holds_garbage_at_each_block_start(emu):
    out = torch.tensor(emu.run_check_kernel("read_before_write"))
    assert torch.all(out[:32] == 1) and torch.all(out[32:].isnan())


def test_shuffles_follow_cuda_semantics(emu):
    out = torch.tensor(emu.run_check_kernel("shuffles")).view(32, 5)
    lane = torch.arange(32)
    want = torch.stack([torch.full((32,), 3), (lane - 1).clamp_min(0), torch.where(lane + 2 < 32, lane + 2, lane),
                        lane ^ 5, torch.where(lane % 8 < 7, lane + 1, lane)], 1).float()
    want[0, 1] = 0
    assert torch.equal(out, want)


def test_atomics_add_over_the_grid(emu):
    assert emu.run_check_kernel("atomics") == [300.0, 300.0]  # 3 blocks of 100; block indices 0 + 1 + 2


def test_schedules_order_threads_as_named(emu):
    orders = {}
    try:
        for mode in ALL_MODES:
            emu.set_schedule(mode, SEED)
            orders[mode] = emu.run_check_kernel("first_run_order")
    finally:
        emu.set_schedule("forward")
    assert orders["forward"] == list(range(96)) and orders["reverse"] == list(range(95, -1, -1))
    assert sorted(orders["shuffle"]) == list(range(96))
    assert orders["shuffle"] not in (orders["forward"], orders["reverse"])
    # Greedy: the last warp through the warp operation finishes it first, one warp after another.
    assert orders["greedy-forward"] == list(range(64, 96)) + list(range(32)) + list(range(32, 64))
    assert [int(t) // 32 for t in orders["greedy-shuffle"][:32]] == [orders["greedy-shuffle"][0] // 32] * 32
    with pytest.raises(RuntimeError, match="unknown schedule"):
        emu.set_schedule("sideways")


@pytest.mark.skipif(ASAN, reason="not part of the reduced AddressSanitizer run")
def test_portable_ucontext_switch_runs_the_check_kernels(emu):
    portable = build.load(ucontext=True)
    assert portable.run_check_kernel("shuffles") == emu.run_check_kernel("shuffles")
    for mode in ALL_MODES:  # shuffled orders are seeded from set_schedule on, so the modules agree
        portable.set_schedule(mode, SEED)
        emu.set_schedule(mode, SEED)
        assert portable.run_check_kernel("first_run_order") == emu.run_check_kernel("first_run_order")
    emu.set_schedule("forward")
    with pytest.raises(RuntimeError, match="deadlock"):
        portable.run_check_kernel("deadlock")


@pytest.mark.skipif(ASAN, reason="this is the test that starts the AddressSanitizer run")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the AddressSanitizer run needs Linux and g++")
def test_reduced_set_under_address_sanitizer():
    """This module's reduced set (float32/float64 cases, forward schedule) with the kernels built
    (in the subprocess) under AddressSanitizer: an out-of-bounds access fails it, with the kernel,
    block and thread."""
    env = dict(os.environ, FASTDNAS_EMU_ASAN="1", LD_PRELOAD=build.asan_runtime(),
               ASAN_OPTIONS="detect_leaks=0:alloc_dealloc_mismatch=0:detect_odr_violation=0:"
                            "detect_stack_use_after_return=0:abort_on_error=0")
    tests = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
                           "-k", "test_matches_cpu_kernels_and_reference"],
                          cwd=os.path.dirname(tests), env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    assert " passed" in proc.stdout and "AddressSanitizer" not in proc.stderr
