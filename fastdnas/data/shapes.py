"""Shapes: a generated segmentation set (no download), deterministic from a seed.

Each image shows a few textured shapes -- circles, squares, triangles -- on a textured
background. Colours are drawn from one distribution for shapes and background alike, so colour
says nothing about the class. Two cues do: the outline of the region a pixel lies in (squares
and triangles are rotated at random, all shapes have the same range of areas) and the kind of
texture filling it -- circles are striped, squares checked, triangles dotted, each in two random
colours, at a random period (4 to 8 pixels) and orientation, while the background varies slowly.
Shapes overlap a little at most; Gaussian noise is added. Images are rendered at 4x and averaged
down, so edges are anti-aliased; pixels that straddle an edge are labelled ``IGNORE_INDEX`` (a
band about one pixel wide), as VOC marks object borders.
"""
import math

import torch
import torch.nn.functional as F

from .base import DataSplits, split_random_halves
from .segmentation import IGNORE_INDEX, SegmentationSet

CLASS_NAMES = ("background", "circle", "square", "triangle")
SUPERSAMPLE = 4


def generate_shapes(count, size=96, seed=0, shapes_per_image=(1, 3), radius=(10.0, 20.0), period=(4.0, 8.0),
                    noise=0.06, ignore_border=True):
    """``count`` images float32 [N, 3, size, size] in 0..1 and labels int64 [N, size, size].

    Labels: 0 background, 1 circle, 2 square, 3 triangle, ``IGNORE_INDEX`` on edges (with
    ``ignore_border``; otherwise the class covering most of the pixel). ``radius`` bounds the
    radius of a circle of the shape's area, ``period`` the texture period (pixels);
    ``shapes_per_image`` bounds the number of shapes (inclusive). Shapes may overlap a little (later ones in front). Everything is drawn from one
    torch generator seeded with ``seed``.
    """
    if count < 0 or size < 8:
        raise ValueError(f"need count >= 0 and size >= 8, got count={count}, size={size}")
    low, high = shapes_per_image
    if not 0 <= low <= high:
        raise ValueError(f"shapes_per_image must be (min, max) with 0 <= min <= max, got {shapes_per_image!r}")
    if not 0 < radius[0] <= radius[1]:
        raise ValueError(f"radius must be (min, max) with 0 < min <= max, got {radius!r}")
    generator = torch.Generator().manual_seed(seed)
    fine = size * SUPERSAMPLE
    coords = (torch.arange(fine, dtype=torch.float32) + 0.5) / SUPERSAMPLE  # pixel units
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    images = torch.empty(count, 3, size, size)
    labels = torch.empty(count, size, size, dtype=torch.int64)
    for n in range(count):
        image = background_texture(xs, ys, generator)
        label = torch.zeros(fine, fine, dtype=torch.int64)
        placed = []  # (x, y, r) of the shapes so far
        for _ in range(int(torch.randint(low, high + 1, (), generator=generator))):
            kind = int(torch.randint(1, len(CLASS_NAMES), (), generator=generator))
            r = uniform(generator, *radius)
            angle = uniform(generator, 0.0, 2 * math.pi)
            for _attempt in range(20):  # keep shapes mostly apart (rejection sampling)
                cx, cy = uniform(generator, 0.4 * r, size - 0.4 * r), uniform(generator, 0.4 * r, size - 0.4 * r)
                if all(math.hypot(cx - x, cy - y) >= 0.8 * (r + q) for x, y, q in placed):
                    break
            else:
                continue
            placed.append((cx, cy, r))
            # Only the shape's bounding box (every shape lies within 1.6 r of its centre) is drawn.
            box = tuple(slice(max(0, int((c - 1.6 * r) * SUPERSAMPLE)), int((c + 1.6 * r) * SUPERSAMPLE) + 1)
                        for c in (cy, cx))
            u, v = rotate(xs[box] - cx, ys[box] - cy, angle)
            mask = shape_mask(kind, u, v, r)
            image[(slice(None), *box)] = torch.where(mask, shape_texture(kind, u, v, generator, period),
                                                     image[(slice(None), *box)])
            label[box][mask] = kind
        images[n] = F.avg_pool2d(image[None], SUPERSAMPLE)[0]
        labels[n] = downsample_labels(label, ignore_border)
    images += noise * torch.randn(images.shape, generator=generator)
    return images.clamp_(0, 1), labels


def uniform(generator, low, high):
    return low + (high - low) * torch.rand((), generator=generator).item()


def rotate(x, y, angle):
    c, s = math.cos(angle), math.sin(angle)
    return c * x + s * y, -s * x + c * y


def shape_mask(kind, u, v, r):
    """Pixels inside shape ``kind`` (1 circle, 2 square, 3 triangle) of the area of a circle of radius r."""
    if kind == 1:
        return u * u + v * v <= r * r
    if kind == 2:
        half = r * math.sqrt(math.pi) / 2  # (2 half)^2 = pi r^2
        return (u.abs() <= half) & (v.abs() <= half)
    # Equilateral triangle: circumradius R, area (3 sqrt 3 / 4) R^2 = pi r^2; inside all three
    # half-planes at distance R / 2 (the inradius) from the centre.
    big = r * math.sqrt(4 * math.pi / (3 * math.sqrt(3)))
    inside = torch.ones_like(u, dtype=torch.bool)
    for k in range(3):
        theta = 2 * math.pi * k / 3
        inside &= u * math.cos(theta) + v * math.sin(theta) <= big / 2
    return inside


def random_colour(generator):
    return torch.rand(3, 1, 1, generator=generator)


def background_texture(xs, ys, generator):
    """Two colours blended by slowly varying waves (periods of 20 to 60 pixels)."""
    first, second = random_colour(generator), random_colour(generator)
    blend = torch.zeros_like(xs)
    for _ in range(3):
        u, _ = rotate(xs, ys, uniform(generator, 0, 2 * math.pi))
        blend += torch.sin(2 * math.pi * u / uniform(generator, 20, 60) + uniform(generator, 0, 2 * math.pi))
    blend = 0.5 + blend / 6  # in [0, 1]
    return first + (second - first) * blend


def shape_texture(kind, u, v, generator, period_range):
    """Two random colours in the texture of the class (1 stripes, 2 checks, 3 dots), at a random
    period in ``period_range`` (pixels), phase and orientation, in the shape's own frame."""
    first = random_colour(generator)
    # The second colour differs from the first by 0.35 to 0.65 in every channel (wrapping around
    # 0..1), so the texture shows whatever the colours.
    second = (first + 0.35 + 0.3 * torch.rand(3, 1, 1, generator=generator)) % 1.0
    period = uniform(generator, *period_range)
    phase = uniform(generator, 0, 2 * math.pi)
    a, b = rotate(u, v, uniform(generator, 0, math.pi))
    wave_a = torch.sin(2 * math.pi * a / period + phase)
    wave_b = torch.sin(2 * math.pi * b / period)
    if kind == 1:
        blend = 0.5 + 0.5 * wave_a
    elif kind == 2:
        blend = 0.5 + 0.5 * wave_a * wave_b
    else:
        blend = ((wave_a + wave_b) > 1.0).float()  # round spots on a regular grid
    return first + (second - first) * blend


def downsample_labels(label, ignore_border):
    """Per output pixel: the label all its subsamples agree on; where they disagree, IGNORE_INDEX
    (``ignore_border``) or the most common one."""
    one_hot = F.one_hot(label, len(CLASS_NAMES)).permute(2, 0, 1).float()
    coverage = F.avg_pool2d(one_hot[None], SUPERSAMPLE)[0]  # [classes, size, size]
    majority = coverage.argmax(0)
    if not ignore_border:
        return majority
    return torch.where(coverage.amax(0) == 1, majority, IGNORE_INDEX)


def load_shapes(train_size=384, val_size=128, size=96, seed=0, crop_size=None, **options):
    """The shapes set: a train split (halved at random for search) and a val split, generated.

    Training batches get a random scale in [0.75, 1.25], a random ``crop_size`` crop (default:
    the image size) and a random flip. ``options`` go to ``generate_shapes``.
    """
    train_images, train_labels = generate_shapes(train_size, size, seed=2 * seed, **options)
    val_images, val_labels = generate_shapes(val_size, size, seed=2 * seed + 1, **options)
    mean, std = train_images.mean((0, 2, 3)), train_images.std((0, 2, 3))
    crop_size = crop_size or size
    train = SegmentationSet(train_images, train_labels, mean, std, crop_size=crop_size, flip=True,
                            scale_range=(0.75, 1.25))
    search_train, search_val = split_random_halves(train, seed)
    val = SegmentationSet(val_images, val_labels, mean, std)
    return DataSplits("shapes", len(CLASS_NAMES), 3, crop_size, search_train, search_val, train, val, CLASS_NAMES)
