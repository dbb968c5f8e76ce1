"""The launch metric (benchmarks/launches.py): compute ops dispatched per forward+backward. It is
deterministic, so the fused backend's count is held to a budget here."""
import torch

from benchmarks.launches import SETTINGS, LaunchCounter, count, forward_backward_counts

# Fused DARTS search network (C=16, 8 cells), one training forward+backward with the loss:
# 7,310 before nodes ran stacked, 2,650 with a depthwise call per kernel geometry and 1x1
# convolutions as bmm, 1,628 now. The goal was 1,700; the budget leaves a small
# margin (3%); lower it when the count drops.
FUSED_DARTS_BUDGET = 1680


def test_views_and_allocations_are_not_counted():
    x = torch.randn(4, 6)
    with LaunchCounter() as counter:
        x.view(24).unsqueeze(0).expand(3, 24).transpose(0, 1)
        x.split(2, 1), x.unbind(0), x.detach(), torch.empty(3)
    assert counter.total == 0
    total, by_op = count(lambda: (x + 1).relu().sum())
    assert total == 3 and by_op == {"aten::add": 1, "aten::relu": 1, "aten::sum": 1}


def test_fused_darts_forward_backward_stays_within_its_budget():
    total, by_op = forward_backward_counts("darts", "fused")
    assert total <= FUSED_DARTS_BUDGET, f"{total} compute ops (budget {FUSED_DARTS_BUDGET}): {by_op.most_common(12)}"


def test_the_count_does_not_depend_on_batch_or_image_size():
    small, _ = forward_backward_counts("darts", "fused", dict(SETTINGS["darts"], layers=3, batch=2, image_size=8))
    large, _ = forward_backward_counts("darts", "fused", dict(SETTINGS["darts"], layers=3, batch=3, image_size=16))
    assert small == large
    # Auto-DeepLab: the batch does not matter either, nor F (from 2 on: with F=1 the 1-channel
    # planes of level 0 make some layout copies free, 30 fewer `clone`s at this size); the image
    # size can, by an op outside the cells (48x48 gives one `sum` more than 32x32).
    adl = dict(SETTINGS["autodeeplab"], layers=3, blocks=3)
    small, _ = forward_backward_counts("autodeeplab", "fused", dict(adl, image_size=32))
    large, _ = forward_backward_counts("autodeeplab", "fused", dict(adl, batch=3, filter_multiplier=2, image_size=32))
    assert small == large
