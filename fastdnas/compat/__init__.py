"""Drop-in replacements for the search networks of the original DARTS and PC-DARTS code.

A fork of the original code switches with one import::

    from fastdnas.compat.darts import Network      # was: from model_search import Network
    from fastdnas.compat.pc_darts import Network   # PC-DARTS's model_search

The networks keep the original constructor ``(C, num_classes, layers, criterion, steps=4,
multiplier=4, stem_multiplier=3)``, attributes (``_C``, ``_layers``, ``_criterion``, ``_steps``,
``alphas_normal`` ...), methods (``_loss``, ``new``, ``arch_parameters``, ``genotype``) and state
dict names, and compute on fastdnas's fused backends; the original ``architect.py`` and the
search step of ``train_search.py`` drive them unchanged.
"""
from . import darts, pc_darts

__all__ = ["darts", "pc_darts"]
