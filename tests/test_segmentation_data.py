"""Segmentation data: the generated shapes, joint augmentation, and the Cityscapes / VOC readers on tiny fixtures."""
import numpy as np
import pytest
import torch
from PIL import Image

from fastdnas.data import (
    IGNORE_INDEX,
    SegmentationSet,
    generate_shapes,
    iterate_batches,
    load_dataset,
    load_shapes,
    split_random_halves,
)
from fastdnas.data.cityscapes import CLASSES, label_id_to_train_id
from fastdnas.data.voc import read_voc_label, voc_colormap

SMALL_SHAPES = dict(size=32, radius=(4.0, 8.0), period=(3.0, 5.0))


def test_shapes_are_deterministic_and_labelled():
    images, labels = generate_shapes(12, seed=3, **SMALL_SHAPES)
    again_images, again_labels = generate_shapes(12, seed=3, **SMALL_SHAPES)
    assert torch.equal(images, again_images) and torch.equal(labels, again_labels)
    other_images, _ = generate_shapes(12, seed=4, **SMALL_SHAPES)
    assert not torch.equal(images, other_images)
    assert images.shape == (12, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (12, 32, 32) and labels.dtype == torch.int64
    assert 0 <= images.min() and images.max() <= 1
    values = set(labels.unique().tolist())
    assert values <= {0, 1, 2, 3, IGNORE_INDEX} and {0, 1, 2, 3, IGNORE_INDEX} <= values
    # The ignore band (pixels straddling an edge) is thin: every class keeps labelled pixels.
    counts = torch.bincount(labels[labels != IGNORE_INDEX], minlength=4)
    assert (counts > 0).all()
    assert (labels == IGNORE_INDEX).float().mean() < 0.15
    _, whole = generate_shapes(12, seed=3, ignore_border=False, **SMALL_SHAPES)
    assert set(whole.unique().tolist()) <= {0, 1, 2, 3}
    assert torch.equal(whole[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX])


def test_shapes_splits():
    data = load_shapes(train_size=20, val_size=6, seed=1, **SMALL_SHAPES)
    assert (data.name, data.num_classes, data.in_channels, data.image_size) == ("shapes", 4, 3, 32)
    assert data.class_names == ("background", "circle", "square", "triangle")
    assert len(data.train) == 20 and len(data.test) == 6
    assert len(data.search_train) == len(data.search_val) == 10
    # Two random halves of the train split: disjoint, together the whole, not the index halves.
    rows = {tuple(image.flatten()[:16].tolist()) for image in data.train.images}
    first = {tuple(image.flatten()[:16].tolist()) for image in data.search_train.images}
    second = {tuple(image.flatten()[:16].tolist()) for image in data.search_val.images}
    assert first | second == rows and not first & second
    assert not torch.equal(data.search_train.images, data.train.images[:10])
    assert data.train.augments and not data.test.augments
    images, labels = data.test.batch(torch.arange(6))
    assert images.shape == (6, 3, 32, 32) and labels.shape == (6, 32, 32)
    assert torch.equal(load_shapes(train_size=20, val_size=6, seed=1, **SMALL_SHAPES).test.labels, data.test.labels)


def test_split_random_halves_is_fixed_by_seed():
    data = SegmentationSet(torch.arange(10.0).view(10, 1, 1, 1).expand(10, 1, 2, 2).clone(),
                           torch.zeros(10, 2, 2, dtype=torch.int64), [0.0], [1.0])
    a, b = split_random_halves(data, seed=0)
    again, _ = split_random_halves(data, seed=0)
    other, _ = split_random_halves(data, seed=1)
    ids = lambda s: s.images[:, 0, 0, 0].long().tolist()  # noqa: E731
    assert sorted(ids(a) + ids(b)) == list(range(10)) and ids(a) == ids(again) and ids(a) != ids(other)


def label_coded_set(**augmentation):
    """Images whose single channel equals the label map: any misalignment shows."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (6, 4, 4), generator=generator).repeat_interleave(4, 1).repeat_interleave(4, 2)
    return SegmentationSet(labels[:, None].float(), labels, [0.0], [1.0], **augmentation)


def test_augmentation_moves_images_and_labels_together():
    data = label_coded_set(crop_size=12, flip=True)
    images, labels = data.batch(torch.arange(6), torch.Generator().manual_seed(5))
    assert images.shape == (6, 1, 12, 12) and labels.shape == (6, 12, 12)
    assert torch.equal(images[:, 0], labels.float())
    again, _ = data.batch(torch.arange(6), torch.Generator().manual_seed(5))
    assert torch.equal(images, again)
    # Crops larger than the image: padded with the mean (0 once normalised) and ignore labels.
    images, labels = label_coded_set(crop_size=20).batch(torch.arange(6), torch.Generator().manual_seed(1))
    assert images.shape == (6, 1, 20, 20)
    padded = labels == IGNORE_INDEX
    assert padded.sum(dim=(1, 2)).tolist() == [20 * 20 - 16 * 16] * 6
    assert (images[:, 0][padded] == 0).all() and torch.equal(images[:, 0][~padded], labels[~padded].float())
    # Scaling: bilinear for the image, nearest for the labels; they agree away from the edges of the blocks.
    images, labels = label_coded_set(crop_size=16, scale_range=(0.6, 1.8)).batch(
        torch.arange(6), torch.Generator().manual_seed(2))
    inside = labels != IGNORE_INDEX
    assert ((images[:, 0] - labels.float()).abs()[inside] < 0.5).float().mean() > 0.8


def test_evaluation_batches_pad_to_the_largest_image():
    samples = [(torch.ones(3, 4, 6), torch.zeros(4, 6, dtype=torch.int64)),
               (torch.ones(3, 5, 3), torch.ones(5, 3, dtype=torch.int64))]
    from fastdnas.data.segmentation import stack_padded

    images, labels = stack_padded(samples)
    assert images.shape == (2, 3, 5, 6) and labels.shape == (2, 5, 6)
    assert (labels[0, 4] == IGNORE_INDEX).all() and (labels[1, :, 3:] == IGNORE_INDEX).all()
    assert images[0, :, 4].abs().sum() == 0 and images[1, :, :, 3:].abs().sum() == 0


# ---------------------------------------------------------------------------------------------
# Cityscapes


def write_png(path, array, mode=None, palette=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(array, dtype=np.uint8), mode)
    if palette is not None:
        image.putpalette(palette)
    image.save(path)


def write_cityscapes(root, split, city, frames, size=(8, 16)):
    rng = np.random.default_rng(len(split) + len(city))
    written = {}
    for frame in frames:
        stem = f"{city}_000000_{frame:06d}"
        image = rng.integers(0, 256, size=(*size, 3))
        label_ids = rng.integers(0, 34, size=size)
        label_ids[0, :4] = [7, 26, 0, 33]  # road, car, unlabeled, bicycle
        write_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
        write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label_ids)
        # Other gtFine files of the official layout are present and ignored.
        write_png(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", image)
        written[stem] = (image, label_ids)
    return written


def test_cityscapes_label_table():
    table = label_id_to_train_id()
    assert len(CLASSES) == 19
    assert [table[i].item() for i in (7, 8, 11, 26, 33)] == [0, 1, 2, 13, 18]
    assert sorted(table[table != IGNORE_INDEX].tolist()) == list(range(19))
    assert all(table[i].item() == IGNORE_INDEX for i in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30))


def test_cityscapes_label_table_matches_cityscapesscripts():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels").labels
    table = label_id_to_train_id()
    for label in labels:
        if 0 <= label.id < 256:
            expected = label.trainId if 0 <= label.trainId < 19 else IGNORE_INDEX
            assert table[label.id].item() == expected, label.name


def test_cityscapes_reads_the_official_layout(tmp_path):
    train = write_cityscapes(tmp_path, "train", "aachen", [19, 20]) | write_cityscapes(tmp_path, "train", "bremen",
                                                                                       [1, 2])
    val = write_cityscapes(tmp_path, "val", "frankfurt", [5, 6])
    data = load_dataset("cityscapes", root=str(tmp_path), resize=1.0, crop_size=6)
    assert (data.name, data.num_classes, data.image_size) == ("cityscapes", 19, 6)
    assert data.class_names[0] == "road" and data.class_names[13] == "car"
    assert len(data.train) == 4 and len(data.test) == 2 and len(data.search_train) == len(data.search_val) == 2
    images, labels = data.test.batch(torch.arange(2))  # whole images, sorted by name
    assert images.shape == (2, 3, 8, 16) and labels.shape == (2, 8, 16)
    table = label_id_to_train_id()
    for i, (image, label_ids) in enumerate(val.values()):
        assert torch.equal(labels[i], table[torch.from_numpy(label_ids)])
        raw = images[i] * data.test.std + data.test.mean
        assert torch.allclose(raw, torch.from_numpy(image).permute(2, 0, 1).float(), atol=1e-3)
    assert labels[0, 0, :4].tolist() == [0, 13, IGNORE_INDEX, 18]
    # Training batches: crops, deterministic given the generator.
    batches = list(iterate_batches(data.search_train, 2, torch.Generator().manual_seed(0), shuffle=True))
    again = list(iterate_batches(data.search_train, 2, torch.Generator().manual_seed(0), shuffle=True))
    assert batches[0][0].shape == (2, 3, 6, 6) and torch.equal(batches[0][1], again[0][1])
    assert set(batches[0][1].unique().tolist()) <= set(range(19)) | {IGNORE_INDEX}
    # Half resolution (the default) halves both.
    half = load_dataset("cityscapes", root=str(tmp_path))
    images, labels = half.test.batch(torch.arange(2))
    assert images.shape == (2, 3, 4, 8) and labels.shape == (2, 4, 8) and half.image_size == 321
    assert len(train) == 4


def test_cityscapes_missing_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="leftImg8bit/ and gtFine/"):
        load_dataset("cityscapes", root=str(tmp_path))
    write_cityscapes(tmp_path, "train", "aachen", [1])
    with pytest.raises(FileNotFoundError, match="no images"):
        load_dataset("cityscapes", root=str(tmp_path))  # no val split
    write_cityscapes(tmp_path, "val", "lindau", [1])
    (tmp_path / "gtFine" / "val" / "lindau" / "lindau_000000_000001_gtFine_labelIds.png").unlink()
    with pytest.raises(FileNotFoundError, match="no label map"):
        load_dataset("cityscapes", root=str(tmp_path))


# ---------------------------------------------------------------------------------------------
# VOC


def write_voc(root, names_by_split, sizes):
    base = root / "VOCdevkit" / "VOC2012"
    palette = voc_colormap().flatten().tolist()
    rng = np.random.default_rng(0)
    labels = {}
    for name, (height, width) in zip(sorted(sum(names_by_split.values(), [])), sizes):
        (base / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(
            base / "JPEGImages" / f"{name}.jpg")
        label = rng.integers(0, 21, size=(height, width))
        label[0, :] = 255  # a border
        write_png(base / "SegmentationClass" / f"{name}.png", label, mode="P", palette=palette)
        labels[name] = label
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    for split, names in names_by_split.items():
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return labels


def test_voc_reads_the_official_layout(tmp_path):
    splits = {"train": ["2007_000032", "2007_000039", "2007_000063", "2007_000068"], "val": ["2007_000033",
                                                                                             "2007_000042"]}
    labels = write_voc(tmp_path, splits, [(10, 12), (9, 14), (10, 12), (12, 10), (11, 11), (8, 13)])
    data = load_dataset("voc", root=str(tmp_path), crop_size=8)
    assert (data.name, data.num_classes, data.image_size, data.class_names[15]) == ("voc", 21, 8, "person")
    assert len(data.train) == 4 and len(data.test) == 2 and len(data.search_train) == 2
    images, batch_labels = data.test.batch(torch.arange(2))
    # Sizes differ: padded to the largest (9 x 14 and 12 x 10 -> 12 x 14) with ignored labels.
    assert images.shape == (2, 3, 12, 14) and batch_labels.shape == (2, 12, 14)
    assert torch.equal(batch_labels[0, :9], torch.from_numpy(labels["2007_000033"]))
    assert torch.equal(batch_labels[1, :, :10], torch.from_numpy(labels["2007_000042"]))
    assert (batch_labels[0, 9:] == IGNORE_INDEX).all() and (batch_labels[1, :, 10:] == IGNORE_INDEX).all()
    assert (batch_labels[:, 0] == IGNORE_INDEX).all()  # the border
    crops, crop_labels = data.train.batch(torch.arange(4), torch.Generator().manual_seed(0))
    assert crops.shape == (4, 3, 8, 8) and crop_labels.shape == (4, 8, 8)
    # Found from the VOC2012 folder itself too.
    assert len(load_dataset("voc", root=str(tmp_path / "VOCdevkit" / "VOC2012")).test) == 2


def test_voc_rgb_labels_map_back_to_classes(tmp_path):
    colours = voc_colormap()
    label = np.array([[0, 1, 15], [20, 255, 7]])
    rgb = colours[label]
    rgb[0, 0] = (1, 2, 3)  # not a VOC colour
    write_png(tmp_path / "rgb.png", rgb)
    assert read_voc_label(tmp_path / "rgb.png").tolist() == [[IGNORE_INDEX, 1, 15], [20, IGNORE_INDEX, 7]]


def test_voc_missing_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="VOC 2012 not found"):
        load_dataset("voc", root=str(tmp_path))
    write_voc(tmp_path, {"train": ["a"], "val": ["b", "c"]}, [(4, 4)] * 2)
    with pytest.raises(FileNotFoundError, match="is missing"):
        load_dataset("voc", root=str(tmp_path))
