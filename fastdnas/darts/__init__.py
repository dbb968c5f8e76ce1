"""DARTS: the cell search space of Liu et al. (search network, genotype, final networks, interop;
published cells in ``fastdnas.darts.genotypes``)."""
from .final_network import FinalNetwork, drop_path
from .gdas import GdasNetwork, SampledSearchCell, hard_gumbel_softmax
from .gdas_authors import AuthorsGdasNetwork
from .genotype import (
    DARTS_V1,
    DARTS_V2,
    Genotype,
    genotype_from_any_text,
    genotype_from_dict,
    genotype_from_json,
    genotype_from_nni,
    genotype_from_text,
    genotype_to_dict,
    genotype_to_json,
    genotype_to_nni,
    load_genotype,
    save_genotype,
)
from .imagenet_network import ImageNetNetwork, label_smoothing_loss
from .interop import convert_final_state_dict, convert_state_dict, search_config_from_state_dict
from .pc_darts import PartialMixedOp, PartialSearchCell, PCDartsNetwork, channel_shuffle, edge_normalisation
from .search_network import SearchCell, SearchNetwork

__all__ = [
    "AuthorsGdasNetwork",
    "DARTS_V1",
    "DARTS_V2",
    "FinalNetwork",
    "GdasNetwork",
    "ImageNetNetwork",
    "Genotype",
    "PCDartsNetwork",
    "PartialMixedOp",
    "PartialSearchCell",
    "SampledSearchCell",
    "SearchCell",
    "SearchNetwork",
    "channel_shuffle",
    "convert_final_state_dict",
    "convert_state_dict",
    "drop_path",
    "edge_normalisation",
    "genotype_from_any_text",
    "genotype_from_dict",
    "genotype_from_json",
    "genotype_from_nni",
    "genotype_from_text",
    "genotype_to_dict",
    "genotype_to_json",
    "genotype_to_nni",
    "hard_gumbel_softmax",
    "label_smoothing_loss",
    "load_genotype",
    "save_genotype",
    "search_config_from_state_dict",
]
