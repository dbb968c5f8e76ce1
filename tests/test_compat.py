"""fastdnas.compat: the original DARTS / PC-DARTS search networks' interface on the fused backends,
driven as the original architect.py and train_search.py drive them (tests/original_scripts.py),
equal in float64 to an original-layout network (tests/original_layout.py)."""
import pytest
import torch
import torch.nn as nn

from conftest import DEVICES
from fastdnas.compat import darts as compat_darts
from fastdnas.compat import pc_darts as compat_pc_darts
from original_layout import OriginalNetwork
from original_scripts import make_search, search_step

pytestmark = pytest.mark.usefixtures("one_thread")  # a loaded machine: one thread is steadiest
KINDS = {"darts": (compat_darts.Network, None), "pc_darts": (compat_pc_darts.Network, 4)}


def twins(kind, device, backend="fused"):
    """An original-layout network and a compat one holding the same weights and architecture."""
    cls, k = KINDS[kind]
    criterion = nn.CrossEntropyLoss()
    torch.manual_seed(1)
    original = OriginalNetwork(4, 3, 3, criterion, steps=3, multiplier=3, k=k).double().to(device)
    original.set_arch([a.detach().double().to(device).requires_grad_() for a in original.arch_parameters()])
    ours = cls(4, 3, 3, criterion, 3, 3, backend=backend).double().to(device)
    ours.load_state_dict(original.state_dict())  # strict: the original state dict names
    for x, y in zip(ours.arch_parameters(), original.arch_parameters()):
        x.data.copy_(y.data)
    return original, ours


def batches(device, steps):
    g = torch.Generator().manual_seed(2)
    return [[(torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64).to(device),
              torch.randint(0, 3, (4,), generator=g).to(device)) for _ in range(2)] for _ in range(steps)]


def close(a, b):
    return torch.allclose(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("unrolled", [False, True], ids=["first_order", "second_order"])
@pytest.mark.parametrize("kind", ["darts", "pc_darts"])
def test_search_steps_equal_the_original(kind, unrolled, device):
    original, ours = twins(kind, device)
    initial = [a.detach().clone() for a in original.arch_parameters()]
    runs = []
    for net in (original, ours):
        optimizer, architect = make_search(net)
        losses = [search_step(net, architect, optimizer, net._criterion, train, valid, 0.025, unrolled)[1].item()
                  for train, valid in batches(device, 2)]
        runs.append(losses)
    assert runs[0] == pytest.approx(runs[1], rel=1e-10)
    for a, b, start in zip(original.arch_parameters(), ours.arch_parameters(), initial):
        assert close(b, a)
        assert (a - start).abs().min() > 1e-6  # every architecture entry did move
    expected, actual = original.state_dict(), ours.state_dict()
    assert expected.keys() == actual.keys()
    for key in expected:  # weights and BatchNorm buffers
        assert close(actual[key].double(), expected[key].double()), key


@pytest.mark.parametrize("kind", ["darts", "pc_darts"])
def test_original_interface(kind):
    cls, k = KINDS[kind]
    criterion = nn.CrossEntropyLoss()
    net = cls(8, 3, 3, criterion, steps=3, multiplier=2)
    assert (net._C, net._num_classes, net._layers, net._steps, net._multiplier) == (8, 3, 3, 3, 2)
    assert net._criterion is criterion
    names = ["alphas_normal", "alphas_reduce"] + (["betas_normal", "betas_reduce"] if k else [])
    assert net.arch_parameters() == [getattr(net, name) for name in names]
    arch = {id(a) for a in net.arch_parameters()}
    assert all(a.is_leaf and a.requires_grad for a in net.arch_parameters())
    assert not arch & {id(p) for p in net.parameters()}  # kept out of the weights, as the original
    assert not set(names) & set(net.state_dict())
    assert net.state_dict().keys() == OriginalNetwork(8, 3, 3, criterion, 3, 2, k=k).state_dict().keys()
    # .double() (and .cuda()/.to()) moves them, keeping them leaves of the same names.
    net = net.double()
    assert all(a.dtype == torch.float64 and a.is_leaf for a in net.arch_parameters())
    assert net.arch_parameters()[0] is net.alphas_normal
    for a in net.arch_parameters():
        a.data.normal_()
    copy = net.new()
    assert type(copy) is cls and copy._criterion is criterion and copy.backend == net.backend
    for x, y in zip(copy.arch_parameters(), net.arch_parameters()):
        assert torch.equal(x, y) and x is not y and x.is_leaf and x.requires_grad
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    loss = net._loss(x, torch.tensor([0, 2]))
    assert loss.shape == () and torch.allclose(loss, criterion(net(x), torch.tensor([0, 2])))
    assert len(net.genotype().normal) == 2 * 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machines without CUDA")
def test_cuda_call_without_cuda_leaves_the_network():
    net = compat_darts.Network(4, 3, 3, nn.CrossEntropyLoss())
    assert net.cuda() is net and net.alphas_normal.device.type == "cpu"


def test_backends_give_the_same_loss():
    _, fused = twins("pc_darts", "cpu")
    x, y = batches("cpu", 1)[0][0]
    expected = fused._loss(x, y)
    fused.backend = "reference"
    assert torch.allclose(fused._loss(x, y), expected, rtol=1e-10)


def test_new_restores_the_garbage_collector_and_keeps_device_and_dtype():
    import gc

    net = compat_darts.Network(4, 3, 3, nn.CrossEntropyLoss(), steps=2, multiplier=2)
    was = gc.isenabled()
    try:
        for collecting in (True, False):
            (gc.enable if collecting else gc.disable)()
            copy = net.new()
            assert gc.isenabled() == collecting
            assert all(p.dtype == torch.float32 for p in [*copy.parameters(), *copy.arch_parameters()])
        gc.enable()
        net.double()
        copy = net.new()
        assert gc.isenabled()
        assert all(p.dtype == torch.float64 for p in [*copy.parameters(), *copy.arch_parameters()])
    finally:
        (gc.enable if was else gc.disable)()
