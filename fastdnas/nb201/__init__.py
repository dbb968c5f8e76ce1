"""NAS-Bench-201 (NATS-Bench topology space): the search supernet, its genotype strings and
cell index, and scoring through the benchmark's own tables."""
from .network import NB201_BACKENDS, NB201Cell, NB201GdasNetwork, NB201Network, ResNetBasicBlock, nb201_ops
from .space import (
    EDGES,
    NB201_PRIMITIVES,
    NUM_CELLS,
    NUM_EDGES,
    cell_from_index,
    cell_index,
    decode_argmax,
    genotype_string,
    parse_genotype_string,
)

__all__ = [
    "EDGES",
    "NB201Cell",
    "NB201GdasNetwork",
    "NB201Network",
    "NB201_BACKENDS",
    "NB201_PRIMITIVES",
    "NUM_CELLS",
    "NUM_EDGES",
    "ResNetBasicBlock",
    "cell_from_index",
    "cell_index",
    "decode_argmax",
    "genotype_string",
    "nb201_ops",
    "parse_genotype_string",
]
