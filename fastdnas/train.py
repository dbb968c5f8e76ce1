"""Retraining a found architecture from scratch: SGD with cosine lr (DARTS: drop-path, optional auxiliary head)."""
import json
import os
import time
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.utils import clip_grad_norm_

from .data.base import epoch_generator, iterate_batches
from .precision import AMP_MODES, MixedPrecision
from .search.distributed import SINGLE, broadcast_, data_parallel, sum_meter_, sync_batch_norm
from .search.loop import Metrics, Progress, format_metrics, prefixed, progress_mode, write_json_lines
from .search.schedule import cosine_lr, set_lr


@dataclass
class TrainConfig:
    """DARTS retraining settings (the original CIFAR-10 recipe by default)."""

    epochs: int = 600
    batch_size: int = 96
    lr: float = 0.025
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    auxiliary_weight: float = 0.4  # used when the network has an auxiliary head
    drop_path_prob: float = 0.2  # reached at the last epoch, growing linearly from 0
    seed: int = 0
    log_interval: int = 50
    amp: str = None  # None (float32), "bf16" or "fp16" (autocast; fp16 with loss scaling)

    def __post_init__(self):
        if self.amp is not None and self.amp not in AMP_MODES:
            raise ValueError(f"invalid training settings: amp={self.amp!r} (expected one of {sorted(AMP_MODES)} or None)")
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "lr_min": 0 <= self.lr_min <= self.lr,
            "momentum": 0 <= self.momentum < 1,
            "weight_decay": self.weight_decay >= 0,
            "grad_clip": self.grad_clip > 0,
            "auxiliary_weight": self.auxiliary_weight >= 0,
            "drop_path_prob": 0 <= self.drop_path_prob < 1,
            "log_interval": self.log_interval >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError("invalid training settings: " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))


def count_parameters(model):
    """Parameters used at test time (the auxiliary head only helps training, as DARTS counts)."""
    return sum(p.numel() for name, p in model.named_parameters() if "auxiliary" not in name)


def classification_loss(model, inputs, targets, auxiliary_weight):
    logits, logits_aux = model(inputs)
    loss = F.cross_entropy(logits, targets)
    if logits_aux is not None:
        loss = loss + auxiliary_weight * F.cross_entropy(logits_aux, targets)
    return loss, logits


@torch.no_grad()
def evaluate(model, data, batch_size, device, loss_fn=None, metrics=Metrics, precision=None, distributed=SINGLE):
    """Metrics of ``model`` on ``data`` in eval mode; ``loss_fn(model, inputs, targets)`` returns
    (loss, logits) (default: cross entropy of a FinalNetwork's logits). ``distributed``: each
    rank evaluates its shard of ``data`` and the meters are summed, so every rank reads the
    metrics of the whole set."""
    loss_fn = loss_fn or classification_eval_loss
    precision = precision or MixedPrecision()
    model.eval()
    meter = metrics(device)
    for inputs, targets in iterate_batches(data, batch_size, rank=distributed.rank,
                                           world_size=distributed.world_size):
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with precision.autocast():
            loss, logits = loss_fn(model, inputs, targets)
        meter.update(loss, logits, targets)
    model.train()
    return sum_meter_(meter, distributed).read()


def classification_eval_loss(model, inputs, targets):
    logits, _ = model(inputs)
    return F.cross_entropy(logits, targets), logits


def train_network(model, train_data, test_data, config=None, device="cpu", out_dir=None, progress=None, log=print,
                  loss_fn=None, eval_loss_fn=None, metrics=Metrics, eval_name="test", distributed=SINGLE,
                  sync_bn=False):
    """Train ``model`` and evaluate it on ``test_data`` after every epoch.

    By default ``model`` is a FinalNetwork (forward returns (logits, logits_aux); drop-path and the
    auxiliary head are used). Other tasks pass ``loss_fn(model, inputs, targets)`` -> (loss, logits)
    for training and ``eval_loss_fn`` for evaluation (default: ``loss_fn``), and ``metrics(device)``
    (e.g. segmentation metrics); ``eval_name`` prefixes the evaluation keys of the records
    ("test_acc", or "val_miou", ...). Returns the per-epoch records; with ``out_dir``,
    ``log.jsonl`` is rewritten after each epoch.

    ``distributed`` (from ``distributed.setup``, under torchrun) makes the training data-parallel
    as the search is: ``batch_size`` stays the global batch, each of the N ranks trains on its
    shard of it under DistributedDataParallel, evaluates its shard of ``test_data`` (the meters
    summed over the ranks), and only rank 0 logs and writes. Before each evaluation every rank
    takes rank 0's buffers (BatchNorm statistics), so the ranks end with the same model.
    ``sync_bn``: BatchNorm statistics over the batches of all ranks; the N-rank training then
    computes what one process would with the same global batch, up to float rounding (with
    drop-path 0 and no augmentation: those draw their randomness per rank).
    """
    config = config or TrainConfig()
    if loss_fn is None:
        loss_fn = partial(classification_loss, auxiliary_weight=config.auxiliary_weight)
        eval_loss_fn = eval_loss_fn or classification_eval_loss
    eval_loss_fn = eval_loss_fn or loss_fn
    if len(train_data) < config.batch_size:
        raise ValueError(f"batch_size {config.batch_size} is larger than the training set ({len(train_data)} images)")
    world = distributed.world_size
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} (the global batch) must be a multiple of the {world} ranks")
    rank_batch_size = config.batch_size // world
    device = torch.device(device)
    progress = progress_mode(progress) if distributed.is_main else None
    log = log if distributed.is_main else (lambda *args, **kwargs: None)
    torch.manual_seed(config.seed)  # drop-path masks come from the global generator
    if sync_bn and distributed.enabled:
        model = sync_batch_norm(model, device, distributed.group)
    model = model.to(device)
    train_model = data_parallel(model, distributed, device)  # the model itself in one process
    parameters = list(model.parameters())
    optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, foreach=True)
    precision = MixedPrecision(config.amp, device)
    scaler = precision.scaler  # fp16 only; its calls pass straight through otherwise
    records = []
    for epoch in range(config.epochs):
        start = time.perf_counter()
        lr = cosine_lr(epoch, config.epochs, config.lr, config.lr_min)
        set_lr(optimizer, lr)
        if hasattr(model, "drop_path_prob"):
            model.drop_path_prob = config.drop_path_prob * epoch / config.epochs
        model.train()
        meter = metrics(device)
        batches = iterate_batches(train_data, rank_batch_size, epoch_generator(config.seed, epoch), shuffle=True,
                                  drop_last=True, rank=distributed.rank, world_size=world)
        steps = len(train_data) // config.batch_size
        bar = Progress(progress, steps, f"epoch {epoch + 1}/{config.epochs}", config.log_interval, lr, log)
        for step, (inputs, targets) in enumerate(batches):
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                loss, logits = loss_fn(train_model, inputs, targets)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            clip_grad_norm_(parameters, config.grad_clip, foreach=True)
            scaler.step(optimizer)
            scaler.update()
            meter.update(loss.detach(), logits, targets)
            bar.update(step, meter)
        bar.close()
        train = sum_meter_(meter, distributed).read()
        broadcast_(list(model.buffers()), distributed)
        test = evaluate(model, test_data, config.batch_size, device, eval_loss_fn, metrics, precision, distributed)
        record = {"epoch": epoch, "lr": lr}
        if hasattr(model, "drop_path_prob"):
            record["drop_path_prob"] = model.drop_path_prob
        record.update({**prefixed("train", train), **prefixed(eval_name, test), "time": time.perf_counter() - start})
        records.append(record)
        log(f"epoch {epoch + 1}/{config.epochs} lr {lr:.5f} train {format_metrics(train)} "
            f"{eval_name} {format_metrics(test)} ({record['time']:.1f} s)")
        if out_dir is not None and distributed.is_main:
            write_json_lines(os.path.join(out_dir, "log.jsonl"), records)
    return records


def write_result(path, records, model, config, extra=None, eval_name="test"):
    """The final numbers as one JSON object (every ``eval_name`` metric of the last epoch)."""
    last = records[-1]
    result = {
        **{key: value for key, value in last.items() if key.startswith(eval_name + "_")},
        "train_acc": last["train_acc"],
        "parameters": count_parameters(model),
        "time": sum(r["time"] for r in records),
        "epochs": len(records),
        "config": asdict(config),
        **(extra or {}),
    }
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return result
