"""PASCAL VOC 2012 segmentation from a local folder in the official layout (nothing is downloaded).

    ROOT[/VOCdevkit][/VOC2012]/JPEGImages/<id>.jpg
                               SegmentationClass/<id>.png   (palette PNG: index = class, 255 = border)
                               ImageSets/Segmentation/{train,val}.txt

21 classes (background and 20 objects); the object borders (255) are ignored.
"""
import os

import numpy as np
import torch

from .base import DataSplits, split_random_halves
from .cityscapes import MEAN, STD
from .segmentation import IGNORE_INDEX, SegmentationSet, scaled_size

CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def voc_colormap():
    """The VOC palette: [256, 3] uint8, index i's colour from the bits of i (0 black, 255 the border colour)."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        r = g = b = 0
        bits = index
        for shift in range(7, -1, -1):
            r |= (bits & 1) << shift
            g |= ((bits >> 1) & 1) << shift
            b |= ((bits >> 2) & 1) << shift
            bits >>= 3
        colours[index] = (r, g, b)
    return colours


def read_voc_label(path, scale=1.0):
    """A VOC label PNG as int64 [H, W]: palette indices as they are, or (for PNGs saved as RGB)
    the colours mapped back to indices; colours outside the palette's classes are ignored."""
    from PIL import Image

    with Image.open(path) as label:
        if scale != 1.0:
            label = label.resize(scaled_size(label.size, scale), Image.Resampling.NEAREST)
        if label.mode in ("P", "L"):
            return torch.from_numpy(np.asarray(label).astype(np.int64))
        rgb = np.asarray(label.convert("RGB")).astype(np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    palette = voc_colormap().astype(np.int64)
    known = list(range(len(CLASS_NAMES))) + [IGNORE_INDEX]
    keys = np.array([(palette[i, 0] << 16) | (palette[i, 1] << 8) | palette[i, 2] for i in known])
    order = np.argsort(keys)
    position = np.clip(np.searchsorted(keys[order], code), 0, len(keys) - 1)
    matched = keys[order][position] == code
    labels = np.where(matched, np.array(known)[order][position], IGNORE_INDEX)
    return torch.from_numpy(labels.astype(np.int64))


def find_voc_root(root):
    required = ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation"))
    for folder in (os.path.join(root, "VOCdevkit", "VOC2012"), os.path.join(root, "VOC2012"), root):
        if all(os.path.isdir(os.path.join(folder, name)) for name in required):
            return folder
    raise FileNotFoundError(
        f"VOC 2012 not found under {os.path.abspath(root)!r}: expected VOCdevkit/VOC2012/ (or VOC2012/, or the "
        f"folder itself) holding {', '.join(required)} (from VOCtrainval_11-May-2012.tar, unpacked; nothing is "
        "downloaded automatically)"
    )


def list_split(root, split):
    list_file = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"VOC: no split list {list_file!r}")
    with open(list_file) as f:
        names = [line.strip() for line in f if line.strip()]
    images = [os.path.join(root, "JPEGImages", f"{name}.jpg") for name in names]
    labels = [os.path.join(root, "SegmentationClass", f"{name}.png") for name in names]
    for path in images + labels:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"VOC: {split}.txt lists {os.path.basename(path)!r} but {path!r} is missing")
    return images, labels


def load_voc(root, crop_size=321, scale_range=(0.5, 2.0), split_seed=0):
    """VOC 2012 train (halved at random for search) and val, read per batch.

    Training batches get a random scale in ``scale_range``, a random ``crop_size`` crop and a
    random flip; val batches are whole images (padded to the largest of a batch, padding ignored).
    """
    root = find_voc_root(root)
    common = dict(mean=MEAN, std=STD, read_label=read_voc_label)
    train = SegmentationSet(*list_split(root, "train"), crop_size=crop_size, flip=True, scale_range=scale_range,
                            **common)
    val = SegmentationSet(*list_split(root, "val"), **common)
    search_train, search_val = split_random_halves(train, split_seed)
    return DataSplits("voc", len(CLASS_NAMES), 3, train.crop_size[0], search_train, search_val, train, val,
                      CLASS_NAMES)
