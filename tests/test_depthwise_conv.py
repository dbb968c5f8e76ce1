"""depthwise_conv2d: the kernels against F.conv2d(groups=C), gradcheck, opcheck, compile, bad inputs."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from fastdnas import ops
from conftest import CUDA, DEVICES, over_thread_counts, rel_err, replay_in_cuda_graph

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# (N, C, H, W, kernel, stride, padding, dilation): the DARTS candidates at both strides, odd and
# rectangular sizes, asymmetric arguments, outputs narrower than the padding, a 1x1 plane.
CASES = [
    (3, 5, 9, 11, 3, 1, 1, 1),  # sep_conv_3x3
    (2, 4, 8, 8, 5, 2, 2, 1),  # sep_conv_5x5, reduction
    (2, 3, 7, 10, 3, 1, 2, 2),  # dil_conv_3x3
    (2, 3, 9, 8, 5, 2, 4, 2),  # dil_conv_5x5, reduction
    (1, 2, 5, 6, (3, 5), (2, 1), (0, 3), (1, 2)),
    (2, 2, 3, 3, 5, 1, 4, 2),  # every output reads mostly padding
    (1, 3, 1, 1, 3, 1, 1, 1),
    (2, 3, 12, 7, 3, 3, 0, 1),  # stride 3, no padding: trailing inputs no output reads
    (1, 1, 4, 4, (1, 6), 1, (1, 3), 1),  # a kernel as wide as the padded input
    (2, 3, 2, 2, 3, 1, 100, 100),  # stride 1, padding far wider than the planes: the row path
]


def make_case(case, dtype, device, requires_grad=True):
    N, C, H, W, kernel, stride, padding, dilation = case
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = torch.randn(N, C, H, W, device=device).to(dtype).requires_grad_(requires_grad)
    w = (torch.randn(C, 1, kh, kw, device=device) / (kh * kw) ** 0.5).to(dtype).requires_grad_(requires_grad)
    return x, w, dict(stride=stride, padding=padding, dilation=dilation)


def reference(x, w, stride, padding, dilation):
    # The dtype's own conv2d on CPU may lack half kernels: compute in float64, round at the end.
    y = F.conv2d(x.double(), w.double(), stride=stride, padding=padding, dilation=dilation, groups=x.shape[1])
    return y.to(x.dtype)


def forward_backward(fn, x, w, args, grad):
    out = fn(x, w, **args)
    return (out, *torch.autograd.grad(out, (x, w), grad))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("case", CASES)
def test_matches_conv2d(case, dtype, device):
    x, w, args = make_case(case, dtype, device)
    out = ops.depthwise_conv2d(x, w, **args)
    grad = torch.randn(out.shape, device=device).to(dtype)
    got = forward_backward(ops.depthwise_conv2d, x, w, args, grad)
    want = forward_backward(reference, x, w, args, grad)
    assert got[0].shape == want[0].shape and got[0].dtype == dtype
    for g, r in zip(got, want):
        assert g.dtype == dtype
        assert rel_err(g, r) <= TOLERANCE[dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_darts_size_float32(device):
    # The largest DARTS size: 5x5 taps dilated by 2 over 64x16x32x32 (weight gradients sum 65536 terms).
    x, w, args = make_case((64, 16, 32, 32, 5, 1, 4, 2), torch.float32, device)
    grad = torch.randn(64, 16, 32, 32, device=device)
    got = forward_backward(ops.depthwise_conv2d, x, w, args, grad)
    want = forward_backward(reference, x.double(), w.double(), args, grad.double())
    for g, r in zip(got, want):
        assert rel_err(g, r) <= 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [2, (2, 3)])
def test_strided_planes_in_several_chunks(stride, device):
    # The CPU kernels stack the phases of a channel's planes in chunks of about 32K elements:
    # 9 planes of 64x64 at stride 2 make two chunks.
    x, w, args = make_case((9, 2, 64, 64, 3, stride, 1, 1), torch.float64, device)
    grad = torch.randn(reference(x, w, **args).shape, dtype=torch.float64, device=device)
    got = forward_backward(ops.depthwise_conv2d, x, w, args, grad)
    want = forward_backward(reference, x, w, args, grad)
    for g, r in zip(got, want):
        assert rel_err(g, r) <= TOLERANCE[torch.float64]


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs_and_grad(device):
    x = torch.randn(6, 10, 4, 9, dtype=torch.float64, device=device).permute(2, 0, 3, 1)[:, ::2]  # [4, 3, 9, 10]
    w = torch.randn(3, 3, 1, 6, dtype=torch.float64, device=device).permute(0, 2, 3, 1)[..., ::2]  # [3, 1, 6, 2]
    x.requires_grad_()
    w.requires_grad_()
    args = dict(stride=1, padding=(2, 1), dilation=1)
    shape = reference(x, w, **args).shape
    grad = torch.randn(shape[::-1], dtype=torch.float64, device=device).permute(3, 2, 1, 0)
    assert not x.is_contiguous() and not w.is_contiguous() and not grad.is_contiguous()
    got = forward_backward(ops.depthwise_conv2d, x, w, args, grad)
    want = forward_backward(reference, x, w, args, grad)
    for g, r in zip(got, want):
        assert rel_err(g, r) <= 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x, w, args = make_case((0, 4, 8, 8, 3, 1, 1, 1), torch.float32, device)
    out = ops.depthwise_conv2d(x, w, **args)
    assert out.shape == (0, 4, 8, 8)
    grad_x, grad_w = torch.autograd.grad(out.sum(), (x, w))
    assert grad_x.shape == x.shape
    assert torch.equal(grad_w, torch.zeros_like(w))


@pytest.mark.parametrize("device", DEVICES)
def test_only_the_needed_gradient_is_computed(device):
    # The architecture step differentiates through the input only: no weight-gradient op then.
    x, w, args = make_case(CASES[0], torch.float64, device)
    w.requires_grad_(False)
    out = ops.depthwise_conv2d(x, w, **args)
    with torch.profiler.profile() as prof:
        torch.autograd.grad(out.sum(), x)
    names = {e.name for e in prof.events()}
    assert "fastdnas::_depthwise_conv2d_input_grad" in names
    assert "fastdnas::_depthwise_conv2d_weight_grad" not in names


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    for case in (CASES[1], CASES[4]):
        x, w, args = make_case(case, torch.float64, device)
        assert torch.autograd.gradcheck(lambda x, w: ops.depthwise_conv2d(x, w, **args), (x, w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_opcheck(dtype, device):
    x, w, args = make_case(CASES[3], dtype, device)
    stride, padding, dilation = ([v, v] for v in (args["stride"], args["padding"], args["dilation"]))
    torch.library.opcheck(torch.ops.fastdnas.depthwise_conv2d, (x, w, stride, padding, dilation))
    out = ops.depthwise_conv2d(x, w, **args)
    grad = torch.randn_like(out)
    torch.library.opcheck(torch.ops.fastdnas._depthwise_conv2d_input_grad,
                          (grad, w.detach(), list(x.shape), stride, padding, dilation))
    torch.library.opcheck(torch.ops.fastdnas._depthwise_conv2d_weight_grad,
                          (grad, x.detach(), list(w.shape), stride, padding, dilation))


@pytest.mark.parametrize("device", DEVICES)
def test_weight_grad_is_deterministic_across_thread_counts(device):
    x, w, args = make_case((8, 6, 33, 29, 5, 1, 4, 2), torch.float32, device)
    grad = torch.randn(8, 6, 33, 29, device=device)
    results = over_thread_counts(lambda: forward_backward(ops.depthwise_conv2d, x, w, args, grad)[2], repeats=2)
    assert all(torch.equal(r, results[0]) for r in results)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    x, w, args = make_case(CASES[2], torch.float32, device)

    def layer(x, w):
        return torch.relu(ops.depthwise_conv2d(torch.relu(x), w, **args)).sum()

    got = torch.autograd.grad(torch.compile(layer, fullgraph=True)(x, w), (x, w))
    want = torch.autograd.grad(layer(x, w), (x, w))
    for g, r in zip(got, want):
        assert rel_err(g, r) <= 1e-5


def test_autocast_runs_in_the_autocast_dtype():
    x, w, args = make_case(CASES[0], torch.float32, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.depthwise_conv2d(x, w, **args)
    assert out.dtype == torch.bfloat16
    grad_x, grad_w = torch.autograd.grad(out.float().sum(), (x, w))
    assert grad_x.dtype == torch.float32 and grad_w.dtype == torch.float32


@pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine")
def test_cuda_graph_capture():
    x, w, args = make_case((16, 16, 32, 32, 5, 1, 4, 2), torch.float32, "cuda", requires_grad=False)
    grad = torch.randn(16, 16, 32, 32, device="cuda")
    geometry = [[args[k]] * 2 for k in ("stride", "padding", "dilation")]

    def run():
        return (ops.depthwise_conv2d(x, w, **args),
                torch.ops.fastdnas._depthwise_conv2d_input_grad(grad, w, list(x.shape), *geometry),
                torch.ops.fastdnas._depthwise_conv2d_weight_grad(grad, x, list(w.shape), *geometry))

    outputs = replay_in_cuda_graph(run, lambda: x.copy_(torch.randn_like(x)))
    want = forward_backward(reference, x.double().requires_grad_(), w.double().requires_grad_(), args, grad.double())
    for g, r in zip(outputs, want):
        assert rel_err(g, r) <= 1e-5


def test_kernels_registered():
    from fastdnas._extension import cuda_kernels_built

    for name in ("depthwise_conv2d", "_depthwise_conv2d_input_grad", "_depthwise_conv2d_weight_grad"):
        info = torch._C._dispatch_dump(f"fastdnas::{name}")
        assert "CPU: registered" in info
        if cuda_kernels_built():
            assert "CUDA: registered" in info


# --- bad inputs: each error names the argument and what was expected ---------------------------

BAD_INPUTS = [
    (torch.randn(2, 3, 8), torch.randn(3, 1, 3, 3), {}, r"input must be a 4-D tensor \[N, C, H, W\]"),
    (torch.randn(2, 3, 8, 8), torch.randn(4, 1, 3, 3), {}, r"weight must have shape \[C, 1, KH, KW\] with C = 3"),
    (torch.randn(2, 3, 8, 8), torch.randn(3, 2, 3, 3), {}, r"weight must have shape \[C, 1, KH, KW\]"),
    (torch.randn(2, 3, 8, 8), torch.randn(3, 1, 3, 3).double(), {}, "weight has dtype .* must match"),
    (torch.randint(0, 3, (2, 3, 8, 8)), torch.randn(3, 1, 3, 3), {}, "input must be float64, float32"),
    (torch.randn(2, 3, 8, 8), torch.randn(3, 1, 3, 3), dict(stride=0), "stride must be >= 1"),
    (torch.randn(2, 3, 8, 8), torch.randn(3, 1, 3, 3), dict(padding=-1), "padding must be >= 0"),
    (torch.randn(2, 3, 8, 8), torch.randn(3, 1, 3, 3), dict(dilation=(1, 0)), "dilation must be >= 1"),
    (torch.randn(2, 3, 2, 8), torch.randn(3, 1, 5, 5), dict(padding=1), "gives an output of size 0x6; it must be"),
    # A kernel longer than the padded input: the output size floors (0), as F.conv2d's does.
    (torch.randn(1, 1, 2, 2), torch.randn(1, 1, 3, 3), dict(stride=2), "gives an output of size 0x0; it must be"),
    (torch.randn(1, 1, 1, 5), torch.randn(1, 1, 3, 1), dict(stride=3),
     r"stride \[3, 3\], .* gives an output of size 0x2; it must be"),
    # Geometry that would overflow int64 in the index arithmetic.
    (torch.randn(1, 1, 4, 4), torch.randn(1, 1, 5, 5), dict(stride=2, dilation=2**62),
     "dilation must be at most 2147483647"),
    (torch.randn(1, 1, 4, 4), torch.randn(1, 1, 1, 3), dict(padding=(0, 2**53), dilation=(1, 2**53)),
     "padding must be at most 2147483647"),
    (torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3), dict(stride=2**31), "stride must be at most 2147483647"),
    (torch.randn(1, 1, 1, 1).expand(1, 1, 1, 2**40), torch.randn(1, 1, 1, 1), {},
     r"input has spatial sizes \[1, 1099511627776\]; each must be in \[0, 2147483647\]"),
    # An output whose byte count overflows int64: named, not the allocator's message.
    (torch.randn(2, 4, 8, 8), torch.randn(4, 1, 3, 3), dict(padding=2**30),
     r"the output \(from input, weight, stride, padding and dilation\) would have shape \[2, 4, 2147483654, "
     r"2147483654\]: more bytes than int64 can count"),
]


@pytest.mark.parametrize("x,w,args,message", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(x, w, args, message):
    with pytest.raises(RuntimeError, match=message):
        ops.depthwise_conv2d(x, w, **args)


@pytest.mark.parametrize("x,w,args,message", BAD_INPUTS)
def test_bad_inputs_raise_under_fake_tensors(x, w, args, message):
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    with pytest.raises(RuntimeError, match=message):
        with mode:
            ops.depthwise_conv2d(mode.from_tensor(x), mode.from_tensor(w), **args)


def test_fake_kernel_reads_one_value_as_both_dimensions():
    # The op's schema takes int[2]; one value means both dimensions in the kernels and the fake alike.
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, w = torch.randn(2, 3, 9, 7), torch.randn(3, 1, 5, 5)
    args = ([2], [4], [2])
    want = torch.ops.fastdnas.depthwise_conv2d(x, w, *args).shape
    assert want == reference(x, w, 2, 4, 2).shape
    mode = FakeTensorMode()
    with mode:
        got = torch.ops.fastdnas.depthwise_conv2d(mode.from_tensor(x), mode.from_tensor(w), *args).shape
    assert got == want


@pytest.mark.parametrize("x,w,message", [
    (__import__("numpy").ones((2, 3, 8, 8)), torch.randn(3, 1, 3, 3), "input must be a tensor, got numpy.ndarray"),
    (None, torch.randn(3, 1, 3, 3), "input must be a tensor, got None"),
    (torch.randn(2, 3, 8, 8), None, "weight must be a tensor, got None"),
    (torch.randn(2, 3, 8, 8), __import__("numpy").ones((3, 1, 3, 3)), "weight must be a tensor, got numpy.ndarray"),
])
def test_arguments_of_the_wrong_type_raise_type_error(x, w, message):
    with pytest.raises(TypeError, match="depthwise_conv2d: " + message):
        ops.depthwise_conv2d(x, w)


@pytest.mark.parametrize("fake", [False, True])
def test_gradient_sizes_whose_bytes_overflow_name_the_argument(fake):
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    wrap = mode.from_tensor if fake else (lambda t: t)
    grad = wrap(torch.randn(1, 3, 8, 8).expand(2**55, 3, 8, 8))  # 1.5 * 2**62 elements, none stored
    w, x, g = wrap(torch.randn(3, 1, 3, 3)), wrap(torch.randn(2, 3, 8, 8)), wrap(torch.randn(2, 3, 8, 8))
    with mode if fake else contextlib.nullcontext():
        with pytest.raises(RuntimeError, match=r"input gradient\): the input gradient \(input_size\) would have "
                                               r"shape \[36028797018963968, 3, 8, 8\]: more bytes than int64"):
            torch.ops.fastdnas._depthwise_conv2d_input_grad(grad, w, [2**55, 3, 8, 8], [1, 1], [1, 1], [1, 1])
        with pytest.raises(RuntimeError, match=r"weight gradient\): the weight gradient \(weight_size\) would have "
                                               r"shape \[3, 1, 2147483647, 2147483647\]: more bytes than int64"):
            torch.ops.fastdnas._depthwise_conv2d_weight_grad(g, x, [3, 1, 2**31 - 1, 2**31 - 1], [1, 1],
                                                             [2**30 - 1, 2**30 - 1], [1, 1])


def test_bad_geometry_type_raises_value_error():
    with pytest.raises(ValueError, match="stride must be an int or a pair of ints"):
        ops.depthwise_conv2d(torch.randn(1, 2, 4, 4), torch.randn(2, 1, 3, 3), stride=(1, 1, 1))


def test_bad_grad_shape_raises():
    with pytest.raises(RuntimeError, match=r"grad must have the output's shape \[2, 3, 8, 8\]"):
        torch.ops.fastdnas._depthwise_conv2d_input_grad(torch.randn(2, 3, 7, 8), torch.randn(3, 1, 3, 3),
                                                        [2, 3, 8, 8], [1, 1], [1, 1], [1, 1])


def test_kernel_longer_than_the_padded_input_raises_like_conv2d():
    x, w = torch.randn(1, 1, 2, 2), torch.randn(1, 1, 3, 3)
    with pytest.raises(RuntimeError):
        F.conv2d(x, w, stride=2)
    compiled = torch.compile(lambda x, w: ops.depthwise_conv2d(x, w, stride=2), fullgraph=True)
    with pytest.raises(Exception, match="gives an output of size 0x0"):
        compiled(x, w)
    grad = torch.randn(1, 1, 1, 1)
    with pytest.raises(RuntimeError, match="depthwise_conv2d \\(input gradient\\): .* output of size 0x0"):
        torch.ops.fastdnas._depthwise_conv2d_input_grad(grad, w, [1, 1, 2, 2], [2, 2], [0, 0], [1, 1])
    with pytest.raises(RuntimeError, match="depthwise_conv2d \\(weight gradient\\): .* output of size 0x0"):
        torch.ops.fastdnas._depthwise_conv2d_weight_grad(grad, x, [1, 1, 3, 3], [2, 2], [0, 0], [1, 1])


def test_gradient_ops_bound_the_geometry():
    # The stacked-planes buffer of this call once wrapped int64 (and was written out of bounds).
    grad, x = torch.ones(1, 1, 1023, 4), torch.randn(1, 1, 1023, 4)
    with pytest.raises(RuntimeError, match="weight gradient\\): padding must be at most 2147483647"):
        torch.ops.fastdnas._depthwise_conv2d_weight_grad(grad, x, [1, 1, 1, 3], [1, 1], [0, 2**53], [1, 2**53])
    with pytest.raises(RuntimeError, match="input gradient\\): input has spatial sizes"):
        torch.ops.fastdnas._depthwise_conv2d_input_grad(grad, torch.randn(1, 1, 1, 1), [1, 1, -1023, 4], [1, 1],
                                                        [0, 0], [1, 1])


@pytest.mark.parametrize("device", DEVICES)
def test_padding_far_wider_than_the_planes(device):
    # Padding and dilation 2**30 around 3x4 planes: only the centre tap reads the input, so this is
    # the 1x1 convolution by the centre weights (never a padded plane of 2**62 elements).
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    grad = torch.randn(2, 3, 3, 4, dtype=torch.float64, device=device)
    out, grad_x, grad_w = forward_backward(ops.depthwise_conv2d, x, w, dict(stride=1, padding=2**30, dilation=2**30),
                                           grad)
    centre = w[:, :, 1:2, 1:2]
    want_out, want_grad_x, want_grad_centre = forward_backward(reference, x, centre, dict(stride=1, padding=0,
                                                                                          dilation=1), grad)
    want_grad_w = torch.zeros_like(w)
    want_grad_w[:, :, 1, 1] = want_grad_centre[:, :, 0, 0]
    for g, r in ((out, want_out), (grad_x, want_grad_x), (grad_w, want_grad_w)):
        assert rel_err(g, r) <= 1e-12


# --- non-finite values: F.conv2d multiplies the zero padding too (w * 0 is NaN for w = inf) ------

def assert_same_values(got, want):
    # NaN where the float64 reference has NaN, infinities of the same sign, equal finite values.
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-12, atol=1e-12)


NON_FINITE = [float("inf"), float("-inf"), float("nan")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("case", CASES)
def test_non_finite_weight_reaches_the_border_as_in_conv2d(case, value, device):
    x, w, args = make_case(case, torch.float64, device)
    with torch.no_grad():
        w[-1, 0, 0, 0] = value  # reads padding in every case with padding
        w[0, 0, -1, -1] = value
    grad = torch.randn(reference(x, w, **args).shape, dtype=torch.float64, device=device)
    got = forward_backward(ops.depthwise_conv2d, x, w, args, grad)
    want = forward_backward(reference, x.cpu(), w.cpu(), args, grad.cpu())  # float64 F.conv2d on CPU: im2col
    for g, r in zip(got, want):
        assert_same_values(g.cpu(), r)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("case", CASES)
def test_non_finite_gradient_reaches_the_weight_gradient_as_in_conv2d(case, value, device):
    x, w, args = make_case(case, torch.float64, device)
    grad = torch.randn(reference(x, w, **args).shape, dtype=torch.float64, device=device)
    grad[0, 0, 0, 0] = value  # the corner output: its taps read padding wherever there is padding
    grad[-1, -1, -1, -1] = value
    got = forward_backward(ops.depthwise_conv2d, x, w, args, grad)
    want = forward_backward(reference, x.cpu(), w.cpu(), args, grad.cpu())
    for g, r in zip(got, want):
        assert_same_values(g.cpu(), r)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [(2, 3, 9, 8, 3, 1, 1, 1), (2, 3, 9, 8, 3, 2, 1, 1), (2, 3, 9, 8, 5, 2, 4, 2)])
def test_non_finite_input_reaches_only_what_reads_it(case, device):
    # Stride 2 dilation 2 reads only even padded rows and columns: x[..., 3, 3] reaches nothing.
    x, w, args = make_case(case, torch.float64, device)
    with torch.no_grad():
        x[0, 1, 4, 4] = float("inf")
        x[1, 2, 8, 7] = float("nan")
        x[1, 0, 3, 3] = float("-inf")
    grad = torch.randn(reference(x, w, **args).shape, dtype=torch.float64, device=device)
    got = forward_backward(ops.depthwise_conv2d, x, w, args, grad)
    want = forward_backward(reference, x.cpu(), w.cpu(), args, grad.cpu())
    for g, r in zip(got, want):
        assert_same_values(g.cpu(), r)


def test_references_run_without_tf32():
    # tests/conftest.py turns TF32 off around every test: cuDNN's float32 F.conv2d references (CUDA
    # tests) are full float32, not 10-bit mantissas.
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
