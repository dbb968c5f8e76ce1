"""The commands for published cells and the original code's files:

    fastdnas genotypes [--count]                   the published cells, their papers and sources
    fastdnas genotype convert SOURCE --to FORM     original Genotype text <-> fastdnas JSON <-> NNI dict
    fastdnas eval darts --genotype NAME|FILE --checkpoint FILE --dataset D --data PATH
                                                   top-1 (and top-5 on ImageNet) of a trained final network
"""
import json
import pickle
import sys

FORMS = ("text", "json", "nni", "nni2")
EVAL_DATASETS = {"cifar10": dict(init_channels=36, layers=20, num_classes=10),
                 "cifar100": dict(init_channels=36, layers=20, num_classes=100),
                 "imagenet": dict(init_channels=48, layers=14, num_classes=None)}


def add_commands(commands):
    """Adds ``genotypes``, ``genotype convert`` and ``eval darts`` to the top-level subparsers."""
    listing = commands.add_parser("genotypes", help="list the published cells",
                                  description="The published DARTS-space cells that --genotype NAME takes, with "
                                              "their papers and sources.")
    listing.add_argument("--count", action="store_true", help="also build each one and count its parameters "
                         "(CIFAR-10: C=36, 20 cells; ImageNet: C=48, 14 cells; auxiliary heads not counted)")
    listing.set_defaults(run=run_genotypes, space="list")

    genotype = commands.add_parser("genotype", help="convert genotypes between forms",
                                   description="Genotypes in the original code's text, fastdnas's JSON and NNI's "
                                               "exported dict.")
    forms = genotype.add_subparsers(dest="space", required=True, metavar="ACTION")
    convert = forms.add_parser("convert", help="convert a genotype",
                               description="Read a genotype (a published name, a file in any of the three forms, "
                                           "or - for standard input) and write it in another form.")
    convert.add_argument("source", metavar="SOURCE", help="published name (fastdnas genotypes), file, or -")
    convert.add_argument("--to", choices=FORMS, required=True,
                         help="text: the original Genotype(...) repr; json: fastdnas's genotype.json; nni: NNI's "
                              "exported dict (inputs as ints, NNI 3); nni2: inputs as one-element lists (NNI 2)")
    convert.add_argument("--out", metavar="FILE", help="write there (default: standard output)")
    convert.set_defaults(run=run_convert)

    evaluate = commands.add_parser("eval", help="evaluate a trained network",
                                   description="Evaluate a trained final network.")
    spaces = evaluate.add_subparsers(dest="space", required=True, metavar="SPACE")
    darts = spaces.add_parser("darts", help="a final network of a DARTS-space genotype",
                              description="Top-1 (and top-5 on ImageNet) of a final network of a DARTS-space "
                                          "genotype, from a checkpoint of fastdnas or of the original code "
                                          "(NetworkCIFAR / NetworkImageNet; a state dict, a training checkpoint "
                                          "with 'state_dict', with or without DataParallel's 'module.').")
    darts.add_argument("--genotype", required=True, metavar="NAME|FILE",
                       help="a published name (fastdnas genotypes) or a genotype file (text, JSON or NNI)")
    darts.add_argument("--checkpoint", required=True, metavar="FILE", help="the trained weights")
    darts.add_argument("--dataset", choices=list(EVAL_DATASETS), default="cifar10",
                       help="cifar10/cifar100: the test set from --data (torchvision layout); imagenet: "
                            "--data/val/<class>/<image> (ImageFolder layout) (default: cifar10)")
    darts.add_argument("--data", metavar="PATH", default="./data", help="(default: ./data)")
    darts.add_argument("--init-channels", type=int, help="C (default: 36 on CIFAR, 48 on ImageNet)")
    darts.add_argument("--layers", type=int, help="cells (default: 20 on CIFAR, 14 on ImageNet)")
    darts.add_argument("--batch-size", type=int, default=96, help="(default: 96)")
    darts.add_argument("--limit", type=int, metavar="N", help="evaluate the first N images only")
    darts.add_argument("--allow-pickle", action="store_true",
                       help="load a checkpoint that pickles more than tensors (a whole module, as the original "
                            "train.py's released CIFAR model): runs code from the file, so only for trusted files")
    darts.add_argument("--device", help="cpu, cuda, ... (default: cuda when available, else cpu)")
    darts.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: free cores)")
    darts.set_defaults(run=run_eval)


def run_genotypes(args):
    from .darts.genotypes import ALIASES, PUBLISHED

    print("published cells (--genotype NAME):")
    for name, entry in PUBLISHED.items():
        aliases = [alias for alias, target in ALIASES.items() if target == name]
        line = f"  {name}{' (' + ', '.join(aliases) + ')' if aliases else ''}: {entry.paper}; {entry.source}"
        if args.count:
            cifar, imagenet = parameter_counts(entry.genotype)
            paper = lambda value: f", paper {value} M" if value is not None else ""  # noqa: E731
            line += (f"; CIFAR-10 {cifar / 1e6:.3f} M{paper(entry.cifar_params)}, "
                     f"ImageNet {imagenet / 1e6:.3f} M{paper(entry.imagenet_params)}")
        print(line)
    return 0


def parameter_counts(genotype):
    """Parameters of the CIFAR-10 (C=36, 20 cells) and ImageNet (C=48, 14 cells) networks of
    ``genotype``, auxiliary heads not counted (as the papers count)."""
    import torch

    from .darts import FinalNetwork, ImageNetNetwork
    from .train import count_parameters

    with torch.random.fork_rng(devices=[]):
        return (count_parameters(FinalNetwork(36, 10, 20, genotype)),
                count_parameters(ImageNetNetwork(48, 1000, 14, genotype)))


def read_genotype(spec, flag):
    from .cli import UsageError
    from .darts.genotypes import resolve_genotype

    try:
        if spec == "-":
            from .darts.genotype import genotype_from_any_text

            return genotype_from_any_text(sys.stdin.read())
        return resolve_genotype(spec)
    except OSError as error:
        raise UsageError(f"{flag}: cannot read {spec!r}: {error.strerror} (nor is it a published name: "
                         "fastdnas genotypes lists them)") from error
    except ValueError as error:
        raise UsageError(f"{flag} {spec!r}: {error}") from error


def format_genotype(genotype, form):
    from .darts.genotype import genotype_to_json, genotype_to_nni

    if form == "text":
        return repr(genotype)
    if form == "json":
        return genotype_to_json(genotype, indent=2)
    return json.dumps(genotype_to_nni(genotype, input_as_list=form == "nni2"), indent=2)


def run_convert(args):
    from .cli import UsageError

    genotype = read_genotype(args.source, "SOURCE")
    try:
        text = format_genotype(genotype, args.to)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


def run_eval(args):
    import torch

    from .cli import UsageError, describe_device, pick_device

    genotype = read_genotype(args.genotype, "--genotype")
    defaults = EVAL_DATASETS[args.dataset]
    C = args.init_channels or defaults["init_channels"]
    layers = args.layers or defaults["layers"]
    for flag, value in (("--init-channels", C), ("--layers", layers), ("--batch-size", args.batch_size),
                        ("--limit", args.limit)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    device = pick_device(args.device, args.threads)
    try:
        checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=not args.allow_pickle)
    except OSError as error:
        raise UsageError(f"--checkpoint: cannot read {args.checkpoint!r}: {error.strerror}") from error
    except pickle.UnpicklingError as error:
        raise UsageError(f"--checkpoint {args.checkpoint!r} holds more than tensors and plain values (a pickled "
                         "module?): loading it runs code from the file; if you trust it, add --allow-pickle "
                         f"({str(error).splitlines()[0]})") from error
    data = load_eval_data(args.dataset, args.data)
    if args.limit is not None and args.limit < len(data):
        data = subset(data, args.limit)
    num_classes = defaults["num_classes"] or len(data.classes)
    try:
        model = build_final_network(args.dataset, C, num_classes, layers, genotype, checkpoint)
    except ValueError as error:
        raise UsageError(f"--checkpoint {args.checkpoint!r}: {error}") from error
    model.to(device)
    print(f"eval darts on {args.dataset} ({len(data)} images from {args.data}); {describe_device(device)}", flush=True)
    top1, top5 = accuracy(model, data, args.batch_size, device)
    report = f"top-1 {top1:.4f}" + (f", top-5 {top5:.4f}" if args.dataset == "imagenet" else "")
    print(f"{report} ({len(data)} images)")
    return 0


def load_eval_data(dataset, root):
    from .cli import UsageError

    try:
        if dataset == "imagenet":
            from .data.imagenet import load_image_folder

            return load_image_folder(root)
        from .data import load_cifar

        return load_cifar(root, classes=10 if dataset == "cifar10" else 100).test
    except FileNotFoundError as error:
        raise UsageError(f"--data: {error}") from error


def subset(data, n):
    from dataclasses import replace

    import torch

    if hasattr(data, "subset"):
        return data.subset(torch.arange(n))
    return replace(data, paths=data.paths[:n], labels=data.labels[:n])


def build_final_network(dataset, C, num_classes, layers, genotype, checkpoint):
    """The final network the checkpoint holds (with an auxiliary head if it has one), its weights
    loaded strictly through the converter of the original layout."""
    import torch

    from .darts import FinalNetwork, ImageNetNetwork
    from .darts.interop import convert_final_state_dict, has_auxiliary_head

    cls = ImageNetNetwork if dataset == "imagenet" else FinalNetwork
    with torch.random.fork_rng(devices=[]):
        model = cls(C, num_classes, layers, genotype, auxiliary=has_auxiliary_head(checkpoint))
    model.load_state_dict(convert_final_state_dict(checkpoint, model))
    return model


def accuracy(model, data, batch_size, device):
    """(top-1, top-5) of ``model`` (forward returns (logits, aux)) on ``data``, in eval mode."""
    import torch

    from .data import iterate_batches

    model.eval()
    correct1 = correct5 = total = 0
    with torch.no_grad():
        for inputs, targets in iterate_batches(data, batch_size):
            logits, _ = model(inputs.to(device))
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices.cpu()
            hits = top == targets[:, None]
            correct1 += hits[:, 0].sum().item()
            correct5 += hits.any(dim=1).sum().item()
            total += len(targets)
    return correct1 / total, correct5 / total


