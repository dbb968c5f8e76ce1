"""Checkpoints of the original DARTS search network load into SearchNetwork and give the same logits."""
import pytest
import torch

from fastdnas.darts import SearchNetwork, convert_state_dict, search_config_from_state_dict
from original_layout import OriginalNetwork, randomise  # the original model_search.Network's layout


def trained_looking_original(**kwargs):
    """An original network with random weights and random BatchNorm statistics."""
    torch.manual_seed(0)
    net = randomise(OriginalNetwork(**kwargs).double(), std=1.0)
    net.set_arch([torch.randn_like(a.double()) for a in net.arch_parameters()])
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
