"""Datasets and a deterministic batch iterator.

Classification sets (digits, CIFAR, synthetic) are held as one tensor in memory (ImageNet, in
the ImageFolder layout, is read from files per batch); segmentation
sets (shapes, generated in memory; Cityscapes and VOC, read from files per batch) carry per-pixel
labels. Batches are index slices, so a run's data order is a pure function of the generator it
is given (no worker processes, no hidden RNG).
"""
from .base import DataSplits, ImageSet, epoch_generator, iterate_batches, split_halves, split_random_halves
from .cifar import load_cifar
from .cityscapes import load_cityscapes
from .digits import load_digits
from .imagenet import load_image_folder, load_imagenet
from .segmentation import IGNORE_INDEX, SegmentationSet
from .shapes import generate_shapes, load_shapes
from .synthetic import load_synthetic
from .voc import load_voc

CLASSIFICATION_DATASETS = ("digits", "cifar10", "cifar100", "synthetic", "imagenet")
SEGMENTATION_DATASETS = ("shapes", "cityscapes", "voc")
DATASETS = CLASSIFICATION_DATASETS + SEGMENTATION_DATASETS
NEEDS_ROOT = ("cifar10", "cifar100", "cityscapes", "voc", "imagenet")


def load_dataset(name, root=None, **kwargs):
    """Load a dataset by name; ``root`` is the folder holding its files (CIFAR, Cityscapes, VOC)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if name in NEEDS_ROOT and root is None:
        raise ValueError(f"dataset {name!r} needs a data folder (--data PATH)")
    if name == "digits":
        return load_digits(**kwargs)
    if name in ("cifar10", "cifar100"):
        return load_cifar(root, classes=10 if name == "cifar10" else 100, **kwargs)
    if name == "synthetic":
        return load_synthetic(**kwargs)
    if name == "imagenet":
        return load_imagenet(root, **kwargs)
    if name == "shapes":
        return load_shapes(**kwargs)
    if name == "cityscapes":
        return load_cityscapes(root, **kwargs)
    return load_voc(root, **kwargs)


__all__ = [
    "CLASSIFICATION_DATASETS",
    "DATASETS",
    "DataSplits",
    "IGNORE_INDEX",
    "ImageSet",
    "SEGMENTATION_DATASETS",
    "SegmentationSet",
    "epoch_generator",
    "generate_shapes",
    "iterate_batches",
    "load_cifar",
    "load_cityscapes",
    "load_dataset",
    "load_digits",
    "load_shapes",
    "load_synthetic",
    "load_voc",
    "split_halves",
    "split_random_halves",
]
