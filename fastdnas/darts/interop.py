"""Loading checkpoints of the original DARTS search network (model_search.Network).

Our module names are the original ones, so a converted state dict differs from the original in
bookkeeping only: a ``module.`` prefix left by nn.DataParallel goes, BatchNorm counters missing
from old PyTorch checkpoints are added, and the architecture tensors, which the original keeps
outside its state dict, are taken when saved alongside (keys ``alphas_normal``/``alphas_reduce``).
The conversion checks every key and shape against the network the checkpoint describes.
"""
from collections import OrderedDict

import torch

from ..decode import num_edges
from ..nn.operations import PRIMITIVES
from .search_network import SearchNetwork

ALPHA_KEYS = ("alphas_normal", "alphas_reduce")


def _strip_data_parallel_prefix(state_dict):
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return OrderedDict((key[len("module."):], value) for key, value in state_dict.items())
    return OrderedDict(state_dict)


def _shape(state_dict, key):
    if key not in state_dict:
        raise ValueError(f"not a DARTS search network state dict: it has no {key!r}")
    return tuple(state_dict[key].shape)


def search_config_from_state_dict(state_dict):
    """The SearchNetwork arguments (C, num_classes, layers, steps, multiplier, stem_multiplier,
    in_channels) of a search network state dict, read from its shapes."""
    state_dict = _strip_data_parallel_prefix(state_dict)
    stem_channels, in_channels = _shape(state_dict, "stem.0.weight")[:2]
    num_classes, classifier_in = _shape(state_dict, "classifier.weight")
    C = _shape(state_dict, "cells.0.preprocess1.op.1.weight")[0]
    cells = {int(key.split(".")[1]) for key in state_dict if key.startswith("cells.")}
    edges = {int(key.split(".")[3]) for key in state_dict if key.startswith("cells.0._ops.")}
    if not cells or not edges:
        raise ValueError("not a DARTS search network state dict: it has no cells with edges (cells.0._ops.*)")
    layers, num_cell_edges = 1 + max(cells), 1 + max(edges)
    steps = next((s for s in range(1, num_cell_edges + 1) if num_edges(s) == num_cell_edges), None)
    C_last = _shape(state_dict, f"cells.{layers - 1}.preprocess1.op.1.weight")[0]
    # A reduction cell in the first layer (layers < 3) has already doubled C.
    C_first = C // 2 if 0 in (layers // 3, 2 * layers // 3) else C
    if steps is None or C_first == 0 or stem_channels % C_first or classifier_in % C_last:
        raise ValueError("not a DARTS search network state dict: its shapes do not fit the DARTS layout")
    return dict(C=C_first, num_classes=num_classes, layers=layers, steps=steps, multiplier=classifier_in // C_last,
                stem_multiplier=stem_channels // C_first, in_channels=in_channels)


def _normalise(state_dict):
    """The DataParallel prefix gone, the BatchNorm counters of PyTorch >= 0.4.1 added."""
    converted = _strip_data_parallel_prefix(state_dict)
    # BatchNorm counters appeared in PyTorch 0.4.1; older checkpoints lack them.
    for key in list(converted):
        if key.endswith(".running_mean"):
            counter = key[: -len("running_mean")] + "num_batches_tracked"
            converted.setdefault(counter, torch.tensor(0, dtype=torch.long))
    return converted


def _check_keys(converted, expected, description, optional=()):
    """ValueError naming every missing, unexpected or misshapen key of ``converted``."""
    missing = [key for key in expected if key not in converted and key not in optional]
    unexpected = [key for key in converted if key not in expected]
    misshapen = [
        f"{key}: {list(converted[key].shape)} instead of {list(expected[key].shape)}"
        for key in converted
        if key in expected and converted[key].shape != expected[key].shape
    ]
    if missing or unexpected or misshapen:
        shown = 8  # a checkpoint of another genotype differs in hundreds of keys: the first few say it
        problems = [
            f"{title}: {', '.join(keys[:shown])}" + (f" and {len(keys) - shown} more" if len(keys) > shown else "")
            for title, keys in [("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)]
            if keys
        ]
        raise ValueError(f"the state dict does not match {description}; " + "; ".join(problems))


def convert_state_dict(state_dict, primitives=PRIMITIVES):
    """A state dict of the original DARTS search network, in fastdnas.darts.SearchNetwork naming.

    Load it with ``net.load_state_dict(converted)`` into
    ``SearchNetwork(**search_config_from_state_dict(converted), primitives=primitives)``; without
    saved alphas use ``strict=False`` and the network keeps its own. Raises ValueError naming every
    missing, unexpected or misshapen key.
    """
    converted = _normalise(state_dict)
    config = search_config_from_state_dict(converted)
    with torch.random.fork_rng(devices=[]):  # building the network to compare with must not move the user's seed
        expected = SearchNetwork(**config, primitives=primitives).state_dict()
    _check_keys(converted, expected, f"a DARTS search network with {config} and {len(primitives)} primitives",
                optional=ALPHA_KEYS)
    return converted


def unwrap_checkpoint(checkpoint):
    """The state dict inside what the original scripts save: a state dict, a training checkpoint
    ({'state_dict': ..., 'epoch': ...}, as train_imagenet.py writes) or a whole pickled module."""
    if isinstance(checkpoint, torch.nn.Module):
        return checkpoint.state_dict()
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        return checkpoint["state_dict"]
    if isinstance(checkpoint, dict) and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise ValueError("not a checkpoint: expected a state dict, a dict with a 'state_dict' entry or a module, got "
                     + (f"a dict with keys {sorted(checkpoint)[:8]}" if isinstance(checkpoint, dict)
                        else type(checkpoint).__name__))


def convert_final_state_dict(checkpoint, network):
    """A checkpoint of the original NetworkCIFAR / NetworkImageNet (see ``unwrap_checkpoint``; with
    or without nn.DataParallel's ``module.`` prefix) as a state dict that ``network`` (a
    FinalNetwork or ImageNetNetwork of the same genotype and sizes) loads strictly. Raises
    ValueError naming every missing, unexpected or misshapen key."""
    converted = _normalise(unwrap_checkpoint(checkpoint))
    expected = network.state_dict()
    heads = sorted({key.split(".")[0] for key in converted} - {key.split(".")[0] for key in expected})
    hint = " (the checkpoint has an auxiliary head: build the network with auxiliary=True)" if heads == [
        "auxiliary_head"] else ""
    _check_keys(converted, expected, f"this {type(network).__name__}{hint}")
    return converted


def has_auxiliary_head(checkpoint):
    """Whether an original final-network checkpoint holds auxiliary head weights."""
    return any(key.startswith(("auxiliary_head.", "module.auxiliary_head.")) for key in unwrap_checkpoint(checkpoint))
