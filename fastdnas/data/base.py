"""In-memory image sets, their augmentation, and a batch iterator driven by an explicit generator."""
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


def epoch_generator(seed, epoch):
    """The generator that decides everything random about one epoch's data (order, crops, flips).

    Being a pure function of (seed, epoch), a resumed run sees exactly the batches an
    uninterrupted one would.
    """
    return torch.Generator().manual_seed(seed * 1000 + epoch)


@dataclass
class ImageSet:
    """Images in raw units ([N, C, H, W], uint8 or float) with labels and normalisation constants.

    Normalisation and augmentation are applied per batch, so CIFAR can stay uint8 in memory.
    ``crop_padding`` > 0 enables random crops (zero padding) and ``flip`` random horizontal flips;
    ``cutout`` > 0 zeroes a random square of that side after normalisation. Augmentation only
    happens when a batch is drawn with a generator (training); evaluation batches are plain.
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    crop_padding: int = 0
    flip: bool = False
    cutout: int = 0

    def __post_init__(self):
        if self.images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {list(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be [N={self.images.shape[0]}], got shape {list(self.labels.shape)}")
        channels = self.images.shape[1]
        self.mean = torch.as_tensor(self.mean, dtype=torch.float32).reshape(1, channels, 1, 1)
        self.std = torch.as_tensor(self.std, dtype=torch.float32).reshape(1, channels, 1, 1)

    def __len__(self):
        return self.images.shape[0]

    @property
    def augments(self):
        return self.crop_padding > 0 or self.flip or self.cutout > 0

    def subset(self, indices):
        return replace(self, images=self.images[indices], labels=self.labels[indices])

    def with_augmentation(self, crop_padding=0, flip=False, cutout=0):
        return replace(self, crop_padding=crop_padding, flip=flip, cutout=cutout)

    def batch(self, indices, generator=None):
        """Normalised float32 images and int64 labels at ``indices``; augmented if a generator is given."""
        images = self.images[indices].float()
        if generator is not None and self.crop_padding > 0:
            images = random_crop(images, self.crop_padding, generator)
        if generator is not None and self.flip:
            images = random_flip(images, generator)
        images = (images - self.mean) / self.std
        if generator is not None and self.cutout > 0:
            images = cutout(images, self.cutout, generator)
        return images, self.labels[indices]


def random_crop(images, padding, generator):
    """Zero-pad by ``padding`` and crop back to the original size at a random offset per image."""
    n, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    rows = (top + torch.arange(height)).view(n, 1, height, 1)
    cols = (left + torch.arange(width)).view(n, 1, 1, width)
    batch = torch.arange(n).view(n, 1, 1, 1)
    channels = torch.arange(images.shape[1]).view(1, -1, 1, 1)
    return padded[batch, channels, rows, cols]


def random_flip(images, generator):
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


def cutout(images, length, generator):
    """Zero a ``length`` x ``length`` square (clipped at the border) centred at a random pixel per image."""
    n, _, height, width = images.shape
    cy = torch.randint(0, height, (n, 1, 1), generator=generator)
    cx = torch.randint(0, width, (n, 1, 1), generator=generator)
    ys = torch.arange(height).view(1, height, 1)
    xs = torch.arange(width).view(1, 1, width)
    half = length // 2
    inside = (ys >= cy - half) & (ys < cy + length - half) & (xs >= cx - half) & (xs < cx + length - half)
    return images * (~inside).unsqueeze(1).to(images.dtype)


def iterate_batches(data, batch_size, generator=None, shuffle=False, drop_last=False, rank=0, world_size=1):
    """Yield (images, labels) batches of ``data``.

    With a generator the order is a permutation drawn from it (if ``shuffle``) and the images are
    augmented with it; without one, batches come in index order, unaugmented.

    With ``world_size`` > 1, rank ``rank`` reads only its shard of the order: positions rank,
    rank + world_size, ... (DistributedSampler's split; with ``drop_last`` the order is first cut
    to a multiple of world_size so every rank gets as many batches). Every rank draws the same
    permutation, so batch s of all ranks together is batch s of one process with
    world_size * batch_size. Augmentation then comes from a generator of this rank's own (seeded
    from the shared one), so ranks do not crop and flip in lockstep.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle and generator is None:
        raise ValueError("shuffle needs a generator (the data order must be reproducible)")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if world_size > 1:
        order = order[: n - n % world_size if drop_last else n][rank::world_size]
        n = len(order)
        if generator is not None and data.augments:
            seed = int(torch.randint(0, 2**62, (), generator=generator))
            generator = torch.Generator().manual_seed(seed + rank)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield data.batch(order[start : start + batch_size], generator if data.augments else None)


@dataclass
class DataSplits:
    """One dataset, split for search and for retraining.

    search_train / search_val: the two halves the bilevel search uses (weights / architecture).
    train: everything but the test set (retraining); test: held out, for the final accuracy
    (segmentation sets: their official val split). The sets are ``ImageSet``s, or
    ``SegmentationSet``s with per-pixel labels (``image_size`` is then the training crop).
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    search_train: ImageSet
    search_val: ImageSet
    train: ImageSet
    test: ImageSet
    class_names: tuple = ()  # optional, for reports (segmentation: per-class IoU)

    def summary(self):
        return (
            f"{self.name}: {self.num_classes} classes, {self.in_channels}x{self.image_size}x{self.image_size}, "
            f"search {len(self.search_train)}+{len(self.search_val)}, train {len(self.train)}, test {len(self.test)}"
        )


def split_halves(train):
    """Split by index into two halves (first half for weights, second for the architecture), as DARTS does."""
    half = len(train) // 2
    return train.subset(torch.arange(half)), train.subset(torch.arange(half, len(train)))


def split_random_halves(train, seed=0):
    """Split into two random halves (Auto-DeepLab: trainA for the weights, trainB for the architecture).

    The permutation comes from its own generator seeded with ``seed``: the split is fixed for a dataset.
    """
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    half = len(train) // 2
    return train.subset(order[:half].sort().values), train.subset(order[half:].sort().values)
