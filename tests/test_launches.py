"""The launch metric (benchmarks/launches.py): compute ops dispatched per forward+backward. It is
deterministic, so the fused backend's count is held to a budget here."""
import torch

from benchmarks.launches import SETTINGS, LaunchCounter, count, forward_backward_counts, pass_counters

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


def test_fused_autodeeplab_cell_parameters_receive_one_gradient_each():
    # A node evaluates its cell once per incoming transition: the cell's weights are stacked once
    # for all of them, so the backward sums their gradients once per stack, not with an add per
    # parameter and evaluation (14,400 adds of the 35,706 ops a fused F=8, L=12 forward+backward
    # made before).
    from fastdnas.autodeeplab import SearchNetwork

    net = SearchNetwork(num_classes=3, layers=3, blocks=3, filter_multiplier=2)
    loss = net(torch.randn(2, 3, 16, 16)).sum()
    consumers, seen, pending = {}, set(), [loss.grad_fn]
    while pending:
        fn = pending.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        for next_fn, _ in fn.next_functions:
            if next_fn is not None:
                consumers[next_fn] = consumers.get(next_fn, 0) + 1
                pending.append(next_fn)
    cell_params = {id(p) for node in net.modules() if type(node).__name__ == "TrellisNode" and len(node.resample) > 1
                   for p in node.cell.parameters()}
    counts = [c for fn, c in consumers.items() if hasattr(fn, "variable") and id(fn.variable) in cell_params]
    assert len(counts) == len(cell_params) and max(counts) == 1


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


class _GradientRequests(LaunchCounter):
    """Also records what each op is asked to differentiate: the output masks of the aten backward
    ops (input, weight, bias), and whether the mixing weights of each fastdnas mixed_node call
    (softmax(alpha)) and the filters of each depthwise call require grad."""

    def __init__(self):
        super().__init__()
        self.masks = []  # (op, output mask)
        self.requires_grad = []  # (op, does the op's parameter argument require grad)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in ("aten::convolution_backward", "aten::native_batch_norm_backward"):
            self.masks.append((name, tuple(args[-1])))
        elif name == "fastdnas::mixed_node":
            self.requires_grad.append((name, args[3].requires_grad))
        elif name == "fastdnas::depthwise_conv2d_segments":
            self.requires_grad.append((name, any(w.requires_grad for w in args[1])))
        return super().__torch_dispatch__(func, types, args, kwargs)


def test_each_pass_computes_only_its_own_gradients():
    # Fused DARTS, first order: the architecture pass launches no weight-gradient op (no
    # depthwise weight gradient, no convolution or BatchNorm backward with the weight mask set),
    # the weight pass no alpha gradient (no softmax backward; no mixed_node is asked for one).
    passes = pass_counters("darts", "fused", dict(SETTINGS["darts"], layers=3), _GradientRequests)
    arch, weight = passes["architecture"], passes["weight"]
    assert not [op for op in arch.counts if "weight_grad" in op]
    assert arch.masks and all(mask[1:] == (False, False) for _, mask in arch.masks), arch.masks
    assert {name for name, _ in arch.requires_grad} == {"fastdnas::mixed_node", "fastdnas::depthwise_conv2d_segments"}
    assert all(needed == (name == "fastdnas::mixed_node") for name, needed in arch.requires_grad)

    assert weight.counts["fastdnas::_depthwise_conv2d_segments_weight_grad"] > 0
    assert any(mask[1] for _, mask in weight.masks)
    assert weight.counts["aten::_softmax_backward_data"] == 0 < arch.counts["aten::_softmax_backward_data"]
    assert all(needed == (name != "fastdnas::mixed_node") for name, needed in weight.requires_grad)
