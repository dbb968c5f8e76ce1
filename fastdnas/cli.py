"""Command line: fastdnas search darts|autodeeplab|nb201 ..., fastdnas train darts|autodeeplab ... and
fastdnas score nb201 ....

Settings come, later ones winning, from: built-in defaults, the dataset's defaults, ``--config
FILE.json`` (same keys as the flags, '-' or '_'), and the flags given on the command line.
"""
import argparse
import difflib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

# Shared by search and retraining, then the dataset-sized settings of each.
COMMON_DEFAULTS = {"dataset": "digits", "data": "data", "device": None, "threads": None, "log_interval": 50,
                   "amp": None}
SEARCH_DEFAULTS = {
    "lr": 0.025, "lr_min": 0.001, "momentum": 0.9, "weight_decay": 3e-4, "grad_clip": 5.0,
    "arch_lr": 3e-4, "arch_betas": [0.5, 0.999], "arch_weight_decay": 1e-3, "unrolled": False, "arch_start_epoch": 0,
    "sync_bn": False,
    "backend": "fused", "seed": 2, "epochs": 50, "batch_size": 64, "init_channels": 16, "layers": 8,
    "cuda_graphs": False,
    # The search method, and the settings of the one that has them.
    "method": "darts", "partial_channels": 4, "tau_max": 10.0, "tau_min": 0.1,
    # The parts of a preset replaced (fastdnas.darts.composed); None: the preset's own.
    "arch_weights": None, "perturbation": None, "regulariser": None, "selection": None,
    "pt_interval": 5,  # DARTS-PT: tuning epochs between decisions (81 tuning epochs at 5)
}
SEARCH_METHODS = ("darts", "pc-darts", "gdas", "drnas", "sdarts-rs", "sdarts-adv", "beta-darts", "fair-darts",
                  "darts-pt")
METHOD_SETTINGS = {"partial_channels": ("pc-darts", "drnas"), "tau_max": ("gdas",), "tau_min": ("gdas",),
                   "pt_interval": ("darts-pt",)}
PART_SETTINGS = ("arch_weights", "perturbation", "regulariser", "selection")
# Per (method, dataset): applied over the dataset defaults (a config file and flags still win).
SEARCH_METHOD_DEFAULTS = {
    # PC-DARTS's CIFAR search: batch 256, SGD lr 0.1 cosine to 0, Adam 6e-4 on alphas and betas,
    # architecture updates from epoch 15 of 50, K = 4.
    ("pc-darts", "cifar10"): {"batch_size": 256, "lr": 0.1, "lr_min": 0.0, "arch_lr": 6e-4, "arch_start_epoch": 15},
    ("pc-darts", "cifar100"): {"batch_size": 256, "lr": 0.1, "lr_min": 0.0, "arch_lr": 6e-4, "arch_start_epoch": 15},
    # The digits network of DARTS at C=16, so that the candidates get 4 channels (2-channel
    # convolutions abort on some CPUs inside torch's oneDNN backward); the arch lr 10x the paper's
    # (as for DARTS), warm-up 15/50 of the epochs.
    ("pc-darts", "digits"): {"init_channels": 16, "arch_lr": 6e-3, "arch_start_epoch": 4},
    # GDAS's CIFAR search runs 240 epochs (tau 10 -> 0.1); the rest as DARTS.
    ("gdas", "cifar10"): {"epochs": 240},
    ("gdas", "cifar100"): {"epochs": 240},
    # DrNAS on the DARTS space (SPEC 8.1, DARTS-space/train_search.py:25-46, 120-182): batch 64,
    # SGD lr 0.1 cosine to 0, Adam 6e-4 (its 'l2' regulariser: weight decay 1e-3 on theta), K = 6,
    # C=36, 20 layers, theta updated from epoch 10 of a 25-epoch stage; one stage of 50 epochs here
    # (the progressive pruning between stages is not implemented).
    **{("drnas", d): {"lr": 0.1, "lr_min": 0.0, "arch_lr": 6e-4, "partial_channels": 6, "init_channels": 36,
                      "layers": 20, "arch_start_epoch": 10} for d in ("cifar10", "cifar100")},
    ("drnas", "digits"): {"init_channels": 16, "arch_lr": 6e-3, "partial_channels": 4, "arch_start_epoch": 5},
    ("drnas", "synthetic"): {"init_channels": 8, "partial_channels": 2},
    # SDARTS and beta-DARTS: DARTS's settings (SPEC 8.2: sota/cnn/train_search.py:34-57; 8.3).
    # FairDARTS (SPEC 8.4): batch 128, SGD lr 0.005 -> 0.001, Adam 3e-3 with betas (0.9, 0.999).
    **{("fair-darts", d): {"batch_size": 128, "lr": 0.005, "arch_lr": 3e-3, "arch_betas": [0.9, 0.999]}
       for d in ("cifar10", "cifar100")},
    ("fair-darts", "digits"): {"arch_betas": [0.9, 0.999], "arch_lr": 3e-2},
    ("fair-darts", "synthetic"): {"arch_betas": [0.9, 0.999]},
    # DARTS-PT (SPEC 8.5): the supernet as DARTS; a decision every tuning epoch on the small sets.
    ("darts-pt", "digits"): {"pt_interval": 1},
    ("darts-pt", "synthetic"): {"pt_interval": 1},
}
# Fewer GDAS steps than this (the digits default: 12 x 11 = 132) leave each sampled candidate too
# little training for the supernet to learn (README, "PC-DARTS and GDAS"): the start line says so.
GDAS_FEW_STEPS = 1000
SEARCH_DATASET_DEFAULTS = {
    "cifar10": {},  # SPEC section 2 as it stands
    "cifar100": {},
    # A narrow 5-cell network, 11 steps an epoch (times and results measured: README); with far fewer
    # steps than a CIFAR search, a 10x larger arch lr lets the alphas move visibly.
    "digits": {"epochs": 12, "batch_size": 64, "init_channels": 8, "layers": 5, "arch_lr": 3e-3},
    "synthetic": {"epochs": 2, "batch_size": 16, "init_channels": 4, "layers": 3, "arch_lr": 3e-3},
}
TRAIN_DEFAULTS = {
    "lr": 0.025, "lr_min": 0.0, "momentum": 0.9, "weight_decay": 3e-4, "grad_clip": 5.0,
    "auxiliary": False, "auxiliary_weight": 0.4, "drop_path_prob": 0.2, "cutout": 0, "seed": 0,
    "epochs": 600, "batch_size": 96, "init_channels": 36, "layers": 20,
}
TRAIN_DATASET_DEFAULTS = {
    # The DARTS CIFAR recipe (its reported numbers use the auxiliary head and cutout).
    "cifar10": {"auxiliary": True, "cutout": 16},
    "cifar100": {"auxiliary": True, "cutout": 16},
    # Sized for a CPU (times and accuracy measured: README, "The two commands").
    "digits": {"epochs": 20, "batch_size": 64, "init_channels": 16, "layers": 5, "lr": 0.05, "drop_path_prob": 0.1},
    "synthetic": {"epochs": 2, "batch_size": 16, "init_channels": 4, "layers": 3, "drop_path_prob": 0.0},
    # The DARTS ImageNet mobile recipe (train_imagenet.py): 14 cells at C=48, label smoothing 0.1.
    "imagenet": {"epochs": 250, "batch_size": 128, "init_channels": 48, "layers": 14, "lr": 0.1,
                 "weight_decay": 3e-5, "auxiliary": True, "drop_path_prob": 0.0},
}
# Auto-DeepLab (SPEC section 4): first order; alphas and betas share one Adam; architecture
# updates only in the second half. crop_size None: the dataset's own (shapes: the whole image).
AUTODEEPLAB_SEARCH_DEFAULTS = {
    "dataset": "shapes",
    "lr": 0.025, "lr_min": 0.001, "momentum": 0.9, "weight_decay": 3e-4, "grad_clip": 5.0,
    "arch_lr": 3e-3, "arch_betas": [0.9, 0.999], "arch_weight_decay": 1e-3, "unrolled": False,
    "arch_start_epoch": 20, "backend": "fused", "seed": 2, "epochs": 40, "batch_size": 2, "sync_bn": False,
    "layers": 12, "blocks": 5, "filter_multiplier": 8, "crop_size": None, "cuda_graphs": False,
}
AUTODEEPLAB_SEARCH_DATASET_DEFAULTS = {
    "cityscapes": {},  # 321x321 crops of half-resolution images, batch 2 (the paper's search)
    "voc": {},
    # A CPU-sized search (times measured: README): a 4-layer trellis of 3-block cells, F = 4, on
    # 64 x 64 crops. One thread: the supernet's thousands of tiny ops gain nothing from a second.
    "shapes": {"epochs": 6, "arch_start_epoch": 3, "batch_size": 16, "layers": 4, "blocks": 3,
               "filter_multiplier": 4, "crop_size": 64, "threads": 1},
}
AUTODEEPLAB_TRAIN_DEFAULTS = {
    "dataset": "shapes",
    "lr": 0.05, "lr_min": 0.0, "momentum": 0.9, "weight_decay": 3e-4, "grad_clip": 5.0, "seed": 0,
    "epochs": 100, "batch_size": 8, "filter_multiplier": 20, "crop_size": None,
}
AUTODEEPLAB_TRAIN_DATASET_DEFAULTS = {
    "cityscapes": {},
    "voc": {},
    # Sized for a CPU (time and val mIoU of the default search's network measured: README).
    "shapes": {"epochs": 40, "batch_size": 16, "filter_multiplier": 16, "lr": 0.1, "threads": 1},
}
# NAS-Bench-201 (SPEC section 7): the authors' settings for the space (C=16, N=5; SGD Nesterov
# lr 0.025 -> 0.001, wd 5e-4, clip 5; Adam 3e-4 on the alphas; DARTS 50 epochs, GDAS 250).
NB201_SEARCH_DEFAULTS = {
    "lr": 0.025, "lr_min": 0.001, "momentum": 0.9, "weight_decay": 5e-4, "grad_clip": 5.0,
    "arch_lr": 3e-4, "arch_betas": [0.5, 0.999], "arch_weight_decay": 1e-3, "unrolled": False, "arch_start_epoch": 0,
    "sync_bn": False, "backend": "fused", "seed": 2, "epochs": 50, "batch_size": 64, "init_channels": 16,
    "layers": 5, "cuda_graphs": False, "method": "darts", "tau_max": 10.0, "tau_min": 0.1,
    "track_running_stats": True, "benchmark": None, "split_file": None,
}
NB201_SEARCH_DATASET_DEFAULTS = {
    "cifar10": {}, "cifar100": {}, "ImageNet16-120": {},
    # A CPU-sized supernet on 8x8 digits: C=8, 2 cells per stage, 12 epochs of 11 steps, the arch lr
    # 10x the paper's (as for search darts on digits).
    "digits": {"epochs": 12, "init_channels": 8, "layers": 2, "arch_lr": 3e-3},
    "synthetic": {"epochs": 2, "batch_size": 16, "init_channels": 4, "layers": 1, "arch_lr": 3e-3},
}
NB201_METHODS = ("darts", "gdas")
NB201_METHOD_DEFAULTS = {("gdas", d): {"epochs": 250} for d in ("cifar10", "cifar100", "ImageNet16-120")}
# (command, space) -> (defaults, dataset defaults): the settings each command knows.
SETTINGS = {
    ("search", "darts"): (SEARCH_DEFAULTS, SEARCH_DATASET_DEFAULTS),
    ("train", "darts"): (TRAIN_DEFAULTS, TRAIN_DATASET_DEFAULTS),
    ("search", "autodeeplab"): (AUTODEEPLAB_SEARCH_DEFAULTS, AUTODEEPLAB_SEARCH_DATASET_DEFAULTS),
    ("train", "autodeeplab"): (AUTODEEPLAB_TRAIN_DEFAULTS, AUTODEEPLAB_TRAIN_DATASET_DEFAULTS),
    ("search", "nb201"): (NB201_SEARCH_DEFAULTS, NB201_SEARCH_DATASET_DEFAULTS),
}
# Per space: (method, dataset) -> the method's own defaults.
METHOD_DEFAULTS = {"darts": SEARCH_METHOD_DEFAULTS, "nb201": NB201_METHOD_DEFAULTS}
# The spaces of each command.
COMMAND_SPACES = {"search": ("darts", "autodeeplab", "nb201"), "train": ("darts", "autodeeplab")}
# Settings that name a file to read rather than a number (known to the train commands).
FILE_SETTINGS = {"darts": "genotype", "autodeeplab": "arch"}
# What --resume may change; every other setting must match the interrupted run. How the run is
# executed may change (the checkpoint does not depend on the precision or the number of ranks).
RESUME_MAY_CHANGE = {"out", "device", "threads", "log_interval", "data", "resume", "config", "amp", "sync_bn", "cuda_graphs",
                     "allow_unverified_checkpoint", "benchmark"}
# Flags about this invocation only: not settings of the run (kept out of settings.json and the checkpoint).
INVOCATION_ONLY = ("resume", "config", "allow_unverified_checkpoint")
SEARCH_CONFIG_KEYS = ("epochs", "batch_size", "lr", "lr_min", "momentum", "weight_decay", "grad_clip", "arch_lr",
                      "arch_betas", "arch_weight_decay", "unrolled", "arch_start_epoch", "seed", "log_interval",
                      "amp", "sync_bn")
TRAIN_CONFIG_KEYS = ("epochs", "batch_size", "lr", "lr_min", "momentum", "weight_decay", "grad_clip", "seed",
                     "log_interval", "amp")


class UsageError(Exception):
    """A bad command line or config file: reported in one line, exit status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what cluster schedulers send to stop a job), handled as Ctrl-C."""


def raise_terminated(signum, frame):
    raise Terminated


SEARCH_DARTS, TRAIN_DARTS = ("search", "darts"), ("train", "darts")
SEARCH_ADL, TRAIN_ADL = ("search", "autodeeplab"), ("train", "autodeeplab")
SEARCH_NB201 = ("search", "nb201")
EVERY = (SEARCH_DARTS, SEARCH_ADL, TRAIN_DARTS, TRAIN_ADL, SEARCH_NB201)
SEARCHES = (SEARCH_DARTS, SEARCH_ADL, SEARCH_NB201)
DARTS, AUTODEEPLAB = (SEARCH_DARTS, TRAIN_DARTS), (SEARCH_ADL, TRAIN_ADL)
# The flags: (flag, argparse options, help, the (command, space) pairs that have it).
FLAGS = [
    ("--config", {"metavar": "FILE.json"}, "settings file (keys as the flags); flags override it", EVERY),
    ("--data", {"metavar": "PATH"}, "folder with the CIFAR-10/100 files in the torchvision layout", DARTS),
    ("--data", {"metavar": "PATH"}, "folder with the CIFAR-10/100 files in the torchvision layout or ImageNet16/, "
     "and the authors' split files", (SEARCH_NB201,)),
    ("--data", {"metavar": "PATH"}, "folder with the Cityscapes (leftImg8bit/, gtFine/) or VOC (VOC2012/) files",
     AUTODEEPLAB),
    ("--out", {"metavar": "DIR"}, "output folder", EVERY),
    ("--epochs", {"type": int}, "", EVERY),
    ("--batch-size", {"type": int}, "images per step (under torchrun: over all ranks)", SEARCHES),
    ("--batch-size", {"type": int}, "images per step", (TRAIN_DARTS, TRAIN_ADL)),
    ("--lr", {"type": float}, "initial weight learning rate (cosine annealed)", EVERY),
    ("--lr-min", {"type": float}, "final weight learning rate", EVERY),
    ("--momentum", {"type": float}, "", EVERY),
    ("--weight-decay", {"type": float}, "", EVERY),
    ("--grad-clip", {"type": float}, "max gradient norm of the weights", EVERY),
    ("--init-channels", {"type": int}, "channels C of the first cells", DARTS + (SEARCH_NB201,)),
    ("--layers", {"type": int}, "search cells N per stage (3 stages of N cells, 2 residual blocks between them)",
     (SEARCH_NB201,)),
    ("--layers", {"type": int}, "number of cells", DARTS),
    ("--layers", {"type": int}, "trellis layers L", (SEARCH_ADL,)),
    ("--blocks", {"type": int}, "blocks B per cell", (SEARCH_ADL,)),
    ("--filter-multiplier", {"type": int, "metavar": "F"}, "a cell at downsample rate s has F*s/4 channels per block",
     AUTODEEPLAB),
    ("--crop-size", {"type": int, "metavar": "PIXELS"}, "side of the training crops", AUTODEEPLAB),
    ("--seed", {"type": int}, "", EVERY),
    ("--device", {}, "cpu, cuda, cuda:1, ...", EVERY),
    ("--threads", {"type": int, "metavar": "N"},
     "CPU threads for torch; free cores: 1 on a 1-2 core machine, else the cores the 1-minute load average leaves "
     "free (OMP_NUM_THREADS, when set, wins)", EVERY),
    ("--log-interval", {"type": int, "metavar": "STEPS"},
     "steps between progress updates (without a terminal: a line every STEPS steps or 30 s)", EVERY),
    ("--amp", {"choices": ["bf16", "fp16"]}, "mixed precision: autocast to bfloat16, or float16 with loss scaling",
     EVERY),
    ("--arch-lr", {"type": float}, "Adam learning rate of the architecture parameters", SEARCHES),
    ("--arch-betas", {"type": float, "nargs": 2, "metavar": ("BETA1", "BETA2")},
     "Adam betas of the architecture optimizer", SEARCHES),
    ("--arch-weight-decay", {"type": float}, "", SEARCHES),
    ("--unrolled", {"action": argparse.BooleanOptionalAction}, "second-order architecture step", SEARCHES),
    ("--arch-start-epoch", {"type": int, "metavar": "N"}, "no architecture updates in the first N epochs", SEARCHES),
    ("--backend", {"choices": ["fused", "fused_sum", "reference"]},
     "fused: nodes in one kernel (least memory); fused_sum: only node sums fused; reference: eager", SEARCHES),
    ("--method", {"choices": NB201_METHODS}, "darts (--unrolled: second order) or gdas", (SEARCH_NB201,)),
    ("--track-running-stats", {"action": argparse.BooleanOptionalAction},
     "the cells' BatchNorms keep running statistics (the NAS-Bench-201 runs) or not (NATS-Bench's script)",
     (SEARCH_NB201,)),
    ("--benchmark", {"metavar": "PATH"}, "NATS-Bench topology archive (folder NATS-tss-v1_0-3ffb9-simple: lazy) or "
     "file, or a NAS-Bench-201 .pth: every epoch's cell is looked up (needs the package nats_bench)",
     (SEARCH_NB201,)),
    ("--seeds", {"metavar": "S1,S2,..."}, "one search per seed, in OUT/seed-S, then OUT/summary.json and "
     "summary.md (mean and std over seeds)", (SEARCH_NB201,)),
    ("--split-file", {"metavar": "FILE"}, "the authors' split file (default: DATA/cifar-split.txt for cifar10, "
     "DATA/cifar100-test-split.txt, DATA/imagenet-16-120-test-split.txt)", (SEARCH_NB201,)),
    ("--method", {"choices": SEARCH_METHODS}, "the search method, a preset of parts: darts; pc-darts (partial "
     "channels, edge normalisation); gdas (one sampled operation per edge); drnas (Dirichlet weights, partial "
     "channels); sdarts-rs / sdarts-adv (random / adversarial perturbation of the weight step's softmax); beta-darts "
     "(beta-decay regulariser); fair-darts (independent sigmoids, zero-one loss, threshold selection); darts-pt "
     "(perturbation-based selection with fine-tuning between decisions)", (SEARCH_DARTS,)),
    ("--pt-interval", {"type": int, "metavar": "EPOCHS"}, "darts-pt: tuning epochs between two decisions (17 "
     "decisions: 16 x EPOCHS + 1 tuning epochs, lr cosine 0.0025 -> 0.001)", (SEARCH_DARTS,)),
    ("--partial-channels", {"type": int, "metavar": "K"}, "pc-darts, drnas: 1/K of each edge's channels go through "
     "its operations", (SEARCH_DARTS,)),
    ("--arch-weights", {"choices": ["softmax", "gumbel", "dirichlet", "sigmoid"]}, "replace the preset's "
     "architecture weights", (SEARCH_DARTS,)),
    ("--perturbation", {"choices": ["none", "random", "adversarial"]}, "replace the preset's perturbation of the "
     "weight step's softmax weights (SDARTS)", (SEARCH_DARTS,)),
    ("--regulariser", {"choices": ["none", "beta-decay", "zero-one", "dirichlet-kl"]}, "replace the preset's "
     "regulariser of the architecture loss", (SEARCH_DARTS,)),
    ("--selection", {"choices": ["argmax", "threshold", "perturbation"]}, "replace the preset's selection rule (threshold: "
     "FairDARTS's, written to selected.json next to the argmax genotype)", (SEARCH_DARTS,)),
    ("--tau-max", {"type": float}, "gdas: Gumbel-softmax temperature at the first epoch", (SEARCH_DARTS, SEARCH_NB201)),
    ("--tau-min", {"type": float}, "gdas: temperature at the last epoch", (SEARCH_DARTS, SEARCH_NB201)),
    ("--resume", {"action": "store_true"}, "continue from OUT/checkpoint.pt", SEARCHES),
    ("--allow-unverified-checkpoint", {"action": "store_true"},
     "with --resume: load a checkpoint whose checksum is missing or damaged (an older fastdnas, or a file cut "
     "at its end), saying why; without it such a checkpoint is refused", SEARCHES),
    ("--sync-bn", {"action": argparse.BooleanOptionalAction},
     "under torchrun: BatchNorm statistics over the batches of all ranks (SyncBatchNorm)", SEARCHES),
    ("--cuda-graphs", {"action": argparse.BooleanOptionalAction},
     "replay each search step from CUDA graphs (CUDA devices only; same results, far fewer kernel launches)",
     SEARCHES),
    ("--genotype", {"metavar": "FILE|NAME"}, "genotype.json or genotype.txt written by a search, or a published cell "
     "(fastdnas genotypes lists them) (required)", (TRAIN_DARTS,)),
    ("--auxiliary", {"action": argparse.BooleanOptionalAction}, "auxiliary head", (TRAIN_DARTS,)),
    ("--auxiliary-weight", {"type": float}, "", (TRAIN_DARTS,)),
    ("--drop-path-prob", {"type": float}, "drop-path probability reached at the last epoch", (TRAIN_DARTS,)),
    ("--cutout", {"type": int, "metavar": "PIXELS"}, "cutout length, 0 for none (CIFAR only)", (TRAIN_DARTS,)),
    ("--arch", {"metavar": "FILE"}, "arch.json written by a search (required)", (TRAIN_ADL,)),
]
# What a default of None means, per setting.
NONE_MEANS = {**{name: "the preset's" for name in PART_SETTINGS}, "device": "cuda when available, else cpu", "threads": "free cores", "amp": "float32",
              "crop_size": {"cityscapes": "321", "voc": "321", "shapes": "the whole 96x96 image"}}
DATASET_HELP = {
    "digits": "8x8 handwritten digits bundled with scikit-learn (20%% held out for testing)",
    "cifar10": "CIFAR-10 from --data", "cifar100": "CIFAR-100 from --data", "synthetic": "random images (tests)",
    "imagenet": "ImageNet from --data/train and --data/val (ImageFolder layout: one folder per class)",
    "shapes": "generated textured shapes, 96x96, nothing to download", "cityscapes": "Cityscapes from --data",
    "voc": "PASCAL VOC 2012 from --data",
    "ImageNet16-120": "ImageNet16-120 from --data",
}
DESCRIPTIONS = {
    SEARCH_DARTS: "The DARTS bilevel search: per step an Adam step of the alphas on a search-val batch, then an "
                  "SGD step of the weights on a search-train batch (the training set split 50/50).",
    SEARCH_ADL: "The Auto-DeepLab hierarchical search: a trellis of cells over four resolutions, cell alphas and "
                "network betas updated after the warm-up epochs, mIoU measured every epoch.",
    TRAIN_DARTS: "Retrain a DARTS genotype from scratch (two ops per node, drop-path, optional auxiliary head) and "
                 "report test accuracy.",
    TRAIN_ADL: "Retrain a decoded Auto-DeepLab network (path, cell, ASPP head) and report val mIoU.",
    SEARCH_NB201: "Search the NAS-Bench-201 cell space with DARTS or GDAS (the authors' settings), scoring every "
                  "epoch's cell by the benchmark's tables with --benchmark.",
}


def show_value(name, value, dataset):
    if value is None:
        meaning = NONE_MEANS.get(name, "none")
        return meaning[dataset] if isinstance(meaning, dict) else meaning
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def on_datasets(values):
    """{value: [datasets]} -> '12 on digits, 50 on cifar10 and cifar100'."""
    return ", ".join(f"{value} on {' and '.join(names)}" for value, names in values.items())


def default_text(name, command, space):
    """'default: 12 on digits, 2 on synthetic, 50 on cifar10 and cifar100', or '' where none applies;
    then the values of the search methods that have their own ('; --method gdas: 240 on cifar10 ...')."""
    defaults, dataset_defaults = SETTINGS[command, space]
    base = {**COMMON_DEFAULTS, **defaults}
    if name == "out":
        return f"default: runs/{command}-{space}-DATASET"
    if name == "data":
        return "default: ./data"
    if name == "dataset":
        return f"default: {base['dataset']}"
    if name not in base and not any(name in d for d in dataset_defaults.values()):
        return ""
    datasets = sorted(dataset_defaults, key=lambda d: d != base["dataset"])  # the default dataset first
    values = {}
    for dataset in datasets:
        value = show_value(name, dataset_defaults[dataset].get(name, base.get(name)), dataset)
        values.setdefault(value, []).append(dataset)
    text = f"default: {next(iter(values))}" if len(values) == 1 else f"default: {on_datasets(values)}"
    methods = {SEARCH_DARTS: SEARCH_METHODS, SEARCH_NB201: NB201_METHODS}.get((command, space), ())
    for method in methods:
        values = {}
        own_defaults = METHOD_DEFAULTS[space]
        for dataset in datasets:
            if name in own_defaults.get((method, dataset), {}):
                value = show_value(name, own_defaults[method, dataset][name], dataset)
                values.setdefault(value, []).append(dataset)
        if values:
            text += f"; --method {method}: {on_datasets(values)}"
    return text


class OneLineParser(argparse.ArgumentParser):
    """Errors in one line (not the usage first), pointing to --help; no flag taken by a prefix of its name."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    parser = OneLineParser(
        prog="fastdnas", description="fastdnas: differentiable architecture search (DARTS, Auto-DeepLab, "
                                     "NAS-Bench-201) on fused "
                                     "C++/CUDA kernels.",
        epilog="fastdnas search darts --help (and so on) lists each command's settings with their defaults. "
               "Settings come, later ones winning, from the built-in defaults (sized per dataset), "
               "--config FILE.json and the flags.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command_help = {"search": "architecture search", "train": "retrain a found architecture"}
    for command in ("search", "train"):
        sub = commands.add_parser(command, help=command_help[command], description=command_help[command] + ".")
        spaces = sub.add_subparsers(dest="space", required=True, metavar="SPACE")
        for space in COMMAND_SPACES[command]:
            key = command, space
            _, dataset_defaults = SETTINGS[key]
            # SUPPRESS: only the flags actually given appear in the namespace, so they can override the rest.
            leaf = spaces.add_parser(space, help=DESCRIPTIONS[key].split(":")[0], description=DESCRIPTIONS[key],
                                     argument_default=argparse.SUPPRESS)
            datasets = "; ".join(f"{name}: {DATASET_HELP[name]}" for name in dataset_defaults)
            leaf.add_argument("--dataset", choices=list(dataset_defaults),
                              help=f"{datasets} ({default_text('dataset', command, space)})")
            for flag, options, text, where in FLAGS:
                if key in where:
                    note = default_text(flag[2:].replace("-", "_"), command, space)
                    text = f"{text} ({note})" if text and note else text or note
                    leaf.add_argument(flag, **options, help=text or None)
            leaf.set_defaults(run=run_search if command == "search" else run_train)
            if key == SEARCH_NB201:
                leaf.set_defaults(run=run_nb201_search)
    add_score_command(commands)
    from .compat_cli import add_commands

    add_commands(commands)
    return parser


def add_score_command(commands):
    score = commands.add_parser("score", help="score a finished search by a benchmark's tables",
                                description="Score a finished search by a benchmark's tables.")
    spaces = score.add_subparsers(dest="space", required=True, metavar="SPACE")
    leaf = spaces.add_parser("nb201", help="look up every epoch's cell of a `search nb201` run",
                             description="Look up every epoch's cell of a `fastdnas search nb201` run (or of each "
                                         "seed of a --seeds run) in NAS-Bench-201: log.jsonl, genotype.json and "
                                         "benchmark.png get the accuracies; a --seeds run's summary is rewritten.")
    leaf.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of the search")
    leaf.add_argument("--benchmark", metavar="PATH", required=True,
                      help="NATS-Bench topology archive (folder: lazy) or file, or a NAS-Bench-201 .pth")
    leaf.set_defaults(run=run_nb201_score)


def every_flag():
    return {flag for flag, *_ in FLAGS} | {"--dataset"}


def own_flags(command, space):
    """The flags of `fastdnas COMMAND SPACE`, --no-X forms included."""
    flags = {"--dataset", "--help"}
    for flag, options, _, where in FLAGS:
        if (command, space) in where:
            flags.add(flag)
            if options.get("action") is argparse.BooleanOptionalAction:
                flags.add("--no-" + flag[2:])
    return flags


def read_config_file(path, known):
    try:
        with open(path) as f:
            settings = json.load(f)
    except OSError as error:
        raise UsageError(f"--config: cannot read {path!r}: {error.strerror}") from error
    except json.JSONDecodeError as error:
        raise UsageError(f"--config: {path!r} is not valid JSON: {error}") from error
    if not isinstance(settings, dict):
        raise UsageError(f"--config: {path!r} must hold a JSON object of settings")
    settings = {key.replace("-", "_"): value for key, value in settings.items()}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UsageError(f"--config: unknown setting(s) {unknown} in {path!r}; known: {sorted(known)}")
    return settings


def resolve_settings(args, defaults, dataset_defaults):
    """Merge defaults, dataset defaults, the config file and the given flags into one dict."""
    given = {k: v for k, v in vars(args).items() if k not in ("command", "run", "space")}
    known = set(COMMON_DEFAULTS) | set(defaults) | {"out"}
    if args.command == "train":
        known.add(FILE_SETTINGS[args.space])
    if args.command == "search":
        known.update(("resume", "allow_unverified_checkpoint"))
    foreign = sorted(set(given) - known - {"config"})
    if foreign:
        raise UsageError(", ".join("--" + k.replace("_", "-") for k in foreign)
                         + f" does not apply to `{args.command} {args.space}`")
    from_file = read_config_file(given["config"], known - set(INVOCATION_ONLY)) if "config" in given else {}
    dataset = given.get("dataset", from_file.get("dataset", defaults.get("dataset", COMMON_DEFAULTS["dataset"])))
    if dataset not in dataset_defaults:
        raise UsageError(f"dataset {dataset!r} does not suit `{args.command} {args.space}`; "
                         f"choose one of {sorted(dataset_defaults)}")
    settings = {**COMMON_DEFAULTS, **defaults, **dataset_defaults[dataset]}
    if "method" in defaults:
        method = given.get("method", from_file.get("method", settings["method"]))
        settings.update(METHOD_DEFAULTS[args.space].get((method, dataset), {}))
    settings.update({**from_file, **given})
    settings.setdefault("out", os.path.join("runs", f"{args.command}-{args.space}-{dataset}"))
    return settings, given


def default_threads():
    """torch's CPU thread count when --threads is not given: what the machine has free.

    torch starts one thread per core, and its OpenMP threads wait for each other at every op: a
    thread whose core another process holds stalls the whole step (one forward and backward pass
    of the digits search network: 27-34 s with 2 threads on a busy 2-core machine, 1.85 s with
    1). So: 1 thread on 1-2 cores,
    where a second thread gains at most 2x and risks 15x; with more cores, those not already
    busy (the 1-minute load average), at least 1 and at most torch's own choice. OMP_NUM_THREADS,
    when set (torchrun sets 1 for several processes), wins.
    """
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores <= 2:
        return 1
    return max(1, min(torch.get_num_threads(), cores - round(os.getloadavg()[0])))


def pick_device(name, threads=None):
    """The torch device to run on; sets torch's CPU thread count (``threads``, or ``default_threads()``)."""
    import torch

    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads or default_threads())
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here (use --device cpu)")
    return name


def describe_device(device):
    """'cpu (1 thread)' for the start-up line: the thread count is the first thing to check when slow."""
    import torch

    if torch.device(device).type != "cpu":
        return str(device)
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads > 1 else ''}; --threads N to change)"


def check_positive(settings, names):
    bad = [n for n in names if settings[n] is not None and settings[n] < 1]
    if bad:
        raise UsageError(", ".join(f"--{n.replace('_', '-')} must be >= 1, got {settings[n]}" for n in bad))


def make_config(cls, settings, keys, **fixed):
    try:
        return cls(**{k: settings[k] for k in keys}, **fixed)
    except ValueError as error:
        raise UsageError(str(error)) from error


@dataclass
class SearchRun:
    """What a search space adds to the shared search command."""

    model: object
    loss_fn: object = None  # default: cross entropy of the model's logits
    metrics: object = None  # default: loss and accuracy
    describe: object = None  # model -> JSON-able dict for every epoch's record
    finish: object = None  # (model, search, out) -> names of the files written
    epoch_note: object = None  # epoch record -> text appended to the epoch's line


def run_search(args):
    """The search command of every space: settings, resume, data, the shared ``Search``, outputs.

    Under torchrun every rank runs this; rank 0 alone reads the checkpoint to resume (and sends
    it to the others), prints and writes files.
    """
    import torch

    from .search import CheckpointError, Search, SearchConfig
    from .search import distributed

    defaults, dataset_defaults = SETTINGS["search", args.space]
    settings, given = resolve_settings(args, defaults, dataset_defaults)
    context, device = start_distributed(settings)
    settings, resume_state = distributed.run_on_main(lambda: read_resume_state(settings, given), context)
    device = device or pick_device(settings["device"], settings["threads"])  # one process: saved settings count
    check_positive(settings, ["epochs", "batch_size", "layers", "log_interval"])
    check_space_settings("search", args.space, settings)
    if settings["cuda_graphs"] and torch.device(device).type != "cuda":
        raise UsageError(f"--cuda-graphs needs a CUDA device, but the search would run on {device!r} "
                         f"({'pass --device cuda' if torch.cuda.is_available() else 'no CUDA GPU here'})")
    if settings.get("method") == "gdas" and settings["sync_bn"] and context.enabled:
        raise UsageError("--sync-bn does not apply to --method gdas: each rank runs only the operations it sampled, "
                         "so the ranks' BatchNorms would not meet")
    if settings["cuda_graphs"] and (context.enabled or settings["amp"]):
        raise UsageError("--cuda-graphs captures a single-process float32 step: drop --amp, or run without torchrun")
    config = make_config(SearchConfig, settings, SEARCH_CONFIG_KEYS, **space_config_options(args.space, settings))
    if settings["batch_size"] % context.world_size:
        raise UsageError(f"--batch-size {settings['batch_size']} is the global batch: it must be a multiple of the "
                         f"{context.world_size} ranks")
    if args.space == "autodeeplab" and settings["batch_size"] // context.world_size < 2 and not settings["sync_bn"]:
        raise UsageError(f"--batch-size {settings['batch_size']} leaves fewer than 2 images per rank: the ASPP "
                         "image-pooling branch normalises over the batch (give a larger batch, or --sync-bn)")
    say = print if context.is_main else (lambda *args, **kwargs: None)

    data = load_data(settings) if args.space != "nb201" else load_nb201(settings)
    torch.manual_seed(config.seed)  # the same initial network on every rank
    space = SEARCH_SPACES[args.space](settings, data)
    model = space.model
    out = settings["out"]
    persisted = {k: v for k, v in settings.items() if k not in INVOCATION_ONLY}
    if context.is_main:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "settings.json"), "w") as f:
            json.dump(persisted, f, indent=2)
    ranks = (f" x {context.world_size} ranks (batch {config.batch_size // context.world_size} per rank)"
             if context.enabled else "")
    say(f"search {args.space} ({describe_method(args.space, settings)}) on {data.summary()}; "
        f"{sum(p.numel() for p in model.weight_parameters()):,} weights; "
        f"device {describe_device(device)}{ranks}{'; amp ' + config.amp if config.amp else ''}; output in {out}")
    options = {k: v for k, v in (("loss_fn", space.loss_fn), ("metrics", space.metrics)) if v is not None}
    search = Search(model, data.search_train, data.search_val, config, device=device, describe=space.describe,
                    out_dir=out, extra={"settings": persisted}, distributed=context, cuda_graphs=settings["cuda_graphs"],
                    epoch_note=space.epoch_note, **options)
    steps = search.steps_per_epoch() * config.epochs
    if settings.get("method") == "gdas" and steps < GDAS_FEW_STEPS:
        say(f"  (gdas: each of the {steps} steps trains one sampled operation per edge, so each candidate gets "
            f"about 1/{len(model.primitives)} of them: too few for the supernet to learn, and its train and val "
            "accuracy can stay near chance to the end, the val note after epoch 1 notwithstanding; the genotype is "
            "then close to a random draw. More --epochs help: README, \"PC-DARTS and GDAS\")")
    if resume_state is not None:
        try:
            check_resume_state(resume_state, search, os.path.join(out, "checkpoint.pt"))
        except CheckpointError as error:
            raise refused_checkpoint(error) from error
        search.load_state_dict(resume_state)
        say(f"resumed after epoch {search.epoch}")
    start = time.perf_counter()
    try:
        search.run()
    except KeyboardInterrupt as interrupt:
        if context.is_main:
            interrupt.resume_note = resume_note(os.path.join(out, "checkpoint.pt"), config.epochs)
        raise
    if context.is_main:
        written = space.finish(search.model, search, out)
        print(f"search took {time.perf_counter() - start:.0f} s; wrote {', '.join(written)}, log.jsonl, "
              f"checkpoint.pt in {out}")
    return 0


def describe_method(space, settings):
    """'method pc-darts: K=4, C=16, 5 cells, 12 epochs, arch lr 0.006, architecture updates from epoch 5/12'."""
    epochs, start = settings["epochs"], settings["arch_start_epoch"]
    if space == "nb201":
        method = settings["method"]
        own = f"tau {settings['tau_max']} -> {settings['tau_min']}" if method == "gdas" else (
            f"{'second' if settings['unrolled'] else 'first'} order")
        network = (f"method {method}: {own}, C={settings['init_channels']}, {settings['layers']} cell(s) per stage, "
                   f"BatchNorm running statistics {'on' if settings['track_running_stats'] else 'off'}")
    elif space == "darts":
        method = settings["method"]
        own = {"darts": f"{'second' if settings['unrolled'] else 'first'} order",
               "pc-darts": f"K={settings['partial_channels']}",
               "gdas": f"tau {settings['tau_max']} -> {settings['tau_min']}"}.get(method)
        if own is None or uses_parts(settings):
            own = ", ".join(f"{k} {v}" for k, v in method_parts(settings).items() if k != "primitives" and v)
        network = f"method {method}: {own}, C={settings['init_channels']}, {settings['layers']} cells"
    else:
        network = f"L={settings['layers']}, B={settings['blocks']}, F={settings['filter_multiplier']}"
    updates = f"from epoch {start + 1}/{epochs}" if start < epochs else f"none (--arch-start-epoch {start})"
    return f"{network}, {epochs} epochs, arch lr {settings['arch_lr']}, architecture updates {updates}"


def read_resume_state(settings, given):
    """(settings, checkpoint state or None): with --resume the saved run's settings and state,
    else a check that no run would be overwritten."""
    import warnings

    from .search import CheckpointError, load_checkpoint
    from .search.checkpoint import UnverifiedCheckpointWarning, remove_stale_temporaries
    from .search.loop import CHECKPOINT_KEYS

    checkpoint_path = os.path.join(settings["out"], "checkpoint.pt")
    if not settings.get("resume"):
        if os.path.exists(checkpoint_path):
            raise UsageError(f"{checkpoint_path} exists: add --resume to continue that run, or choose another --out")
        if settings.get("allow_unverified_checkpoint"):
            raise UsageError("--allow-unverified-checkpoint applies with --resume only")
        return settings, None
    remove_stale_temporaries(settings["out"])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UnverifiedCheckpointWarning)
            resume_state = load_checkpoint(checkpoint_path, keys=CHECKPOINT_KEYS,
                                           allow_unverified=bool(settings.get("allow_unverified_checkpoint")))
        for warning in caught:
            if issubclass(warning.category, UnverifiedCheckpointWarning):
                print(f"--allow-unverified-checkpoint: {warning.message}", file=sys.stderr)
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        saved = resume_state["extra"].get("settings") if isinstance(resume_state["extra"], dict) else None
        if not isinstance(saved, dict):
            raise CheckpointError(f"checkpoint {checkpoint_path!r} holds no settings of a `fastdnas search` run")
    except FileNotFoundError as error:
        raise UsageError(str(error)) from error
    except CheckpointError as error:
        raise refused_checkpoint(error) from error
    changed = changed_settings(saved, given)
    if changed:
        raise UsageError(f"--resume continues the saved run; these settings differ from it: {changed}")
    # Settings added since the run was saved keep their defaults.
    settings = {**settings, **saved, **{k: v for k, v in given.items() if k in RESUME_MAY_CHANGE}}
    return settings, resume_state


def changed_settings(saved, given):
    """'layers (saved 2, given 3), ...': the given settings --resume may not change that differ from the saved run's."""
    changed = sorted(k for k, v in given.items() if k not in RESUME_MAY_CHANGE and saved.get(k) != v)
    return ", ".join(f"{k} (saved {saved.get(k)!r}, given {given[k]!r})" for k in changed)


def same_run(argv):
    """For scripts/search.sh: 0 when `fastdnas ARGV --resume` would continue the run saved in its
    --out folder, 1 (saying why) when that run has other settings. 0 too when the command line or
    the checkpoint is bad: the search itself then says what is wrong."""
    import contextlib
    import io
    import warnings

    from .search import CheckpointError, load_checkpoint

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = build_parser().parse_args(argv)
        settings, given = resolve_settings(args, *SETTINGS[args.command, args.space])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            saved = load_checkpoint(os.path.join(settings["out"], "checkpoint.pt"), allow_unverified=True)["extra"]
        changed = changed_settings(saved["settings"], given)
    except (SystemExit, UsageError, OSError, CheckpointError, TypeError, KeyError):
        return 0
    if changed:
        print(f"{settings['out']} holds a search with other settings: {changed}")
    return 1 if changed else 0


def resume_note(path, epochs):
    """What --resume would continue from after an interrupt: the epoch of the last checkpoint."""
    from .search import CheckpointError, load_checkpoint

    try:
        epoch = load_checkpoint(path)["epoch"]
    except (OSError, CheckpointError):
        return " (no epoch was saved: nothing to resume; run it again without --resume)"
    return f" (add --resume to continue after epoch {epoch}/{epochs}, the last one saved in {path})"


def refused_checkpoint(error):
    """The UsageError for a checkpoint --resume cannot use: the reason, then what to do."""
    from .search import UnverifiedCheckpointError

    anyway = (", or add --allow-unverified-checkpoint to load it unverified"
              if isinstance(error, UnverifiedCheckpointError) else "")
    return UsageError(f"{error}. --resume cannot continue from it: restore the file from a copy, or remove it "
                      f"(or choose another --out) and run without --resume to start over{anyway}")


def shape_of(value):
    """'a tensor of shape [2, 3]', 'a list of 4 entries', "str '3'": what a checkpoint holds, in brief."""
    if hasattr(value, "shape"):
        return f"a tensor of shape {list(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} entries"
    return f"{type(value).__name__} {value!r}"[:80]


def check_resume_state(state, search, path):
    """Every field ``Search.load_state_dict`` reads, checked against this run before it is loaded:
    CheckpointError naming the first wrong one (a checkpoint with a valid checksum can still hold
    values no run of these settings wrote)."""
    import torch

    from .search import CheckpointError
    from .search.checkpoint import set_rng_state

    def check(ok, field, expected, value):
        if not ok:
            raise CheckpointError(f"checkpoint {path!r}: {field} must be {expected}, got {shape_of(value)}")

    def check_tensors(field, values, wanted):
        check(isinstance(values, (list, tuple)) and len(values) == len(wanted), field,
              f"a list of {len(wanted)} tensors", values)
        for i, (value, want) in enumerate(zip(values, wanted)):
            check(isinstance(value, torch.Tensor) and value.shape == want.shape, f"{field}[{i}]",
                  f"a tensor of shape {list(want.shape)}", value)

    epoch, epochs = state["epoch"], search.config.epochs
    check(type(epoch) is int and 0 <= epoch <= epochs, "epoch", f"an integer from 0 to {epochs}", epoch)
    model = search.model.state_dict()
    saved_model = state["model"]
    check(isinstance(saved_model, dict), "model", "a state dict", saved_model)
    different = sorted(set(saved_model) ^ set(model))
    if different:
        raise CheckpointError(f"checkpoint {path!r}: model must hold the state dict of this network; "
                              f"{different[0]!r} is {'missing' if different[0] in model else 'not part of it'}")
    for name, want in model.items():
        check(isinstance(saved_model[name], torch.Tensor) and saved_model[name].shape == want.shape,
              f"model[{name!r}]", f"a tensor of shape {list(want.shape)}", saved_model[name])
    check_tensors("arch_parameters", state["arch_parameters"], list(search.model.arch_parameters()))
    for field, optimizer in (("weight_optimizer", search.weight_optimizer), ("arch_optimizer", search.architect.optimizer)):
        saved = state[field]
        groups = [group["params"] for group in optimizer.param_groups]
        saved_groups = saved.get("param_groups") if isinstance(saved, dict) else None
        check(isinstance(saved_groups, list) and isinstance(saved.get("state"), dict)
              and [len(g.get("params", ())) if isinstance(g, dict) else None for g in saved_groups]
              == [len(g) for g in groups], field,
              f"an optimizer state of groups of {[len(g) for g in groups]} parameters", saved)
        params = [p for group in groups for p in group]
        for index, values in saved["state"].items():
            check(type(index) is int and 0 <= index < len(params) and isinstance(values, dict),
                  f"{field} state", f"per-parameter dicts for parameters 0 to {len(params) - 1}", index)
            for key, value in values.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    check(value.shape == params[index].shape, f"{field} state[{index}][{key!r}]",
                          f"a tensor of shape {list(params[index].shape)}", value)
    check(isinstance(state.get("grad_scaler", {}), dict), "grad_scaler", "a dict", state.get("grad_scaler"))
    history = state["history"]
    check(isinstance(history, dict) and isinstance(history.get("epochs"), list)
          and isinstance(history.get("alphas"), list), "history", "a dict of the lists 'epochs' and 'alphas'",
          history)
    for key in ("epochs", "alphas"):
        check(len(history[key]) == epoch, f"history[{key!r}]", f"a list of {epoch} entries (one per epoch)",
              history[key])
    for i, alphas in enumerate(history["alphas"]):
        check_tensors(f"history['alphas'][{i}]", alphas, list(search.model.arch_parameters()))
    try:
        set_rng_state(state["rng"])  # load_state_dict sets it again
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {path!r}: rng must be the random number generator states a "
                              f"search saves ({type(error).__name__}: {str(error).splitlines()[0][:100]})") from error


def start_distributed(settings):
    """Under torchrun: (Distributed, device), the process group joined on this rank's device (the
    device must be known before rank 0 can send the saved settings). Otherwise (SINGLE, None)."""
    from .search import distributed

    try:
        context = distributed.from_environment()
        if not context.enabled:
            return context, None
        return distributed.setup(pick_device(settings["device"], settings["threads"]))
    except ValueError as error:
        raise UsageError(str(error)) from error


def darts_search(settings, data):
    from .darts import GdasNetwork, PCDartsNetwork, SearchNetwork, genotype_to_dict, save_genotype
    from .viz import plot_alpha_history, plot_genotype

    method = settings["method"]
    options = {"backend": settings["backend"], "in_channels": data.in_channels}
    if uses_parts(settings):
        from .darts.composed import ComposedNetwork

        network = ComposedNetwork
        options.update(method_parts(settings), tau_max=settings["tau_max"], tau_min=settings["tau_min"])
    elif method == "pc-darts":
        network, options["partial_channels"] = PCDartsNetwork, settings["partial_channels"]
    elif method == "gdas":
        # CUDA graphs: every candidate runs (same results), since which one to run is a host decision.
        network = GdasNetwork
        options.update(tau_max=settings["tau_max"], tau_min=settings["tau_min"], sampled_only=not settings["cuda_graphs"])
    else:
        network = SearchNetwork
    model = network(settings["init_channels"], data.num_classes, settings["layers"], **options)

    def describe(model):
        record = {"genotype": genotype_to_dict(model.genotype())}
        if method == "gdas":
            record["tau"] = float(model.tau)  # the epoch's temperature
        if getattr(model, "selection", "argmax") == "threshold":
            record["selected"] = model.selected_cells()
        return record

    def finish(model, search, out):
        genotype = model.genotype()
        if getattr(model, "selection", "argmax") == "perturbation":
            from .darts.perturbation_selection import PerturbationSelection

            selection = PerturbationSelection(search, interval=settings["pt_interval"], seed=settings["seed"])
            print(f"DARTS-PT selection: {selection.epochs} tuning epochs, a decision every {selection.interval}; the "
                  f"argmax genotype was {genotype}")
            genotype = selection.run().genotype()
        save_genotype(genotype, os.path.join(out, "genotype.json"))
        with open(os.path.join(out, "genotype.txt"), "w") as f:
            f.write(repr(genotype) + "\n")
        plot_genotype(genotype, out)
        plot_alpha_history(search.history["alphas"], model.primitives, os.path.join(out, "alphas.png"))
        print(f"genotype: {genotype}")
        written = ["genotype.json", "genotype.txt", "normal.png", "reduce.png", "alphas.png"]
        if getattr(model, "selection", "argmax") == "threshold":
            selected = model.selected_cells()
            with open(os.path.join(out, "selected.json"), "w") as f:
                json.dump({"selection": model.selection, **selected}, f, indent=2)
            print(f"selected ({model.selection}): {selected}")
            written.append("selected.json")
        return written

    return SearchRun(model, describe=describe, finish=finish)


def autodeeplab_search(settings, data):
    from functools import partial

    from .autodeeplab import SearchNetwork, arch_to_dict, save_arch
    from .segmentation import SegmentationMetrics, segmentation_loss
    from .viz import plot_alpha_history, plot_cell, plot_trellis

    model = SearchNetwork(data.num_classes, layers=settings["layers"], blocks=settings["blocks"],
                          filter_multiplier=settings["filter_multiplier"], backend=settings["backend"],
                          in_channels=data.in_channels)

    def finish(model, search, out):
        arch = arch_to_dict(model.decode())
        save_arch(arch, os.path.join(out, "arch.json"))
        plot_trellis(model.normalized_betas().detach(), arch["path"], os.path.join(out, "trellis.png"),
                     title="network level: transition probabilities and the decoded path")
        plot_cell([tuple(pair) for pair in arch["cell"]], list(range(2, 2 + model.blocks)),
                  os.path.join(out, "cell.png"), title="cell")
        plot_alpha_history(search.history["alphas"], model.primitives, os.path.join(out, "alphas.png"),
                           cell_names=("cell",))
        print(f"path (levels of layers 1..{model.layers}, rate 4 * 2^level): {arch['path']}")
        print(f"cell: {[tuple(pair) for pair in arch['cell']]}")
        return ["arch.json", "trellis.png", "cell.png", "alphas.png"]

    return SearchRun(model, loss_fn=segmentation_loss, metrics=partial(SegmentationMetrics, num_classes=data.num_classes),
                     describe=lambda m: arch_to_dict(m.decode()), finish=finish)


def nb201_search(settings, data):
    from .nb201.benchmark import BenchmarkError
    from .nb201.runs import nb201_search as make, open_benchmark

    try:
        benchmark = open_benchmark(settings)
    except BenchmarkError as error:
        raise UsageError(str(error)) from error
    return make(settings, data, SearchRun, benchmark)


def load_nb201(settings):
    from .nb201.data import load_nb201_data

    try:
        return load_nb201_data(settings["dataset"], settings["data"], settings["split_file"])
    except FileNotFoundError as error:
        raise UsageError(str(error)) from error
    except ValueError as error:
        raise UsageError(str(error)) from error


def space_config_options(space, settings):
    """SearchConfig settings a space fixes (NAS-Bench-201: the authors' step for the method)."""
    if space != "nb201":
        return {}
    from .nb201.runs import search_config_options

    return search_config_options(settings)


def run_nb201_search(args):
    """`search nb201`: one search, or with --seeds one per seed (OUT/seed-S) and their summary."""
    from .nb201.runs import parse_seeds, seed_args, summarise

    if "seeds" not in vars(args):
        return run_search(args)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if "seed" in vars(args):
        raise UsageError("--seed and --seeds exclude each other (--seeds runs one search per seed)")
    single = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "seeds"})
    out = resolve_settings(single, *SETTINGS["search", "nb201"])[0]["out"]  # checks the settings once, too
    from .search import distributed

    main = not distributed.from_environment().enabled or int(os.environ.get("RANK", "0")) == 0
    for i, seed in enumerate(seeds):
        if main:
            print(f"seed {seed} ({i + 1}/{len(seeds)}): output in {os.path.join(out, f'seed-{seed}')}")
        run_search(seed_args(args, seed, os.path.join(out, f"seed-{seed}")))
    if main:
        _, table = summarise(out, seeds)
        print(table)
        print(f"wrote summary.json and summary.md in {out}")
    return 0


def run_nb201_score(args):
    """`score nb201 RUN_DIR --benchmark PATH`: one run, or every seed of a --seeds run and its summary."""
    from .nb201.benchmark import Benchmark, BenchmarkError, format_figures
    from .nb201.runs import score_run, summarise

    try:
        benchmark = Benchmark(args.benchmark)
        seeds = sorted(int(name[5:]) for name in os.listdir(args.run_dir)
                       if name.startswith("seed-") and name[5:].isdigit()) if os.path.isdir(args.run_dir) else []
        for folder in [os.path.join(args.run_dir, f"seed-{s}") for s in seeds] or [args.run_dir]:
            last = score_run(folder, benchmark)
            print(f"{folder}: {last['genotype']}: {format_figures(last['benchmark'])}")
        if seeds:
            _, table = summarise(args.run_dir, seeds)
            print(table)
    except (BenchmarkError, OSError) as error:
        raise UsageError(str(error)) from error
    return 0


SEARCH_SPACES = {"darts": darts_search, "autodeeplab": autodeeplab_search, "nb201": nb201_search}


@dataclass
class TrainRun:
    """What a search space adds to the shared train command."""

    model: object  # () -> the network (called after seeding)
    report: object  # result dict -> one line for the terminal
    extra: object  # the epoch records -> a dict merged into result.json
    train_options: dict = field(default_factory=dict)  # loss_fn, metrics, eval_name for train_network
    config_options: dict = field(default_factory=dict)  # TrainConfig settings of the space


def run_train(args):
    """The train command of every space: settings, data, ``train_network``, model.pt and result.json."""
    import torch

    from .train import TrainConfig, count_parameters, train_network, write_result

    from .search import distributed

    if distributed.from_environment().enabled:
        raise UsageError("train runs in one process: launch it without torchrun (only search is data-parallel)")
    defaults, dataset_defaults = SETTINGS["train", args.space]
    settings, _ = resolve_settings(args, defaults, dataset_defaults)
    file_setting = FILE_SETTINGS[args.space]
    if file_setting not in settings:
        what = "genotype.json or genotype.txt" if args.space == "darts" else "arch.json"
        raise UsageError(f"train {args.space} needs --{file_setting} FILE ({what} written by a search)")
    architecture = read_architecture(args.space, settings[file_setting], file_setting)
    check_positive(settings, ["epochs", "batch_size", "log_interval"])
    check_space_settings("train", args.space, settings)
    device = pick_device(settings["device"], settings["threads"])
    data = load_data(settings, cutout=settings.get("cutout", 0))
    space = TRAIN_SPACES[args.space](settings, data, architecture)
    config = make_config(TrainConfig, settings, TRAIN_CONFIG_KEYS, **space.config_options)
    torch.manual_seed(config.seed)
    model = space.model()
    out = settings["out"]
    os.makedirs(out, exist_ok=True)
    print(f"train {args.space} on {data.summary()}; {count_parameters(model):,} parameters; device {describe_device(device)}; "
          f"output in {out}")
    records = train_network(model, data.train, data.test, config, device=device, out_dir=out, **space.train_options)
    torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    extra = {**space.extra(records), "settings": {k: v for k, v in settings.items() if k != "config"}}
    result = write_result(os.path.join(out, "result.json"), records, model, config, extra=extra,
                          eval_name=space.train_options.get("eval_name", "test"))
    print(f"{space.report(result)} after {result['epochs']} epochs ({result['time']:.0f} s); "
          f"wrote result.json, log.jsonl, model.pt in {out}")
    return 0


def read_architecture(space, path, flag):
    from .autodeeplab import load_arch
    from .darts.genotypes import resolve_genotype

    try:
        return resolve_genotype(path) if space == "darts" else load_arch(path)
    except OSError as error:
        raise UsageError(f"--{flag}: cannot read {path!r}: {error.strerror}") from error
    except ValueError as error:
        raise UsageError(f"--{flag} {path!r}: {error}") from error


def darts_train(settings, data, genotype):
    from functools import partial

    from .darts import FinalNetwork, ImageNetNetwork, genotype_to_dict
    from .darts.imagenet_network import imagenet_training_loss
    from .train import classification_eval_loss

    imagenet = settings["dataset"] == "imagenet"

    def build():
        try:
            if imagenet:  # the DARTS paper's mobile network: stems to 28x28, its own auxiliary head
                return ImageNetNetwork(settings["init_channels"], data.num_classes, settings["layers"], genotype,
                                       auxiliary=settings["auxiliary"])
            return FinalNetwork(settings["init_channels"], data.num_classes, settings["layers"], genotype,
                                auxiliary=settings["auxiliary"], in_channels=data.in_channels)
        except ValueError as error:
            raise UsageError(f"--genotype {settings['genotype']!r}: {error}") from error

    train_options = {}
    if imagenet:  # label smoothing 0.1 on both heads, as train_imagenet.py
        train_options = {"loss_fn": partial(imagenet_training_loss, auxiliary_weight=settings["auxiliary_weight"]),
                         "eval_loss_fn": classification_eval_loss}
    return TrainRun(build, report=lambda result: f"test accuracy {result['test_acc']:.4f}",
                    extra=lambda records: {"genotype": genotype_to_dict(genotype)}, train_options=train_options,
                    config_options={k: settings[k] for k in ("auxiliary_weight", "drop_path_prob")})


def autodeeplab_train(settings, data, arch):
    from functools import partial

    from .autodeeplab import DecodedNetwork, arch_to_dict
    from .segmentation import SegmentationMetrics, segmentation_loss


    def build():
        return DecodedNetwork(data.num_classes, arch["path"], arch["cell"], filter_multiplier=settings["filter_multiplier"],
                              blocks=len(arch["cell"]) // 2, in_channels=data.in_channels)

    def extra(records):
        ious = records[-1]["val_iou"]
        return {"val_iou_per_class": dict(zip(data.class_names, ious)), "arch": arch_to_dict(arch)}

    def report(result):
        per_class = ", ".join(f"{name} {'-' if iou is None else f'{iou:.3f}'}"
                              for name, iou in result["val_iou_per_class"].items())
        return f"val mIoU {result['val_miou']:.4f} (pixel accuracy {result['val_acc']:.4f}; {per_class})"

    return TrainRun(build, report=report, extra=extra,
                    train_options={"loss_fn": segmentation_loss, "eval_name": "val",
                                   "metrics": partial(SegmentationMetrics, num_classes=data.num_classes)},
                    config_options={"auxiliary_weight": 0.0, "drop_path_prob": 0.0})


TRAIN_SPACES = {"darts": darts_train, "autodeeplab": autodeeplab_train}


def check_space_settings(command, space, settings):
    """The settings only one search space has, checked before any data is read."""
    if (command, space) == ("search", "darts"):
        check_method_settings(settings)
    if (command, space) == SEARCH_NB201:
        check_nb201_settings(settings)
    check_positive(settings, {("search", "darts"): ["init_channels"], ("train", "darts"): ["init_channels", "layers"],
                              SEARCH_NB201: ["init_channels"],
                              ("search", "autodeeplab"): ["blocks", "filter_multiplier"],
                              ("train", "autodeeplab"): ["filter_multiplier"]}[command, space])
    if space == "autodeeplab" and settings["batch_size"] < 2:
        raise UsageError(f"--batch-size must be >= 2 for autodeeplab, got {settings['batch_size']} (the ASPP "
                         "image-pooling branch normalises over the batch)")
    if settings.get("crop_size") is not None and settings["crop_size"] < 1:
        raise UsageError(f"--crop-size must be >= 1, got {settings['crop_size']}")


def check_method_settings(settings):
    method = settings["method"]
    if method not in SEARCH_METHODS:
        raise UsageError(f"--method must be one of {list(SEARCH_METHODS)}, got {method!r}")
    for name, owners in METHOD_SETTINGS.items():
        if settings.get(name) != SEARCH_DEFAULTS[name] and method not in owners:
            raise UsageError(f"--{name.replace('_', '-')} applies to --method {' or '.join(owners)} only (this search "
                             f"is {method})")
    if uses_parts(settings):
        from .darts.composed import check_parts

        try:
            check_parts(**{k: v for k, v in method_parts(settings).items() if k != "primitives"})
        except ValueError as error:  # 'sampler' is --arch-weights
            raise UsageError(f"--method {method} with {describe_parts(settings)}: {error}") from error
        if settings["unrolled"]:
            raise UsageError(f"--unrolled does not apply to --method {method} (its authors search first order)")
        if settings["cuda_graphs"] and method_parts(settings).get("perturbation"):
            raise UsageError("--cuda-graphs does not capture the perturbation of the weight step: search without it")
    if settings["pt_interval"] < 1:
        raise UsageError(f"--pt-interval must be >= 1, got {settings['pt_interval']}")
    if method in ("pc-darts", "drnas") and (settings["partial_channels"] < 1 or settings["init_channels"] % settings["partial_channels"]):
        raise UsageError(f"--partial-channels must be a positive divisor of --init-channels "
                         f"({settings['init_channels']}), got {settings['partial_channels']}")
    if method == "gdas":
        if not 0 < settings["tau_min"] <= settings["tau_max"]:
            raise UsageError(f"gdas needs 0 < --tau-min <= --tau-max, got {settings['tau_min']} and {settings['tau_max']}")
        if settings["unrolled"]:
            raise UsageError("--unrolled does not apply to --method gdas (a first-order method: every forward "
                             "pass draws a new sample)")


def check_nb201_settings(settings):
    method = settings["method"]
    if method not in NB201_METHODS:
        raise UsageError(f"--method must be one of {list(NB201_METHODS)} for nb201, got {method!r}")
    if method != "gdas" and (settings["tau_max"], settings["tau_min"]) != (10.0, 0.1):
        raise UsageError("--tau-max and --tau-min apply to --method gdas only")
    if method == "gdas":
        if not 0 < settings["tau_min"] <= settings["tau_max"]:
            raise UsageError(f"gdas needs 0 < --tau-min <= --tau-max, got {settings['tau_min']} and {settings['tau_max']}")
        if settings["unrolled"]:
            raise UsageError("--unrolled does not apply to --method gdas (a first-order method)")
    if settings["cuda_graphs"]:
        raise UsageError("--cuda-graphs does not apply to nb201 (its step takes the weight step first or clips "
                         "with the alphas, which the captured step does not)")


def load_data(settings, cutout=0):
    from .data import SEGMENTATION_DATASETS, load_dataset

    name = settings["dataset"]
    kwargs = {"cutout": cutout} if name.startswith("cifar") else {}
    if name in SEGMENTATION_DATASETS and settings.get("crop_size") is not None:
        kwargs["crop_size"] = settings["crop_size"]
    try:
        return load_dataset(name, root=settings["data"], **kwargs)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from error


def main(argv=None):
    from .search import distributed

    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        prog, lists = f"fastdnas {args.command} {args.space}", f"fastdnas {args.command} {args.space} --help lists its flags"
        foreign = [arg for arg in unknown if arg.split("=")[0] in every_flag()]
        if foreign:
            parser.exit(2, f"{prog}: error: {foreign[0].split('=')[0]} does not apply to `{args.command} "
                           f"{args.space}` ({lists})\n")
        names = [arg.split("=")[0] for arg in unknown if arg.startswith("-")]
        close = difflib.get_close_matches(names[0], own_flags(args.command, args.space), n=1) if names else []
        parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(unknown)} "
                       f"({f'did you mean {close[0]}? ' if close else ''}{lists})\n")
    # Progress and epoch lines reach a log file (a cluster job's output) as they are printed.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    # SIGTERM stops a run as Ctrl-C does (same message, the checkpoint kept), with its own exit status.
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_terminated) if on_main_thread else None
    try:
        return args.run(args)
    except UsageError as error:
        parser.exit(2, f"fastdnas {args.command} {args.space}: error: {error}\n")
    except KeyboardInterrupt as interrupt:
        # Checkpoints are written atomically after each epoch: the last one stays valid.
        again = getattr(interrupt, "resume_note", " (add --resume to continue it)" if args.command == "search" else "")
        stopped = "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"
        sys.stderr.write(f"\nfastdnas {args.command} {args.space}: {stopped}{again}\n")
        return 128 + int(signal.SIGTERM) if isinstance(interrupt, Terminated) else 130
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())


def uses_parts(settings):
    """Whether the search runs the composed network: a successor preset, or a part replaced."""
    return settings.get("method") not in ("darts", "pc-darts", "gdas") or any(
        settings.get(name) is not None for name in PART_SETTINGS)


def method_parts(settings):
    """The ``ComposedNetwork`` parts of the preset, with the replaced ones."""
    from .darts.composed import PRESETS

    parts = dict(PRESETS[settings["method"]])
    if "partial_channels" in parts or settings["method"] == "drnas":
        parts["partial_channels"] = settings["partial_channels"]
    for name, key in (("arch_weights", "sampler"), ("perturbation", "perturbation"), ("regulariser", "regulariser"),
                      ("selection", "selection")):
        value = settings.get(name)
        if value is not None:
            parts[key] = None if value == "none" else value
    return parts


def describe_parts(settings):
    return ", ".join(f"--{n.replace('_', '-')} {settings[n]}" for n in PART_SETTINGS if settings.get(n) is not None) \
        or "its own parts"
