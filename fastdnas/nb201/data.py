"""The search data of the NAS-Bench-201 authors' code, from local files (nothing is downloaded).

- ``cifar10``: the CIFAR-10 training set split into two fixed halves of 25,000 images by the
  authors' split file ``cifar-split.txt`` (JSON ``{"train": ["int", [indices]], "valid": ["int",
  [indices]]}``): weights train on "train", the architecture on "valid".
- ``cifar100`` and ``ImageNet16-120``: weights train on the whole training set, the architecture
  on the "xvalid" half of the test set (``cifar100-test-split.txt``,
  ``imagenet-16-120-test-split.txt``: ``{"xvalid": ["int", [...]], "xtest": ["int", [...]]}``).
- ``digits`` (the default, bundled with scikit-learn) and ``synthetic``: as ``search darts``.

Normalisation and augmentation are the authors': random crop (padding 4, or 2 on the 16x16
ImageNet16-120) and horizontal flip, their per-channel means and deviations.
"""
import json
import os
import pickle

import numpy as np
import torch

from ..data import load_dataset
from ..data.base import DataSplits, ImageSet
from ..data.cifar import LAYOUTS, find_cifar_folder, read_batches

NB201_DATASETS = ("digits", "cifar10", "cifar100", "ImageNet16-120", "synthetic")
SPLIT_FILES = {"cifar10": "cifar-split.txt", "cifar100": "cifar100-test-split.txt",
               "ImageNet16-120": "imagenet-16-120-test-split.txt"}
SPLIT_KEYS = {"cifar10": ("train", "valid"), "cifar100": ("xvalid", "xtest"), "ImageNet16-120": ("xvalid", "xtest")}
MEAN = {"cifar10": (125.3, 123.0, 113.9), "cifar100": (129.3, 124.1, 112.4), "ImageNet16-120": (122.68, 116.66, 104.01)}
STD = {"cifar10": (63.0, 62.1, 66.7), "cifar100": (68.2, 65.4, 70.4), "ImageNet16-120": (63.22, 61.26, 65.09)}
IMAGENET16_FILES = [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]


def load_nb201_data(name, root, split_file=None):
    """DataSplits of ``name`` (see the module doc); ``split_file`` defaults to the authors' file name in ``root``."""
    if name not in NB201_DATASETS:
        raise ValueError(f"unknown dataset {name!r} for nb201; choose one of {NB201_DATASETS}")
    if name in ("digits", "synthetic"):
        return load_dataset(name)
    split_path = split_file or os.path.join(root, SPLIT_FILES[name])
    keys = SPLIT_KEYS[name]
    if name == "ImageNet16-120":
        train, test = read_imagenet16(root)
    else:
        classes = 10 if name == "cifar10" else 100
        folder = find_cifar_folder(root, classes)
        _, train_files, test_files, label_key = LAYOUTS[classes]
        train, test = (ImageSet(*read_batches(folder, files, label_key), torch.tensor(MEAN[name]),
                                torch.tensor(STD[name])) for files in (train_files, test_files))
    split_of = train if name == "cifar10" else test
    first, second = read_split(split_path, keys, len(split_of), "--split-file")
    padding = 2 if name == "ImageNet16-120" else 4
    augmented = train.with_augmentation(padding, True)
    if name == "cifar10":
        search_train, search_val = augmented.subset(first), augmented.subset(second)
    else:  # the architecture's half of the test set, augmented as the training images (the authors' loader)
        search_train, search_val = augmented, test.with_augmentation(padding, True).subset(first)
    classes = {"cifar10": 10, "cifar100": 100, "ImageNet16-120": 120}[name]
    size = train.images.shape[-1]
    return DataSplits(name, classes, 3, size, search_train, search_val, augmented, test)


def read_split(path, keys, size, flag):
    """(first, second): the two index lists of a split file, checked (disjoint, within [0, size))."""
    try:
        with open(path) as f:
            split = json.load(f)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{flag}: the split file {os.path.abspath(path)!r} is missing (the NAS-Bench-201 "
                                f"authors' {os.path.basename(path)}, from their AutoDL-Projects repository, "
                                "configs/nas-benchmark/; nothing is downloaded automatically)") from error
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{flag} {path!r}: cannot read it as the authors' JSON split file ({error})") from error
    halves = []
    for key in keys:
        entry = split.get(key) if isinstance(split, dict) else None
        values = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
        if not isinstance(values, list) or not all(isinstance(v, int) and 0 <= v < size for v in values):
            raise ValueError(f"{flag} {path!r}: {key!r} must be [\"int\", [indices in [0, {size})]]")
        halves.append(torch.tensor(values, dtype=torch.long))
    if len(set(halves[0].tolist()) & set(halves[1].tolist())):
        raise ValueError(f"{flag} {path!r}: the halves {keys[0]!r} and {keys[1]!r} overlap")
    return halves


def read_imagenet16(root):
    """ImageNet16-120 (the 16x16 downsampled ImageNet, its first 120 classes) from the pickles of
    ImageNet16 in ``root`` (or ``root/ImageNet16``): (train, test) ImageSets."""
    folder = next((f for f in (os.path.join(root, "ImageNet16"), root)
                   if all(os.path.isfile(os.path.join(f, n)) for n in IMAGENET16_FILES)), None)
    if folder is None:
        raise FileNotFoundError(f"ImageNet16-120 not found under {os.path.abspath(root)!r}: expected the files "
                                f"{IMAGENET16_FILES} of ImageNet16 (the 16x16 downsampled ImageNet) in "
                                f"{os.path.join(os.path.abspath(root), 'ImageNet16')!r}; nothing is downloaded")
    sets = []
    for files in (IMAGENET16_FILES[:-1], IMAGENET16_FILES[-1:]):
        images, labels = [], []
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data, target = np.asarray(entry["data"], dtype=np.uint8), np.asarray(entry["labels"], dtype=np.int64)
            keep = target <= 120  # labels are 1-based; the benchmark keeps classes 1..120
            images.append(data[keep].reshape(-1, 3, 16, 16))
            labels.append(target[keep] - 1)
        sets.append(ImageSet(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)),
                             torch.tensor(MEAN["ImageNet16-120"]), torch.tensor(STD["ImageNet16-120"])))
    return sets[0], sets[1]
