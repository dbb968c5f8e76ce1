"""Auto-DeepLab: the hierarchical (cell + network level) search space of C. Liu et al. for segmentation."""
from .aspp import ASPP, aspp_for_level, level_rate
from .decoded_network import (
    PAPER_PATH,
    DecodedCell,
    DecodedNetwork,
    arch_to_dict,
    check_cell_genotype,
    check_path,
    load_arch,
    save_arch,
)
from .search_network import Resample, SearchNetwork, TrellisCell, TrellisNode, level_sizes, make_stem, normalized_betas

__all__ = [
    "ASPP",
    "PAPER_PATH",
    "DecodedCell",
    "DecodedNetwork",
    "Resample",
    "SearchNetwork",
    "TrellisCell",
    "TrellisNode",
    "arch_to_dict",
    "aspp_for_level",
    "check_cell_genotype",
    "check_path",
    "level_rate",
    "level_sizes",
    "load_arch",
    "make_stem",
    "normalized_betas",
    "save_arch",
]
