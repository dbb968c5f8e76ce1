"""Command line: ``fastdnas search darts ...`` and ``fastdnas train darts --genotype FILE ...``.

Settings come, later ones winning, from: built-in defaults, the dataset's defaults, ``--config
FILE.json`` (same keys as the flags, '-' or '_'), and the flags given on the command line.
"""
import argparse
import json
import os
import sys
import time

# Shared by search and retraining, then the dataset-sized settings of each.
COMMON_DEFAULTS = {"dataset": "digits", "data": "data", "device": None, "threads": None, "log_interval": 50}
SEARCH_DEFAULTS = {
    "lr": 0.025, "lr_min": 0.001, "momentum": 0.9, "weight_decay": 3e-4, "grad_clip": 5.0,
    "arch_lr": 3e-4, "arch_weight_decay": 1e-3, "unrolled": False, "arch_start_epoch": 0,
    "backend": "fused", "seed": 2, "epochs": 50, "batch_size": 64, "init_channels": 16, "layers": 8,
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
# What --resume may change; every other setting must match the interrupted run.
RESUME_MAY_CHANGE = {"out", "device", "threads", "log_interval", "data", "resume", "config"}


class UsageError(Exception):
    """A bad command line or config file: reported in one line, exit status 2."""


def build_parser():
    parser = argparse.ArgumentParser(prog="fastdnas", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # SUPPRESS: only the flags actually given appear in the namespace, so they can override the rest.
    search = commands.add_parser("search", help="architecture search", argument_default=argparse.SUPPRESS)
    train = commands.add_parser("train", help="retrain a found architecture", argument_default=argparse.SUPPRESS)
    for sub in (search, train):
        sub.add_argument("space", choices=["darts"], help="search space")
        sub.add_argument("--config", metavar="FILE.json", help="settings file (keys as the flags); flags override it")
        sub.add_argument("--dataset", choices=["digits", "cifar10", "cifar100", "synthetic"],
                         help="dataset (default digits: bundled with scikit-learn)")
        sub.add_argument("--data", metavar="PATH", help="folder with the CIFAR files (default ./data)")
        sub.add_argument("--out", metavar="DIR", help="output folder (default runs/<command>-darts-<dataset>)")
        sub.add_argument("--epochs", type=int)
        sub.add_argument("--batch-size", type=int)
        sub.add_argument("--lr", type=float, help="initial weight learning rate (cosine annealed)")
        sub.add_argument("--lr-min", type=float, help="final weight learning rate")
        sub.add_argument("--momentum", type=float)
        sub.add_argument("--weight-decay", type=float)
        sub.add_argument("--grad-clip", type=float, help="max gradient norm of the weights")
        sub.add_argument("--init-channels", type=int, help="channels C of the first cells")
        sub.add_argument("--layers", type=int, help="number of cells")
        sub.add_argument("--seed", type=int)
        sub.add_argument("--device", help="cpu, cuda, cuda:1, ... (default cuda when available)")
        sub.add_argument("--threads", type=int, metavar="N",
                         help="CPU threads for torch (default: torch's choice; 1 can be faster on a busy machine)")
        sub.add_argument("--log-interval", type=int, metavar="STEPS", help="steps between progress updates")
    search.add_argument("--arch-lr", type=float, help="Adam learning rate of the alphas")
    search.add_argument("--arch-weight-decay", type=float)
    search.add_argument("--unrolled", action=argparse.BooleanOptionalAction, help="second-order architecture step")
    search.add_argument("--arch-start-epoch", type=int, metavar="N", help="no architecture updates before epoch N")
    search.add_argument("--backend", choices=["fused", "reference"], help="node sums: fused kernels or eager")
    search.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.add_argument("--genotype", metavar="FILE", help="genotype.json or genotype.txt from a search (required)")
    train.add_argument("--auxiliary", action=argparse.BooleanOptionalAction, help="auxiliary head")
    train.add_argument("--auxiliary-weight", type=float)
    train.add_argument("--drop-path-prob", type=float, help="drop-path probability reached at the last epoch")
    train.add_argument("--cutout", type=int, metavar="PIXELS", help="cutout length, 0 for none (CIFAR only)")
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
    from_file = read_config_file(given["config"], known) if "config" in given else {}
    dataset = given.get("dataset", from_file.get("dataset", COMMON_DEFAULTS["dataset"]))
    if dataset not in dataset_defaults:
        raise UsageError(f"unknown dataset {dataset!r}; choose one of {sorted(dataset_defaults)}")
    settings = {**COMMON_DEFAULTS, **defaults, **dataset_defaults[dataset], **from_file, **given}
    settings.setdefault("out", os.path.join("runs", f"{args.command}-darts-{dataset}"))
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
    bad = [n for n in names if settings[n] < 1]
    if bad:
        raise UsageError(", ".join(f"--{n.replace('_', '-')} must be >= 1, got {settings[n]}" for n in bad))


def run_search(args):
    import torch

    from .darts import SearchNetwork, genotype_to_dict, save_genotype
    from .search import Search, SearchConfig, load_checkpoint
    from .viz import plot_alpha_history, plot_genotype

    settings, given = resolve_settings(args, SEARCH_DEFAULTS, SEARCH_DATASET_DEFAULTS)
    checkpoint_path = os.path.join(settings["out"], "checkpoint.pt")
    resume_state = None
    if settings.get("resume"):
        try:
            resume_state = load_checkpoint(checkpoint_path)
        except FileNotFoundError as error:
            raise UsageError(str(error)) from error
        saved = resume_state["extra"]["settings"]
        changed = sorted(k for k, v in given.items() if k not in RESUME_MAY_CHANGE and saved.get(k) != v)
        if changed:
            raise UsageError(f"--resume continues the saved run; these settings differ from it: "
                             + ", ".join(f"{k} (saved {saved.get(k)!r}, given {given[k]!r})" for k in changed))
        settings = {**saved, **{k: v for k, v in given.items() if k in RESUME_MAY_CHANGE}}
    elif os.path.exists(checkpoint_path):
        raise UsageError(f"{checkpoint_path} exists: add --resume to continue that run, or choose another --out")
    check_positive(settings, ["epochs", "batch_size", "init_channels", "layers", "log_interval"])
    device = pick_device(settings["device"], settings["threads"])
    try:
        config = SearchConfig(**{k: settings[k] for k in (
            "epochs", "batch_size", "lr", "lr_min", "momentum", "weight_decay", "grad_clip", "arch_lr",
            "arch_weight_decay", "unrolled", "arch_start_epoch", "seed", "log_interval")})
    except ValueError as error:
        raise UsageError(str(error)) from error

    data = load_data(settings)
    torch.manual_seed(config.seed)
    model = SearchNetwork(settings["init_channels"], data.num_classes, settings["layers"], backend=settings["backend"],
                          in_channels=data.in_channels)
    out = settings["out"]
    os.makedirs(out, exist_ok=True)
    persisted = {k: v for k, v in settings.items() if k not in ("resume", "config")}
    with open(os.path.join(out, "settings.json"), "w") as f:
        json.dump(persisted, f, indent=2)
    print(f"search darts on {data.summary()}; {sum(p.numel() for p in model.weight_parameters()):,} weights; "
          f"device {device}; output in {out}")
    search = Search(model, data.search_train, data.search_val, config, device=device,
                    describe=lambda m: {"genotype": genotype_to_dict(m.genotype())}, out_dir=out,
                    extra={"settings": persisted})
    if resume_state is not None:
        search.load_state_dict(resume_state)
        print(f"resumed after epoch {search.epoch}")
    start = time.perf_counter()
    search.run()

    genotype = model.genotype()
    save_genotype(genotype, os.path.join(out, "genotype.json"))
    with open(os.path.join(out, "genotype.txt"), "w") as f:
        f.write(repr(genotype) + "\n")
    plot_genotype(genotype, out)
    plot_alpha_history(search.history["alphas"], model.primitives, os.path.join(out, "alphas.png"))
    print(f"genotype: {genotype}")
    print(f"search took {time.perf_counter() - start:.0f} s; wrote genotype.json, genotype.txt, normal.png, "
          f"reduce.png, alphas.png, log.jsonl, checkpoint.pt in {out}")
    return 0


def run_train(args):
    import torch

    from .darts import FinalNetwork, genotype_to_dict, load_genotype
    from .train import TrainConfig, count_parameters, train_network, write_result

    settings, _ = resolve_settings(args, TRAIN_DEFAULTS, TRAIN_DATASET_DEFAULTS)
    if "genotype" not in settings:
        raise UsageError("train needs --genotype FILE (genotype.json or genotype.txt written by a search)")
    try:
        genotype = load_genotype(settings["genotype"])
    except OSError as error:
        raise UsageError(f"--genotype: cannot read {settings['genotype']!r}: {error.strerror}") from error
    except ValueError as error:
        raise UsageError(f"--genotype {settings['genotype']!r}: {error}") from error
    check_positive(settings, ["epochs", "batch_size", "init_channels", "layers", "log_interval"])
    device = pick_device(settings["device"], settings["threads"])
    try:
        config = TrainConfig(**{k: settings[k] for k in (
            "epochs", "batch_size", "lr", "lr_min", "momentum", "weight_decay", "grad_clip", "auxiliary_weight",
            "drop_path_prob", "seed", "log_interval")})
    except ValueError as error:
        raise UsageError(str(error)) from error

    data = load_data(settings, cutout=settings["cutout"])
    torch.manual_seed(config.seed)
    try:
        model = FinalNetwork(settings["init_channels"], data.num_classes, settings["layers"], genotype,
                             auxiliary=settings["auxiliary"], in_channels=data.in_channels)
    except ValueError as error:
        raise UsageError(f"--genotype {settings['genotype']!r}: {error}") from error
    out = settings["out"]
    os.makedirs(out, exist_ok=True)
    print(f"train darts on {data.summary()}; {count_parameters(model):,} parameters; device {device}; "
          f"output in {out}")
    records = train_network(model, data.train, data.test, config, device=device, out_dir=out)
    torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    result = write_result(os.path.join(out, "result.json"), records, model, config,
                          extra={"genotype": genotype_to_dict(genotype),
                                 "settings": {k: v for k, v in settings.items() if k != "config"}})
    print(f"test accuracy {result['test_acc']:.4f} after {result['epochs']} epochs ({result['time']:.0f} s); "
          f"wrote result.json, log.jsonl, model.pt in {out}")
    return 0


def load_data(settings, cutout=0):
    from .data import load_dataset

    name = settings["dataset"]
    kwargs = {"cutout": cutout} if name.startswith("cifar") else {}
    try:
        return load_dataset(name, root=settings["data"], **kwargs)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from error


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as error:
        parser.exit(2, f"fastdnas {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
