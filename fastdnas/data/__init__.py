"""Small in-memory image datasets and a deterministic batch iterator.

Every dataset is held as one tensor in memory; batches are index slices, so a run's data order
is a pure function of the generator it is given (no worker processes, no hidden RNG).
"""
from .base import DataSplits, ImageSet, epoch_generator, iterate_batches
from .cifar import load_cifar
from .digits import load_digits
from .synthetic import load_synthetic

DATASETS = ("digits", "cifar10", "cifar100", "synthetic")


def load_dataset(name, root=None, **kwargs):
    """Load a dataset by name; ``root`` is the folder holding the CIFAR files (ignored otherwise)."""
    if name == "digits":
        return load_digits(**kwargs)
    if name in ("cifar10", "cifar100"):
        if root is None:
            raise ValueError(f"dataset {name!r} needs a data folder (--data PATH)")
        return load_cifar(root, classes=10 if name == "cifar10" else 100, **kwargs)
    if name == "synthetic":
        return load_synthetic(**kwargs)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


__all__ = [
    "DATASETS",
    "DataSplits",
    "ImageSet",
    "epoch_generator",
    "iterate_batches",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_synthetic",
]
