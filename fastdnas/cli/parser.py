"""The argument parser of every command: its flags, help texts and defaults."""
import argparse

from .defaults import (AUTODEEPLAB, COMMAND_SPACES, COMMON_DEFAULTS, DARTS, EVERY, GDAS_VARIANTS, METHOD_DEFAULTS,
                       NB201_METHODS, PART_SETTINGS, SEARCH_ADL, SEARCH_DARTS, SEARCH_METHODS, SEARCH_NB201, SEARCHES,
                       SETTINGS, TRAIN_ADL, TRAIN_DARTS)
from .score import add_score_command
from .search import run_nb201_search, run_search
from .train import run_train


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
    ("--batch-size", {"type": int}, "images per step (under torchrun: over all ranks)", EVERY),
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
     "summary.md (mean and std over seeds); under torchrun the ranks split into equal groups running seeds at "
     "the same time (README, NAS-Bench-201)", (SEARCH_NB201,)),
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
     "its operations (drnas: in the first stage)", (SEARCH_DARTS,)),
    ("--drnas-stages", {"type": int, "metavar": "N"}, "drnas: the progressive schedule's stages (epochs split "
     "evenly; at each later stage's start the operations are pruned and the partial channels widened; "
     "--arch-start-epoch counts within each stage); 1: one stage at --partial-channels, no pruning",
     (SEARCH_DARTS,)),
    ("--drnas-partial-channels", {"type": int, "nargs": "+", "metavar": "K"}, "drnas: K of each stage after the "
     "first (the first: --partial-channels)", (SEARCH_DARTS,)),
    ("--drnas-keep-ops", {"type": int, "nargs": "+", "metavar": "N"}, "drnas: operations kept per edge in each "
     "stage after the first (the top-N theta; the first stage has all 7)", (SEARCH_DARTS,)),
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
    ("--gdas-variant", {"choices": GDAS_VARIANTS}, "gdas: default (fastdnas's DARTS supernet and step) or authors "
     "(the authors' code: pools without BatchNorm, biased convolutions, BatchNorm-ReLU before the pooling, 3N "
     "cells, (op, input) pairs ranked per node, weight step first, clip with the alphas, Nesterov; their "
     "CIFAR settings)", (SEARCH_DARTS,)),
    ("--resume", {"action": "store_true"}, "continue from OUT/checkpoint.pt", SEARCHES),
    ("--allow-unverified-checkpoint", {"action": "store_true"},
     "with --resume: load a checkpoint whose checksum is missing or damaged (an older fastdnas, or a file cut "
     "at its end), saying why; without it such a checkpoint is refused", SEARCHES),
    ("--sync-bn", {"action": argparse.BooleanOptionalAction},
     "under torchrun: BatchNorm statistics over the batches of all ranks (SyncBatchNorm)", EVERY),
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
    methods = {SEARCH_DARTS: SEARCH_METHODS + ("gdas-authors",), SEARCH_NB201: NB201_METHODS}.get((command, space), ())
    for method in methods:
        values = {}
        own_defaults = METHOD_DEFAULTS[space]
        for dataset in datasets:
            if name in own_defaults.get((method, dataset), {}):
                value = show_value(name, own_defaults[method, dataset][name], dataset)
                values.setdefault(value, []).append(dataset)
        if values:
            label = "gdas --gdas-variant authors" if method == "gdas-authors" else method
            text += f"; --method {label}: {on_datasets(values)}"
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
    from ..compat_cli import add_commands

    add_commands(commands)
    return parser


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
