#!/usr/bin/env python
"""Training-loader throughput, image folder vs shards: images per second per worker, decode and augmentation
included (docs/classification.md, "Data in shards").

    tools/benchmark_data.py                                  # a generated ImageNet-like JPEG folder (temporary)
    tools/benchmark_data.py --root /data/imagenet-subset     # your folder (train/ and val/); shards written to a temp dir
    tools/benchmark_data.py --root FOLDER --shards OUT       # shards already written by tools/make_shards.py

Each configuration (format x workers) iterates the training DataLoader of ImageClassificationDataModule (the
one `tools/train_cls.py fit` uses: RandomResizedCrop to --image-size, flip, normalisation, optionally
--auto-augment) over the whole training split, --repeats times; the table gives the spread (min-max) of
images/s and of images/s per worker, and the load average before and after. The files are read once before
timing, so both formats are timed from the page cache: this measures the CPU cost of reading, decoding and
augmenting, not a network file system's (where shards avoid one open per image).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from swtasks.cliutil import run_tool


def generate_folder(root: Path, images: int, classes: int, seed: int = 0) -> Path:
    """An ImageNet-like folder: JPEG (quality 90) photos-like images of 500x375 / 375x500 px (smooth colour
    fields with noise, ~60-110 kB each, about ImageNet's average), split 9:1 into train/val."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(images):
        split = "val" if (i // classes) % 10 == 0 else "train"  # every class in both splits
        d = root / split / f"class_{i % classes:03d}"
        d.mkdir(parents=True, exist_ok=True)
        w, h = (500, 375) if i % 3 else (375, 500)
        low = rng.uniform(0, 255, size=(h // 25 + 1, w // 25 + 1, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.float32)
        img += rng.normal(0, 12, size=img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"img_{i:06d}.JPEG", quality=90)
    return root


def _throughput(root: Path, fmt: str, workers: int, args) -> float:
    from swtasks.cls.data import ImageClassificationDataModule

    dm = ImageClassificationDataModule(
        root=str(root), format=fmt, image_size=args.image_size, batch_size=args.batch_size, num_workers=workers,
        persistent_workers=False, auto_augment=args.auto_augment,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    start = time.perf_counter()
    n = sum(len(batch[1]) for batch in loader)
    return n / (time.perf_counter() - start)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--root", help="ImageNet-layout folder (default: generate one in a temporary folder)")
    parser.add_argument("--shards", help="its shards (default: written by make_shards into a temporary folder)")
    parser.add_argument("--images", type=int, default=600, help="images to generate without --root (default 600)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader workers (default: 1 2)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--auto-augment", default=None, help="e.g. rand-m9-mstd0.5-inc1 (default: off)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from swtasks.cls.data import scan_split
    from swtasks.cls.shards import write_shards

    with tempfile.TemporaryDirectory(prefix="benchmark_data.") as tmp:
        root = Path(args.root) if args.root else generate_folder(Path(tmp) / "folder", args.images, args.classes)
        shards = Path(args.shards) if args.shards else Path(tmp) / "shards"
        if not args.shards:
            write_shards(root, shards, shard_size="256MB")
        _, samples = scan_split(root / "train", "training")
        for path, _ in samples:  # into the page cache, like the shards just written
            Path(path).read_bytes()
        load_before = os.getloadavg()
        rows = []
        for workers in args.workers:
            for fmt, where in (("folder", root), ("webdataset", shards)):
                rates = [_throughput(where, fmt, workers, args) for _ in range(args.repeats)]
                rows.append((fmt, workers, min(rates), max(rates)))
        load_after = os.getloadavg()
    print(f"training loader, {len(samples)} images, crop {args.image_size}, batch {args.batch_size}, "
          f"auto_augment={args.auto_augment}, {args.repeats} passes each (spread min-max)")
    print("| format | workers | images/s | images/s per worker |\n|---|---|---|---|")
    for fmt, workers, lo, hi in rows:
        print(f"| {fmt} | {workers} | {lo:.0f}-{hi:.0f} | {lo / workers:.0f}-{hi / workers:.0f} |")
    print(f"load average (1, 5, 15 min): before {' '.join(f'{v:.2f}' for v in load_before)}, "
          f"after {' '.join(f'{v:.2f}' for v in load_after)}; {os.cpu_count()} CPUs")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv, prog="benchmark_data.py")


if __name__ == "__main__":
    sys.exit(main())
