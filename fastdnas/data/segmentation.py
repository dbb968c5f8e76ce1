"""Segmentation sets: images with per-pixel labels, and their joint augmentation.

A ``SegmentationSet`` has the interface of ``ImageSet`` that ``iterate_batches`` uses (``len``,
``augments``, ``subset``, ``batch(indices, generator)``), so the search loop and the training
loop take it as they are. Its images and label maps are either tensors held in memory (the
generated shapes) or lists of files read per batch (Cityscapes, VOC: too large to hold).
"""
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = 255  # label of pixels that count for nothing (no loss, no metric)


def read_image(path, scale=1.0):
    """An image file as float32 [3, H, W] in 0..255, resized by ``scale`` (bilinear) when not 1."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        if scale != 1.0:
            image = image.resize(scaled_size(image.size, scale), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float()


def read_label_png(path, scale=1.0, lookup=None):
    """A label PNG (one index per pixel: mode L or P, palette ignored) as int64 [H, W].

    ``scale`` resizes it with nearest-neighbour sampling; ``lookup`` (a 256-entry int64 tensor)
    maps the stored values to training labels (e.g. Cityscapes label ids to train ids).
    """
    from PIL import Image

    with Image.open(path) as label:
        if label.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{path}: expected a single-channel label PNG (mode L or P), got mode {label.mode}")
        if scale != 1.0:
            label = label.resize(scaled_size(label.size, scale), Image.Resampling.NEAREST)
        array = np.asarray(label).astype(np.int64)
    labels = torch.from_numpy(array)
    if lookup is not None:
        if labels.min() < 0 or labels.max() >= len(lookup):
            raise ValueError(f"{path}: label values outside 0..{len(lookup) - 1}")
        labels = lookup[labels]
    return labels


def scaled_size(size, scale):
    """(width, height) scaled and rounded, at least 1 pixel each."""
    return tuple(max(1, round(n * scale)) for n in size)


@dataclass
class SegmentationSet:
    """Images and label maps (``IGNORE_INDEX`` = unlabelled), with normalisation and augmentation.

    ``images`` / ``labels``: tensors [N, C, H, W] (raw units) and [N, H, W] int64, or equally long
    lists of file paths; files are read per batch with ``read_image(path, resize)`` and
    ``read_label(path, resize)``. Training batches (drawn with a generator) are augmented per
    image, in this order: a random scale in ``scale_range`` (bilinear for the image, nearest for
    the labels), a random ``crop_size`` (height, width) crop (padded with the mean colour and
    ``IGNORE_INDEX`` where the image is smaller), a random horizontal flip. Evaluation batches are
    the whole images; images of different sizes are padded (bottom, right) to the largest.
    """

    images: object
    labels: object
    mean: torch.Tensor
    std: torch.Tensor
    crop_size: tuple = None
    flip: bool = False
    scale_range: tuple = (1.0, 1.0)
    resize: float = 1.0
    read_label: object = read_label_png

    def __post_init__(self):
        in_memory = torch.is_tensor(self.images)
        if in_memory != torch.is_tensor(self.labels):
            raise ValueError("images and labels must both be tensors or both be lists of files")
        if in_memory:
            if self.images.dim() != 4:
                raise ValueError(f"images must be [N, C, H, W], got shape {list(self.images.shape)}")
            n, _, height, width = self.images.shape
            if self.labels.shape != (n, height, width):
                raise ValueError(f"labels must be [N, H, W] = {[n, height, width]}, got {list(self.labels.shape)}")
        else:
            self.images, self.labels = list(self.images), list(self.labels)
            if len(self.images) != len(self.labels):
                raise ValueError(f"{len(self.images)} image files but {len(self.labels)} label files")
        if self.crop_size is not None:
            if isinstance(self.crop_size, int):
                self.crop_size = (self.crop_size, self.crop_size)
            self.crop_size = tuple(int(n) for n in self.crop_size)
            if len(self.crop_size) != 2 or min(self.crop_size) < 1:
                raise ValueError(f"crop_size must be a positive int or (height, width), got {self.crop_size!r}")
        self.scale_range = tuple(float(s) for s in self.scale_range)
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {self.scale_range!r}")
        self.mean = torch.as_tensor(self.mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.as_tensor(self.std, dtype=torch.float32).reshape(-1, 1, 1)

    def __len__(self):
        return len(self.images)

    @property
    def in_memory(self):
        return torch.is_tensor(self.images)

    @property
    def augments(self):
        return self.crop_size is not None or self.flip or self.scale_range != (1.0, 1.0)

    def subset(self, indices):
        if self.in_memory:
            return replace(self, images=self.images[indices], labels=self.labels[indices])
        indices = torch.as_tensor(indices).tolist()
        return replace(self, images=[self.images[i] for i in indices], labels=[self.labels[i] for i in indices])

    def with_augmentation(self, crop_size=None, flip=False, scale_range=(1.0, 1.0)):
        return replace(self, crop_size=crop_size, flip=flip, scale_range=scale_range)

    def sample(self, index):
        """Image ``index`` normalised (float32 [C, H, W]) and its labels (int64 [H, W]), unaugmented."""
        if self.in_memory:
            image, label = self.images[index].float(), self.labels[index]
        else:
            image = read_image(self.images[index], self.resize)
            label = self.read_label(self.labels[index], self.resize)
            if label.shape != image.shape[1:]:
                raise ValueError(f"{self.labels[index]}: label map {list(label.shape)} does not match the image "
                                 f"{list(image.shape[1:])} of {self.images[index]}")
        return (image - self.mean) / self.std, label

    def batch(self, indices, generator=None):
        """Normalised float32 images [B, C, H, W] and int64 labels [B, H, W]; augmented with a generator."""
        indices = torch.as_tensor(indices).reshape(-1)
        if self.in_memory and (generator is None or not self.augments):
            images = (self.images[indices].float() - self.mean) / self.std
            return images, self.labels[indices]
        samples = [self.sample(i) for i in indices.tolist()]
        if generator is not None and self.augments:
            samples = [augment(image, label, generator, self.crop_size, self.flip, self.scale_range)
                       for image, label in samples]
        return stack_padded(samples)


def augment(image, label, generator, crop_size=None, flip=False, scale_range=(1.0, 1.0)):
    """Random scale, crop and flip of one normalised image [C, H, W] and its labels [H, W], jointly.

    Every random number comes from ``generator``, drawn in a fixed order, so the result is a pure
    function of the generator's state.
    """
    low, high = scale_range
    if (low, high) != (1.0, 1.0):
        scale = low + (high - low) * torch.rand((), generator=generator).item()
        size = tuple(max(1, round(n * scale)) for n in image.shape[1:])
        if size != tuple(image.shape[1:]):
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    if crop_size is not None:
        image, label = random_crop_pair(image, label, crop_size, generator)
    if flip and torch.rand((), generator=generator).item() < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return image, label


def random_crop_pair(image, label, crop_size, generator):
    """A ``crop_size`` window at a random place; where the image is smaller than the crop it is
    placed at a random offset on a canvas of zeros (the mean, once normalised) and ignore labels."""
    crop_h, crop_w = crop_size
    height, width = image.shape[1:]
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    if pad_h or pad_w:
        top = torch.randint(0, pad_h + 1, (), generator=generator).item()
        left = torch.randint(0, pad_w + 1, (), generator=generator).item()
        padding = (left, pad_w - left, top, pad_h - top)
        image = F.pad(image, padding)
        label = F.pad(label, padding, value=IGNORE_INDEX)
        height, width = image.shape[1:]
    top = torch.randint(0, height - crop_h + 1, (), generator=generator).item()
    left = torch.randint(0, width - crop_w + 1, (), generator=generator).item()
    return image[:, top : top + crop_h, left : left + crop_w], label[top : top + crop_h, left : left + crop_w]


def stack_padded(samples):
    """Stack (image, label) pairs, padding smaller ones (bottom, right) with 0 and ``IGNORE_INDEX``."""
    height = max(image.shape[1] for image, _ in samples)
    width = max(image.shape[2] for image, _ in samples)
    images, labels = [], []
    for image, label in samples:
        padding = (0, width - image.shape[2], 0, height - image.shape[1])
        images.append(F.pad(image, padding) if any(padding) else image)
        labels.append(F.pad(label, padding, value=IGNORE_INDEX) if any(padding) else label)
    return torch.stack(images), torch.stack(labels)

