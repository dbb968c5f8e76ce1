"""MixedOp: the fused backend equals the original eager expression and never runs 'none'."""
import pytest
import torch

from fastdnas.darts import SearchNetwork
from fastdnas.nn import OPS, PRIMITIVES, MixedOp, Zero
from conftest import DEVICES, rel_err


def run(op, x, alpha):
    weights = torch.softmax(alpha, 0)
    out = op(x, weights)
    grads = torch.autograd.grad(out.square().sum(), [x, alpha, *op.parameters()])
    return out, grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["fused", "fused_sum"])
@pytest.mark.parametrize("stride", [1, 2])
def test_fused_equals_reference(stride, backend, device):
    C = 6
    op = MixedOp(C, stride, backend=backend).double().to(device)
    reference = MixedOp(C, stride, backend="reference").double().to(device)
    reference.load_state_dict(op.state_dict())
    for training in (True, False):
        op.train(training)
        reference.train(training)
        x = torch.randn(3, C, 10, 12, dtype=torch.float64, device=device, requires_grad=True)
        alpha = torch.randn(len(PRIMITIVES), dtype=torch.float64, device=device, requires_grad=True)
        fused_out, fused_grads = run(op, x, alpha)
        ref_out, ref_grads = run(reference, x, alpha)
        assert rel_err(fused_out, ref_out) <= 1e-10
        for got, want in zip(fused_grads, ref_grads):
            assert rel_err(got, want) <= 1e-10
        for (name, got), want in zip(op.named_buffers(), reference.buffers()):
            assert torch.allclose(got, want, rtol=1e-10, atol=1e-12), name


@pytest.mark.parametrize("stride", [1, 2])
def test_candidates_outside_the_kernel_equal_the_reference(stride):
    """A bare max pool left out of free_kinds (no BatchNorm, no kind given): the fused node adds it
    outside the mixed_node call (``outside_primitives``); kind 4 computes it inside. Both equal
    the reference, float64, output and gradients."""
    from fastdnas.nn.operations import FINAL_OPS

    ops = dict(OPS, max_pool_3x3=FINAL_OPS["max_pool_3x3"])
    C = 6
    reference = MixedOp(C, stride, ops=ops, backend="reference").double()
    x = torch.randn(3, C, 10, 12, dtype=torch.float64, requires_grad=True)
    alpha = torch.randn(len(PRIMITIVES), dtype=torch.float64, requires_grad=True)
    want_out, want_grads = run(reference, x, alpha)
    for free_kinds, outside in (({"avg_pool_3x3": 1, "skip_connect": 2}, [1]),
                                ({"max_pool_3x3": 4, "avg_pool_3x3": 1, "skip_connect": 2}, [])):
        op = MixedOp(C, stride, ops=ops, free_kinds=free_kinds, backend="fused").double()
        op.load_state_dict(reference.state_dict())
        assert op.outside_primitives == outside
        out, grads = run(op, x, alpha)
        assert rel_err(out, want_out) <= 1e-10
        for got, want in zip(grads, want_grads):
            assert rel_err(got, want) <= 1e-10


@pytest.mark.parametrize("stride,relus_saved", [(1, 4), (2, 5)])
def test_fused_backend_runs_one_relu_per_edge_for_its_convolutions(monkeypatch, stride, relus_saved):
    # Reference: one ReLU of x per convolution candidate (4, and FactorizedReduce at stride 2),
    # plus the inner ReLU of each sep_conv (2). Fused: one ReLU of x, one of both sep_convs' inner
    # BatchNorm outputs stacked.
    calls = []
    original = torch.nn.functional.relu

    def counting_relu(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "relu", counting_relu)
    op = MixedOp(4, stride)
    x, w = torch.randn(2, 4, 6, 6), torch.softmax(torch.randn(8), 0)
    op(x, w)
    fused_calls = len(calls)
    op.backend = "reference"
    op(x, w)
    assert fused_calls == 1 + 1
    assert len(calls) - fused_calls == fused_calls + relus_saved


def test_fused_never_computes_none(monkeypatch):
    def fail(self, x):
        raise AssertionError("the fused backend must not compute the 'none' op")

    monkeypatch.setattr(Zero, "forward", fail)
    op = MixedOp(4, 1)
    out = op(torch.randn(2, 4, 5, 5), torch.softmax(torch.randn(8), 0))
    assert out.shape == (2, 4, 5, 5)
    op.backend = "reference"
    with pytest.raises(AssertionError, match="must not compute"):
        op(torch.randn(2, 4, 5, 5), torch.softmax(torch.randn(8), 0))


def test_subset_of_primitives():
    op = MixedOp(4, 1, primitives=["none", "skip_connect", "avg_pool_3x3"])
    assert op.computed_indices == [1, 2]
    x = torch.randn(2, 4, 5, 5)
    w = torch.softmax(torch.randn(3), 0)
    fused = op(x, w)
    op.backend = "reference"
    assert rel_err(fused, op(x, w)) <= 1e-6


def test_none_between_computed_primitives():
    """'none' in the middle: the computed weights are picked by an index tensor, not a slice."""
    primitives = ["skip_connect", "none", "avg_pool_3x3", "max_pool_3x3"]
    op = MixedOp(4, 1, primitives=primitives)
    assert op.computed_indices == [0, 2, 3] and isinstance(op.computed_index, torch.Tensor)
    assert isinstance(MixedOp(4, 1).computed_index, slice)  # the DARTS set: 'none' first
    x = torch.randn(2, 4, 5, 5)
    w = torch.softmax(torch.randn(4), 0)
    fused = op(x, w)
    op.backend = "reference"
    assert rel_err(fused, op(x, w)) <= 1e-6
    net = SearchNetwork(C=4, num_classes=3, layers=3, primitives=primitives)
    images = torch.randn(2, 3, 8, 8)
    fused = net(images)
    net.backend = "reference"
    assert rel_err(fused, net(images)) <= 1e-5
    assert "computed_index" not in " ".join(net.state_dict())  # not part of checkpoints


def test_search_mode_ops_have_no_affine_bn():
    op = MixedOp(4, 1)
    for module in op.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert not module.affine
    # Pools are followed by BN in the search network.
    assert isinstance(op._ops[PRIMITIVES.index("max_pool_3x3")][1], torch.nn.BatchNorm2d)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(primitives=["conv_9x9"]), "unknown operation"),
        (dict(primitives=[]), "at least one operation"),
        (dict(primitives=["none"]), "other than 'none'"),
        (dict(backend="cuda"), "backend must be one of"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixedOp(4, 1, **kwargs)


def test_odd_size_at_stride_2_raises_clearly():
    with pytest.raises(ValueError, match="FactorizedReduce needs an even height and width"):
        MixedOp(4, 2)(torch.randn(1, 4, 5, 6), torch.softmax(torch.randn(8), 0))


def test_bad_weights_shape():
    with pytest.raises(ValueError, match=r"weights must have shape \[8\]"):
        MixedOp(4, 1)(torch.randn(1, 4, 3, 3), torch.ones(7))


def test_ops_table_matches_primitives():
    assert tuple(OPS) == PRIMITIVES
