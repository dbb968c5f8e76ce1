"""Cityscapes fine annotations from a local folder in the official layout (nothing is downloaded).

    ROOT/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Label ids (0..33) are mapped to the 19 evaluation classes (train ids 0..18); every other id is
ignored (255).
"""
import glob
import os
from functools import partial

import torch

from .base import DataSplits, split_random_halves
from .segmentation import IGNORE_INDEX, SegmentationSet, read_label_png

# (label id, train id) of the 19 evaluated classes, from the public Cityscapes label definition;
# every other label id (unlabeled, ego vehicle, ..., parking, rail track, guard rail, bridge,
# tunnel, polegroup, caravan, trailer, license plate) is ignored.
CLASSES = (
    (7, "road"), (8, "sidewalk"), (11, "building"), (12, "wall"), (13, "fence"), (17, "pole"),
    (19, "traffic light"), (20, "traffic sign"), (21, "vegetation"), (22, "terrain"), (23, "sky"),
    (24, "person"), (25, "rider"), (26, "car"), (27, "truck"), (28, "bus"), (31, "train"),
    (32, "motorcycle"), (33, "bicycle"),
)
CLASS_NAMES = tuple(name for _, name in CLASSES)
# ImageNet statistics in 0..255 units (what DeepLab-style models normalise with).
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def label_id_to_train_id():
    """A 256-entry lookup table: label id -> train id (IGNORE_INDEX for ids not evaluated)."""
    table = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
    for train_id, (label_id, _) in enumerate(CLASSES):
        table[label_id] = train_id
    return table


def find_cityscapes_root(root):
    for folder in (root, os.path.join(root, "cityscapes")):
        if os.path.isdir(os.path.join(folder, "leftImg8bit")) and os.path.isdir(os.path.join(folder, "gtFine")):
            return folder
    raise FileNotFoundError(
        f"Cityscapes not found under {os.path.abspath(root)!r}: expected the folders leftImg8bit/ and gtFine/ "
        "(from leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip of https://www.cityscapes-dataset.com, "
        "unpacked; nothing is downloaded automatically)"
    )


def list_pairs(root, split):
    """Sorted (image, label) file pairs of one split; a missing label file is an error."""
    images = sorted(glob.glob(os.path.join(root, "leftImg8bit", split, "*", "*_leftImg8bit.png")))
    if not images:
        raise FileNotFoundError(f"no images in {os.path.join(root, 'leftImg8bit', split)!r} "
                                f"(expected <city>/*_leftImg8bit.png)")
    labels = []
    for image in images:
        city = os.path.basename(os.path.dirname(image))
        stem = os.path.basename(image)[: -len("_leftImg8bit.png")]
        label = os.path.join(root, "gtFine", split, city, f"{stem}_gtFine_labelIds.png")
        if not os.path.isfile(label):
            raise FileNotFoundError(f"no label map for {image!r}: expected {label!r}")
        labels.append(label)
    return images, labels


def load_cityscapes(root, resize=0.5, crop_size=321, scale_range=(0.5, 2.0), split_seed=0):
    """Cityscapes train (halved at random for search) and val, read per batch at ``resize`` times
    the full 2048x1024 resolution (default half, as the Auto-DeepLab search uses).

    Training batches get a random scale in ``scale_range``, a random ``crop_size`` crop and a
    random flip; val batches are whole images.
    """
    root = find_cityscapes_root(root)
    read_label = partial(read_label_png, lookup=label_id_to_train_id())
    common = dict(mean=MEAN, std=STD, resize=resize, read_label=read_label)
    train = SegmentationSet(*list_pairs(root, "train"), crop_size=crop_size, flip=True, scale_range=scale_range,
                            **common)
    val = SegmentationSet(*list_pairs(root, "val"), **common)
    search_train, search_val = split_random_halves(train, split_seed)
    return DataSplits("cityscapes", len(CLASSES), 3, train.crop_size[0], search_train, search_val, train, val,
                      CLASS_NAMES)
