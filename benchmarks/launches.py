"""Compute ops dispatched per forward+backward and per search step, per backend: a deterministic
launch metric (it depends neither on the machine nor on the batch or image size).

Every aten and fastdnas op that reaches the dispatcher below autograd is counted once (on a GPU
each is at least one kernel launch), except ops that only make or change tensor metadata: views
(every op whose schema returns an alias: view, reshape's alias, expand, slice, select, split,
unbind, permute, transpose, squeeze, unsqueeze, detach, alias, as_strided, ...) and
``METADATA_ONLY`` (allocations without a kernel and size queries). Ops that a compiled kernel
calls inside itself are not seen (they are not dispatched from Python).

    python -m benchmarks.run --only launches        # the table and JSON of the suite
    python -m benchmarks.launches [--by-op]         # the same, with a per-op breakdown
    python -m benchmarks.launches --passes           # the fused backend's two passes, op by op
"""
import argparse
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastdnas import autodeeplab, darts
from fastdnas.nn import mixed_op
from fastdnas.search import cross_entropy_loss
from fastdnas.segmentation import segmentation_loss

from .search_step import make_step

BACKENDS = ("reference", "fused_sum", "fused")
# Allocation without a kernel, size and identity queries; views are recognised by their schema.
METADATA_ONLY = frozenset({
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided",
    "aten::_unsafe_view", "aten::lift_fresh", "aten::sym_size", "aten::sym_stride", "aten::sym_numel",
    "aten::sym_storage_offset", "aten::is_same_size", "aten::detach", "aten::alias",
})
# The settings the launch counts are given for (the papers' network sizes); the counts do not
# depend on the batch or the image size (tests/test_launches.py checks it), so small ones are used.
SETTINGS = {
    "darts": dict(C=16, layers=8, batch=2, image_size=16),
    "autodeeplab": dict(filter_multiplier=8, layers=12, blocks=5, batch=2, image_size=32),
}


def is_metadata_only(func):
    return func.is_view or func._schema.name in METADATA_ONLY


class LaunchCounter(TorchDispatchMode):
    """Counts the compute ops dispatched while active, by op name (``counts``)."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not is_metadata_only(func):
            self.counts[func._schema.name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self):
        return sum(self.counts.values())


def count(fn, counter_type=LaunchCounter):
    """(total, Counter by op name) of the compute ops fn() dispatches."""
    counter = counted(fn, counter_type)
    return counter.total, counter.counts


def counted(fn, counter_type=LaunchCounter):
    """The counter (a ``counter_type``) that watched fn() run. The ops counted are those of the
    CUDA path: the stacked 1x1 convolutions as one grouped convolution each way and the cells'
    preprocessing as convolutions (on the CPU both run as matrix products, more ops per call;
    ``POINTWISE_MATMUL_DEVICES``)."""
    devices = set(mixed_op.POINTWISE_MATMUL_DEVICES)
    mixed_op.POINTWISE_MATMUL_DEVICES.clear()
    try:
        with counter_type() as counter:
            fn()
    finally:
        mixed_op.POINTWISE_MATMUL_DEVICES.update(devices)
    return counter


def make_batch(space, settings):
    """(inputs, targets) of one batch of the settings' size."""
    s = settings
    size = s["image_size"]
    inputs = torch.randn(s["batch"], 3, size, size)
    if space == "darts":
        return inputs, torch.randint(0, 10, (s["batch"],))
    return inputs, torch.randint(0, 19, (s["batch"], size, size))


def make_network(space, backend, settings):
    torch.manual_seed(0)
    s = settings
    if space == "darts":
        net = darts.SearchNetwork(C=s["C"], num_classes=10, layers=s["layers"], backend=backend)
        return net, *make_batch(space, s), cross_entropy_loss
    net = autodeeplab.SearchNetwork(19, layers=s["layers"], blocks=s["blocks"],
                                    filter_multiplier=s["filter_multiplier"], backend=backend)
    return net, *make_batch(space, s), segmentation_loss


def forward_backward_counts(space, backend, settings=None):
    """(total, by op) of one training-mode forward and backward of the search network (the loss
    included); a warm-up pass first, so lazily built state is not counted."""
    net, inputs, targets, loss_fn = make_network(space, backend, settings or SETTINGS[space])

    def fn():
        net.zero_grad(set_to_none=True)
        loss = loss_fn(net, inputs, targets)
        (loss[0] if isinstance(loss, tuple) else loss).backward()

    fn()
    return count(fn)


def step_counts(space, backend, settings=None):
    """(total, by op) of one first-order search step (architecture step, then weight step, with
    their optimizers), as ``benchmarks.search_step`` runs it, after two warm-up steps."""
    _, step, _ = make_step(space, f"{backend} eager", "cpu", settings or SETTINGS[space])
    step(), step()
    return count(step)


def pass_counters(space, backend, settings=None, counter_type=LaunchCounter):
    """{pass: the counter that watched it} for the two passes of a first-order search step, counted
    apart after two warm-up steps: "architecture" (``Architect.first_order_grads``: forward and
    backward on the val batch for the alpha gradients; no weight gradient) and "weight"
    (``Search.weight_step``: forward, backward for the weight gradients, clipping and SGD; no
    alpha gradient)."""
    settings = settings or SETTINGS[space]
    search, step, _ = make_step(space, f"{backend} eager", "cpu", settings)
    inputs, targets = make_batch(space, settings)
    step(), step()
    passes = {"architecture": lambda: search.architect.first_order_grads(inputs, targets),
              "weight": lambda: search.weight_step(inputs, targets)}
    return {name: counted(fn, counter_type) for name, fn in passes.items()}


def describe(space, s):
    if space == "darts":
        return f"C{s['C']} L{s['layers']}"
    return f"F{s['filter_multiplier']} L{s['layers']} B{s['blocks']}"


def run(device="cpu", quick=False, **_):
    """The rows of ``benchmarks.run --only launches`` (counted on the CPU: the same on every device)."""
    rows = []
    for space in ("darts", "autodeeplab"):
        settings = SETTINGS[space]
        space_rows = []
        for backend in BACKENDS:
            fwd_bwd, _ = forward_backward_counts(space, backend, settings)
            step, _ = step_counts(space, backend, settings)
            space_rows.append({"bench": f"{space} launches", "case": describe(space, settings), "device": "any",
                               "variant": backend, "ops_fwd_bwd": fwd_bwd, "ops_step": step})
        reference = space_rows[0]
        for row in space_rows:
            row["ops_ratio"] = reference["ops_step"] / row["ops_step"]
        rows += space_rows
    return rows


def main(argv=None):
    from .common import print_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--by-op", action="store_true", help="also print the fused backend's ops by name")
    parser.add_argument("--passes", action="store_true",
                        help="only the fused backend's architecture and weight passes, op by op")
    parser.add_argument("--space", choices=["darts", "autodeeplab"], action="append")
    args = parser.parse_args(argv)
    if args.passes:
        for space in args.space or ["darts", "autodeeplab"]:
            for name, counter in pass_counters(space, "fused").items():
                print(f"\n{space}, fused, {name} pass: {counter.total} ops")
                for op, n in counter.counts.most_common():
                    print(f"  {n:6d}  {op}")
        return
    rows = [row for row in run() if row["bench"].split()[0] in (args.space or ["darts", "autodeeplab"])]
    print_table(rows, ["bench", "case", "variant", "ops_fwd_bwd", "ops_step", "ops_ratio"])
    if args.by_op:
        for space in args.space or ["darts", "autodeeplab"]:
            total, by_op = forward_backward_counts(space, "fused")
            print(f"\n{space}, fused, one forward+backward: {total} ops")
            for name, n in by_op.most_common():
                print(f"  {n:6d}  {name}")


if __name__ == "__main__":
    main()
