"""The search command of every space, and search nb201 --seeds."""
import argparse
import contextlib
import json
import os
import sys
import time

from .common import (UsageError, check_global_batch, check_positive, describe_device, load_data, make_config,
                     pick_device, resolve_settings)
from .darts import SCHEDULE_PARTS, drnas_schedule, method_parts, uses_parts
from .defaults import GDAS_FEW_STEPS, INVOCATION_ONLY, SEARCH_CONFIG_KEYS, SETTINGS
from .nb201 import load_nb201
from .resume import check_resume_state, read_resume_state, refused_checkpoint, resume_note
from .spaces import SEARCH_SPACES, check_space_settings, space_config_options


def run_search(args, started=None):
    """The search command of every space: settings, resume, data, the shared ``Search``, outputs.

    Under torchrun every rank runs this; rank 0 alone reads the checkpoint to resume (and sends
    it to the others), prints and writes files. ``started``: the (Distributed, device) to run on
    (a group of the ranks, from ``search nb201 --seeds``) instead of those of ``start_distributed``.
    """
    import torch

    from ..search import CheckpointError, Search, SearchConfig
    from ..search import distributed

    defaults, dataset_defaults = SETTINGS["search", args.space]
    settings, given = resolve_settings(args, defaults, dataset_defaults)
    context, device = started or start_distributed(settings)
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
    if args.space == "darts" and context.enabled and drnas_schedule(settings) is not None:
        raise UsageError(f"--drnas-stages {settings['drnas_stages']} widens the network between the stages: run it in "
                         "one process (without torchrun), or with --drnas-stages 1")
    config = make_config(SearchConfig, settings, SEARCH_CONFIG_KEYS, **space_config_options(args.space, settings))
    check_global_batch(settings, context.world_size)
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
               "gdas": f"tau {settings['tau_max']} -> {settings['tau_min']}"
                       + (", the authors' supernet and step" if settings.get("gdas_variant") == "authors" else "")
               }.get(method)
        parts = method_parts(settings)
        if own is None or uses_parts(settings):
            own = ", ".join(f"{k} {v}" for k, v in parts.items() if k not in SCHEDULE_PARTS and v)
        if "stage_partial_channels" in parts:
            own += (f", {len(parts['stage_keep_ops'])} stages: K {' -> '.join(map(str, parts['stage_partial_channels']))}"
                    f", operations {' -> '.join(map(str, parts['stage_keep_ops']))}")
        network = f"method {method}: {own}, C={settings['init_channels']}, {settings['layers']} cells"
    else:
        network = f"L={settings['layers']}, B={settings['blocks']}, F={settings['filter_multiplier']}"
    updates = f"from epoch {start + 1}/{epochs}" if start < epochs else f"none (--arch-start-epoch {start})"
    if space == "darts" and drnas_schedule(settings) is not None:
        stage = epochs // settings["drnas_stages"]
        updates = (f"from epoch {start + 1} of each {stage}-epoch stage" if start < stage
                   else f"none (--arch-start-epoch {start})")
    return f"{network}, {epochs} epochs, arch lr {settings['arch_lr']}, architecture updates {updates}"


def start_distributed(settings):
    """Under torchrun: (Distributed, device), the process group joined on this rank's device (the
    device must be known before rank 0 can send the saved settings). Otherwise (SINGLE, None)."""
    from ..search import distributed

    try:
        context = distributed.from_environment()
        if not context.enabled:
            return context, None
        return distributed.setup(pick_device(settings["device"], settings["threads"]))
    except ValueError as error:
        raise UsageError(str(error)) from error


def run_nb201_search(args):
    """`search nb201`: one search, or with --seeds one per seed (OUT/seed-S) and their summary.

    Under torchrun the ranks split into groups of the same size (``seed_groups``), each running
    its seeds data-parallel in turn; one group (all ranks) runs every seed in turn."""
    from ..nb201.runs import parse_seeds, seed_args, seed_groups, summarise

    if "seeds" not in vars(args):
        return run_search(args)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if "seed" in vars(args):
        raise UsageError("--seed and --seeds exclude each other (--seeds runs one search per seed)")
    single = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "seeds"})
    settings = resolve_settings(single, *SETTINGS["search", "nb201"])[0]  # checks the settings once, too
    out = settings["out"]
    world, device = start_distributed(settings)
    groups = seed_groups(world.world_size, len(seeds))
    if groups > 1:
        rows = run_seed_groups(args, seeds, out, world, device, groups)
    else:
        rows = None  # read back from the seeds' log.jsonl
        for i, seed in enumerate(seeds):
            if world.is_main:
                print(f"seed {seed} ({i + 1}/{len(seeds)}): output in {os.path.join(out, f'seed-{seed}')}")
            run_search(seed_args(args, seed, os.path.join(out, f"seed-{seed}")))
    if world.is_main:
        _, table = summarise(out, seeds, rows)
        print(table)
        print(f"wrote summary.json and summary.md in {out}")
    return 0


# How long the ranks of a group that is done wait for the other groups (the last seeds of another
# group may take hours); a rank that dies ends the whole job through torchrun anyway.
SEED_GROUPS_WAIT_DAYS = 30


def run_seed_groups(args, seeds, out, world, device, groups):
    """--seeds under torchrun, the ranks in ``groups`` groups: each group runs its seeds in turn
    (``group_seeds``; data-parallel inside the group, its rank 0 writing OUT/seed-S and printing
    with a "[seed S]" prefix). Returns the summary's rows (in the order of ``seeds``) on rank 0 of
    the job, gathered from the groups (no shared disk needed); an error in a group is raised on
    every rank once all groups are done."""
    from datetime import timedelta

    import torch.distributed as dist

    from ..nb201.runs import group_seeds, read_log, seed_args, seed_row
    from ..search import distributed

    group = distributed.split(world, groups)
    # Made by every rank now; its long timeout lets a group that is done wait for the others.
    done = dist.new_group(list(range(world.world_size)), timeout=timedelta(days=SEED_GROUPS_WAIT_DAYS),
                          backend="gloo")
    index = world.rank // group.world_size
    ranks = (f"rank {group.members[0]}" if group.world_size == 1 else
             f"ranks {group.members[0]}-{group.members[-1]}")
    if world.is_main:
        print(f"{len(seeds)} seeds on {world.world_size} ranks: {groups} groups of {group.world_size} rank(s), "
              "each running its seeds in turn")
    rows, failure, report = {}, None, None
    for seed in group_seeds(seeds, groups, index):
        folder = os.path.join(out, f"seed-{seed}")
        try:
            with contextlib.redirect_stdout(LinePrefix(sys.stdout, f"[seed {seed}] ")):
                if group.is_main:
                    print(f"{ranks}: output in {folder}")
                run_search(seed_args(args, seed, folder), started=(group, device))
        except Exception as error:  # the other groups finish first (raised below)
            failure = error
            report = (isinstance(error, UsageError), f"seed {seed} ({ranks}): "
                      f"{error if isinstance(error, UsageError) else f'{type(error).__name__}: {error}'}")
            break
        if group.is_main:
            rows[seed] = seed_row(seed, read_log(folder))
    reports = [None] * world.world_size
    dist.all_gather_object(reports, (rows, report), group=done)
    if failure is not None and not isinstance(failure, UsageError):
        raise failure  # with its traceback, on the ranks where it happened
    failed = [report] if failure is not None else [failed for _, failed in reports if failed is not None]
    if failed:
        usage, message = failed[0]
        raise (UsageError if usage else RuntimeError)(message)
    gathered = {seed: row for group_rows, _ in reports for seed, row in group_rows.items()}
    return [gathered[seed] for seed in seeds]


class LinePrefix:
    """A text stream that writes ``prefix`` at the start of every line to ``stream``."""

    def __init__(self, stream, prefix):
        self.stream, self.prefix, self.line_start = stream, prefix, True

    def write(self, text):
        pieces = []
        for line in text.splitlines(keepends=True):
            pieces.append(self.prefix + line if self.line_start else line)
            self.line_start = line.endswith("\n")
        self.stream.write("".join(pieces))
        return len(text)

    def flush(self):
        self.stream.flush()
