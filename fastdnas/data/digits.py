"""scikit-learn's 8x8 handwritten digits (1797 images, values 0..16): ships with scikit-learn, no download."""
import numpy as np
import torch

from .base import DataSplits, ImageSet, split_halves


def load_digits(test_fraction=0.2, split_seed=0):
    """Digits as [N, 1, 8, 8] images, normalised with the mean and std of the non-test pixels.

    A fixed-seed stratified split holds out ``test_fraction`` for the final test; the rest, in
    its shuffled order, is halved by index into search-train / search-val.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = digits.images.astype(np.float32)[:, None]  # [1797, 1, 8, 8]
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=split_seed
    )
    train_images = torch.from_numpy(images[train_idx])
    mean, std = train_images.mean().reshape(1), train_images.std().reshape(1)

    def image_set(idx):
        return ImageSet(torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]), mean, std)

    train = image_set(train_idx)
    search_train, search_val = split_halves(train)
    return DataSplits("digits", 10, 1, 8, search_train, search_val, train, image_set(test_idx))
