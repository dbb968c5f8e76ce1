"""Command line: ``fastdnas search darts|autodeeplab ...`` and ``fastdnas train darts|autodeeplab ...``.

Settings come, later ones winning, from: built-in defaults, the dataset's defaults, ``--config
FILE.json`` (same keys as the flags, '-' or '_'), and the flags given on the command line.
"""
import argparse
import json
import os
import sys
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
}
SEARCH_METHODS = ("darts", "pc-darts", "gdas")
METHOD_SETTINGS = {"partial_channels": "pc-darts", "tau_max": "gdas", "tau_min": "gdas"}
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
}
SEARCH_DATASET_DEFAULTS = {
    "cifar10": {},  # SPEC section 2 as it stands
    "cifar100": {},
    # About 6 minutes on 2 CPU cores (~28 s an epoch): a narrow 5-cell network; with far fewer
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
    # About 2 minutes on 2 CPU cores, ~99% test accuracy.
    "digits": {"epochs": 20, "batch_size": 64, "init_channels": 16, "layers": 5, "lr": 0.05, "drop_path_prob": 0.1},
    "synthetic": {"epochs": 2, "batch_size": 16, "init_channels": 4, "layers": 3, "drop_path_prob": 0.0},
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
    # Measured at about 7 CPU minutes (one thread): a 4-layer trellis of 3-block cells, F = 4, on
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
    # Measured at about 4 minutes on 2 CPU cores, ~0.88 val mIoU for the default search's network.
    "shapes": {"epochs": 40, "batch_size": 16, "filter_multiplier": 16, "lr": 0.1, "threads": 1},
}
# (command, space) -> (defaults, dataset defaults): the settings each command knows.
SETTINGS = {
    ("search", "darts"): (SEARCH_DEFAULTS, SEARCH_DATASET_DEFAULTS),
    ("train", "darts"): (TRAIN_DEFAULTS, TRAIN_DATASET_DEFAULTS),
    ("search", "autodeeplab"): (AUTODEEPLAB_SEARCH_DEFAULTS, AUTODEEPLAB_SEARCH_DATASET_DEFAULTS),
    ("train", "autodeeplab"): (AUTODEEPLAB_TRAIN_DEFAULTS, AUTODEEPLAB_TRAIN_DATASET_DEFAULTS),
}
# Settings that name a file to read rather than a number (known to the train commands).
FILE_SETTINGS = {"darts": "genotype", "autodeeplab": "arch"}
# What --resume may change; every other setting must match the interrupted run. How the run is
# executed may change (the checkpoint does not depend on the precision or the number of ranks).
RESUME_MAY_CHANGE = {"out", "device", "threads", "log_interval", "data", "resume", "config", "amp", "sync_bn", "cuda_graphs"}
SEARCH_CONFIG_KEYS = ("epochs", "batch_size", "lr", "lr_min", "momentum", "weight_decay", "grad_clip", "arch_lr",
                      "arch_betas", "arch_weight_decay", "unrolled", "arch_start_epoch", "seed", "log_interval",
                      "amp", "sync_bn")
TRAIN_CONFIG_KEYS = ("epochs", "batch_size", "lr", "lr_min", "momentum", "weight_decay", "grad_clip", "seed",
                     "log_interval", "amp")


class UsageError(Exception):
    """A bad command line or config file: reported in one line, exit status 2."""


def build_parser():
    from .data import DATASETS

    parser = argparse.ArgumentParser(prog="fastdnas", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # SUPPRESS: only the flags actually given appear in the namespace, so they can override the rest.
    search = commands.add_parser("search", help="architecture search", argument_default=argparse.SUPPRESS)
    train = commands.add_parser("train", help="retrain a found architecture", argument_default=argparse.SUPPRESS)
    for sub in (search, train):
        sub.add_argument("space", choices=["darts", "autodeeplab"], help="search space")
        sub.add_argument("--config", metavar="FILE.json", help="settings file (keys as the flags); flags override it")
        sub.add_argument("--dataset", choices=DATASETS,
                         help="dataset (default: darts digits, bundled with scikit-learn; autodeeplab shapes, "
                              "generated)")
        sub.add_argument("--data", metavar="PATH", help="folder with the CIFAR, Cityscapes or VOC files (default ./data)")
        sub.add_argument("--out", metavar="DIR", help="output folder (default runs/<command>-<space>-<dataset>)")
        sub.add_argument("--epochs", type=int)
        sub.add_argument("--batch-size", type=int, help="images per step (search under torchrun: over all ranks)")
        sub.add_argument("--lr", type=float, help="initial weight learning rate (cosine annealed)")
        sub.add_argument("--lr-min", type=float, help="final weight learning rate")
        sub.add_argument("--momentum", type=float)
        sub.add_argument("--weight-decay", type=float)
        sub.add_argument("--grad-clip", type=float, help="max gradient norm of the weights")
        sub.add_argument("--init-channels", type=int, help="darts: channels C of the first cells")
        sub.add_argument("--filter-multiplier", type=int, metavar="F",
                         help="autodeeplab: a cell at downsample rate s has F*s/4 channels per block")
        sub.add_argument("--crop-size", type=int, metavar="PIXELS",
                         help="autodeeplab: side of the training crops (default: cityscapes and voc 321; shapes "
                              "64 to search, the whole 96 x 96 image to train)")
        sub.add_argument("--seed", type=int)
        sub.add_argument("--device", help="cpu, cuda, cuda:1, ... (default cuda when available)")
        sub.add_argument("--threads", type=int, metavar="N",
                         help="CPU threads for torch (default: torch's choice; 1 can be faster on a busy machine)")
        sub.add_argument("--log-interval", type=int, metavar="STEPS", help="steps between progress updates")
        sub.add_argument("--amp", choices=["bf16", "fp16"],
                         help="mixed precision: autocast to bfloat16, or float16 with loss scaling (default: float32)")
    search.add_argument("--layers", type=int, help="darts: number of cells; autodeeplab: trellis layers L")
    search.add_argument("--blocks", type=int, help="autodeeplab: blocks B per cell")
    search.add_argument("--arch-lr", type=float, help="Adam learning rate of the architecture parameters")
    search.add_argument("--arch-betas", type=float, nargs=2, metavar=("BETA1", "BETA2"),
                        help="Adam betas of the architecture optimizer (darts 0.5 0.999, autodeeplab 0.9 0.999)")
    search.add_argument("--arch-weight-decay", type=float)
    search.add_argument("--unrolled", action=argparse.BooleanOptionalAction, help="second-order architecture step (default: first order)")
    search.add_argument("--arch-start-epoch", type=int, metavar="N", help="no architecture updates before epoch N")
    search.add_argument("--backend", choices=["fused", "fused_sum", "reference"],
                        help="fused: nodes in one kernel (least memory); fused_sum: only node sums fused; reference: eager")
    search.add_argument("--method", choices=SEARCH_METHODS,
                        help="darts: the search method: darts (default), pc-darts (partial channels, edge "
                             "normalisation) or gdas (one sampled operation per edge)")
    search.add_argument("--partial-channels", type=int, metavar="K",
                        help="pc-darts: 1/K of each edge's channels go through its operations (default 4)")
    search.add_argument("--tau-max", type=float, help="gdas: Gumbel-softmax temperature at the first epoch (default 10)")
    search.add_argument("--tau-min", type=float, help="gdas: temperature at the last epoch (default 0.1)")
    search.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    search.add_argument("--sync-bn", action=argparse.BooleanOptionalAction,
                        help="under torchrun: BatchNorm statistics over the batches of all ranks (SyncBatchNorm)")
    search.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction,
                        help="replay each search step from CUDA graphs (CUDA devices only; same results, far "
                             "fewer kernel launches)")
    train.add_argument("--layers", type=int, help="darts: number of cells (autodeeplab: from --arch)")
    train.add_argument("--genotype", metavar="FILE", help="darts: genotype.json or genotype.txt from a search (required)")
    train.add_argument("--arch", metavar="FILE", help="autodeeplab: arch.json from a search (required)")
    train.add_argument("--auxiliary", action=argparse.BooleanOptionalAction, help="darts: auxiliary head")
    train.add_argument("--auxiliary-weight", type=float)
    train.add_argument("--drop-path-prob", type=float, help="darts: drop-path probability reached at the last epoch")
    train.add_argument("--cutout", type=int, metavar="PIXELS", help="darts: cutout length, 0 for none (CIFAR only)")
    search.set_defaults(run=run_search)
    train.set_defaults(run=run_train)
    return parser


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
        known.add("resume")
    foreign = sorted(set(given) - known - {"config"})
    if foreign:
        raise UsageError(", ".join("--" + k.replace("_", "-") for k in foreign)
                         + f" does not apply to `{args.command} {args.space}`")
    from_file = read_config_file(given["config"], known - {"resume"}) if "config" in given else {}
    dataset = given.get("dataset", from_file.get("dataset", defaults.get("dataset", COMMON_DEFAULTS["dataset"])))
    if dataset not in dataset_defaults:
        raise UsageError(f"dataset {dataset!r} does not suit `{args.command} {args.space}`; "
                         f"choose one of {sorted(dataset_defaults)}")
    settings = {**COMMON_DEFAULTS, **defaults, **dataset_defaults[dataset]}
    if "method" in defaults:
        method = given.get("method", from_file.get("method", settings["method"]))
        settings.update(SEARCH_METHOD_DEFAULTS.get((method, dataset), {}))
    settings.update({**from_file, **given})
    settings.setdefault("out", os.path.join("runs", f"{args.command}-{args.space}-{dataset}"))
    return settings, given


def pick_device(name, threads=None):
    """The torch device to run on (and the CPU thread count, when one is given)."""
    import torch

    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here (use --device cpu)")
    return name


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


def run_search(args):
    """The search command of every space: settings, resume, data, the shared ``Search``, outputs.

    Under torchrun every rank runs this; rank 0 alone reads the checkpoint to resume (and sends
    it to the others), prints and writes files.
    """
    import torch

    from .search import Search, SearchConfig
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
    config = make_config(SearchConfig, settings, SEARCH_CONFIG_KEYS)
    if settings["batch_size"] % context.world_size:
        raise UsageError(f"--batch-size {settings['batch_size']} is the global batch: it must be a multiple of the "
                         f"{context.world_size} ranks")
    if args.space == "autodeeplab" and settings["batch_size"] // context.world_size < 2 and not settings["sync_bn"]:
        raise UsageError(f"--batch-size {settings['batch_size']} leaves fewer than 2 images per rank: the ASPP "
                         "image-pooling branch normalises over the batch (give a larger batch, or --sync-bn)")
    say = print if context.is_main else (lambda *args, **kwargs: None)

    data = load_data(settings)
    torch.manual_seed(config.seed)  # the same initial network on every rank
    space = SEARCH_SPACES[args.space](settings, data)
    model = space.model
    out = settings["out"]
    persisted = {k: v for k, v in settings.items() if k not in ("resume", "config")}
    if context.is_main:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "settings.json"), "w") as f:
            json.dump(persisted, f, indent=2)
    ranks = (f" x {context.world_size} ranks (batch {config.batch_size // context.world_size} per rank)"
             if context.enabled else "")
    say(f"search {args.space} on {data.summary()}; {sum(p.numel() for p in model.weight_parameters()):,} weights; "
        f"device {device}{ranks}{'; amp ' + config.amp if config.amp else ''}; output in {out}")
    options = {k: v for k, v in (("loss_fn", space.loss_fn), ("metrics", space.metrics)) if v is not None}
    search = Search(model, data.search_train, data.search_val, config, device=device, describe=space.describe,
                    out_dir=out, extra={"settings": persisted}, distributed=context, cuda_graphs=settings["cuda_graphs"], **options)
    if resume_state is not None:
        search.load_state_dict(resume_state)
        say(f"resumed after epoch {search.epoch}")
    start = time.perf_counter()
    search.run()
    if context.is_main:
        written = space.finish(search.model, search, out)
        print(f"search took {time.perf_counter() - start:.0f} s; wrote {', '.join(written)}, log.jsonl, "
              f"checkpoint.pt in {out}")
    return 0


def read_resume_state(settings, given):
    """(settings, checkpoint state or None): with --resume the saved run's settings and state,
    else a check that no run would be overwritten."""
    from .search import load_checkpoint

    checkpoint_path = os.path.join(settings["out"], "checkpoint.pt")
    if not settings.get("resume"):
        if os.path.exists(checkpoint_path):
            raise UsageError(f"{checkpoint_path} exists: add --resume to continue that run, or choose another --out")
        return settings, None
    try:
        resume_state = load_checkpoint(checkpoint_path)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from error
    saved = resume_state["extra"]["settings"]
    changed = sorted(k for k, v in given.items() if k not in RESUME_MAY_CHANGE and saved.get(k) != v)
    if changed:
        raise UsageError(f"--resume continues the saved run; these settings differ from it: "
                         + ", ".join(f"{k} (saved {saved.get(k)!r}, given {given[k]!r})" for k in changed))
    # Settings added since the run was saved keep their defaults.
    settings = {**settings, **saved, **{k: v for k, v in given.items() if k in RESUME_MAY_CHANGE}}
    return settings, resume_state


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
    if method == "pc-darts":
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
        return record

    def finish(model, search, out):
        genotype = model.genotype()
        save_genotype(genotype, os.path.join(out, "genotype.json"))
        with open(os.path.join(out, "genotype.txt"), "w") as f:
            f.write(repr(genotype) + "\n")
        plot_genotype(genotype, out)
        plot_alpha_history(search.history["alphas"], model.primitives, os.path.join(out, "alphas.png"))
        print(f"genotype: {genotype}")
        return ["genotype.json", "genotype.txt", "normal.png", "reduce.png", "alphas.png"]

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


SEARCH_SPACES = {"darts": darts_search, "autodeeplab": autodeeplab_search}


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
    print(f"train {args.space} on {data.summary()}; {count_parameters(model):,} parameters; device {device}; "
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
    from .darts import load_genotype

    try:
        return load_genotype(path) if space == "darts" else load_arch(path)
    except OSError as error:
        raise UsageError(f"--{flag}: cannot read {path!r}: {error.strerror}") from error
    except ValueError as error:
        raise UsageError(f"--{flag} {path!r}: {error}") from error


def darts_train(settings, data, genotype):
    from .darts import FinalNetwork, genotype_to_dict

    def build():
        try:
            return FinalNetwork(settings["init_channels"], data.num_classes, settings["layers"], genotype,
                                auxiliary=settings["auxiliary"], in_channels=data.in_channels)
        except ValueError as error:
            raise UsageError(f"--genotype {settings['genotype']!r}: {error}") from error

    return TrainRun(build, report=lambda result: f"test accuracy {result['test_acc']:.4f}",
                    extra=lambda records: {"genotype": genotype_to_dict(genotype)},
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
    check_positive(settings, {("search", "darts"): ["init_channels"], ("train", "darts"): ["init_channels", "layers"],
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
    for name, owner in METHOD_SETTINGS.items():
        if settings.get(name) != SEARCH_DEFAULTS[name] and method != owner:
            raise UsageError(f"--{name.replace('_', '-')} applies to --method {owner} only (this search is {method})")
    if method == "pc-darts" and (settings["partial_channels"] < 1 or settings["init_channels"] % settings["partial_channels"]):
        raise UsageError(f"--partial-channels must be a positive divisor of --init-channels "
                         f"({settings['init_channels']}), got {settings['partial_channels']}")
    if method == "gdas":
        if not 0 < settings["tau_min"] <= settings["tau_max"]:
            raise UsageError(f"gdas needs 0 < --tau-min <= --tau-max, got {settings['tau_min']} and {settings['tau_max']}")
        if settings["unrolled"]:
            raise UsageError("--unrolled does not apply to --method gdas (a first-order method: every forward "
                             "pass draws a new sample)")


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
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as error:
        parser.exit(2, f"fastdnas {args.command}: error: {error}\n")
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
