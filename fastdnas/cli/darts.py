"""The DARTS space: search darts (darts, pc-darts, gdas and the composed methods) and train darts."""
import json
import os

from .common import SearchRun, TrainRun, UsageError
from .defaults import GDAS_VARIANTS, METHOD_SETTINGS, PART_SETTINGS, SEARCH_DEFAULTS, SEARCH_METHODS


def darts_search(settings, data):
    from ..darts import GdasNetwork, PCDartsNetwork, SearchNetwork, genotype_to_dict, save_genotype
    from ..viz import plot_alpha_history, plot_genotype

    method = settings["method"]
    options = {"backend": settings["backend"], "in_channels": data.in_channels}
    if uses_parts(settings):
        from ..darts.composed import ComposedNetwork

        network = ComposedNetwork
        options.update(method_parts(settings), tau_max=settings["tau_max"], tau_min=settings["tau_min"])
    elif method == "pc-darts":
        network, options["partial_channels"] = PCDartsNetwork, settings["partial_channels"]
    elif method == "gdas":
        # CUDA graphs: every candidate runs (same results), since which one to run is a host decision.
        network = GdasNetwork
        if settings["gdas_variant"] == "authors":
            from ..darts.gdas_authors import AuthorsGdasNetwork

            network = AuthorsGdasNetwork
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
            from ..darts.perturbation_selection import PerturbationSelection

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


def darts_train(settings, data, genotype):
    from functools import partial

    from ..darts import FinalNetwork, ImageNetNetwork, genotype_to_dict
    from ..darts.imagenet_network import imagenet_training_loss
    from ..train import classification_eval_loss

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


def check_method_settings(settings):
    method = settings["method"]
    if method not in SEARCH_METHODS:
        raise UsageError(f"--method must be one of {list(SEARCH_METHODS)}, got {method!r}")
    for name, owners in METHOD_SETTINGS.items():
        if settings.get(name) != SEARCH_DEFAULTS[name] and method not in owners:
            raise UsageError(f"--{name.replace('_', '-')} applies to --method {' or '.join(owners)} only (this search "
                             f"is {method})")
    if uses_parts(settings):
        from ..darts.composed import check_parts

        check_drnas_schedule(settings)
        try:
            check_parts(**{k: v for k, v in method_parts(settings).items() if k not in SCHEDULE_PARTS})
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
    if settings.get("gdas_variant", "default") not in GDAS_VARIANTS:
        raise UsageError(f"--gdas-variant must be one of {list(GDAS_VARIANTS)}, got {settings['gdas_variant']!r}")
    if settings.get("gdas_variant") == "authors":
        if uses_parts(settings):
            raise UsageError(f"--gdas-variant authors is GDAS's own supernet: it takes no part flags "
                             f"({describe_parts(settings)})")
        if settings["layers"] % 3:
            raise UsageError(f"--gdas-variant authors builds N cells per stage (the reductions after N and 2N cells): "
                             f"--layers must be a multiple of 3, got {settings['layers']}")
        if settings["cuda_graphs"]:
            raise UsageError("--cuda-graphs does not apply to --gdas-variant authors (its step takes the weight step "
                             "first and clips with the alphas, which the captured step does not)")


def darts_config_options(settings):
    """SearchConfig settings of the method: --gdas-variant authors takes the authors' step (weight step
    first, Nesterov SGD, the clip over the weights' and the alphas' gradients)."""
    if settings.get("method") == "gdas" and settings.get("gdas_variant") == "authors":
        return {"weight_step_first": True, "nesterov": True, "clip_with_arch": True}
    return {}


SCHEDULE_PARTS = ("primitives", "stage_partial_channels", "stage_keep_ops")


def drnas_schedule(settings):
    """(K per stage, operations kept per stage) of a progressive drnas search, or None (one stage)."""
    if settings.get("method") != "drnas" or settings["drnas_stages"] == 1:
        return None
    from ..darts.composed import PRIMITIVES_NO_NONE

    return ([settings["partial_channels"]] + list(settings["drnas_partial_channels"]),
            [len(PRIMITIVES_NO_NONE)] + list(settings["drnas_keep_ops"]))


def check_drnas_schedule(settings):
    if settings.get("method") != "drnas":
        return
    stages = settings["drnas_stages"]
    if not isinstance(stages, int) or stages < 1:
        raise UsageError(f"--drnas-stages must be a positive integer, got {stages!r}")
    if stages == 1:
        return
    for name in ("drnas_partial_channels", "drnas_keep_ops"):
        if len(settings[name]) != stages - 1:
            raise UsageError(f"--{name.replace('_', '-')} needs one value per stage after the first ({stages - 1} "
                             f"with --drnas-stages {stages}), got {settings[name]}")
    if settings["epochs"] % stages:
        raise UsageError(f"--epochs {settings['epochs']} must split evenly into the --drnas-stages {stages} stages")
    if settings["arch_weights"] not in (None, "dirichlet"):
        raise UsageError(f"--drnas-stages {stages}: the progressive schedule masks the Dirichlet draw; --arch-weights "
                         f"{settings['arch_weights']} needs --drnas-stages 1")
    from ..darts.progressive import check_schedule

    partial_channels, keep_ops = drnas_schedule(settings)
    try:
        check_schedule(partial_channels, keep_ops, settings["init_channels"], keep_ops[0])
    except ValueError as error:
        raise UsageError(f"--method drnas with --partial-channels {settings['partial_channels']}, "
                         f"--drnas-partial-channels {' '.join(map(str, settings['drnas_partial_channels']))}, "
                         f"--drnas-keep-ops {' '.join(map(str, settings['drnas_keep_ops']))}: {error}") from error
    if settings["cuda_graphs"]:
        raise UsageError(f"--cuda-graphs does not apply to --drnas-stages {stages} (the network is widened between "
                         "stages): search without it, or with --drnas-stages 1")


def uses_parts(settings):
    """Whether the search runs the composed network: a successor preset, or a part replaced."""
    return settings.get("method") not in ("darts", "pc-darts", "gdas") or any(
        settings.get(name) is not None for name in PART_SETTINGS)


def method_parts(settings):
    """The ``ComposedNetwork`` parts of the preset, with the replaced ones."""
    from ..darts.composed import PRESETS

    parts = dict(PRESETS[settings["method"]])
    if "partial_channels" in parts or settings["method"] == "drnas":
        parts["partial_channels"] = settings["partial_channels"]
    schedule = drnas_schedule(settings)
    if schedule is not None:
        parts["stage_partial_channels"], parts["stage_keep_ops"] = schedule
    for name, key in (("arch_weights", "sampler"), ("perturbation", "perturbation"), ("regulariser", "regulariser"),
                      ("selection", "selection")):
        value = settings.get(name)
        if value is not None:
            parts[key] = None if value == "none" else value
    return parts


def describe_parts(settings):
    return ", ".join(f"--{n.replace('_', '-')} {settings[n]}" for n in PART_SETTINGS if settings.get(n) is not None) \
        or "its own parts"
