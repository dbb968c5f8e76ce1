"""ImageNet (or any classification set) in the ImageFolder layout, read from files per batch.

    ROOT/val/<class folder>/<image>    (or ROOT/<class folder>/<image> without a val folder)

Classes are the sorted folder names (index = position), as torchvision's ImageFolder numbers
them and as the original DARTS evaluation reads ImageNet. Evaluation preprocessing is the
original's: shorter side resized to 256 (bilinear), the 224x224 centre crop, normalised with
the ImageNet mean and std. Training batches (drawn with a generator) get the original
train_imagenet.py's augmentation instead: a random resized crop to 224 (area 8-100 %, aspect
3/4-4/3), a horizontal flip with probability 1/2, and colour jitter (brightness, contrast,
saturation 0.4, hue 0.2, in a random order), every draw from the batch's generator. Nothing is
downloaded.
"""
import math
import os
from dataclasses import dataclass, replace

import torch

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class ImageFolderSet:
    """``len()`` files with labels; ``batch(indices)`` reads, resizes, crops and normalises them."""

    paths: list
    labels: torch.Tensor
    classes: list
    resize: int = 256
    crop: int = 224
    augment: bool = False  # the training augmentation, for batches drawn with a generator

    @property
    def augments(self):
        return self.augment

    def subset(self, indices):
        return replace(self, paths=[self.paths[int(i)] for i in indices], labels=self.labels[indices])

    def __len__(self):
        return len(self.paths)

    def load(self, path, generator=None):
        from PIL import Image

        with Image.open(path) as image:
            image = image.convert("RGB")
            if generator is not None and self.augment:
                return to_tensor(augment(image, self.crop, generator))
            width, height = image.size
            scale = self.resize / min(width, height)
            size = (max(self.crop, round(width * scale)), max(self.crop, round(height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
            left, top = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
            return to_tensor(image.crop((left, top, left + self.crop, top + self.crop)))

    def batch(self, indices, generator=None):
        images = torch.stack([self.load(self.paths[int(i)], generator) for i in indices]).float() / 255
        mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        std = torch.tensor(STD).view(1, 3, 1, 1)
        return (images - mean) / std, self.labels[indices]


def to_tensor(image):
    """A PIL RGB image as a [3, H, W] uint8 tensor."""
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(image.size[1], image.size[0], 3).permute(2, 0, 1)


def _uniform(generator, low, high):
    return low + (high - low) * torch.rand((), generator=generator).item()


def augment(image, crop, generator):
    """The training augmentation of the module doc on a PIL RGB image."""
    from PIL import Image, ImageEnhance

    width, height = image.size
    box = (0, 0, width, height)  # after 10 misses: the whole image, as torchvision falls back (approximately)
    for _ in range(10):
        area = width * height * _uniform(generator, 0.08, 1.0)
        ratio = math.exp(_uniform(generator, math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            box = (left, top, left + w, top + h)
            break
    image = image.resize((crop, crop), Image.Resampling.BILINEAR, box=box)
    if torch.rand((), generator=generator).item() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for step in torch.randperm(4, generator=generator).tolist():
        if step < 3:
            enhancer = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[step]
            image = enhancer(image).enhance(_uniform(generator, 0.6, 1.4))
        else:
            shift = round(_uniform(generator, -0.2, 0.2) * 255)
            hue, saturation, value = image.convert("HSV").split()
            hue = hue.point(lambda v: (v + shift) % 256)
            image = Image.merge("HSV", (hue, saturation, value)).convert("RGB")
    return image


def _retraining_splits():
    from .base import DataSplits

    class RetrainingSplits(DataSplits):
        """Train and test sets only (no search halves)."""

        def summary(self):
            return (f"{self.name}: {self.num_classes} classes, {self.in_channels}x{self.image_size}x{self.image_size}, "
                    f"train {len(self.train)}, test {len(self.test)}")

    return RetrainingSplits


def load_imagenet(root):
    """ImageNet for retraining: ROOT/train (augmented batches) and ROOT/val (the test split);
    there is no search split (architecture search on ImageNet is not provided)."""
    RetrainingSplits = _retraining_splits()
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(root, split)):
            raise FileNotFoundError(f"no ImageNet at {root!r}: expected {os.path.join(root, split)}/<class>/<image>")
    train = replace(load_image_folder(root, "train"), augment=True)
    test = load_image_folder(root, "val")
    if train.classes != test.classes:
        raise FileNotFoundError(f"the class folders of {root!r}/train and /val differ "
                                f"({len(train.classes)} and {len(test.classes)} classes)")
    return RetrainingSplits("imagenet", len(train.classes), 3, test.crop, None, None, train, test)


def load_image_folder(root, split="val", resize=256, crop=224):
    """The ``split`` folder of ``root`` (or ``root`` itself when it has no such folder)."""
    folder = os.path.join(root, split) if os.path.isdir(os.path.join(root, split)) else root
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no ImageFolder data at {root!r}: expected {os.path.join(root, split)}/<class>/<image>")
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    paths, labels = [], []
    for index, name in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(os.path.join(folder, name))):
            for file in sorted(files):
                if file.lower().endswith(EXTENSIONS):
                    paths.append(os.path.join(dirpath, file))
                    labels.append(index)
    if not paths:
        raise FileNotFoundError(f"no images in {folder!r}: expected <class folder>/<image> ({', '.join(EXTENSIONS)})")
    return ImageFolderSet(paths, torch.tensor(labels), classes, resize, crop)
