"""ImageNet (or any classification set) in the ImageFolder layout, read from files per batch.

    ROOT/val/<class folder>/<image>    (or ROOT/<class folder>/<image> without a val folder)

Classes are the sorted folder names (index = position), as torchvision's ImageFolder numbers
them and as the original DARTS evaluation reads ImageNet. Evaluation preprocessing is the
original's: shorter side resized to 256 (bilinear), the 224x224 centre crop, normalised with
the ImageNet mean and std. Nothing is downloaded.
"""
import os
from dataclasses import dataclass

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
    augments = False  # evaluation only: iterate_batches never passes a generator

    def __len__(self):
        return len(self.paths)

    def load(self, path):
        from PIL import Image

        with Image.open(path) as image:
            image = image.convert("RGB")
            width, height = image.size
            scale = self.resize / min(width, height)
            size = (max(self.crop, round(width * scale)), max(self.crop, round(height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
            left, top = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
            image = image.crop((left, top, left + self.crop, top + self.crop))
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        return pixels.view(self.crop, self.crop, 3).permute(2, 0, 1)

    def batch(self, indices, generator=None):
        images = torch.stack([self.load(self.paths[int(i)]) for i in indices]).float() / 255
        mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        std = torch.tensor(STD).view(1, 3, 1, 1)
        return (images - mean) / std, self.labels[indices]


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
