"""Datasets: digits splits, the CIFAR pickle reader on a generated fixture, augmentation, batch order."""
import pickle

import numpy as np
import pytest
import torch

from fastdnas.data import epoch_generator, iterate_batches, load_dataset, load_digits, load_synthetic
from fastdnas.data.base import ImageSet, cutout, random_crop, random_flip


def test_digits_splits():
    data = load_digits()
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, 8)
    assert len(data.train) + len(data.test) == 1797 and len(data.test) == 360
    assert len(data.search_train) + len(data.search_val) == len(data.train)
    assert abs(len(data.search_train) - len(data.search_val)) <= 1
    # Stratified: every class has about a fifth of its images in the test split.
    test_counts = torch.bincount(data.test.labels, minlength=10)
    all_counts = test_counts + torch.bincount(data.train.labels, minlength=10)
    assert ((test_counts.float() / all_counts - 0.2).abs() < 0.02).all()
    # The search halves are the two halves of the train split, in order.
    assert torch.equal(torch.cat([data.search_train.images, data.search_val.images]), data.train.images)
    images, labels = data.train.batch(torch.arange(len(data.train)))
    assert images.shape == (1437, 1, 8, 8) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert abs(images.mean().item()) < 1e-4 and abs(images.std().item() - 1) < 1e-3
    assert torch.equal(load_digits().test.labels, data.test.labels)  # fixed split


def write_cifar_fixture(root, classes, images_per_file=6):
    """The python-pickle layout of the official archives, with random images."""
    if classes == 10:
        folder, files, label_key = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + [
            "test_batch"], b"labels"
    else:
        folder, files, label_key = root / "cifar-100-python", ["train", "test"], b"fine_labels"
    folder.mkdir()
    rng = np.random.default_rng(0)
    written = {}
    for name in files:
        data = rng.integers(0, 256, size=(images_per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, size=images_per_file).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, label_key: labels, b"batch_label": name.encode()}, f)
        written[name] = (data, labels)
    return written


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_reads_pickle_layout(tmp_path, classes):
    written = write_cifar_fixture(tmp_path, classes)
    data = load_dataset(f"cifar{classes}", root=str(tmp_path))
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if classes == 10 else ["train"]
    test_file = "test_batch" if classes == 10 else "test"
    expected_train = np.concatenate([written[f][0] for f in train_files]).reshape(-1, 3, 32, 32)
    assert (data.num_classes, data.in_channels, data.image_size) == (classes, 3, 32)
    assert torch.equal(data.train.images, torch.from_numpy(expected_train))
    assert data.train.labels.tolist() == sum((written[f][1] for f in train_files), [])
    assert data.test.labels.tolist() == written[test_file][1]
    assert len(data.search_train) == len(data.search_val) == len(data.train) // 2
    # Evaluation batches: normalised, unaugmented.
    images, _ = data.test.batch(torch.arange(2))
    raw = torch.from_numpy(written[test_file][0][:2].reshape(2, 3, 32, 32)).float() / 255
    mean = torch.tensor([0.49139968, 0.48215827, 0.44653124] if classes == 10 else [0.5071, 0.4865, 0.4409])
    std = torch.tensor([0.24703233, 0.24348505, 0.26158768] if classes == 10 else [0.2673, 0.2564, 0.2762])
    torch.testing.assert_close(images, (raw - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    # Training batches are augmented, deterministically given the generator.
    assert data.search_train.augments and data.train.augments and not data.test.augments
    first = data.train.batch(torch.arange(4), torch.Generator().manual_seed(3))[0]
    second = data.train.batch(torch.arange(4), torch.Generator().manual_seed(3))[0]
    assert first.shape == (4, 3, 32, 32) and torch.equal(first, second)


def test_cifar_missing_files_error_names_path_and_files(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("cifar10", root=str(tmp_path))
    message = str(error.value)
    assert str(tmp_path) in message and "data_batch_1" in message and "test_batch" in message
    with pytest.raises(ValueError, match="--data"):
        load_dataset("cifar100")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")


def test_random_crop_matches_per_image_crop():
    images = torch.randn(5, 2, 6, 7)
    cropped = random_crop(images, 3, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    top = torch.randint(0, 7, (5, 1), generator=generator)
    left = torch.randint(0, 7, (5, 1), generator=generator)
    padded = torch.nn.functional.pad(images, (3, 3, 3, 3))
    for i in range(5):
        t, l = top[i, 0].item(), left[i, 0].item()
        assert torch.equal(cropped[i], padded[i, :, t : t + 6, l : l + 7])


def test_flip_and_cutout():
    images = torch.randn(64, 3, 8, 8)
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    same = (flipped == images).flatten(1).all(1)
    mirrored = (flipped == images.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()
    holes = cutout(torch.ones(64, 3, 8, 8), 4, torch.Generator().manual_seed(0))
    zeros = (holes == 0).flatten(2).sum(2)
    assert (zeros[:, 0] == zeros[:, 1]).all() and (zeros <= 16).all() and (zeros == 16).any() and (zeros > 0).all()


def test_batches_are_a_deterministic_function_of_the_generator():
    data = load_synthetic(train_size=40)
    labels = data.train.labels

    def epoch_labels(seed, epoch, drop_last):
        batches = iterate_batches(data.train, 16, epoch_generator(seed, epoch), shuffle=True, drop_last=drop_last)
        return [y for _, y in batches]

    full = epoch_labels(0, 1, drop_last=False)
    assert [len(y) for y in full] == [16, 16, 8]
    assert sorted(torch.cat(full).tolist()) == sorted(labels.tolist())
    assert all(torch.equal(a, b) for a, b in zip(full, epoch_labels(0, 1, drop_last=False)))
    assert [len(y) for y in epoch_labels(0, 1, drop_last=True)] == [16, 16]
    assert not all(torch.equal(a, b) for a, b in zip(full, epoch_labels(0, 2, drop_last=False)))
    plain = [y for _, y in iterate_batches(data.train, 16)]
    assert torch.equal(torch.cat(plain), labels)
    with pytest.raises(ValueError, match="generator"):
        next(iterate_batches(data.train, 16, shuffle=True))


def test_image_set_checks_shapes():
    with pytest.raises(ValueError, match="N, C, H, W"):
        ImageSet(torch.zeros(4, 8, 8), torch.zeros(4, dtype=torch.long), [0.0], [1.0])
    with pytest.raises(ValueError, match="labels"):
        ImageSet(torch.zeros(4, 1, 8, 8), torch.zeros(3, dtype=torch.long), [0.0], [1.0])
