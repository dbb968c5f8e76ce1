"""Data-parallel search with torch.distributed: one process per device, launched by torchrun.

Each rank holds the whole supernet. The weights train under DistributedDataParallel (gradients
averaged by DDP); the architecture parameters are left out of DDP and their gradients are
averaged here with one all-reduce, so every rank applies the same Adam step to the same alphas
(and betas) and they stay bit-identical. Each rank reads its own shard of every epoch's
permutation (``iterate_batches(..., rank, world_size)``, the order DistributedSampler would
give). Only rank 0 writes files or prints.

A ``Distributed`` may stand for a group of the ranks (``split``: ``search nb201 --seeds`` runs
one seed per group): its rank and world size are then those inside the group, and every
collective here goes over the group only.

Without torchrun (no RANK / WORLD_SIZE in the environment) ``SINGLE`` stands for the one
process and every helper here does nothing, so the single-process search is unchanged.
"""
import gc
import inspect
import os
import weakref
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.distributed._functional_collectives as functional_collectives
import torch.distributed.nn.functional as dist_nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the job: its rank, the number of ranks, its rank on its node.

    With ``group`` (a process group of ``split``) rank and world_size count inside the group, and
    ``members`` are the group's ranks in the whole job (the group's rank 0 is ``members[0]``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: object = None  # None: the whole job (torch's default group)
    members: tuple = ()

    @property
    def main_rank(self):
        """The job-wide rank of this group's rank 0 (the ``src`` of broadcasts)."""
        return self.members[0] if self.members else 0

    @property
    def enabled(self):
        return self.world_size > 1

    @property
    def is_main(self):
        """Rank 0: the one that logs, saves checkpoints and draws pictures."""
        return self.rank == 0


SINGLE = Distributed()
_started_here = False  # whether setup() made the process group (so shutdown() may end it)


def launched_by_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def from_environment():
    """The ranks torchrun announced in RANK, WORLD_SIZE and LOCAL_RANK (``SINGLE`` without torchrun)."""
    if not launched_by_torchrun():
        return SINGLE
    try:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as error:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {error}") from error
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE={world_size}), got {rank}")
    return Distributed(rank, world_size, local_rank)


def setup(device):
    """Join torchrun's process group and pick this rank's device.

    ``device`` is "cpu" (gloo backend) or "cuda"/"cuda:N" (nccl backend; each rank takes the GPU
    of its LOCAL_RANK, so N is ignored). Returns (Distributed, device name). Without torchrun,
    or with one process, returns (SINGLE-like, ``device``) and starts nothing.
    """
    context = from_environment()
    if not context.enabled:
        return context, device
    device_type = torch.device(device).type
    if device_type == "cuda":
        if context.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {context.local_rank} has no GPU: this node has {torch.cuda.device_count()}")
        torch.cuda.set_device(context.local_rank)
        device = f"cuda:{context.local_rank}"
    elif device_type != "cpu":
        raise ValueError(f"distributed search runs on cpu or cuda, got device {device!r}")
    if not dist.is_initialized():
        global _started_here
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        _started_here = True
    if dist.get_world_size() != context.world_size or dist.get_rank() != context.rank:
        raise RuntimeError("the process group does not match RANK / WORLD_SIZE")
    return context, device


def shutdown(owned_only=True):
    """End the process group ``setup`` started (one made by the caller is left alone, unless
    ``owned_only=False``), in an order that cannot deadlock.

    The DDP wrappers ``data_parallel`` made let go of their process group first, while the group
    is still registered: a DDP Reducer that outlives the group holds its last reference, and
    freeing it then (with the GIL held) runs the gloo group's destructor, which joins a worker
    thread that may itself wait for the GIL to free a tensor (a hang seen with torch 2.4). Every
    collective fastdnas issues is waited for where it is issued, so no work is in flight here.
    """
    global _started_here
    if dist.is_initialized() and (_started_here or not owned_only):
        release_data_parallel()
        dist.destroy_process_group()  # drops the group from Python, whose destructor runs without the GIL
    _started_here = False


_data_parallel_wrappers = weakref.WeakSet()  # the DDP wrappers data_parallel made and has not released


def release_data_parallel():
    """Free the C++ state (Reducer, Logger) of every DDP wrapper ``data_parallel`` made: after
    this they no longer reference the process group, and can no longer run a training step."""
    gc.collect()  # wrappers that only a reference cycle kept alive go now
    for wrapper in list(_data_parallel_wrappers):
        for name in ("logger", "reducer"):  # the Logger holds the Reducer, the Reducer the group
            if name in wrapper.__dict__:
                delattr(wrapper, name)
        _data_parallel_wrappers.discard(wrapper)
    gc.collect()


def average_(tensors, context):
    """Replace each tensor by its mean over the ranks, in place, with one all-reduce.

    Every rank receives the same reduced values and divides them the same way, so the results
    are bit-identical across ranks.
    """
    if not context.enabled or not tensors:
        return tensors
    with torch.no_grad():
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, group=context.group)
        flat.div_(context.world_size)
        torch._foreach_copy_(tensors, [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in tensors]),
                                                                             tensors)])
    return tensors


@torch.no_grad()
def broadcast_(tensors, context):
    """Copy rank 0's values into ``tensors`` on every rank."""
    if context.enabled:
        for t in tensors:
            dist.broadcast(t, src=context.main_rank, group=context.group)
    return tensors


def differentiable_all_reduce(tensor, group=None):
    """The sum of ``tensor`` over the ranks (of ``group``, default all); its backward sums the
    incoming gradients over the same ranks."""
    group = dist.group.WORLD if group is None else group
    if not _FUNCTIONAL_ALL_REDUCE_HAS_AUTOGRAD:
        return dist_nn.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return functional_collectives.wait_tensor(functional_collectives.all_reduce(tensor, "sum", group))


# Newer torch (2.11 and later at least) gives the functional all-reduce a backward; torch 2.4
# passes no gradient through it, so there the autograd function of torch.distributed.nn sums.
_FUNCTIONAL_ALL_REDUCE_HAS_AUTOGRAD = torch._C._dispatch_has_kernel_for_dispatch_key(
    "_c10d_functional::all_reduce", "Autograd")


def sum_meter_(meter, context):
    """Add up a meter's running sums over the ranks (every tensor attribute and ``samples``).

    The meters of the loop (``Metrics``, ``SegmentationMetrics``) hold only sums, so the summed
    meter reads as if one process had seen every rank's batches.
    """
    if not context.enabled:
        return meter
    for name, value in vars(meter).items():
        if isinstance(value, torch.Tensor):
            dist.all_reduce(value, group=context.group)
    samples = torch.tensor([meter.samples], dtype=torch.int64, device=meter_device(meter))
    dist.all_reduce(samples, group=context.group)
    meter.samples = int(samples.item())
    return meter


def meter_device(meter):
    tensors = [v for v in vars(meter).values() if isinstance(v, torch.Tensor)]
    return tensors[0].device if tensors else torch.device("cpu")


def data_parallel(model, context, device):
    """``model`` wrapped in DistributedDataParallel for the weight step (``model`` itself with one process).

    The architecture parameters are left to DDP's ignore list: the weight step never computes
    their gradient, and the architect averages it itself. Buffers (BatchNorm running statistics)
    are not broadcast every step; the loop copies rank 0's buffers once per epoch.
    """
    if not context.enabled:
        return model
    arch = list(model.arch_parameters()) if hasattr(model, "arch_parameters") else []  # none in a final network
    arch_ids = {id(p) for p in arch}
    # DDP names a parameter "<module name>.<parameter name>" (".alphas" on the root module).
    ignored = [f"{module_name}.{name}" for module_name, module in model.named_modules()
               for name, p in module.named_parameters(recurse=False) if id(p) in arch_ids]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    device = torch.device(device)
    device_ids = [device.index] if device.type == "cuda" else None
    # The same initial state everywhere (DDP broadcasts the weights it owns, not the ignored alphas).
    broadcast_(arch + list(model.buffers()), context)
    # A network that runs only some of its weights per step (GDAS's sampled operations) makes DDP
    # look for the unused ones.
    unused = not getattr(model, "uses_all_weights", True)
    wrapper = nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=unused,
                                                  process_group=context.group, **_NO_FORWARD_BUFFER_SYNC)
    _data_parallel_wrappers.add(wrapper)  # released by shutdown() before the group goes
    return wrapper


# No buffer broadcast before each forward pass. Newer torch spells it forward_sync_buffers (its
# broadcast_buffers is deprecated); older torch (2.11 and before) has broadcast_buffers only,
# which also skips the broadcast at construction: data_parallel broadcasts the buffers itself.
_NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}
)


def sync_batch_norm(model, device, group=None):
    """Make every BatchNorm of ``model`` normalise over the batches of all ranks (of ``group``) together.

    On CUDA: torch's SyncBatchNorm. On CPU, where SyncBatchNorm does not run, ``CrossRankBatchNorm``
    (the same arithmetic from autograd-aware all-reduces). Parameters and buffers are shared with
    the replaced modules, so the state dict keeps its keys.
    """
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
    return CrossRankBatchNorm.convert(model, group)


class CrossRankBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the batches of every rank (SyncBatchNorm's
    semantics), for CPU tensors and the gloo backend.

    The per-channel sums go through torch's functional (autograd-aware) all-reduce, whose
    backward all-reduces the incoming gradients: each rank's backward sees the effect of its
    inputs on every rank's loss, exactly as SyncBatchNorm's backward does. Two passes (mean,
    then the centred sum of squares) keep the variance accurate. Every rank must call forward
    and backward in the same order, as DDP requires anyway. In eval mode, or alone, it is
    plain BatchNorm. ``group`` (None: all ranks) is the process group its statistics cover.
    """

    group = None

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input [N, C, ...], got shape {list(input.shape)}")

    def forward(self, x):
        if not (self.training and dist.is_initialized() and dist.get_world_size(self.group) > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dtype = torch.promote_types(x.dtype, torch.float32)  # statistics of half inputs in float32
        values = x.to(dtype)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=dtype, device=x.device)
        sums = differentiable_all_reduce(torch.cat([values.sum(dims), count.reshape(1)]), self.group)
        total = sums[-1]
        mean = sums[:-1] / total
        centred = values - mean.view(shape)
        var = differentiable_all_reduce(centred.square().sum(dims), self.group) / total
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self.update_running_stats(mean.detach(), var.detach(), total.detach())
        return out.to(x.dtype)

    @torch.no_grad()
    def update_running_stats(self, mean, var, count):
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * count / (count - 1).clamp_min(1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)

    @classmethod
    def convert(cls, module, group=None):
        """``module`` with every BatchNorm replaced (in place below the root; returns the root)."""
        if isinstance(module, _BatchNorm) and not isinstance(module, (cls, nn.SyncBatchNorm)):
            converted = cls(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
            if module.affine:
                converted.weight, converted.bias = module.weight, module.bias
            converted.running_mean, converted.running_var = module.running_mean, module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
            converted.train(module.training)
            converted.group = group
            return converted
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child, group))
        return module


def run_on_main(fn, context):
    """``fn()`` on rank 0, its result (or its exception) sent to every rank: one reading of files
    (settings, a checkpoint to resume) that every node agrees on, shared disk or not."""
    if not context.enabled:
        return fn()
    message = [None]
    if context.is_main:
        try:
            message[0] = ("ok", fn())
        except Exception as error:  # re-raised on every rank, so no rank waits for the others
            message[0] = ("error", error)
    dist.broadcast_object_list(message, src=context.main_rank, group=context.group)
    status, value = message[0]
    if status == "error":
        raise value
    return value


def barrier(context):
    if context.enabled:
        dist.barrier(group=context.group)


def split(context, groups):
    """The job's ranks cut into ``groups`` groups of consecutive ranks, the same size each (``groups``
    must divide the world size): the ``Distributed`` of this rank's group, whose collectives stay
    inside it. Every rank must call this, with the same ``groups`` (torch makes the groups
    collectively)."""
    if groups < 1 or context.world_size % groups:
        raise ValueError(f"{groups} groups do not divide the {context.world_size} ranks into equal groups")
    size = context.world_size // groups
    mine = None
    for first in range(0, context.world_size, size):
        members = tuple(range(first, first + size))
        group = dist.new_group(list(members))  # made by every rank, in the same order
        if context.rank in members:
            mine = Distributed(context.rank - first, size, context.local_rank, group, members)
    return mine


__all__ = [
    "CrossRankBatchNorm",
    "Distributed",
    "SINGLE",
    "average_",
    "barrier",
    "broadcast_",
    "data_parallel",
    "from_environment",
    "release_data_parallel",
    "run_on_main",
    "setup",
    "split",
    "shutdown",
    "sum_meter_",
    "sync_batch_norm",
]
