"""The embedded procedural dataset: no download, deterministic, and a task that needs long-range context.

``longrange`` ("long-range repeats"): every image is random colour noise made of 2x2-pixel blocks
that REPEATS along one axis with a fixed period, at a random phase. The class is (axis, period):

    0: repeats horizontally every 12 px      2: repeats vertically every 12 px
    1: repeats horizontally every 20 px      3: repeats vertically every 20 px

Every pixel is an independent Gaussian draw except that it equals the pixel 12 or 20 px away along the
class's axis, so no local window (smaller than the period) carries any information about the class:
the network has to compare pixels far apart. The default image is 48 px.

Why these numbers (measured with ``tools/compare_receptive_field.py``, benchmarks/RESULTS.md):
a test-sized shift-wise network, whose first-stage 13-tap kernels reach +-6 cells (+-24 px at stride 4),
compares the two pixels directly. A same-size network of 3x3 depthwise convolutions first sees both
only after more downsampling, where 12 and 20 px are 1.5 and 2.5 cells of the stride-8 grid (the pattern
no longer repeats cell for cell) and a 2x2-px noise texture no longer fits the channels; it learns the
task much more slowly. Periods that are multiples of 8 px (e.g. 16/24) line up with that grid, and at
32 px the whole image fits the deep stages: in both cases the 3x3 network does as well or better.

Samples are generated in memory from ``numpy.random.default_rng((seed, split, index))``, so a sample
depends only on (seed, split, index): the same on every machine, worker and rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "SHAPES",
    "ProceduralSpec",
    "check_image_size",
    "generate",
    "longrange_sample",
    "write_image_folder",
    "write_shapes_folder",
]

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class ProceduralSpec:
    name: str
    classes: tuple[str, ...]
    default_image_size: int
    description: str


LONGRANGE_PERIODS = (12, 20)  # pixels
LONGRANGE_BLOCK = 2  # pixels per noise block

DATASETS: dict[str, ProceduralSpec] = {
    "longrange": ProceduralSpec(
        name="longrange",
        classes=tuple(f"{axis}_period{p}" for axis in ("horizontal", "vertical") for p in LONGRANGE_PERIODS),
        default_image_size=48,
        description="colour noise repeating along one axis; class = (axis, period)",
    )
}


def longrange_sample(rng: np.random.Generator, label: int, image_size: int) -> np.ndarray:
    """One (3, S, S) float32 image of class ``label`` (zero mean, unit variance per pixel)."""
    blk = LONGRANGE_BLOCK
    nb = -(-image_size // blk)
    axis, which = divmod(int(label), len(LONGRANGE_PERIODS))
    period = LONGRANGE_PERIODS[which] // blk
    tile = rng.standard_normal((3, nb, period), dtype=np.float32)
    cols = (np.arange(nb) + rng.integers(0, period)) % period
    img = tile[:, :, cols]  # repeats along the width
    if axis == 1:
        img = img.transpose(0, 2, 1)  # along the height
    img = img.repeat(blk, axis=1).repeat(blk, axis=2)
    return np.ascontiguousarray(img[:, :image_size, :image_size])


def check_image_size(name: str, image_size: int) -> None:
    """ValueError unless ``image_size`` can show a whole period of procedural dataset ``name``."""
    if image_size <= max(LONGRANGE_PERIODS):
        raise ValueError(
            f"image_size {image_size} is too small for the procedural dataset {name!r}: it must be larger than "
            f"its longest period, {max(LONGRANGE_PERIODS)} px (default {DATASETS[name].default_image_size})"
        )


def generate(name: str, n: int, *, split: str = "train", image_size: int | None = None, seed: int = 0):
    """``n`` samples of procedural dataset ``name``: (images float32 (n, 3, S, S), labels int64 (n,))."""
    if name not in DATASETS:
        raise KeyError(f"unknown procedural dataset {name!r}; choose one of {sorted(DATASETS)}")
    spec = DATASETS[name]
    size = int(image_size or spec.default_image_size)
    check_image_size(name, size)
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
    k = len(spec.classes)
    x = np.empty((n, 3, size, size), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    for i in range(n):
        rng = np.random.default_rng((seed, _SPLIT_IDS[split], i))
        y[i] = i % k  # balanced classes
        x[i] = longrange_sample(rng, y[i], size)
    return torch.from_numpy(x), torch.from_numpy(y)


def write_image_folder(
    root: str,
    *,
    num_classes: int = 3,
    train_per_class: int = 8,
    val_per_class: int = 4,
    image_size: int = 32,
    seed: int = 0,
    fmt: str = "png",
) -> str:
    """Write a tiny ImageNet-layout folder (``root/{train,val}/class_{i}/*.png``) whose classes differ by
    colour (easy to learn): a fixture for tests and for smoke-testing a pipeline. Returns ``root``."""
    import os

    from PIL import Image

    rng = np.random.default_rng(seed)
    palette = rng.uniform(40, 215, size=(num_classes, 3))
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(num_classes):
            d = os.path.join(root, split, f"class_{c}")
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                noise = rng.normal(0, 25, size=(image_size, image_size, 3))
                img = np.clip(palette[c] + noise, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(os.path.join(d, f"{split}_{c}_{i}.{fmt}"))
    return root


# Ten shape classes for write_shapes_folder; each entry draws one shape of "radius" r centred at (cx, cy).
SHAPES = ("disk", "square", "triangle", "plus", "ring", "diamond", "x_cross", "frame", "two_disks", "bars")


def _draw_shape(draw, kind: str, cx: float, cy: float, r: float, fill, width: int) -> None:
    if kind == "disk":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif kind == "plus":
        draw.rectangle([cx - r, cy - width / 2, cx + r, cy + width / 2], fill=fill)
        draw.rectangle([cx - width / 2, cy - r, cx + width / 2, cy + r], fill=fill)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=width)
    elif kind == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif kind == "x_cross":
        draw.line([(cx - r, cy - r), (cx + r, cy + r)], fill=fill, width=width)
        draw.line([(cx - r, cy + r), (cx + r, cy - r)], fill=fill, width=width)
    elif kind == "frame":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], outline=fill, width=width)
    elif kind == "two_disks":
        q = r / 2
        draw.ellipse([cx - r, cy - q, cx, cy + q], fill=fill)
        draw.ellipse([cx, cy - q, cx + r, cy + q], fill=fill)
    elif kind == "bars":
        for dy in (-r, r - width):
            draw.rectangle([cx - r, cy + dy, cx + r, cy + dy + width], fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}; choose one of {SHAPES}")


def write_shapes_folder(
    root: str,
    *,
    num_classes: int = 10,
    train_per_class: int = 30,
    val_per_class: int = 10,
    image_size: int = 32,
    seed: int = 0,
    fmt: str = "png",
) -> str:
    """Write an ImageNet-layout folder (``root/{train,val}/<shape>/*.png``) of coloured shapes: the class is
    the shape (``SHAPES[:num_classes]``: disk, square, triangle, plus, ring, ...); position, size, colours
    and background noise are random, so neither colour nor a fixed location gives the class away. A small
    "your own data" stand-in: a few hundred images are learnable in minutes on a CPU. Returns ``root``."""
    import os

    from PIL import Image, ImageDraw

    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPES)}, got {num_classes}")
    rng = np.random.default_rng(seed)
    s = image_size
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for kind in SHAPES[:num_classes]:
            d = os.path.join(root, split, kind)
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                bg, fg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
                while np.abs(fg - bg).sum() < 150:  # keep the shape visible
                    fg = rng.uniform(0, 255, 3)
                img = Image.new("RGB", (s, s), tuple(int(v) for v in bg))
                r = rng.uniform(0.3, 0.45) * s
                cx, cy = rng.uniform(r + 1, s - r - 1, size=2)
                _draw_shape(ImageDraw.Draw(img), kind, cx, cy, r, tuple(int(v) for v in fg), max(2, round(s / 8)))
                arr = np.asarray(img, dtype=np.float64) + rng.normal(0, 8, size=(s, s, 3))
                Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(os.path.join(d, f"{kind}_{i:04d}.{fmt}"))
    return root
