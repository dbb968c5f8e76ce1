"""Bilevel search loop: per step an architecture step on a val batch, then a weight step on a train batch.

The loop knows nothing about the search space: a model exposes ``arch_parameters()`` and
``weight_parameters()``, and ``loss_fn(model, inputs, targets)`` returns the loss (or (loss, logits)).
"""
import json
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch.nn.utils import clip_grad_norm_

from ..data.base import epoch_generator, iterate_batches
from ..precision import AMP_MODES, MixedPrecision
from ..data.prefetch import DevicePrefetcher
from .architect import Architect, cross_entropy_loss, differentiating, split_loss
from .checkpoint import load_checkpoint, remove_stale_temporaries, rng_state, save_checkpoint, set_rng_state
from .distributed import SINGLE, average_, broadcast_, data_parallel, sum_meter_, sync_batch_norm
from .schedule import cosine_lr, set_lr


BN_KEEPS = 0.9  # the share of a BatchNorm running statistic kept per training step (momentum 0.1)


@dataclass
class SearchConfig:
    """DARTS search settings (SPEC section 2 defaults)."""

    epochs: int = 50
    batch_size: int = 64
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_betas: tuple = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    unrolled: bool = False
    arch_start_epoch: int = 0  # no architecture updates before this epoch (warm-up)
    seed: int = 2
    log_interval: int = 50  # steps between progress-bar updates (each one reads the device once)
    amp: str = None  # None (float32), "bf16" or "fp16" (autocast; fp16 with loss scaling)
    sync_bn: bool = False  # data-parallel runs: BatchNorm statistics over the batches of all ranks
    # Variants of the step that other authors' code takes (NAS-Bench-201: DARTS first order and
    # GDAS): the weight step before the architecture step, Nesterov momentum (the unrolled step's
    # virtual step stays plain momentum, as in their code), and the clip norm over the weights'
    # gradients together with the alphas' gradients of the same training loss.
    weight_step_first: bool = False
    nesterov: bool = False
    clip_with_arch: bool = False

    def __post_init__(self):
        self.arch_betas = tuple(self.arch_betas)
        if self.amp is not None and self.amp not in AMP_MODES:
            raise ValueError(f"invalid search settings: amp={self.amp!r} (expected one of {sorted(AMP_MODES)} or None)")
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "lr_min": 0 <= self.lr_min <= self.lr,
            "momentum": 0 <= self.momentum < 1,
            "weight_decay": self.weight_decay >= 0,
            "grad_clip": self.grad_clip > 0,
            "arch_lr": self.arch_lr > 0,
            "arch_weight_decay": self.arch_weight_decay >= 0,
            "arch_start_epoch": self.arch_start_epoch >= 0,
            "log_interval": self.log_interval >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError("invalid search settings: " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))


class Metrics:
    """Loss and accuracy sums kept on the device; ``read()`` is the only host synchronisation.

    Accuracy counts every labelled element (one per image, or one per pixel for segmentation);
    targets outside [0, classes) (ignore labels such as 255 or -100) are left out.
    """

    def __init__(self, device):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.labelled = torch.zeros((), dtype=torch.long, device=device)
        self.samples = 0

    def update(self, loss, logits, targets):
        n = targets.shape[0]
        self.loss_sum += loss.detach() * n
        self.samples += n
        if logits is not None:
            labelled = (targets >= 0) & (targets < logits.shape[1])
            self.correct += ((logits.detach().argmax(1) == targets) & labelled).sum()
            self.labelled += labelled.sum()

    def read(self):
        loss_sum, correct, labelled = torch.stack([self.loss_sum.double(), self.correct.double(),
                                                   self.labelled.double()]).tolist()  # one transfer
        return {"loss": loss_sum / max(self.samples, 1), "acc": correct / max(labelled, 1)}


def prefixed(prefix, values):
    """{"loss": 1.0, "acc": 0.5} -> {"<prefix>_loss": 1.0, "<prefix>_acc": 0.5}: the keys of an epoch record."""
    return {f"{prefix}_{key}": value for key, value in values.items()}


def format_metrics(values):
    """'loss 0.1234 acc 0.9876 ...': the scalar metrics of one ``read()``, for the log line."""
    return " ".join(f"{key} {value:.4f}" for key, value in values.items() if isinstance(value, float))


class Search:
    """Runs (and resumes) a bilevel architecture search.

    ``describe(model)`` may return a JSON-able dict merged into each epoch's record (DARTS: the
    genotype). ``metrics(device)`` makes the per-epoch meters (default ``Metrics``: loss and
    accuracy; segmentation passes one that adds mIoU); every value a meter reads goes into the
    record as ``train_<name>`` / ``val_<name>``. With ``out_dir`` the run writes ``checkpoint.pt``
    and ``log.jsonl`` there after every epoch; ``extra`` is stored in the checkpoint as is (e.g.
    the command-line settings).

    ``distributed`` (from ``distributed.setup``) makes the run data-parallel: ``batch_size`` stays
    the global batch, each of the N ranks takes batch_size / N of it (its shard of both halves),
    the weight step runs under DistributedDataParallel, the architecture gradients are averaged
    over the ranks, and only rank 0 logs and writes. Batch s of all ranks together is batch s of
    a single-process run, so with ``sync_bn`` the N-rank search computes what one process would
    (up to float rounding), and the checkpoint, the same whatever N, resumes with any N.

    ``cuda_graphs=True`` (CUDA, one process, float32) replays every search step from CUDA graphs
    (``GraphedSearchStep``).
    """

    def __init__(self, model, train_data, val_data, config=None, loss_fn=cross_entropy_loss, device="cpu",
                 describe=None, out_dir=None, extra=None, progress=None, log=print, metrics=Metrics,
                 distributed=SINGLE, cuda_graphs=False, epoch_note=None):
        self.config = config = config or SearchConfig()
        self.distributed = distributed
        world = distributed.world_size
        if config.batch_size % world:
            raise ValueError(f"batch_size {config.batch_size} (the global batch) must be a multiple of the "
                             f"{world} ranks")
        self.rank_batch_size = config.batch_size // world
        for name, data in (("search-train", train_data), ("search-val", val_data)):
            if len(data) < config.batch_size:
                raise ValueError(f"batch_size {config.batch_size} is larger than the {name} set ({len(data)} images)")
        self.device = torch.device(device)
        if config.sync_bn and distributed.enabled:
            model = sync_batch_norm(model, self.device, distributed.group)
        self.model = model.to(self.device)
        self.train_data, self.val_data = train_data, val_data
        self.loss_fn = loss_fn
        self.metrics = metrics
        self.describe = describe
        self.epoch_note = epoch_note  # record -> text appended to the epoch's line
        self.out_dir = out_dir
        self.extra = extra or {}
        self.progress = progress_mode(progress) if distributed.is_main else None
        self.log = log if distributed.is_main else (lambda *args, **kwargs: None)
        self.weights = list(model.weight_parameters())
        # On CUDA each optimizer step is one fused kernel; on the CPU the foreach ops do as well.
        fused = self.device.type == "cuda"
        self.weight_optimizer = torch.optim.SGD(self.weights, lr=config.lr, momentum=config.momentum,
                                                weight_decay=config.weight_decay, nesterov=config.nesterov,
                                                **optimizer_kind(fused))
        self.precision = MixedPrecision(config.amp, self.device)
        # The weight step's forward goes through DDP (the model itself with one process).
        self.train_model = data_parallel(self.model, distributed, self.device)
        self.architect = Architect(model, self.weight_optimizer, loss_fn, lr=config.arch_lr, betas=config.arch_betas,
                                   weight_decay=config.arch_weight_decay, unrolled=config.unrolled,
                                   average_gradients=partial(average_, context=distributed), precision=self.precision,
                                   fused=fused, plain_virtual_step=config.nesterov)
        self.epoch = 0  # epochs completed
        self.history = {"epochs": [], "alphas": []}
        self.prefetcher = DevicePrefetcher(self.device)
        self.graphed_step = None
        # A network searched in stages (DrNAS's progressive schedule) changes shape between them.
        self.schedule = getattr(model, "progressive", None)
        if self.schedule is not None:
            self.schedule.stage_epochs(config.epochs)  # raises unless the epochs split evenly
            if cuda_graphs or distributed.enabled:
                raise ValueError("a progressive schedule widens the network between stages: run it in one process "
                                 "without cuda_graphs")
        if cuda_graphs:
            if not getattr(model, "uses_all_weights", True):
                raise ValueError("cuda_graphs: this network chooses on the host which operations to run (GDAS with "
                                 "sampled_only=True); build it with sampled_only=False to capture the step")
            if config.weight_step_first or config.clip_with_arch:
                raise ValueError("cuda_graphs: the captured step runs the architecture step first and clips the "
                                 "weights' gradients alone; run this search without CUDA graphs")
            if getattr(model, "checks_noise_on_host", False):
                raise ValueError("cuda_graphs: this network draws its Gumbel noise again after a host check (GDAS as "
                                 "its authors run it); search without CUDA graphs")
            if getattr(model, "perturbation", None) is not None:
                raise ValueError("cuda_graphs: the perturbation of the weight step is not captured; search without "
                                 "--cuda-graphs")
            if distributed.enabled or config.amp:
                # DDP's gradient buckets and the fp16 loss scaler's overflow check sync with the host.
                raise ValueError("cuda_graphs: supported for one process in float32; drop --amp and run "
                                 "without torchrun to capture the step")
            from .graphed import GraphedSearchStep

            self.graphed_step = GraphedSearchStep(self)

    @property
    def checkpoint_path(self):
        return os.path.join(self.out_dir, "checkpoint.pt")

    def run(self, until=None):
        """Search from the current epoch up to epoch ``until`` (default: all); returns the history."""
        for epoch in range(self.epoch, self.config.epochs if until is None else until):
            start = time.perf_counter()
            self.enter_stage_of(epoch)
            lr = cosine_lr(epoch, self.config.epochs, self.config.lr, self.config.lr_min)
            train = self.train_epoch(epoch, lr)
            # Rank 0's BatchNorm running statistics for everyone: one model to evaluate and save.
            broadcast_(list(self.model.buffers()), self.distributed)
            val = self.evaluate(self.val_data)
            record = {
                "epoch": epoch,
                "lr": lr,
                "arch_updates": self.updates_arch(epoch),
                **prefixed("train", train),
                **prefixed("val", val),
                "time": time.perf_counter() - start,
            }
            if self.schedule is not None:
                record["stage"] = self.model.stage
            if self.describe is not None:
                record.update(self.describe(self.model))
            self.history["epochs"].append(record)
            self.history["alphas"].append([a.detach().cpu().clone() for a in self.model.arch_parameters()])
            self.epoch = epoch + 1
            # Saved before the epoch's line is printed: an interrupt after the line never loses the epoch.
            if self.out_dir is not None and self.distributed.is_main:
                self.save(self.checkpoint_path)
                write_json_lines(os.path.join(self.out_dir, "log.jsonl"), self.history["epochs"])
            self.log(f"epoch {epoch + 1}/{self.config.epochs} lr {lr:.5f} train {format_metrics(train)} "
                     f"val {format_metrics(val)} ({record['time']:.1f} s)"
                     f"{self.epoch_note(record) if self.epoch_note is not None else ''}")
            steps = self.steps_per_epoch()
            if epoch == 0 and BN_KEEPS ** steps > 0.05:
                # As in the DARTS code, val is measured in eval mode. After a short first epoch the
                # BatchNorm running statistics are still far from the batch statistics the network
                # trains with, so val accuracy can sit at chance: say so, lest it alarm.
                self.log(f"  (val: eval mode, BatchNorm running statistics; after {steps} steps they still hold "
                         f"{BN_KEEPS ** steps:.0%} of their initial values, so val trails train for the first epochs)")
        return self.history

    def updates_arch(self, epoch):
        """Whether epoch ``epoch`` updates the architecture: after the warm-up (``arch_start_epoch``),
        counted within each stage when the network is searched in stages."""
        if self.schedule is not None:
            return self.schedule.updates_arch(epoch, self.config.epochs, self.config.arch_start_epoch)
        return epoch >= self.config.arch_start_epoch

    def enter_stage_of(self, epoch):
        """Prunes and widens the network (``enter_stage``) when ``epoch`` starts a new stage; the weight
        optimizer's momentum buffers grow with the weights, the architecture optimizer's state is kept
        and the learning rate schedule goes on over all the epochs (DrNAS's train_search.py:150-159).
        The widening draws from a generator seeded by the seed and the stage, so a resumed run widens alike."""
        if self.schedule is None:
            return
        from ..darts.progressive import widen_momentum

        stage = self.schedule.stage_of(epoch, self.config.epochs)
        while self.model.stage < stage:
            nxt = self.model.stage + 1
            generator = torch.Generator().manual_seed(self.config.seed * 1000 + nxt)
            widen_momentum(self.weight_optimizer, self.model.enter_stage(nxt, generator))
            self.log(f"stage {nxt + 1}/{self.schedule.stages}: {self.schedule.keep_ops[nxt]} operations kept per edge, "
                     f"partial channels K={self.schedule.partial_channels[nxt]}")

    def train_epoch(self, epoch, lr):
        """One pass over the search-train half, zipped with a pass over the search-val half."""
        config = self.config
        set_lr(self.weight_optimizer, lr)
        set_epoch = getattr(self.model, "set_search_epoch", None)  # schedules of the network (GDAS: tau)
        if set_epoch is not None:
            set_epoch(epoch, config.epochs)
        update_arch = self.updates_arch(epoch)
        generator = epoch_generator(config.seed, epoch)
        shard = {"rank": self.distributed.rank, "world_size": self.distributed.world_size}
        train_batches = iterate_batches(self.train_data, self.rank_batch_size, generator, shuffle=True,
                                        drop_last=True, **shard)
        val_batches = iterate_batches(self.val_data, self.rank_batch_size, generator, shuffle=True, drop_last=True,
                                      **shard)
        steps = self.steps_per_epoch()
        metrics = self.metrics(self.device)
        self.model.train()
        progress = Progress(self.progress, steps, f"epoch {epoch + 1}/{config.epochs}", config.log_interval, lr,
                            self.log)
        batches = self.prefetcher.prefetch(zip(train_batches, val_batches))  # on the device, one step ahead
        for step, ((inputs, targets), (val_inputs, val_targets)) in enumerate(batches):
            loss, logits = self.search_step(inputs, targets, val_inputs, val_targets, update_arch)
            metrics.update(loss, logits, targets)
            progress.update(step, metrics)
        progress.close()
        return sum_meter_(metrics, self.distributed).read()

    def steps_per_epoch(self):
        return min(len(self.train_data), len(self.val_data)) // self.config.batch_size

    def search_step(self, inputs, targets, val_inputs, val_targets, update_arch=True):
        """One bilevel step on batches on the device: the architecture step on the val batch (if
        ``update_arch``), then the weight step on the train batch; returns the weight step's
        (loss, logits). Nothing in it reads the device from the host."""
        if self.graphed_step is not None:
            return self.graphed_step(inputs, targets, val_inputs, val_targets, update_arch)
        if self.config.weight_step_first:
            result = self.weight_step(inputs, targets)
            if update_arch:
                self.architect.step(inputs, targets, val_inputs, val_targets)
            return result
        if update_arch:
            self.architect.step(inputs, targets, val_inputs, val_targets)
        return self.weight_step(inputs, targets)

    def weight_step(self, inputs, targets):
        """SGD on the weights only: the forward runs with the architecture parameters frozen
        (``differentiating``), so the backward computes no alpha gradient, not even inside the fused ops.

        The gradient is clipped after the fp16 loss scale is divided out (and, data-parallel, after
        DDP has averaged it); the GradScaler calls pass straight through without fp16.
        """
        self.weight_optimizer.zero_grad(set_to_none=True)
        arch = list(self.model.arch_parameters()) if self.config.clip_with_arch else []
        params = self.weights + arch
        # The last architecture step's gradient, still on the alphas, counts in the clip norm (as in
        # the authors' loop); it is already unscaled, so under fp16 it is kept apart from the new,
        # scaled gradient and added back after that is unscaled.
        leftover = []
        if self.precision.scaler.is_enabled():
            leftover = [a.grad for a in arch]
            for a in arch:
                a.grad = None
        # A network whose weight step runs on perturbed architecture weights (SDARTS) says so here.
        perturbed = getattr(self.model, "perturbed", None)
        with (perturbed(self.loss_fn, inputs, targets) if perturbed is not None else nullcontext()), \
                self.precision.autocast(), differentiating(self.model, params):
            loss, logits = split_loss(self.loss_fn(self.train_model, inputs, targets))
        scaler = self.precision.scaler
        scaler.scale(loss).backward(inputs=params)
        scaler.unscale_(self.weight_optimizer)
        if arch:  # the alphas' gradients count in the norm, then go (the architecture step sets its own)
            for a in arch:
                if a.grad is None:
                    a.grad = torch.zeros_like(a)
            # DDP leaves the alphas out: their gradients averaged here, so every rank clips alike.
            average_([a.grad for a in arch], context=self.distributed)
            if self.precision.scaler.is_enabled():
                torch._foreach_mul_([a.grad for a in arch], 1.0 / scaler.get_scale())
                for a, old in zip(arch, leftover):
                    if old is not None:
                        a.grad.add_(old)
            clip_grad_norm_(params, self.config.grad_clip, foreach=True)
            for a in arch:
                a.grad = None
        else:
            clip_grad_norm_(self.weights, self.config.grad_clip, foreach=True)
        scaler.step(self.weight_optimizer)
        scaler.update()  # once per iteration: after the architecture step and this one
        return loss.detach(), logits

    @torch.no_grad()
    def evaluate(self, data):
        """The metrics of ``data`` in eval mode (BatchNorm running statistics)."""
        self.model.eval()
        metrics = self.metrics(self.device)
        shard = {"rank": self.distributed.rank, "world_size": self.distributed.world_size}
        for inputs, targets in self.prefetcher.prefetch(iterate_batches(data, self.rank_batch_size, **shard)):
            with self.precision.autocast():
                loss, logits = split_loss(self.loss_fn(self.model, inputs, targets))
            metrics.update(loss, logits, targets)
        self.model.train()
        return sum_meter_(metrics, self.distributed).read()

    def state_dict(self):
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "arch_parameters": [a.detach().clone() for a in self.model.arch_parameters()],
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "arch_optimizer": self.architect.state_dict(),
            "rng": rng_state(),
            "grad_scaler": self.precision.state_dict(),
            "history": self.history,
            "config": asdict(self.config),
            "extra": self.extra,
            **({"schedule": self.model.schedule_state()} if self.schedule is not None else {}),
        }

    def load_state_dict(self, state):
        if self.schedule is not None:  # the stage's shapes first: the state dict is of the widened network
            self.model.load_schedule_state(state["schedule"])
        self.model.load_state_dict(state["model"])
        with torch.no_grad():
            for a, saved in zip(self.model.arch_parameters(), state["arch_parameters"], strict=True):
                a.copy_(saved)
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        self.architect.load_state_dict(state["arch_optimizer"])
        self.precision.load_state_dict(state.get("grad_scaler", {}))
        # The checkpoint names the optimizer implementations of the run that wrote it (maybe on
        # another device, or with CUDA graphs); this run's own choice wins.
        for optimizer in (self.weight_optimizer, self.architect.optimizer):
            use_optimizer_kind(optimizer, fused=self.device.type == "cuda")
        set_rng_state(state["rng"])
        self.history = state["history"]
        self.epoch = state["epoch"]

    def save(self, path):
        save_checkpoint(self.state_dict(), path)

    def resume(self, path=None):
        """Load ``path`` (default: out_dir/checkpoint.pt); ``run()`` then continues where it stopped."""
        path = path or self.checkpoint_path
        remove_stale_temporaries(os.path.dirname(os.path.abspath(path)))
        self.load_state_dict(load_checkpoint(path, keys=CHECKPOINT_KEYS))
        return self


# What a checkpoint must hold for load_state_dict ("grad_scaler" is optional: older checkpoints lack it).
CHECKPOINT_KEYS = ("epoch", "model", "arch_parameters", "weight_optimizer", "arch_optimizer", "rng", "history",
                   "config", "extra")


def optimizer_kind(fused):
    """Optimizer options: one fused kernel per step (CUDA), or the multi-tensor foreach path."""
    return {"fused": True} if fused else {"foreach": True}


def use_optimizer_kind(optimizer, fused):
    """Switch a (just loaded) optimizer to the fused or the foreach implementation, uncaptured."""
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = (True, False) if fused else (None, True)
        if "capturable" in group:
            group["capturable"] = False
    for param, state in optimizer.state.items():
        if isinstance(state.get("step"), torch.Tensor):  # Adam: fused keeps its step count on the device
            state["step"] = state["step"].to(device=param.device if fused else "cpu", dtype=torch.float32)


def progress_mode(progress):
    """``progress`` None (auto), True/"bar", False, "lines" -> "bar", "lines" or None.

    Auto: a bar on a terminal; elsewhere (a log file, a cluster job) lines, so that a slow epoch
    does not look hung."""
    if progress is None:
        return "bar" if sys.stderr.isatty() else "lines"
    if progress in (True, "bar", "lines"):
        return "bar" if progress is True else progress
    if progress is False:
        return None
    raise ValueError(f"progress must be None, True, False, 'bar' or 'lines', got {progress!r}")


class Progress:
    """Progress within an epoch: a tqdm bar updated every ``log_interval`` steps, or a line every
    ``log_interval`` steps or ``seconds`` (whichever comes first). The meter is read (one host
    synchronisation) only when shown; the last step is left to the epoch's own line."""

    def __init__(self, mode, steps, description, log_interval, lr, log=print, seconds=30.0):
        self.mode, self.steps, self.description, self.log_interval = mode, steps, description, log_interval
        self.lr, self.log, self.seconds = lr, log, seconds
        self.start = self.last = time.perf_counter()
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=steps, desc=description, leave=False, dynamic_ncols=True)

    def update(self, step, meter):
        done = step + 1
        if self.mode == "bar":
            if done % self.log_interval == 0 or done == self.steps:
                self.bar.set_postfix(**{k: f"{v:.3f}" for k, v in meter.read().items() if isinstance(v, float)},
                                     lr=f"{self.lr:.4f}")
            self.bar.update()
        elif self.mode == "lines" and done < self.steps:
            now = time.perf_counter()
            if done % self.log_interval == 0 or now - self.last >= self.seconds:
                self.last = now
                self.log(f"  {self.description} step {done}/{self.steps}: {format_metrics(meter.read())} "
                         f"({now - self.start:.0f} s)")

    def close(self):
        if self.bar is not None:
            self.bar.close()


def write_json_lines(path, records):
    """Rewrite the whole log from the history (atomically), so it always agrees with the checkpoint."""
    tmp_path = path + ".tmp"
    with open(tmp_path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    os.replace(tmp_path, path)
