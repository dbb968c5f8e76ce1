"""What every command shares: the one-line usage error, settings from defaults, --config and flags, the
device, the data, and what a space adds to the search and train commands."""
import json
import os
from dataclasses import dataclass, field

from .defaults import COMMON_DEFAULTS, FILE_SETTINGS, INVOCATION_ONLY, METHOD_DEFAULTS


class UsageError(Exception):
    """A bad command line or config file: reported in one line, exit status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what cluster schedulers send to stop a job), handled as Ctrl-C."""


def raise_terminated(signum, frame):
    raise Terminated


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
        variant = given.get("gdas_variant", from_file.get("gdas_variant", settings.get("gdas_variant")))
        if method == "gdas" and variant == "authors":
            settings.update(METHOD_DEFAULTS[args.space].get(("gdas-authors", dataset), {}))
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


def check_global_batch(settings, world_size):
    """Under torchrun --batch-size is the global batch: the ranks must split it evenly."""
    if settings["batch_size"] % world_size:
        raise UsageError(f"--batch-size {settings['batch_size']} is the global batch: it must be a multiple of the "
                         f"{world_size} ranks")


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


@dataclass
class TrainRun:
    """What a search space adds to the shared train command."""

    model: object  # () -> the network (called after seeding)
    report: object  # result dict -> one line for the terminal
    extra: object  # the epoch records -> a dict merged into result.json
    train_options: dict = field(default_factory=dict)  # loss_fn, metrics, eval_name for train_network
    config_options: dict = field(default_factory=dict)  # TrainConfig settings of the space


def load_data(settings, cutout=0):
    from ..data import SEGMENTATION_DATASETS, load_dataset

    name = settings["dataset"]
    kwargs = {"cutout": cutout} if name.startswith("cifar") else {}
    if name in SEGMENTATION_DATASETS and settings.get("crop_size") is not None:
        kwargs["crop_size"] = settings["crop_size"]
    try:
        return load_dataset(name, root=settings["data"], **kwargs)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from error
