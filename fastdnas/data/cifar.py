"""CIFAR-10/100 from a local folder in the usual python-pickle layout (no torchvision, no download)."""
import os
import pickle

import numpy as np
import torch

from .base import DataSplits, ImageSet, split_halves

LAYOUTS = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    100: ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}
# Per-channel statistics of the training images (as in the DARTS code), in 0..1 units.
MEAN = {10: (0.49139968, 0.48215827, 0.44653124), 100: (0.5071, 0.4865, 0.4409)}
STD = {10: (0.24703233, 0.24348505, 0.26158768), 100: (0.2673, 0.2564, 0.2762)}


def find_cifar_folder(root, classes):
    """The folder holding the pickles: ``root`` itself or ``root/<usual folder name>``."""
    folder_name, train_files, test_files, _ = LAYOUTS[classes]
    expected = train_files + test_files
    for folder in (os.path.join(root, folder_name), root):
        if all(os.path.isfile(os.path.join(folder, f)) for f in expected):
            return folder
    raise FileNotFoundError(
        f"CIFAR-{classes} not found under {os.path.abspath(root)!r}: expected the files {expected} in "
        f"{os.path.join(os.path.abspath(root), folder_name)!r} (the python version from "
        f"https://www.cs.toronto.edu/~kriz/cifar.html, unpacked; nothing is downloaded automatically)"
    )


def read_batches(folder, files, label_key):
    """Concatenate pickled batches into uint8 images [N, 3, 32, 32] and int64 labels [N]."""
    images, labels = [], []
    for name in files:
        with open(os.path.join(folder, name), "rb") as f:
            entry = pickle.load(f, encoding="bytes")
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_cifar(root, classes=10, cutout=0):
    """CIFAR-10 (``classes=10``) or CIFAR-100: train set halved by index for search, test set held out.

    Training batches (search halves and the full train set) get a random 32x32 crop of the image
    padded by 4 and a random horizontal flip; ``cutout`` > 0 adds cutout on the full train set
    (retraining only, as in DARTS).
    """
    if classes not in LAYOUTS:
        raise ValueError(f"classes must be 10 or 100, got {classes}")
    folder = find_cifar_folder(root, classes)
    _, train_files, test_files, label_key = LAYOUTS[classes]
    mean = torch.tensor(MEAN[classes]) * 255
    std = torch.tensor(STD[classes]) * 255
    train_images, train_labels = read_batches(folder, train_files, label_key)
    test_images, test_labels = read_batches(folder, test_files, label_key)
    train = ImageSet(train_images, train_labels, mean, std, crop_padding=4, flip=True)
    search_train, search_val = split_halves(train)
    test = ImageSet(test_images, test_labels, mean, std)
    return DataSplits(
        f"cifar{classes}", classes, 3, 32, search_train, search_val, train.with_augmentation(4, True, cutout), test
    )
