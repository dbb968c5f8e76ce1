"""depthwise_conv2d_segments: the kernels against per-segment F.conv2d(groups=C) + torch.cat,
against depthwise_conv2d for one segment (bitwise), gradcheck, opcheck, compile, bad inputs."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from fastdnas import ops
from conftest import CUDA, DEVICES, over_thread_counts, rel_err, replay_in_cuda_graph
from test_depthwise_conv import CASES as SINGLE_CASES
from test_depthwise_conv import NON_FINITE, TOLERANCE, assert_same_values

# The search node's two calls per stride group: the four first depthwise layers on one input
# (sep 3x3, sep 5x5, dil 3x3, dil 5x5), and the second halves of the separable convolutions.
DARTS_FIRST = [(3, 1, 1), (5, 2, 1), (3, 2, 2), (5, 4, 2)]  # (kernel, padding, dilation)
DARTS_SECOND = [(3, 1, 1), (5, 2, 1)]

# (N, Cx, H, W, stride, [(kernel, padding, dilation, input_offset) per segment]).
CASES = [
    (2, 5, 9, 11, 1, [(*g, 0) for g in DARTS_FIRST]),
    (2, 4, 8, 8, 2, [(*g, 0) for g in DARTS_FIRST]),
    (2, 3, 7, 9, 2, [(*g, 0) for g in DARTS_FIRST]),  # odd sizes, stride 2
    (3, 6, 7, 10, 1, [(3, 1, 1, 0), (5, 2, 1, 3)]),
    # Partly overlapping segments (C = 4): channels 0-1 read by none, 2 by two segments, 3-5 by three, 6 by one.
    (2, 7, 6, 5, 1, [(3, 1, 1, 2), (1, 0, 1, 3), (5, 4, 2, 2)]),
    # Rectangular kernels, asymmetric arguments, a stride pair.
    (2, 4, 9, 8, (2, 1), [((3, 5), (1, 2), 1, 1), ((1, 3), (0, 1), 1, 0), ((3, 3), (1, 2), (1, 2), 1)]),
    (1, 3, 1, 1, 1, [(3, 1, 1, 0), (5, 2, 1, 0)]),  # a 1x1 plane
    (2, 3, 2, 2, 1, [(3, 100, 100, 0), (3, 1, 1, 0)]),  # padding far wider than the planes: the row path
    (1, 4, 5, 6, 1, [(1 + 2 * (g % 3), g % 3, 1, 2 * (g % 2)) for g in range(8)]),  # the most segments
]


def make_case(case, dtype, device, requires_grad=True):
    N, Cx, H, W, stride, segments = case
    C = Cx - max(s[3] for s in segments)
    x = torch.randn(N, Cx, H, W, device=device).to(dtype).requires_grad_(requires_grad)
    weights = []
    for kernel, _, _, _ in segments:
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        w = torch.randn(C, 1, kh, kw, device=device) / (kh * kw) ** 0.5
        weights.append(w.to(dtype).requires_grad_(requires_grad))
    args = dict(stride=stride, paddings=[s[1] for s in segments], dilations=[s[2] for s in segments],
                input_offsets=[s[3] for s in segments])
    return x, weights, args


def _flat_pairs(values):
    return [v for value in values for v in ((value, value) if isinstance(value, int) else value)]


def op_arguments(args):
    """The wrapper's arguments as the op takes them: (stride pair, flat paddings, flat dilations, offsets)."""
    return (_flat_pairs([args["stride"]]), _flat_pairs(args["paddings"]), _flat_pairs(args["dilations"]),
            list(args["input_offsets"]))


def kernel_sizes(weights):
    return [k for w in weights for k in w.shape[2:]]


def reference(x, weights, stride, paddings, dilations, input_offsets):
    # In float64 (the CPU conv2d may lack half kernels), rounded to the input's dtype at the end.
    C = weights[0].shape[0]
    outs = [F.conv2d(x[:, off:off + C].double(), w.double(), stride=stride, padding=p, dilation=d, groups=C)
            for w, p, d, off in zip(weights, paddings, dilations, input_offsets)]
    return torch.cat(outs, 1).to(x.dtype)


def forward_backward(fn, x, weights, args, grad):
    out = fn(x, weights, **args)
    return (out, *torch.autograd.grad(out, (x, *weights), grad))


def random_grad(x, weights, args):
    return torch.randn(reference(x, weights, **args).shape, device=x.device).to(x.dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("case", CASES)
def test_matches_conv2d(case, dtype, device):
    x, weights, args = make_case(case, dtype, device)
    grad = random_grad(x, weights, args)
    got = forward_backward(ops.depthwise_conv2d_segments, x, weights, args, grad)
    want = forward_backward(reference, x, weights, args, grad)
    assert got[0].shape == want[0].shape and got[0].is_contiguous()
    for g, r in zip(got, want):
        assert g.dtype == dtype and g.shape == r.shape
        assert rel_err(g, r) <= TOLERANCE[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_channels_no_segment_reads_get_zero_gradient(device):
    x, weights, args = make_case(CASES[4], torch.float64, device)
    grad_x = forward_backward(ops.depthwise_conv2d_segments, x, weights, args, random_grad(x, weights, args))[1]
    assert torch.equal(grad_x[:, :2], torch.zeros_like(grad_x[:, :2]))
    assert grad_x[:, 2:].abs().min() > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("case", SINGLE_CASES)
def test_one_segment_is_depthwise_conv2d_bitwise(case, dtype, device):
    from test_depthwise_conv import make_case as make_single

    x, w, args = make_single(case, dtype, device)
    grad = torch.randn(ops.depthwise_conv2d(x, w, **args).shape, device=device).to(dtype)
    out = ops.depthwise_conv2d(x, w, **args)
    want = (out, *torch.autograd.grad(out, (x, w), grad))
    seg_args = dict(stride=args["stride"], paddings=[args["padding"]], dilations=[args["dilation"]],
                    input_offsets=[0])
    got = forward_backward(ops.depthwise_conv2d_segments, x, [w], seg_args, grad)
    for g, r in zip(got, want):
        assert torch.equal(g, r)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    # Shared input channels (the input gradient adds several segments), two strides, uncovered channels.
    for case in (CASES[1], CASES[4], CASES[5]):
        N, Cx, H, W, stride, segments = case
        x, weights, args = make_case((1, Cx, min(H, 6), min(W, 6), stride, segments), torch.float64, device)
        assert torch.autograd.gradcheck(lambda x, *ws: ops.depthwise_conv2d_segments(x, ws, **args), (x, *weights))


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs_and_grad(device):
    x = torch.randn(6, 10, 4, 9, dtype=torch.float64, device=device).permute(2, 0, 3, 1)[:, ::2]  # [4, 3, 9, 10]
    weights = [torch.randn(2, 3, 1, 6, dtype=torch.float64, device=device).permute(0, 2, 3, 1)[..., ::2],  # [2,1,6,2]
               torch.randn(1, 1, 4, 4, dtype=torch.float64, device=device)[..., ::2].expand(2, 1, 4, 2)]
    x.requires_grad_()
    for w in weights:
        w.requires_grad_()
    args = dict(stride=1, paddings=[(2, 1), (1, 1)], dilations=[1, (1, 1)], input_offsets=[1, 0])
    shape = reference(x, weights, **args).shape
    grad = torch.randn(shape[::-1], dtype=torch.float64, device=device).permute(3, 2, 1, 0)
    assert not x.is_contiguous() and not grad.is_contiguous()
    assert not any(w.is_contiguous() for w in weights)
    got = forward_backward(ops.depthwise_conv2d_segments, x, weights, args, grad)
    want = forward_backward(reference, x, weights, args, grad)
    for g, r in zip(got, want):
        assert rel_err(g, r) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x, weights, args = make_case((0, 4, 8, 8, 1, [(*g, 0) for g in DARTS_FIRST]), torch.float32, device)
    out = ops.depthwise_conv2d_segments(x, weights, **args)
    assert out.shape == (0, 16, 8, 8)
    grad_x, *grad_ws = torch.autograd.grad(out.sum(), (x, *weights))
    assert grad_x.shape == x.shape
    for g, w in zip(grad_ws, weights):
        assert torch.equal(g, torch.zeros_like(w))


@pytest.mark.parametrize("device", DEVICES)
def test_no_channels(device):
    x = torch.randn(2, 3, 5, 5, device=device, requires_grad=True)
    weights = [torch.randn(0, 1, 3, 3, device=device, requires_grad=True),
               torch.randn(0, 1, 5, 5, device=device, requires_grad=True)]
    out = ops.depthwise_conv2d_segments(x, weights, 1, [1, 2], [1, 1], [0, 3])
    assert out.shape == (2, 0, 5, 5)
    grad_x, *grad_ws = torch.autograd.grad(out.sum(), (x, *weights), allow_unused=True)
    assert torch.equal(grad_x, torch.zeros_like(x))
    assert [g.shape for g in grad_ws] == [w.shape for w in weights]


@pytest.mark.parametrize("device", DEVICES)
def test_only_the_needed_gradient_is_computed(device):
    x, weights, args = make_case(CASES[0], torch.float64, device)
    for w in weights:
        w.requires_grad_(False)
    out = ops.depthwise_conv2d_segments(x, weights, **args)
    with torch.profiler.profile() as prof:
        torch.autograd.grad(out.sum(), x)
    names = {e.name for e in prof.events()}
    assert "fastdnas::_depthwise_conv2d_segments_input_grad" in names
    assert "fastdnas::_depthwise_conv2d_segments_weight_grad" not in names
    x.requires_grad_(False)
    weights[1].requires_grad_()
    out = ops.depthwise_conv2d_segments(x, weights, **args)
    with torch.profiler.profile() as prof:
        (grad_w,) = torch.autograd.grad(out.sum(), weights[1])
    names = {e.name for e in prof.events()}
    assert "fastdnas::_depthwise_conv2d_segments_input_grad" not in names
    assert grad_w.shape == weights[1].shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [CASES[1], CASES[4]])
def test_opcheck(case, dtype, device):
    x, weights, args = make_case(case, dtype, device, requires_grad=False)
    geometry = op_arguments(args)
    torch.library.opcheck(torch.ops.fastdnas.depthwise_conv2d_segments, (x, weights, *geometry))
    grad = random_grad(x, weights, args)
    torch.library.opcheck(torch.ops.fastdnas._depthwise_conv2d_segments_input_grad,
                          (grad, weights, list(x.shape), *geometry))
    torch.library.opcheck(torch.ops.fastdnas._depthwise_conv2d_segments_weight_grad,
                          (grad, x, kernel_sizes(weights), *geometry))


@pytest.mark.parametrize("device", DEVICES)
def test_weight_grad_is_deterministic_across_thread_counts(device):
    x, weights, args = make_case((8, 6, 33, 29, 1, [(*g, 0) for g in DARTS_FIRST]), torch.float32, device)
    grad = random_grad(x, weights, args)
    results = over_thread_counts(
        lambda: torch.cat([g.flatten() for g in forward_backward(ops.depthwise_conv2d_segments, x, weights, args,
                                                                 grad)[1:]]), repeats=2)
    assert all(torch.equal(r, results[0]) for r in results)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    x, weights, args = make_case(CASES[3], torch.float32, device)

    def layer(x, *weights):
        return torch.relu(ops.depthwise_conv2d_segments(torch.relu(x), weights, **args)).sum()

    got = torch.autograd.grad(torch.compile(layer, fullgraph=True)(x, *weights), (x, *weights))
    want = torch.autograd.grad(layer(x, *weights), (x, *weights))
    for g, r in zip(got, want):
        assert rel_err(g, r) <= 1e-5


def test_autocast_runs_in_the_autocast_dtype():
    x, weights, args = make_case(CASES[0], torch.float32, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.depthwise_conv2d_segments(x, weights, **args)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().sum(), (x, *weights))
    assert all(g.dtype == torch.float32 for g in grads)


@pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine")
def test_cuda_graph_capture():
    x, weights, args = make_case((16, 16, 32, 32, 1, [(*g, 0) for g in DARTS_FIRST]), torch.float32, "cuda",
                                 requires_grad=False)
    grad = random_grad(x, weights, args)
    geometry = op_arguments(args)

    def run():
        return (torch.ops.fastdnas.depthwise_conv2d_segments(x, weights, *geometry),
                torch.ops.fastdnas._depthwise_conv2d_segments_input_grad(grad, weights, list(x.shape), *geometry),
                torch.ops.fastdnas._depthwise_conv2d_segments_weight_grad(grad, x, kernel_sizes(weights), *geometry))

    outputs = replay_in_cuda_graph(run, lambda: x.copy_(torch.randn_like(x)))
    leaves = [t.double().requires_grad_() for t in (x, *weights)]
    want = forward_backward(reference, leaves[0], leaves[1:], args, grad.double())
    want = [want[0], want[1], torch.cat([g.flatten() for g in want[2:]])]
    for g, r in zip(outputs, want):
        assert rel_err(g, r) <= 1e-5


def test_kernels_registered():
    from fastdnas._extension import cuda_kernels_built

    for name in ("depthwise_conv2d_segments", "_depthwise_conv2d_segments_input_grad",
                 "_depthwise_conv2d_segments_weight_grad"):
        info = torch._C._dispatch_dump(f"fastdnas::{name}")
        assert "CPU: registered" in info
        if cuda_kernels_built():
            assert "CUDA: registered" in info


# --- non-finite values: as F.conv2d, padding taps multiply zeros too ----------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4]])
def test_non_finite_values_reach_what_conv2d_reaches(case, value, device):
    x, weights, args = make_case(case, torch.float64, device)
    with torch.no_grad():
        weights[-1][-1, 0, 0, 0] = value
        weights[0][0, 0, -1, -1] = value
        x[0, -1, 1, 1] = value
    grad = random_grad(x, weights, args)
    grad[0, 0, 0, 0] = value
    grad[-1, -1, -1, -1] = value
    got = forward_backward(ops.depthwise_conv2d_segments, x, weights, args, grad)
    want = forward_backward(reference, x.cpu(), [w.cpu() for w in weights], args, grad.cpu())
    for g, r in zip(got, want):
        assert_same_values(g.cpu(), r)


# --- bad inputs: each error names the argument and what was expected ---------------------------

def _w(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


X = torch.randn(2, 4, 8, 8)
BAD_INPUTS = [
    # (input, weights, stride, paddings, dilations, input_offsets, message)
    (X, [_w(4, 1, 3, 3)] * 9, 1, [1] * 9, [1] * 9, [0] * 9, "input_offsets must hold 1 to 8 values"),
    (X, [], 1, [], [], [], "input_offsets must hold 1 to 8 values"),
    (torch.randn(2, 4, 8), [_w(4, 1, 3, 3)], 1, [1], [1], [0], r"input must be a 4-D tensor \[N, C, H, W\]"),
    (X, [_w(4, 1, 3, 3), _w(3, 1, 5, 5)], 1, [1, 2], [1, 1], [0, 0],
     r"weights\[1\] must have shape \[C, 1, KH, KW\] with C = 4 \(the C of weights\[0\]\), got \[3, 1, 5, 5\]"),
    (X, [_w(4, 2, 3, 3)], 1, [1], [1], [0], r"weights\[0\] must have shape \[C, 1, KH, KW\], got \[4, 2, 3, 3\]"),
    (X, [_w(2, 1, 3, 3), _w(2, 1, 3, 3)], 1, [1, 1], [1, 1], [0, 3],
     r"input_offsets\[1\] = 3 reads 2 input channels from channel 3 but the input has 4 channels; each offset must "
     r"be in \[0, 2\]"),
    (X, [_w(2, 1, 3, 3)], 1, [1], [1], [-1], r"input_offsets\[0\] = -1 reads 2 input channels from channel -1"),
    # Offsets at the ends of int64: the message shows them as given (no wrapped channel range).
    (X, [_w(2, 1, 3, 3)], 1, [1], [1], [2**63 - 1],
     r"input_offsets\[0\] = 9223372036854775807 reads 2 input channels from channel 9223372036854775807 but the "
     r"input has 4 channels"),
    (X, [_w(2, 1, 3, 3)], 1, [1], [1], [-2**63], r"input_offsets\[0\] = -9223372036854775808 reads 2 input channels"),
    (X, [_w(4, 1, 3, 3), _w(4, 1, 5, 5)], 1, [1, 1], [1, 1], [0, 0],
     "segment 1 gives an output of size 6x6 but segment 0 gives 8x8; every segment must give the same size"),
    (X, [_w(4, 1, 3, 3), _w(4, 1, 3, 3).double()], 1, [1, 1], [1, 1], [0, 0],
     r"weights\[1\] has dtype .* must match"),
    (X, [_w(4, 1, 3, 3), torch.randn(4, 1, 3, 3, device="meta")], 1, [1, 1], [1, 1], [0, 0],
     r"weights\[1\] has dtype torch.float32 on meta but must match the other tensors \(torch.float32 on cpu\)"),
    (torch.randint(0, 3, (2, 4, 8, 8)), [_w(4, 1, 3, 3)], 1, [1], [1], [0], "input must be float64, float32"),
    (X, [_w(4, 1, 3, 3)], 0, [1], [1], [0], "stride must be >= 1"),
    (X, [_w(4, 1, 3, 3), _w(4, 1, 3, 3)], 1, [1, -1], [1, 1], [0, 0], r"\(segment 1\): padding must be >= 0"),
    (X, [_w(4, 1, 3, 3)], 1, [1], [(1, 0)], [0], r"\(segment 0\): dilation must be >= 1"),
    (X, [_w(4, 1, 9, 9)], 1, [0], [1], [0], r"\(segment 0\): input of spatial size 8x8 .* gives an output of size"),
    (X, [_w(4, 1, 3, 3)], 1, [1], [2**31], [0], r"\(segment 0\): dilation must be at most 2147483647"),
    # Sizes that overflow int64: G * C output channels (filters expanded, none stored), the output's bytes.
    (torch.empty(0, 2**62, 1, 1), [torch.empty(1, 1, 1, 1).expand(2**62, 1, 1, 1)] * 2, 1, [0, 0], [1, 1], [0, 0],
     r"the output's G \* C channels \(segments \* channels of weights\[0\]\) \(2 \* 4611686018427387904\) "
     "overflows int64"),
    (X, [_w(4, 1, 3, 3)], 1, [2**30], [1], [0], r"the output \(from input, weights, stride, paddings and dilations\) "
     r"would have shape \[2, 4, 2147483654, 2147483654\]: more bytes than int64 can count"),
]


@pytest.mark.parametrize("x,weights,stride,paddings,dilations,offsets,message", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(x, weights, stride, paddings, dilations, offsets, message):
    with pytest.raises(RuntimeError, match=message):
        ops.depthwise_conv2d_segments(x, weights, stride, paddings, dilations, offsets)


@pytest.mark.parametrize("x,weights,stride,paddings,dilations,offsets,message", BAD_INPUTS)
def test_bad_inputs_raise_under_fake_tensors(x, weights, stride, paddings, dilations, offsets, message):
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    with pytest.raises(RuntimeError, match=message):
        with mode:
            ops.depthwise_conv2d_segments(mode.from_tensor(x), [mode.from_tensor(w) for w in weights], stride,
                                          paddings, dilations, offsets)


@pytest.mark.parametrize("fake", [False, True])
def test_bad_list_lengths_of_the_raw_op(fake):
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, weights = X, [_w(4, 1, 3, 3), _w(4, 1, 5, 5)]
    op = torch.ops.fastdnas.depthwise_conv2d_segments
    calls = [
        ((x, weights, [1, 1], [1, 1, 2, 2], [1, 1, 1, 1], [0]), r"weights must hold one tensor per segment \(1 = "),
        ((x, weights, [1, 1], [1, 1, 2], [1, 1, 1, 1], [0, 0]),
         r"paddings must hold an \(h, w\) pair per segment \(4 values\), got 3"),
        ((x, weights, [1, 1], [1, 1, 2, 2], [1, 1], [0, 0]),
         r"dilations must hold an \(h, w\) pair per segment \(4 values\), got 2"),
    ]
    mode = FakeTensorMode() if fake else None
    for args, message in calls:
        if fake:
            args = (mode.from_tensor(args[0]), [mode.from_tensor(w) for w in args[1]], *args[2:])
        with pytest.raises(RuntimeError, match=message):
            if fake:
                with mode:
                    op(*args)
            else:
                op(*args)


def test_wrapper_list_lengths_and_types():
    x, weights = X, [_w(4, 1, 3, 3), _w(4, 1, 5, 5)]
    with pytest.raises(ValueError, match=r"paddings must hold one int or pair per segment \(2 = len\(weights\)\), "
                                         "got 1"):
        ops.depthwise_conv2d_segments(x, weights, 1, [1], [1, 1], [0, 0])
    with pytest.raises(ValueError, match=r"input_offsets must hold one int per segment \(2 = len\(weights\)\)"):
        ops.depthwise_conv2d_segments(x, weights, 1, [1, 2], [1, 1], [0])
    with pytest.raises(ValueError, match=r"dilations\[1\] must be an int or a pair of ints"):
        ops.depthwise_conv2d_segments(x, weights, 1, [1, 2], [1, (1, 1, 1)], [0, 0])
    with pytest.raises(TypeError, match="weights must be a list or tuple of tensors"):
        ops.depthwise_conv2d_segments(x, weights[0], 1, [1], [1], [0])
    with pytest.raises(TypeError, match="paddings must be a list with one int or pair per segment"):
        ops.depthwise_conv2d_segments(x, weights, 1, 1, [1, 1], [0, 0])
    with pytest.raises(TypeError, match="depthwise_conv2d_segments: input must be a tensor, got numpy.ndarray"):
        ops.depthwise_conv2d_segments(x.numpy(), weights, 1, [1, 2], [1, 1], [0, 0])
    with pytest.raises(TypeError, match="depthwise_conv2d_segments: input must be a tensor, got None"):
        ops.depthwise_conv2d_segments(None, weights, 1, [1, 2], [1, 1], [0, 0])


def test_bad_gradient_op_arguments():
    grad, x = torch.randn(2, 8, 8, 8), X
    geometry = ([1, 1], [1, 1, 2, 2], [1, 1, 1, 1], [0, 0])
    with pytest.raises(RuntimeError, match=r"input gradient\): grad must have the output's shape \[2, 8, 8, 8\]"):
        torch.ops.fastdnas._depthwise_conv2d_segments_input_grad(grad[:, :, :7], [_w(4, 1, 3, 3), _w(4, 1, 5, 5)],
                                                                 list(x.shape), *geometry)
    with pytest.raises(RuntimeError, match=r"weight gradient\): kernel_sizes must hold a \(KH, KW\) pair per "
                                           r"segment \(4 values\), got 3"):
        torch.ops.fastdnas._depthwise_conv2d_segments_weight_grad(grad, x, [3, 3, 5], *geometry)
    with pytest.raises(RuntimeError, match=r"weight gradient\): grad must be a 4-D tensor with G \* C channels"):
        torch.ops.fastdnas._depthwise_conv2d_segments_weight_grad(grad[:, :7], x, [3, 3, 5, 5], *geometry)
    with pytest.raises(RuntimeError, match=r"weight gradient\): grad has dtype .* must match"):
        torch.ops.fastdnas._depthwise_conv2d_segments_weight_grad(grad.double(), x, [3, 3, 5, 5], *geometry)


@pytest.mark.parametrize("fake", [False, True])
def test_weight_gradient_size_overflow_raises(fake):
    # The flat weight gradient holds sum_g C * KH_g * KW_g values: 2 * 2**62 here (an empty batch
    # of 2**58 channels), which int64 cannot count; it must raise, not return a wrapped size.
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    grad, x = torch.empty(0, 2**59, 1, 1), torch.empty(0, 2**58, 4, 4)
    if fake:
        grad, x = mode.from_tensor(grad), mode.from_tensor(x)
    with mode if fake else contextlib.nullcontext():
        with pytest.raises(RuntimeError, match=r"weight gradient\): the flat weight gradient's size \(the sum of C \* "
                                               r"KH \* KW over the segments\) \(4611686018427387904 \+ "
                                               r"4611686018427387904\) overflows int64"):
            torch.ops.fastdnas._depthwise_conv2d_segments_weight_grad(grad, x, [4, 4, 4, 4], [1, 1], [0, 0, 0, 0],
                                                                      [1, 1, 1, 1], [0, 0])
