"""The train command of every space."""
import os

from .common import (UsageError, check_global_batch, check_positive, describe_device, load_data, make_config,
                     pick_device, resolve_settings)
from .defaults import FILE_SETTINGS, SETTINGS, TRAIN_CONFIG_KEYS
from .spaces import TRAIN_SPACES, check_space_settings


def run_train(args):
    """The train command of every space: settings, data, ``train_network``, model.pt and result.json."""
    import torch

    from ..search import distributed
    from ..train import TrainConfig, count_parameters, train_network, write_result
    from .search import start_distributed

    defaults, dataset_defaults = SETTINGS["train", args.space]
    settings, _ = resolve_settings(args, defaults, dataset_defaults)
    file_setting = FILE_SETTINGS[args.space]
    if file_setting not in settings:
        what = "genotype.json or genotype.txt" if args.space == "darts" else "arch.json"
        raise UsageError(f"train {args.space} needs --{file_setting} FILE ({what} written by a search)")
    architecture = read_architecture(args.space, settings[file_setting], file_setting)
    check_positive(settings, ["epochs", "batch_size", "log_interval"])
    check_space_settings("train", args.space, settings)
    try:
        world_size = distributed.from_environment().world_size
    except ValueError as error:
        raise UsageError(str(error)) from error
    check_global_batch(settings, world_size)  # before joining the process group
    context, device = start_distributed(settings)  # under torchrun: this rank's device in the process group
    device = device or pick_device(settings["device"], settings["threads"])
    data = load_data(settings, cutout=settings.get("cutout", 0))
    space = TRAIN_SPACES[args.space](settings, data, architecture)
    config = make_config(TrainConfig, settings, TRAIN_CONFIG_KEYS, **space.config_options)
    torch.manual_seed(config.seed)  # the same initial network on every rank
    model = space.model()
    out = settings["out"]
    ranks = (f" x {context.world_size} ranks (batch {config.batch_size // context.world_size} per rank)"
             if context.enabled else "")
    if context.is_main:
        os.makedirs(out, exist_ok=True)
        print(f"train {args.space} on {data.summary()}; {count_parameters(model):,} parameters; "
              f"device {describe_device(device)}{ranks}; output in {out}")
    records = train_network(model, data.train, data.test, config, device=device, out_dir=out, distributed=context,
                            sync_bn=settings["sync_bn"], **space.train_options)
    if not context.is_main:
        return 0
    torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    extra = {**space.extra(records), "settings": {k: v for k, v in settings.items() if k != "config"}}
    if context.enabled:
        extra["ranks"] = context.world_size
    result = write_result(os.path.join(out, "result.json"), records, model, config, extra=extra,
                          eval_name=space.train_options.get("eval_name", "test"))
    print(f"{space.report(result)} after {result['epochs']} epochs ({result['time']:.0f} s); "
          f"wrote result.json, log.jsonl, model.pt in {out}")
    return 0


def read_architecture(space, path, flag):
    from ..autodeeplab import load_arch
    from ..darts.genotypes import resolve_genotype

    try:
        return resolve_genotype(path) if space == "darts" else load_arch(path)
    except OSError as error:
        raise UsageError(f"--{flag}: cannot read {path!r}: {error.strerror}") from error
    except ValueError as error:
        raise UsageError(f"--{flag} {path!r}: {error}") from error
