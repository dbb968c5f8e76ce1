"""Edges that read one state, evaluated together, equal the edges evaluated one by one."""
import copy

import pytest
import torch

from fastdnas.nn import MixedOp, PRIMITIVES
from fastdnas.nn.grouped import edges_candidate_outputs
from conftest import DEVICES, rel_err


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("count", [1, 3])
def test_grouped_edges_equal_edge_by_edge(count, stride, training, device):
    torch.manual_seed(0)
    edges = [MixedOp(4, stride).double().to(device) for _ in range(count)]
    for edge in edges:  # distinct running statistics, so evaluation mode tells the edges apart
        for module in edge.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
        edge.train(training)
    alone = copy.deepcopy(edges)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, device=device, requires_grad=True)
    probes = [[torch.randn(2, 4, 6 // stride, 6 // stride, dtype=torch.float64, device=device)
               for _ in edges[0].computed_indices] for _ in edges]

    def loss_and_grads(outputs, modules):
        loss = sum((out * probe).sum() for outs, ps in zip(outputs, probes) for out, probe in zip(outs, ps))
        params = [p for m in modules for p in m.parameters()]
        return torch.autograd.grad(loss, [x, *params])

    together = edges_candidate_outputs(edges, x)
    one_by_one = [edge.candidate_outputs(x) for edge in alone]
    for outs, expected in zip(together, one_by_one):
        assert len(outs) == len(expected) == len(PRIMITIVES) - 1
        for out, exp in zip(outs, expected):
            assert out.shape == exp.shape and rel_err(out, exp) <= 1e-12
    for g, expected in zip(loss_and_grads(together, edges), loss_and_grads(one_by_one, alone)):
        assert rel_err(g, expected) <= 1e-12
    for a, b in zip(edges, alone):
        for (name, buffer), other in zip(a.named_buffers(), b.buffers()):
            assert torch.equal(buffer, other), name
