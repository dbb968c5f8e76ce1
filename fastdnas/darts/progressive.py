"""DrNAS's progressive schedule on the DARTS space (SPEC 8.1: DARTS-space/train_search.py:120-182,
utils.py:197-207, net2wider.py, operations.py): the search runs in stages of equal length; at the
start of each later stage the operations of every edge are pruned to the top-k theta and the
partial channels widened (K smaller: more channels through the operations).

- ``ProgressiveSchedule``: the stages (K and operations kept per stage), which stage an epoch is
  in, and the stage-local gate of the architecture updates (theta is updated only once the
  stage-local epoch reaches the warm-up, in every stage).
- ``prune``: the top-k theta of each edge are kept, the others set to 0 and masked for good
  (a pruned entry of an earlier stage ranks below every kept one). The masked Dirichlet sample
  is ``w * m / sum(w * m)`` (``parts.masked``).
- ``widen_network``: every candidate of every partial-channel edge goes from C/K_old to C/K_new
  channels by net2wider's copying rule: a widened tensor is ``cat(old, old[index])`` along the
  widened dimension, ``index`` drawn uniformly from the old channels (with repeats); a depthwise
  convolution's new filters are copies, the 1x1 convolution after it takes the same index for its
  new input columns, the BatchNorm after a convolution the convolution's output index (running
  mean and variance copied). No 1/n rescaling (Net2Net's) is made: the new partial channels are
  real input channels, so the widened supernet computes a new function, the one these copies
  define. The returned records say how each weight grew, so that its momentum buffer grows alike
  (``widen_momentum``).
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..nn.operations import DilConv, FactorizedReduce, Identity, SepConv, Zero


@dataclass(frozen=True)
class ProgressiveSchedule:
    """``partial_channels[s]`` and ``keep_ops[s]``: K and the operations kept per edge in stage s
    (DrNAS on the DARTS space: (6, 4) and (7, 4)); the epochs split evenly between the stages."""

    partial_channels: tuple
    keep_ops: tuple

    @property
    def stages(self):
        return len(self.partial_channels)

    def stage_epochs(self, epochs):
        if epochs % self.stages:
            raise ValueError(f"epochs ({epochs}) must split evenly into the {self.stages} stages")
        return epochs // self.stages

    def stage_of(self, epoch, epochs):
        return min(epoch // self.stage_epochs(epochs), self.stages - 1)

    def local_epoch(self, epoch, epochs):
        """The epoch within its stage (0-based)."""
        return epoch - self.stage_of(epoch, epochs) * self.stage_epochs(epochs)

    def updates_arch(self, epoch, epochs, arch_start_epoch):
        """theta is updated when the stage-local epoch is >= ``arch_start_epoch`` (train_search.py:182)."""
        return self.local_epoch(epoch, epochs) >= arch_start_epoch


def check_schedule(partial_channels, keep_ops, channels, num_ops):
    """Raises ValueError naming the argument for a schedule that cannot run on C=``channels``."""
    partial_channels, keep_ops = tuple(partial_channels), tuple(keep_ops)
    if len(partial_channels) < 1 or len(keep_ops) != len(partial_channels):
        raise ValueError(f"stage_partial_channels and stage_keep_ops need one entry per stage, got "
                         f"{list(partial_channels)} and {list(keep_ops)}")
    for k in partial_channels:
        if not isinstance(k, int) or k < 1 or channels % k:
            raise ValueError(f"stage_partial_channels must be positive divisors of C={channels}, got "
                             f"{list(partial_channels)}")
    if any(b > a for a, b in zip(partial_channels, partial_channels[1:])):
        raise ValueError(f"stage_partial_channels must not grow from stage to stage (the channels are widened, "
                         f"never narrowed), got {list(partial_channels)}")
    if keep_ops[0] != num_ops or any(not isinstance(n, int) or n < 1 for n in keep_ops) \
            or any(b > a for a, b in zip(keep_ops, keep_ops[1:])):
        raise ValueError(f"stage_keep_ops must start at the {num_ops} operations and not grow, each >= 1, got "
                         f"{list(keep_ops)}")
    return ProgressiveSchedule(partial_channels, keep_ops)


@torch.no_grad()
def prune(theta, keep, mask=None):
    """Keeps the ``keep`` largest theta of each row (entries masked before rank below every kept
    one), sets the others to 0 in place; returns the new boolean mask (utils.py:197-207)."""
    ranked = theta if mask is None else torch.where(mask, theta, theta - 1e6)
    values, index = ranked.topk(keep, dim=-1)
    theta.copy_(torch.zeros_like(theta).scatter(-1, index, values))
    return torch.zeros_like(theta, dtype=torch.bool).scatter(-1, index, True)


def _grow(tensor, dim, index):
    return torch.cat([tensor, tensor.index_select(dim, index.to(tensor.device))], dim=dim)


def _grow_blocks(tensor, blocks):
    """``blocks``: (size, index) per consecutive block of dim 0, each grown on its own."""
    pieces, start = [], 0
    for size, index in blocks:
        pieces.append(_grow(tensor[start : start + size], 0, index))
        start += size
    return torch.cat(pieces)


def _random_index(old, new, generator):
    return torch.randint(0, old, (new - old,), generator=generator)


@torch.no_grad()
def _widen_param(param, grow, records):
    param.data = grow(param.data)
    records.append((param, grow))


def widen_conv_out(conv, new, generator, records, depthwise=False):
    """Output channels of ``conv`` to ``new``; ``depthwise``: its groups and inputs grow with them."""
    index = _random_index(conv.out_channels, new, generator)
    _widen_param(conv.weight, lambda t: _grow(t, 0, index), records)
    conv.out_channels = new
    if depthwise:
        conv.in_channels = conv.groups = new
    return index


def widen_conv_in(conv, new, generator, records, index=None):
    """Input channels of a full (groups=1) ``conv`` to ``new``: the new columns copy ``index``'s."""
    index = _random_index(conv.in_channels, new, generator) if index is None else index
    _widen_param(conv.weight, lambda t: _grow(t, 1, index), records)
    conv.in_channels = new
    return index


@torch.no_grad()
def widen_bn(bn, blocks, records):
    """A BatchNorm's features grow block by block (``blocks``: (size, index) per consecutive block;
    one block but for FactorizedReduce's two halves): running statistics and affine parameters copied."""
    grow = lambda t: _grow_blocks(t, blocks)  # noqa: E731
    if bn.running_mean is not None:
        bn.running_mean = grow(bn.running_mean)
        bn.running_var = grow(bn.running_var)
    if bn.affine:
        _widen_param(bn.weight, grow, records)
        _widen_param(bn.bias, grow, records)
    bn.num_features += sum(len(index) for _, index in blocks)


def widen_candidate(op, new, generator, records):
    """One candidate operation of C channels widened to ``new`` channels (operations.py's wider())."""
    if isinstance(op, (Identity, Zero)):
        return
    if isinstance(op, nn.Sequential):  # pool + BatchNorm(affine=False)
        bn = op[1]
        widen_bn(bn, [(bn.num_features, _random_index(bn.num_features, new, generator))], records)
        return
    if isinstance(op, (SepConv, DilConv)):
        layers = op.op
        halves = [(1, 2, 3), (5, 6, 7)] if isinstance(op, SepConv) else [(1, 2, 3)]
        for depthwise, pointwise, bn in halves:
            old = layers[pointwise].out_channels
            index = widen_conv_out(layers[depthwise], new, generator, records, depthwise=True)
            widen_conv_in(layers[pointwise], new, generator, records, index=index)
            widen_bn(layers[bn], [(old, widen_conv_out(layers[pointwise], new, generator, records))], records)
        return
    if isinstance(op, FactorizedReduce):
        half = op.conv_1.out_channels
        outs = []
        for conv in (op.conv_1, op.conv_2):
            widen_conv_in(conv, new, generator, records)
            outs.append(widen_conv_out(conv, new // 2, generator, records))
        widen_bn(op.bn, [(half, outs[0]), (half, outs[1])], records)
        return
    raise TypeError(f"widen_candidate: no widening rule for {type(op).__name__}")


def widen_network(network, partial_channels, generator):
    """Every partial-channel edge of ``network`` to K=``partial_channels``; returns the records."""
    records = []
    for cell in network.cells:
        for edge in cell._ops:
            new = edge.channels // partial_channels
            for op in edge._ops:
                widen_candidate(op, new, generator, records)
            edge.partial_channels = partial_channels
        cell.partial_channels = partial_channels
    network.partial_channels = partial_channels
    return records


@torch.no_grad()
def widen_momentum(optimizer, records):
    """The SGD momentum buffers grown as their parameters were, in the same order (net2wider.py's
    configure_optimizer: a new SGD whose buffers are the old ones expanded)."""
    for param, grow in records:
        state = optimizer.state.get(param, {})
        if state.get("momentum_buffer") is not None:
            state["momentum_buffer"] = grow(state["momentum_buffer"])
