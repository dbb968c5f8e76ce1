"""A tiny generated dataset for tests: each class is a fixed random pattern plus noise."""
import torch

from .base import DataSplits, ImageSet, split_halves


def load_synthetic(num_classes=4, in_channels=3, image_size=8, train_size=128, test_size=64, noise=0.5, seed=0):
    """Learnable in a few steps, deterministic given ``seed``; the train part is halved for search."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, in_channels, image_size, image_size, generator=generator)

    def sample(n):
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=generator)]
        images = prototypes[labels] + noise * torch.randn(n, in_channels, image_size, image_size, generator=generator)
        return ImageSet(images, labels, torch.zeros(in_channels), torch.ones(in_channels))

    train = sample(train_size)
    search_train, search_val = split_halves(train)
    return DataSplits("synthetic", num_classes, in_channels, image_size, search_train, search_val, train, sample(test_size))
