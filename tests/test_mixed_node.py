"""mixed_node: the fused kernels against the reference, gradcheck, opcheck, compile, bad inputs."""
import contextlib

import pytest
import torch

from fastdnas import ops, reference
from fastdnas._extension import cuda_kernels_built
from conftest import CUDA, DEVICES, rel_err

# Relative error bounds per dtype (forward, backward and statistics).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 4e-2}
P = 8  # primitives per edge, as in DARTS: weights are [E, 8]
MAX, AVG, SKIP, PLAIN = ops.FREE_MAX_POOL, ops.FREE_AVG_POOL, ops.FREE_SKIP, ops.FREE_PLAIN_AVG_POOL
PLAIN_MAX = ops.FREE_PLAIN_MAX_POOL


def make_node(strides, N=3, C=4, out_size=(5, 6), dtype=torch.float64, device="cpu", free=True, convs=True,
              running=False, requires_grad=True, odd_inputs=False, plain_avg=False, plain_max=False):
    """A node laid out as the search network lays it out: per edge max and avg pool, skip (stride
    1), then the conv outputs (4 per edge, 5 with FactorizedReduce at stride 2). ``plain_avg``:
    the avg pools without BatchNorm (kind 3, the NAS-Bench-201 pool) instead; ``plain_max``: the max
    pools without BatchNorm (kind 4, the GDAS authors' pool)."""
    Ho, Wo = out_size
    edge_inputs, conv_outputs, free_items, free_kinds, conv_items = [], [], [], [], []
    for e, s in enumerate(strides):
        size = (Ho, Wo) if s == 1 else (2 * Ho - int(odd_inputs), 2 * Wo - int(odd_inputs))
        edge_inputs.append(torch.randn(N, C, *size, dtype=torch.float64, device=device).to(dtype))
        if free:
            free_items += [e * P + 1, e * P + 2]
            free_kinds += [PLAIN_MAX if plain_max else MAX, PLAIN if plain_avg else AVG]
            if s == 1:
                free_items.append(e * P + 3)
                free_kinds.append(SKIP)
        if convs:
            columns = ([3] if s == 2 else []) + [4, 5, 6, 7]
            for p in columns:
                # Away from zero mean and unit variance, so the BatchNorms matter.
                y = torch.randn(N, C, Ho, Wo, dtype=torch.float64, device=device) * (1 + p) + p - 4
                conv_outputs.append(y.to(dtype))
                conv_items.append(e * P + p)
    weights = torch.softmax(torch.randn(len(strides), P, dtype=torch.float64, device=device), 1)
    weights = weights.to(dtype if dtype == torch.float64 else torch.float32)
    for t in edge_inputs + conv_outputs + [weights]:
        t.requires_grad_(requires_grad)
    rows = sum(k in (MAX, AVG) for k in free_kinds) + len(conv_outputs)
    running_mean = running_var = None
    if running:
        running_mean = torch.randn(rows, C, dtype=torch.float64, device=device).to(weights.dtype)
        running_var = (torch.rand(rows, C, dtype=torch.float64, device=device) + 0.5).to(weights.dtype)
    return dict(edge_inputs=edge_inputs, strides=list(strides), conv_outputs=conv_outputs, weights=weights,
                free_items=free_items, free_kinds=free_kinds, conv_items=conv_items, running_mean=running_mean,
                running_var=running_var)


def as_args(node):
    return (node["edge_inputs"], node["strides"], node["conv_outputs"], node["weights"], node["free_items"],
            node["free_kinds"], node["conv_items"], node["running_mean"], node["running_var"], 1e-5)


def differentiable(node):
    return node["edge_inputs"] + node["conv_outputs"] + [node["weights"]]


def forward_backward(fn, node, grad):
    out, mean, var = fn(*as_args(node))
    # An edge input without free items is unused by the reference: its gradient is zero.
    grads = torch.autograd.grad(out, differentiable(node), grad, allow_unused=True, materialize_grads=True)
    return out, mean, var, grads


def check_against_reference(node, tol):
    dtype = node["edge_inputs"][0].dtype
    out, mean, var = ops.mixed_node(*as_args(node))
    grad = torch.randn(out.shape, dtype=torch.float64, device=out.device).to(dtype)
    out, mean, var, grads = forward_backward(ops.mixed_node, node, grad)
    ref_out, ref_mean, ref_var, ref_grads = forward_backward(reference.mixed_node, node, grad)
    assert out.dtype == dtype and out.shape == ref_out.shape and out.is_contiguous()
    assert mean.dtype == ref_mean.dtype and mean.shape == ref_mean.shape
    assert rel_err(out, ref_out) <= tol
    assert rel_err(mean, ref_mean) <= tol and rel_err(var, ref_var) <= tol
    for got, want in zip(grads, ref_grads):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert rel_err(got, want) <= tol


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("strides", [(1,), (1, 1, 1), (2, 2), (2, 2, 1, 1)])
@pytest.mark.parametrize("running", [False, True], ids=["batch_stats", "running_stats"])
def test_matches_reference(running, strides, dtype, device):
    check_against_reference(make_node(strides, dtype=dtype, device=device, running=running), TOLERANCE[dtype])


# The pools without BatchNorm (no statistics row of their own): kind 3, the avg pool (the
# NAS-Bench-201 pool, in place of the BatchNorm'd avg pools), and kind 4, the max pool (the GDAS
# authors' pool, in place of the BatchNorm'd max pools, beside kind 3).
PLAIN_POOLS = {"plain_avg": (PLAIN, dict(plain_avg=True)),
               "plain_max": (PLAIN_MAX, dict(plain_max=True, plain_avg=True))}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("strides", [(1, 1, 1), (2, 1)])
@pytest.mark.parametrize("running", [False, True], ids=["batch_stats", "running_stats"])
@pytest.mark.parametrize("pool", list(PLAIN_POOLS))
def test_plain_pool_matches_reference(pool, running, strides, dtype, device):
    """A pool without BatchNorm beside the other kinds, then on its own."""
    kind, flags = PLAIN_POOLS[pool]
    node = make_node(strides, dtype=dtype, device=device, running=running, **flags)
    assert kind in node["free_kinds"]
    check_against_reference(node, TOLERANCE[dtype])
    alone = make_node(strides, N=2, C=3, device=device, convs=False, **flags)
    keep = [i for i, k in enumerate(alone["free_kinds"]) if k == kind]
    alone.update(free_items=[alone["free_items"][i] for i in keep], free_kinds=[kind] * len(keep))
    check_against_reference(alone, TOLERANCE[torch.float64])
    assert ops.mixed_node(*as_args(alone))[1].shape == (0, 3)  # no BatchNorm, no statistics


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("running", [False, True], ids=["batch_stats", "running_stats"])
@pytest.mark.parametrize("pool", list(PLAIN_POOLS))
def test_plain_pool_gradcheck_and_opcheck(pool, running, device):
    node = make_node((2, 1), N=2, C=2, out_size=(3, 4), device=device, running=running, **PLAIN_POOLS[pool][1])
    assert gradcheck_node(node)
    torch.library.opcheck(torch.ops.fastdnas.mixed_node, as_args(node))


@pytest.mark.parametrize("device", DEVICES)
# (3, 1) with odd inputs: a stride-2 edge input one column wide.
@pytest.mark.parametrize("out_size,odd_inputs",
                         [((1, 7), False), ((7, 3), True), ((3, 1), True), ((13, 11), True), ((16, 16), False)])
def test_odd_and_thin_sizes(out_size, odd_inputs, device):
    node = make_node((2, 1), N=2, C=3, out_size=out_size, device=device, odd_inputs=odd_inputs)
    check_against_reference(node, TOLERANCE[torch.float64])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("free,convs", [(True, False), (False, True)], ids=["free_only", "convs_only"])
def test_free_items_only_or_conv_outputs_only(free, convs, device):
    check_against_reference(make_node((1, 2), device=device, free=free, convs=convs), TOLERANCE[torch.float64])


@pytest.mark.parametrize("device", DEVICES)
def test_subset_of_items_leaves_other_weights_without_gradient(device):
    # Only avg pool of edge 0 and one conv of edge 1: the other weights get exactly zero.
    node = make_node((1, 1), device=device)
    node.update(free_items=[2], free_kinds=[AVG], conv_outputs=node["conv_outputs"][5:6], conv_items=[P + 5])
    check_against_reference(node, TOLERANCE[torch.float64])
    out, _, _ = ops.mixed_node(*as_args(node))
    grad_weights = torch.autograd.grad(out.sum() * 0 + (out * out).sum(), node["weights"])[0]
    mask = torch.zeros(2 * P, dtype=torch.bool, device=device)
    mask[[2, P + 5]] = True
    assert torch.all(grad_weights.reshape(-1)[~mask] == 0) and torch.all(grad_weights.reshape(-1)[mask] != 0)


@pytest.mark.parametrize("device", DEVICES)
def test_max_pool_ties_go_where_pytorch_sends_them(device):
    # Few distinct values: most windows hold their maximum more than once (and -0.0 next to 0.0).
    node = make_node((2, 1), N=2, C=3, out_size=(7, 6), device=device)
    edge_inputs = [torch.randint(-2, 2, x.shape, device=device).double() * 0.5 for x in node["edge_inputs"]]
    edge_inputs[1][0, 0, 0, :3] = torch.tensor([-0.0, 0.0, -0.0])
    node["edge_inputs"] = [x.requires_grad_() for x in edge_inputs]
    check_against_reference(node, TOLERANCE[torch.float64])


def nan_grad_node(kinds, device, dtype=torch.float64):
    """An eval-mode node of edges (2, 1) with the free items of ``kinds`` (and the conv outputs
    when ``kinds`` is "all"), and an output gradient holding one NaN."""
    node = make_node((2, 1), N=2, C=3, out_size=(5, 6), dtype=dtype, device=device, convs=kinds == "all",
                     requires_grad=False)
    if kinds != "all":
        keep = [i for i, k in enumerate(node["free_kinds"]) if k in kinds]
        node.update(free_items=[node["free_items"][i] for i in keep], free_kinds=[node["free_kinds"][i] for i in keep])
    rows = sum(k != SKIP for k in node["free_kinds"]) + len(node["conv_outputs"])
    C = node["edge_inputs"][0].shape[1]
    node.update(running_mean=torch.randn(rows, C, dtype=torch.float64, device=device).to(node["weights"].dtype),
                running_var=(torch.rand(rows, C, dtype=torch.float64, device=device) + 0.5).to(node["weights"].dtype))
    for t in differentiable(node):
        t.requires_grad_()
    grad = torch.randn(2, 3, 5, 6, dtype=torch.float64, device=device).to(dtype)
    grad[1, 2, 3, 4] = float("nan")
    return node, grad


def assert_same_nans(got, want, tol):
    """NaN in the same places (so the same count), and the finite values close."""
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g.isnan(), w.isnan()), (
            f"gradient {i}: {int(g.isnan().sum())} NaN at {g.isnan().nonzero().tolist()[:12]}, the "
            f"reference {int(w.isnan().sum())} at {w.isnan().nonzero().tolist()[:12]}")
        assert rel_err(g.nan_to_num(), w.nan_to_num()) <= tol


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kinds", ["all", (MAX,), (AVG,), (SKIP,)], ids=["all", "max_pool", "avg_pool", "skip"])
def test_eval_gradients_keep_a_nan_as_local_as_the_reference(kinds, device):
    # With running statistics every BatchNorm is an affine map per element: a NaN in the output
    # gradient reaches only the elements the reference's gradient reaches (no batch-gradient sums).
    node, grad = nan_grad_node(kinds, device)
    got = forward_backward(ops.mixed_node, node, grad)[3]
    want = forward_backward(reference.mixed_node, node, grad)[3]
    assert_same_nans(got, want, TOLERANCE[torch.float64])
    assert all(int(g.isnan().sum()) < g.numel() for g in got[:-1])


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    node = make_node((2, 1), device=device, requires_grad=False)
    node["edge_inputs"] = [x.transpose(2, 3).contiguous().transpose(2, 3).requires_grad_() for x in node["edge_inputs"]]
    node["conv_outputs"] = [y.contiguous(memory_format=torch.channels_last).requires_grad_()
                            for y in node["conv_outputs"]]
    node["weights"] = node["weights"].t().contiguous().t().requires_grad_()
    assert not node["edge_inputs"][0].is_contiguous() and not node["weights"].is_contiguous()
    check_against_reference(node, TOLERANCE[torch.float64])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("running", [False, True], ids=["batch_stats", "running_stats"])
def test_empty_batch(running, device):
    node = make_node((2, 1), N=0, device=device, running=running)
    out, mean, var = ops.mixed_node(*as_args(node))
    assert out.shape == (0, 4, 5, 6)
    if not running:  # no statistics of an empty batch: zeros (the caller leaves running ones alone)
        assert torch.equal(mean, torch.zeros_like(mean)) and torch.equal(var, torch.zeros_like(var))
    grads = torch.autograd.grad(out, differentiable(node), torch.empty_like(out))
    assert [g.shape for g in grads] == [t.shape for t in differentiable(node)]
    assert torch.equal(grads[-1], torch.zeros_like(grads[-1]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("running", [False, True], ids=["batch_stats", "running_stats"])
def test_gradcheck_float64(running, device):
    node = make_node((2, 1), N=2, C=2, out_size=(3, 4), device=device, running=running)
    assert gradcheck_node(node)


def gradcheck_node(node):
    """float64 gradcheck of mixed_node's output in every edge input, conv output and weight."""
    E, K = len(node["edge_inputs"]), len(node["conv_outputs"])

    def fn(*tensors):
        args = list(as_args(node))
        args[0], args[2], args[3] = list(tensors[:E]), list(tensors[E : E + K]), tensors[-1]
        return ops.mixed_node(*args)[0]

    return torch.autograd.gradcheck(fn, tuple(differentiable(node)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("running", [False, True], ids=["batch_stats", "running_stats"])
def test_opcheck(running, dtype, device):
    node = make_node((2, 1), N=2, C=3, out_size=(3, 5), dtype=dtype, device=device, running=running)
    torch.library.opcheck(torch.ops.fastdnas.mixed_node, as_args(node))
    with torch.no_grad():
        out, mean, var = ops.mixed_node(*as_args(node))
    detached = dict(node, edge_inputs=[t.detach() for t in node["edge_inputs"]],
                    conv_outputs=[t.detach() for t in node["conv_outputs"]], weights=node["weights"].detach())
    args = as_args(detached)
    grad = torch.randn_like(out)
    torch.library.opcheck(torch.ops.fastdnas._mixed_node_backward,
                          (grad, *args[:7], mean, var, 1e-5, not running))


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_across_thread_counts(device):
    node = make_node((2, 1, 1), N=4, C=8, out_size=(9, 10), dtype=torch.float32, device=device)
    grad = torch.randn(4, 8, 9, 10, device=device)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            out, mean, var, grads = forward_backward(ops.mixed_node, node, grad)
            results.append([out, mean, var, *grads])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("running", [False, True], ids=["batch_stats", "running_stats"])
def test_torch_compile_fullgraph(running, device):
    node = make_node((2, 1), N=2, C=3, dtype=torch.float32, device=device, running=running)

    def loss(edge_inputs, conv_outputs, weights):
        args = list(as_args(node))
        args[0], args[2], args[3] = edge_inputs, conv_outputs, torch.softmax(weights, 1)
        out, mean, var = ops.mixed_node(*args)
        return torch.relu(out).sum() + mean.sum() + var.sum()

    compiled = torch.compile(loss, fullgraph=True)
    args = (node["edge_inputs"], node["conv_outputs"], node["weights"])
    got = torch.autograd.grad(compiled(*args), differentiable(node))
    want = torch.autograd.grad(loss(*args), differentiable(node))
    for g, w in zip(got, want):
        assert rel_err(g, w) <= 1e-5


@pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine")
def test_cuda_graph_capture():
    node = make_node((2, 1, 1), N=8, C=16, out_size=(16, 16), dtype=torch.float32, device="cuda",
                     requires_grad=False)
    args = as_args(node)
    grad = torch.randn(8, 16, 16, 16, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the graph
        out, mean, var = ops.mixed_node(*args)
        torch.ops.fastdnas._mixed_node_backward(grad, *args[:7], mean, var, 1e-5, True)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, mean, var = ops.mixed_node(*args)
        grads = torch.ops.fastdnas._mixed_node_backward(grad, *args[:7], mean, var, 1e-5, True)
    for x in node["edge_inputs"]:
        x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    want = reference.mixed_node(*args)
    assert rel_err(out, want[0]) <= 1e-4 and rel_err(mean, want[1]) <= 1e-4
    ref_node = {**node, "edge_inputs": [x.clone().requires_grad_() for x in node["edge_inputs"]]}
    ref_out = reference.mixed_node(*as_args(ref_node))[0]
    ref_grads = torch.autograd.grad(ref_out, ref_node["edge_inputs"], grad)
    for got, expected in zip(grads[0], ref_grads):
        assert rel_err(got, expected) <= 1e-4


def test_cuda_kernels_registered_when_built():
    for name in ("fastdnas::mixed_node", "fastdnas::_mixed_node_backward"):
        info = torch._C._dispatch_dump(name)
        assert "CPU: registered" in info
        if cuda_kernels_built():
            assert "CUDA: registered" in info


# --- bad inputs: each error names the argument and what was expected ---------------------------

def bad(**changes):
    node = make_node((2, 1), N=2, C=3, dtype=torch.float32, requires_grad=False)
    node.update(changes)
    return node


def x(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


BAD_INPUTS = [
    (dict(edge_inputs=[], strides=[]), "edge_inputs must hold at least one tensor"),
    (dict(strides=[2]), "strides must hold one stride per edge input"),
    (dict(strides=[2, 3]), r"strides\[1\] must be 1 or 2"),
    (dict(edge_inputs=[x(2, 3, 10, 12), x(2, 3, 5, 7)]), r"edge_inputs\[1\] \(shape .*\) gives a 5x7 output"),
    (dict(edge_inputs=[x(2, 3, 10, 12), x(2, 4, 5, 6)]), r"edge_inputs\[1\] has shape .* N and C must match"),
    (dict(edge_inputs=[x(2, 3, 10, 12), x(2, 3, 5, 6, dtype=torch.float64)]), r"edge_inputs\[1\] has dtype"),
    (dict(edge_inputs=[x(2, 3, 10, 12), x(3, 5, 6)]), r"edge_inputs\[1\] must be a 4-D tensor"),
    (dict(edge_inputs=[x(2, 3, 10, 12, dtype=torch.int32).int(), x(2, 3, 5, 6).int()]),
     "edge_inputs must be float64, float32, float16 or bfloat16"),
    (dict(weights=torch.ones(3, P)), r"weights must be a floating-point tensor \[2, P\]"),
    (dict(weights=torch.ones(2, P, dtype=torch.int64)), "weights must be a floating-point tensor"),
    (dict(free_kinds=[MAX]), "free_items and free_kinds must have one entry per free item"),
    (dict(free_kinds=[MAX, 7, MAX, AVG, SKIP]), r"free_kinds\[1\] must be 0 \(max_pool_3x3\)"),
    (dict(free_kinds=[MAX, 5, MAX, AVG, SKIP]), r"or 4 \(max_pool_3x3 without BatchNorm\), got 5"),
    (dict(free_items=[0, 1, 2 * P, 9, 10]), r"free_items\[2\] = 16 is not a flat index into weights \[2, 8\]"),
    (dict(free_kinds=[SKIP, AVG, MAX, AVG, SKIP]), "free item 0 is a skip on edge 0 of stride 2"),
    (dict(conv_items=[3]), "conv_items must have one entry per conv output"),
    (dict(conv_outputs=[x(2, 3, 5, 5)] * 9), r"conv_outputs\[0\] must have shape \[2, 3, 5, 6\]"),
    (dict(free_items=[], free_kinds=[], conv_outputs=[], conv_items=[]), "at least one candidate"),
    (dict(running_mean=torch.zeros(11, 3)), "running_mean and running_var must be given together"),
    (dict(running_mean=torch.zeros(11, 3), running_var=torch.ones(11, 3)), r"running_mean must be .* \[13, 3\]"),
    (dict(edge_inputs=[x(2, 3, 10, 12)] * 17, strides=[2] * 17, weights=torch.ones(17, P)), "at most 16"),
]


@pytest.mark.parametrize("changes,message", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(changes, message):
    with pytest.raises(RuntimeError, match=message):
        ops.mixed_node(*as_args(bad(**changes)))


@pytest.mark.parametrize("changes,message", BAD_INPUTS[1:])
def test_bad_inputs_raise_under_fake_tensors(changes, message):
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = as_args(bad(**changes))
    mode = FakeTensorMode()

    def fake(a):
        if torch.is_tensor(a):
            return mode.from_tensor(a)
        if isinstance(a, list) and a and torch.is_tensor(a[0]):
            return [mode.from_tensor(t) for t in a]
        return a

    with pytest.raises(RuntimeError, match=message):
        with mode:
            ops.mixed_node(*[fake(a) for a in args])


def test_bad_backward_grad_raises():
    node = bad()
    args = as_args(node)
    out, mean, var = ops.mixed_node(*args)
    with pytest.raises(RuntimeError, match=r"grad must have shape \[2, 3, 5, 6\]"):
        torch.ops.fastdnas._mixed_node_backward(torch.ones(2, 3, 5, 5), *args[:7], mean, var, 1e-5, True)
    with pytest.raises(RuntimeError, match=r"mean must be a floating-point tensor \[13, 3\]"):
        torch.ops.fastdnas._mixed_node_backward(out, *args[:7], mean[1:], var, 1e-5, True)
    with pytest.raises(RuntimeError, match=r"mixed_node \(backward\): conv_items must have one entry"):
        torch.ops.fastdnas._mixed_node_backward(out, *args[:6], [], mean, var, 1e-5, True)


def test_statistics_of_the_wrong_dtype_name_the_dtype():
    node = bad(running_mean=torch.zeros(13, 3, dtype=torch.int64), running_var=torch.ones(13, 3))
    with pytest.raises(RuntimeError, match=r"running_mean must be a floating-point tensor \[13, 3\] .* got shape "
                                           r"\[13, 3\] and dtype (Long|torch.int64)"):
        ops.mixed_node(*as_args(node))


@pytest.mark.parametrize("eps", [-1e-5, float("nan")])
def test_backward_rejects_the_eps_the_forward_rejects(eps):
    node = bad()
    args = as_args(node)
    with pytest.raises(RuntimeError, match="mixed_node: eps must be >= 0"):
        ops.mixed_node(*args[:-1], eps)
    out, mean, var = ops.mixed_node(*args)
    with pytest.raises(RuntimeError, match=r"mixed_node \(backward\): eps must be >= 0"):
        torch.ops.fastdnas._mixed_node_backward(out, *args[:7], mean, var, eps, True)
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    fake = [[mode.from_tensor(t) for t in a] if isinstance(a, list) and a and torch.is_tensor(a[0])
            else mode.from_tensor(a) if torch.is_tensor(a) else a for a in (out, *args[:7], mean, var)]
    with pytest.raises(RuntimeError, match=r"mixed_node \(backward\): eps must be >= 0"):
        with mode:
            torch.ops.fastdnas._mixed_node_backward(*fake, eps, True)


def test_backward_checks_grad_device():
    node = bad()
    args = as_args(node)
    out, mean, var = ops.mixed_node(*args)
    with pytest.raises(RuntimeError, match=r"mixed_node \(backward\): grad must have shape \[2, 3, 5, 6\], dtype"):
        torch.ops.fastdnas._mixed_node_backward(torch.empty(2, 3, 5, 6, device="meta"), *args[:7], mean, var, 1e-5,
                                                True)


@pytest.mark.parametrize("changes,message", [
    (dict(edge_inputs=None), "edge_inputs must be a list or tuple of tensors, got None"),
    (dict(conv_outputs=torch.ones(2)), "conv_outputs must be a list or tuple of tensors, got torch.Tensor"),
    (dict(strides=None), "strides must be a list or tuple of ints, got None"),
    (dict(strides=2), "strides must be a list or tuple of ints, got int"),
    (dict(free_items=None), "free_items must be a list or tuple of ints, got None"),
    (dict(free_kinds=[0, 1.0, 0, 1, 2]), r"free_kinds\[1\] must be an int, got float"),
    (dict(conv_items=(i for i in [3])), "conv_items must be a list or tuple of ints, got generator"),
    (dict(weights=None), "weights must be a tensor, got None"),
    (dict(weights=__import__("numpy").ones((2, P))), "weights must be a tensor, got numpy.ndarray"),
    (dict(running_mean=__import__("numpy").zeros((13, 3)), running_var=torch.ones(13, 3)),
     "running_mean must be a tensor or None, got numpy.ndarray"),
    (dict(running_var="ones"), "running_var must be a tensor or None, got str"),
])
def test_arguments_of_the_wrong_type_raise_type_error(changes, message):
    with pytest.raises(TypeError, match="mixed_node: " + message):
        ops.mixed_node(*as_args(bad(**changes)))


@pytest.mark.parametrize("fake", [False, True])
def test_raw_op_without_weights_names_the_argument(fake):
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = list(as_args(bad()))
    args[3] = None
    mode = FakeTensorMode()
    if fake:
        args[0], args[2] = [mode.from_tensor(t) for t in args[0]], [mode.from_tensor(t) for t in args[2]]
    with pytest.raises(RuntimeError, match=r"mixed_node: weights must be a floating-point tensor \[2, P\] \(one row "
                                           r"of primitive weights per edge\), got None"):
        with mode if fake else contextlib.nullcontext():
            torch.ops.fastdnas.mixed_node(*args)
