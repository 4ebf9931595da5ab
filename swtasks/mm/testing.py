"""Tiny datasets in the real COCO and ADE20K layouts, for tests and CPU smoke runs.

    python -m swtasks.mm.testing coco data/tiny_coco          # annotations/instances_{train,val}2017.json
    python -m swtasks.mm.testing ade20k data/tiny_ade         # ADEChallengeData2016 layout

Images are small random-colour canvases with a few filled squares and disks; the COCO instances carry
boxes and polygon masks (category 'square' or 'disk'); the ADE20K label maps use labels 1..150 (0 =
"other", ignored after reduce_zero_label) with the shapes painted in.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from .dataset_writers import write_ade20k, write_coco

TINY_COCO_CLASSES = ("square", "disk")


def _canvas(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.integers(0, 256, size=3)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = base
    img = np.clip(img.astype(np.int16) + rng.integers(-20, 21, size=img.shape), 0, 255).astype(np.uint8)
    return img


def _shapes(rng: np.random.Generator, size: int, count: int):
    """[(kind, cx, cy, r)] non-degenerate shapes fully inside the image."""
    out = []
    for _ in range(count):
        r = int(rng.integers(size // 8, size // 4 + 1))
        cx = int(rng.integers(r + 1, size - r - 1))
        cy = int(rng.integers(r + 1, size - r - 1))
        out.append((int(rng.integers(0, 2)), cx, cy, r))
    return out


def _polygon(kind: int, cx: int, cy: int, r: int) -> list[float]:
    if kind == 0:  # square
        pts = [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    else:  # disk as a 16-gon
        pts = [
            (cx + r * math.cos(2 * math.pi * i / 16), cy + r * math.sin(2 * math.pi * i / 16))
            for i in range(16)
        ]
    return [float(round(v, 2)) for p in pts for v in p]


def _paint(img: np.ndarray, mask: np.ndarray | None, kind: int, cx: int, cy: int, r: int, colour, label=None):
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    if kind == 0:
        sel = (abs(xx - cx) <= r) & (abs(yy - cy) <= r)
    else:
        sel = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    img[sel] = colour
    if mask is not None and label is not None:
        mask[sel] = label


def make_tiny_coco(root: str, num_train: int = 4, num_val: int = 2, size: int = 64, seed: int = 0) -> str:
    """Write a COCO-format instance-segmentation dataset under ``root`` (train2017/, val2017/,
    annotations/instances_{train,val}2017.json). Returns ``root``."""
    rng = np.random.default_rng(seed)

    def make_image(_i):
        img = _canvas(rng, size)
        objects = []
        for kind, cx, cy, r in _shapes(rng, size, int(rng.integers(1, 3))):
            _paint(img, None, kind, cx, cy, r, rng.integers(0, 256, size=3))
            area = float((2 * r) ** 2 if kind == 0 else math.pi * r * r)
            objects.append((kind, [float(cx - r), float(cy - r), float(2 * r), float(2 * r)], area,
                            _polygon(kind, cx, cy, r)))
        return img, objects

    return write_coco(root, TINY_COCO_CLASSES, {"train2017": num_train, "val2017": num_val}, make_image)


def make_tiny_ade20k(root: str, num_train: int = 4, num_val: int = 2, size: int = 64, seed: int = 0) -> str:
    """Write an ADE20K-format dataset under ``root`` (images/{training,validation}/*.jpg,
    annotations/{training,validation}/*.png with labels 0..150). Returns ``root``."""
    rng = np.random.default_rng(seed)

    def make_image(_i):
        img = _canvas(rng, size)
        label = np.full((size, size), int(rng.integers(1, 151)), np.uint8)  # background class
        label[: size // 8] = 0  # a strip of "other" (ignored after reduce_zero_label)
        for kind, cx, cy, r in _shapes(rng, size, int(rng.integers(1, 4))):
            _paint(img, label, kind, cx, cy, r, rng.integers(0, 256, size=3), int(rng.integers(1, 151)))
        return img, label

    return write_ade20k(root, {"training": num_train, "validation": num_val}, make_image, "ADE_{split:.5}_{i:08d}")


def pipeline_samples(config: str, data_root: str, split: str = "test"):
    """Build the ``{split}_dataloader`` dataset of the MMDetection/MMSegmentation config ``config`` on
    ``data_root`` with the framework's registry (the config's ``default_scope``) and run its pipeline on
    every item. Returns (cfg, dataset, data_samples): what a Runner's loop would hand the model and the
    evaluator, without a model."""
    from mmengine.config import Config
    from mmengine.registry import DATASETS, init_default_scope

    from .cli import set_data_root

    cfg = Config.fromfile(config)
    set_data_root(cfg, data_root)
    init_default_scope(cfg.get("default_scope", "mmengine"))
    dataset = DATASETS.build(cfg[f"{split}_dataloader"].dataset)
    return cfg, dataset, [dataset[i]["data_samples"] for i in range(len(dataset))]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] not in ("coco", "ade20k"):
        print("usage: python -m swtasks.mm.testing {coco|ade20k} OUT_DIR", file=sys.stderr)
        return 2
    fn = make_tiny_coco if argv[0] == "coco" else make_tiny_ade20k
    print(fn(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
