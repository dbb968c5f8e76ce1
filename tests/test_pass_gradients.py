"""Each pass of the search step computes only the gradients it uses (issue 21): the architecture
pass no weight gradient, the weight pass no architecture gradient (``differentiating``), and the
custom ops' backward only what autograd asks for. The results are bitwise those of the passes
that differentiate every parameter."""
import contextlib

import pytest
import torch

from conftest import OpNames
import fastdnas.search.architect
import fastdnas.search.loop
from fastdnas import autodeeplab, darts
from fastdnas.darts.gdas import GdasNetwork
from fastdnas.darts.pc_darts import PCDartsNetwork
from fastdnas.search import Search, SearchConfig, cross_entropy_loss
from fastdnas.search.architect import differentiating
from fastdnas.segmentation import segmentation_loss

pytestmark = pytest.mark.usefixtures("one_thread")


class _Sized:
    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size


def _network(method, backend):
    if method == "darts":
        return darts.SearchNetwork(C=4, num_classes=5, layers=3, backend=backend), 8, (2,), cross_entropy_loss
    if method == "pc-darts":
        return PCDartsNetwork(C=8, num_classes=5, layers=3, backend=backend, partial_channels=4), 8, (2,), \
            cross_entropy_loss
    if method == "gdas":
        return GdasNetwork(C=4, num_classes=5, layers=3, backend=backend), 8, (2,), cross_entropy_loss
    net = autodeeplab.SearchNetwork(5, layers=2, blocks=3, filter_multiplier=2, backend=backend)
    return net, 16, (2, 16, 16), segmentation_loss


def _steps(method, backend, unrolled):
    """Parameters and buffers after two search steps."""
    torch.manual_seed(0)
    net, size, target_shape, loss_fn = _network(method, backend)
    net = net.double()
    with torch.no_grad():  # softmaxes far from uniform
        for p in net.arch_parameters():
            p.copy_(torch.randn_like(p))
    batches = [(torch.randn(2, 3, size, size, dtype=torch.float64), torch.randint(0, 5, target_shape),
                torch.randn(2, 3, size, size, dtype=torch.float64), torch.randint(0, 5, target_shape))
               for _ in range(2)]
    search = Search(net, _Sized(2), _Sized(2), SearchConfig(batch_size=2, epochs=1, unrolled=unrolled),
                    loss_fn=loss_fn, progress=False, log=lambda *a: None)
    for batch in batches:
        search.search_step(*batch)
    return [t.clone() for t in [*net.parameters(), *net.buffers()]]


@pytest.mark.parametrize("unrolled", [False, True], ids=["first-order", "second-order"])
@pytest.mark.parametrize("backend", ["reference", "fused_sum", "fused"])
@pytest.mark.parametrize("method", ["darts", "pc-darts", "gdas", "autodeeplab"])
def test_narrowed_passes_give_bitwise_the_same_steps(monkeypatch, method, backend, unrolled):
    narrowed = _steps(method, backend, unrolled)
    # As before the passes were narrowed: every parameter requires grad in every pass.
    everything = lambda model, params: contextlib.nullcontext()  # noqa: E731
    monkeypatch.setattr(fastdnas.search.architect, "differentiating", everything)
    monkeypatch.setattr(fastdnas.search.loop, "differentiating", everything)
    assert len(narrowed) == len(wide := _steps(method, backend, unrolled))
    for i, (a, b) in enumerate(zip(narrowed, wide)):
        assert torch.equal(a, b), i


def test_differentiating_freezes_the_other_parameters_and_restores_them():
    net = darts.SearchNetwork(C=4, num_classes=5, layers=3)
    weights, alphas = list(net.weight_parameters()), list(net.arch_parameters())
    weights[0].requires_grad_(False)  # frozen by the caller: stays frozen
    with differentiating(net, alphas):
        assert all(p.requires_grad for p in alphas) and not any(p.requires_grad for p in weights)
        loss = net(torch.randn(2, 3, 8, 8)).sum()
    assert all(p.requires_grad for p in weights[1:]) and not weights[0].requires_grad
    grads = torch.autograd.grad(loss, alphas)
    assert all(g is not None for g in grads)
    with pytest.raises(RuntimeError, match="boom"), differentiating(net, alphas):
        raise RuntimeError("boom")
    assert all(p.requires_grad for p in weights[1:])


def test_differentiating_sees_modules_and_parameters_registered_since_its_last_use():
    # It keeps the model's parameter list between calls (walking every module twice a step was
    # slow); a module or parameter registered since (anywhere) makes it read the list again.
    net = darts.SearchNetwork(C=4, num_classes=5, layers=3)
    alphas = list(net.arch_parameters())
    with differentiating(net, alphas):
        pass
    net.classifier = torch.nn.Linear(net.classifier.in_features, 5)  # a new module, new parameters
    net.extra = torch.nn.Parameter(torch.zeros(3))  # a new parameter
    with differentiating(net, alphas):
        assert not net.classifier.weight.requires_grad and not net.extra.requires_grad
    assert net.classifier.weight.requires_grad and net.extra.requires_grad


def test_custom_ops_skip_the_weight_gradients_a_pass_does_not_use():
    """torch.autograd.grad(loss, alphas) with every weight still requiring grad (the original
    architect's Hessian-vector product on the compat network): the depthwise kernels' weight
    gradients are not computed, the alphas' gradients are bitwise those of a full backward; and
    a pass asking for the weights (leaves captured by autograd.grad) gets them, bitwise too."""
    from fastdnas import ops
    from fastdnas.compat import darts as compat_darts

    torch.manual_seed(0)
    net = compat_darts.Network(4, 3, 3, torch.nn.CrossEntropyLoss(), steps=2, multiplier=2).double()
    x, y = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 2])
    net.eval()  # the same normalisation in every pass
    weights, alphas = list(net.parameters()), net.arch_parameters()
    net._loss(x, y).backward()
    full_alphas, full_weights = [a.grad.clone() for a in alphas], [w.grad.clone() for w in weights]
    with OpNames() as seen:
        alpha_grads = torch.autograd.grad(net._loss(x, y), alphas)
    assert "_depthwise_conv2d_segments_input_grad.default" in seen.names
    assert "_depthwise_conv2d_segments_weight_grad.default" not in seen.names
    assert all(torch.equal(a, b) for a, b in zip(alpha_grads, full_alphas))
    with OpNames() as seen:
        weight_grads = torch.autograd.grad(net._loss(x, y), weights)
    assert "_depthwise_conv2d_segments_weight_grad.default" in seen.names
    assert all(torch.equal(a, b) for a, b in zip(weight_grads, full_weights))

    # The ops on their own, with leaf weights: only the gradients asked for, the same values.
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64, requires_grad=True)
    w = [torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    out = ops.depthwise_conv2d_segments(x, w, 1, [1, 2], [1, 2], [0, 3])
    single = ops.depthwise_conv2d(x, w[0].repeat(2, 1, 1, 1), 1, 1, 1)
    g = torch.randn_like(out)
    full = torch.autograd.grad(out, [x, *w], g, retain_graph=True)
    for inputs, expected in (([w[1]], full[2:]), ([x], full[:1])):
        with OpNames() as seen:
            got = torch.autograd.grad(out, inputs, g, retain_graph=True)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
        assert ("_depthwise_conv2d_segments_weight_grad.default" in seen.names) == (inputs[0] is w[1])
        assert ("_depthwise_conv2d_segments_input_grad.default" in seen.names) == (inputs[0] is x)
    with OpNames() as seen:
        torch.autograd.grad(single, [x], torch.ones_like(single))
    assert "_depthwise_conv2d_input_grad.default" in seen.names
    assert "_depthwise_conv2d_weight_grad.default" not in seen.names
