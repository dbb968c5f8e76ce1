"""The decoded Auto-DeepLab network to retrain: one cell per layer at the level the search chose.

Built from a level path (``viterbi``) and a cell genotype (``parse_cell`` with steps = blocks),
i.e. from ``SearchNetwork.decode()``. Same stem and resampling as the search network; cells use
the two chosen ops per block (``FINAL_OPS``: affine BN, pools without BN); one ASPP at the last
layer's level, its logits bilinearly upsampled to the input size.
"""
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..decode import NUM_LEVELS
from ..nn.operations import FINAL_OPS
from .aspp import aspp_for_level
from .search_network import Resample, level_sizes, make_stem

# The network found in the paper (Cityscapes), levels of layers 1..12.
PAPER_PATH = (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1)


def check_path(path):
    """The path as a list of ints, or a ValueError saying what is wrong with it."""
    if isinstance(path, (str, bytes)) or not hasattr(path, "__iter__"):
        raise ValueError(f"path must be a list of levels (0..{NUM_LEVELS - 1}), got {path!r}")
    levels = list(path)
    if not levels:
        raise ValueError("path must hold at least one layer")
    previous = 0  # the stem is at level 0
    for layer, level in enumerate(levels, start=1):
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level < NUM_LEVELS:
            raise ValueError(f"path: layer {layer} has level {level!r}; levels are ints in 0..{NUM_LEVELS - 1}")
        if abs(level - previous) > 1:
            raise ValueError(f"path: layer {layer} jumps from level {previous} to {level}; a layer moves at most "
                             "one level (the stem is at level 0)")
        previous = level
    return levels


def check_cell_genotype(cell_genotype, blocks):
    """The cell genotype as a list of (op_name, state_index) tuples, or a ValueError."""
    try:
        pairs = [(op, index) for op, index in cell_genotype]
    except (TypeError, ValueError) as error:
        raise ValueError(f"cell_genotype must be a list of (op_name, state_index) pairs, got {cell_genotype!r}") \
            from error
    if len(pairs) != 2 * blocks:
        raise ValueError(f"cell_genotype: expected 2 pairs per block ({2 * blocks} for {blocks} blocks), "
                         f"got {len(pairs)}")
    for k, (op, index) in enumerate(pairs):
        block = k // 2
        if op not in FINAL_OPS or op == "none":
            known = sorted(name for name in FINAL_OPS if name != "none")
            raise ValueError(f"cell_genotype: block {block} has operation {op!r}; expected one of {known}")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 2 + block:
            raise ValueError(f"cell_genotype: block {block} cannot take state {index!r} "
                             f"(it sees states 0..{block + 1})")
    return pairs


class DecodedCell(nn.Module):
    """One layer: its inputs H^{l-1} and H^{l-2} brought to this layer's level, then ``blocks``
    blocks, each the sum of its two chosen ops; the output concatenates the blocks."""

    def __init__(self, cell_genotype, level, prev_level, prev_prev_level, blocks, filter_multiplier):
        super().__init__()
        self.level = level
        C = filter_multiplier * 2**level  # channels per block
        self.preprocess1 = Resample(prev_level, level, blocks * filter_multiplier * 2**prev_level, C, affine=True)
        # Layer 1 has nothing two back: its cell sees its one input twice, as in the search network.
        self.preprocess0 = None
        if prev_prev_level is not None:
            self.preprocess0 = Resample(prev_prev_level, level, blocks * filter_multiplier * 2**prev_prev_level, C,
                                        affine=True)
        op_names, self.indices = zip(*cell_genotype)
        self.ops = nn.ModuleList(FINAL_OPS[name](C, 1, True) for name in op_names)

    def forward(self, s0, s1, size):
        """``s0``, ``s1``: H^{l-2} (None for layer 1) and H^{l-1}; ``size``: this level's (height, width)."""
        s1 = self.preprocess1(s1, size)
        s0 = s1 if self.preprocess0 is None else self.preprocess0(s0, size)
        states = [s0, s1]
        for k in range(0, len(self.ops), 2):
            states.append(self.ops[k](states[self.indices[k]]) + self.ops[k + 1](states[self.indices[k + 1]]))
        return torch.cat(states[2:], dim=1)


class DecodedNetwork(nn.Module):
    """The retraining network: ``forward(x)`` returns logits [N, num_classes, H, W].

    Args:
        path: levels (0..3, rates 4..32) of layers 1..L, e.g. ``PAPER_PATH``.
        cell_genotype: [(op_name, state_index)], two per block (states: 0 = H^{l-2}, 1 = H^{l-1},
            2 + i = block i), as ``parse_cell`` returns it.
        filter_multiplier: F; a cell at rate s has F*s/4 channels per block (the paper's
            Auto-DeepLab-S/M/L use F = 20/32/48).

    H^{l-2} may sit up to two levels away from layer l: it is resampled like H^{l-1} (one
    stride-2 conv per level down, bilinear upsampling then a 1x1 conv up).
    """

    def __init__(self, num_classes, path, cell_genotype, filter_multiplier=20, blocks=5, in_channels=3):
        super().__init__()
        for name, value in [("num_classes", num_classes), ("filter_multiplier", filter_multiplier),
                            ("blocks", blocks), ("in_channels", in_channels)]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.path = check_path(path)
        self.cell_genotype = check_cell_genotype(cell_genotype, blocks)
        self.num_classes = num_classes
        self.in_channels = in_channels

        self.stem = make_stem(in_channels, blocks * filter_multiplier)
        levels = [0] + self.path  # layer 0 is the stem, at level 0
        self.cells = nn.ModuleList(
            DecodedCell(self.cell_genotype, levels[layer], levels[layer - 1], levels[layer - 2] if layer >= 2 else None,
                        blocks, filter_multiplier)
            for layer in range(1, len(levels))
        )
        self.aspp = aspp_for_level(self.path[-1], blocks, filter_multiplier, num_classes)

    @classmethod
    def from_genotype(cls, genotype, num_classes, **kwargs):
        """From ``SearchNetwork.decode()``'s dict (or its JSON form): {"path": [...], "cell": [...]}."""
        if not isinstance(genotype, dict) or set(genotype) != {"path", "cell"}:
            raise ValueError(f"expected a dict with the keys 'path' and 'cell', got {genotype!r}")
        return cls(num_classes, genotype["path"], genotype["cell"], **kwargs)

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images [N, {self.in_channels}, H, W], got shape {list(x.shape)}")
        stem = self.stem(x)
        sizes = level_sizes(stem.shape[-2:])
        s0, s1 = None, stem
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, sizes[cell.level])
        return F.interpolate(self.aspp(s1), size=x.shape[-2:], mode="bilinear", align_corners=False)


def arch_to_dict(arch):
    """``SearchNetwork.decode()``'s result as plain JSON types: {"path": [ints], "cell": [[op, index], ...]}."""
    return {"path": [int(level) for level in arch["path"]], "cell": [[op, int(index)] for op, index in arch["cell"]]}


def save_arch(arch, path):
    """Write a decoded architecture as JSON (arch.json): the level path and the cell genotype."""
    arch = arch_to_dict(arch)
    with open(path, "w") as f:
        # One cell pair per line: readable, and still one JSON object.
        pairs = ",\n    ".join(json.dumps(pair) for pair in arch["cell"])
        f.write(f'{{\n  "path": {json.dumps(arch["path"])},\n  "cell": [\n    {pairs}\n  ]\n}}\n')


def load_arch(path):
    """Read arch.json: {"path": [...], "cell": [...]}, checked (a ValueError says what is wrong).

    Keys other than "path" and "cell" are ignored, so a file may carry notes. The number of
    blocks is read off the cell (two pairs per block).
    """
    with open(path) as f:
        try:
            arch = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError("not an architecture file: expected the arch.json a search writes (a JSON object "
                             f"with 'path' and 'cell'); this file is not JSON ({error})") from error
    if not isinstance(arch, dict) or not {"path", "cell"} <= set(arch):
        raise ValueError("expected a JSON object with the keys 'path' (levels by layer) and 'cell' "
                         "(op, state-index pairs)")
    cell = arch["cell"]
    if not isinstance(cell, list) or not cell or len(cell) % 2:
        raise ValueError(f"'cell' must list two (op, state index) pairs per block, got {cell!r}")
    return {"path": check_path(arch["path"]), "cell": check_cell_genotype(cell, len(cell) // 2)}
