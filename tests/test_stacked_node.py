"""The fused backend's stacked node evaluation: search steps equal the reference's in float64
(both search spaces), and the candidates of a node run in a handful of stacked calls."""
import copy

import pytest
import torch

import fastdnas.ops
from fastdnas import autodeeplab, darts
from fastdnas.nn import MixedOp
from fastdnas.search import Search, SearchConfig, cross_entropy_loss
from fastdnas.segmentation import segmentation_loss
from conftest import rel_err


class _Sized:
    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size


def _steps(net, loss_fn, batches):
    search = Search(net, _Sized(4), _Sized(4), SearchConfig(batch_size=2, epochs=1), loss_fn=loss_fn,
                    progress=False, log=lambda *a: None)
    for batch in batches:
        search.search_step(*batch)
    return dict(net.named_parameters()), dict(net.named_buffers())


def _random_architecture(net):
    with torch.no_grad():  # softmaxes far from uniform
        for p in net.arch_parameters():
            p.copy_(torch.randn_like(p))
    return net


def _assert_steps_agree(fused, loss_fn, batches, tol):
    reference = copy.deepcopy(fused)
    reference.backend = "reference"
    fused_params, fused_buffers = _steps(fused, loss_fn, batches)
    ref_params, ref_buffers = _steps(reference, loss_fn, batches)
    for name, p in ref_params.items():
        assert rel_err(fused_params[name], p) <= tol, name
    for name, b in ref_buffers.items():  # some running means are rounding noise around 0
        torch.testing.assert_close(fused_buffers[name], b, rtol=tol, atol=1e-12, msg=name)
    assert any(b.dtype == torch.long and b.item() == 2 * len(batches) for b in fused_buffers.values())


def test_darts_search_steps_equal_the_reference():
    # Two first-order steps (architecture step on the val batch, weight step on the train batch):
    # parameters, alphas and running statistics (normal and reduction cells) as the reference's.
    torch.manual_seed(0)
    net = _random_architecture(darts.SearchNetwork(C=4, num_classes=5, layers=3).double())
    batches = [(torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (2,)),
                torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (2,))) for _ in range(2)]
    _assert_steps_agree(net, cross_entropy_loss, batches, 1e-10)


def test_autodeeplab_search_steps_equal_the_reference():
    torch.manual_seed(0)
    net = _random_architecture(autodeeplab.SearchNetwork(3, layers=2, blocks=3, filter_multiplier=2).double())
    batches = [(torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.randint(0, 3, (2, 16, 16)),
                torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.randint(0, 3, (2, 16, 16)))
               for _ in range(2)]
    _assert_steps_agree(net, segmentation_loss, batches, 1e-10)


def test_a_node_runs_its_candidates_stacked(monkeypatch):
    # A normal node of 3 edges: 2 depthwise calls (the 4 first layers as segments over all 3
    # edges' channels; the 2 SepConv second layers over their stacked inputs) and 2 grouped
    # convolutions (all 1x1 convolutions), then mixed_node.
    calls = []
    original = fastdnas.ops.depthwise_conv2d_segments

    def counting(x, weights, stride, paddings, dilations, offsets):
        calls.append((x.shape[1], [tuple(w.shape) for w in weights], list(offsets)))
        return original(x, weights, stride, paddings, dilations, offsets)

    monkeypatch.setattr(fastdnas.ops, "depthwise_conv2d_segments", counting)
    C, E = 4, 3
    ops = [MixedOp(C, 1) for _ in range(E)]
    from fastdnas.nn.mixed_op import node_sum

    states = [torch.randn(2, C, 6, 6) for _ in range(E)]
    weights = torch.softmax(torch.randn(E, 8), -1)
    from benchmarks.launches import count

    total, by_op = count(lambda: node_sum(ops, states, weights, "fused"))
    EC = E * C
    assert calls == [
        (EC, [(EC, 1, 3, 3), (EC, 1, 5, 5), (EC, 1, 3, 3), (EC, 1, 5, 5)], [0, 0, 0, 0]),
        (2 * EC, [(EC, 1, 3, 3), (EC, 1, 5, 5)], [0, EC]),
    ]
    assert by_op["aten::convolution"] == 2 and by_op["fastdnas::mixed_node"] == 1
    assert "fastdnas::depthwise_conv2d" not in by_op and "aten::bmm" not in by_op


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("odd_one", ["mode", "momentum"])
def test_stacked_node_falls_back_when_batch_norms_disagree(training, odd_one):
    # sep_conv_3x3's inner BatchNorm in another mode (its candidate then runs on its own, the
    # BatchNorm as a module) or with momentum=None (the cumulative average, updated one by one).
    torch.manual_seed(0)
    op = MixedOp(4, 1).double().train(training)
    inner = op._ops[4].op[3]
    if odd_one == "mode":
        inner.train(not training)
    else:
        inner.momentum = None
    reference = copy.deepcopy(op)
    reference.backend = "reference"
    for _ in range(2):
        x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
        w = torch.softmax(torch.randn(8, dtype=torch.float64), 0)
        assert rel_err(op(x, w), reference(x, w)) <= 1e-10
    for (name, got), want in zip(op.named_buffers(), reference.buffers()):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)


def test_stacked_pointwise_on_the_cpu_equals_the_grouped_convolution():
    # The CPU runs the stacked 1x1 convolutions as matrix products with a backward of their own:
    # values and both gradients equal the grouped convolution's (float64 gradcheck too), on a
    # non-contiguous input, with one input not requiring grad, and under bfloat16 autocast.
    import torch.nn.functional as F
    from fastdnas.nn.mixed_op import _stacked_pointwise

    torch.manual_seed(0)
    J, C, N, H, W = 3, 4, 2, 5, 3
    x = torch.randn(N, J * C, W, H, dtype=torch.float64).transpose(2, 3).requires_grad_()  # non-contiguous
    w = torch.randn(J, C, C, 1, 1, dtype=torch.float64, requires_grad=True)
    y = _stacked_pointwise(x, w)
    want = F.conv2d(x, w.flatten(0, 1), groups=J)
    g = torch.randn_like(want)
    got_grads = torch.autograd.grad(y, (x, w), g)
    want_grads = torch.autograd.grad(want, (x, w), g)
    assert rel_err(y, want) < 1e-12
    for got, expected in zip(got_grads, want_grads):
        assert rel_err(got, expected) < 1e-12
    assert torch.autograd.gradcheck(_stacked_pointwise, (x, w))
    (only_w,) = torch.autograd.grad(_stacked_pointwise(x.detach(), w), (w,), g)
    assert rel_err(only_w, want_grads[1]) < 1e-12
    x32, w32 = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = _stacked_pointwise(x32, w32)
        want16 = F.conv2d(x32, w32.flatten(0, 1), groups=J)
    assert y16.dtype == want16.dtype == torch.bfloat16
    assert rel_err(y16.double(), want.detach()) < 2e-2
    gx, gw = torch.autograd.grad(y16, (x32, w32), g.to(torch.bfloat16))
    assert gx.dtype == gw.dtype == torch.float32
    assert rel_err(gx.double(), want_grads[0]) < 2e-2 and rel_err(gw.double(), want_grads[1]) < 2e-2
