"""Bilevel architecture search shared by the search spaces: architect (first/second order), loop, checkpoints,
the step replayed from CUDA graphs."""
from .architect import Architect, cross_entropy_loss
from .graphed import GraphedSearchStep
from .checkpoint import CheckpointError, UnverifiedCheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .loop import Metrics, Search, SearchConfig
from .schedule import cosine_lr, set_lr

__all__ = [
    "Architect",
    "CheckpointError",
    "GraphedSearchStep",
    "Metrics",
    "Search",
    "SearchConfig",
    "UnverifiedCheckpointError",
    "cosine_lr",
    "cross_entropy_loss",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_lr",
    "set_rng_state",
]
