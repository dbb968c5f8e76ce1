"""Checkpoints of the original DARTS search network load into SearchNetwork and give the same logits."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastdnas.darts import SearchNetwork, convert_state_dict, search_config_from_state_dict
from fastdnas.nn import FINAL_OPS, PRIMITIVES, FactorizedReduce, ReLUConvBN


# A stand-in for the original model_search.py, written independently of fastdnas.darts: the same
# module tree and attribute names (pools are wrapped with their BN inside the mixed op; a cell
# keeps an empty `_bns` list), its per-edge eager sum, and alphas kept outside the state dict.
# The candidate ops come from FINAL_OPS, whose classes carry the original operations.py names.
class OriginalMixedOp(nn.Module):
    def __init__(self, C, stride):
        super().__init__()
        self._ops = nn.ModuleList()
        for primitive in PRIMITIVES:
            op = FINAL_OPS[primitive](C, stride, False)
            if "pool" in primitive:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self._ops.append(op)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class OriginalCell(nn.Module):
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps, self._multiplier = steps, multiplier
        self._ops = nn.ModuleList()
        self._bns = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                self._ops.append(OriginalMixedOp(C, 2 if reduction and j < 2 else 1))

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            states.append(sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states)))
            offset += len(states) - 1
        return torch.cat(states[-self._multiplier:], dim=1)


class OriginalNetwork(nn.Module):
    def __init__(self, C, num_classes, layers, steps=4, multiplier=4, stem_multiplier=3):
        super().__init__()
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in [layers // 3, 2 * layers // 3]
            C_curr = C_curr * 2 if reduction else C_curr
            self.cells.append(OriginalCell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        edges = sum(2 + i for i in range(steps))
        # Plain tensors, as the original keeps them: not in parameters() or state_dict().
        self.alphas_normal = torch.randn(edges, len(PRIMITIVES), dtype=torch.float64)
        self.alphas_reduce = torch.randn(edges, len(PRIMITIVES), dtype=torch.float64)

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            weights = F.softmax(self.alphas_reduce if cell.reduction else self.alphas_normal, dim=-1)
            s0, s1 = s1, cell(s0, s1, weights)
        return self.classifier(self.global_pooling(s1).flatten(1))


def trained_looking_original(**kwargs):
    """An original network with random weights and random BatchNorm statistics."""
    torch.manual_seed(0)
    net = OriginalNetwork(**kwargs).double()
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            else:
                tensor.normal_()
    return net


def checkpoint_of(original):
    """The original state dict with the alphas saved alongside, as users do."""
    checkpoint = dict(original.state_dict())
    checkpoint["alphas_normal"] = original.alphas_normal.clone()
    checkpoint["alphas_reduce"] = original.alphas_reduce.clone()
    return checkpoint


def test_original_checkpoint_gives_the_same_logits():
    original = trained_looking_original(C=4, num_classes=5, layers=3)
    converted = convert_state_dict(checkpoint_of(original))
    config = search_config_from_state_dict(converted)
    assert config == dict(C=4, num_classes=5, layers=3, steps=4, multiplier=4, stem_multiplier=3, in_channels=3)
    ours = SearchNetwork(**config).double()
    ours.load_state_dict(converted)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for mode in (original.eval, original.train):  # running statistics, then batch statistics
        mode()
        ours.train(original.training)
        expected = original(x)
        for backend in ("reference", "fused"):
            ours.backend = backend
            assert torch.allclose(ours(x), expected, rtol=1e-10, atol=1e-12), (backend, original.training)


def test_old_data_parallel_checkpoint_loads():
    # Saved from nn.DataParallel by PyTorch < 0.4.1: "module." prefixes, no BatchNorm counters.
    original = trained_looking_original(C=4, num_classes=5, layers=3, steps=2, multiplier=2)
    checkpoint = {
        "module." + key: value
        for key, value in checkpoint_of(original).items()
        if not key.endswith("num_batches_tracked")
    }
    converted = convert_state_dict(checkpoint)
    ours = SearchNetwork(C=4, num_classes=5, layers=3, steps=2, multiplier=2).double()
    ours.load_state_dict(converted)
    original.eval()
    ours.eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(ours(x), original(x), rtol=1e-10, atol=1e-12)


def test_checkpoint_without_alphas_loads_the_weights():
    original = trained_looking_original(C=4, num_classes=5, layers=3)
    converted = convert_state_dict(original.state_dict())
    ours = SearchNetwork(C=4, num_classes=5, layers=3).double()
    result = ours.load_state_dict(converted, strict=False)
    assert sorted(result.missing_keys) == ["alphas_normal", "alphas_reduce"]
    assert not result.unexpected_keys


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(C=4, num_classes=5, layers=3),
        dict(C=6, num_classes=2, layers=2, steps=3, multiplier=2, stem_multiplier=2),  # reduction at cell 0
        dict(C=2, num_classes=3, layers=5, steps=2, multiplier=2),
    ],
)
def test_config_is_read_from_the_shapes(kwargs):
    state_dict = OriginalNetwork(**kwargs).state_dict()
    expected = dict(steps=4, multiplier=4, stem_multiplier=3, in_channels=3)
    expected.update(kwargs)
    assert search_config_from_state_dict(state_dict) == expected
    assert convert_state_dict(state_dict).keys() == state_dict.keys()


def test_mismatches_are_named():
    checkpoint = checkpoint_of(trained_looking_original(C=4, num_classes=5, layers=3))
    extra = dict(checkpoint, **{"cells.0._ops.0._ops.9.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected: cells\.0\._ops\.0\._ops\.9\.weight"):
        convert_state_dict(extra)
    lacking = dict(checkpoint)
    del lacking["cells.1._ops.3._ops.4.op.2.weight"]
    with pytest.raises(ValueError, match=r"missing: cells\.1\._ops\.3\._ops\.4\.op\.2\.weight"):
        convert_state_dict(lacking)
    misshapen = dict(checkpoint, alphas_normal=torch.zeros(14, 7))
    with pytest.raises(ValueError, match=r"wrong shape: alphas_normal: \[14, 7\] instead of \[14, 8\]"):
        convert_state_dict(misshapen)
    with pytest.raises(ValueError, match="not a DARTS search network"):
        convert_state_dict({"fc.weight": torch.zeros(2, 2)})
