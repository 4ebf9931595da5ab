#!/usr/bin/env python
"""Write an ImageNet-layout image folder as shards for `tools/train_cls.py --data.format webdataset`.

    tools/make_shards.py SRC_FOLDER OUT [--shard-size 256MB] [--splits train val]

SRC_FOLDER/<split>/<class>/<image> (the folder format's layout and checks) becomes OUT/<split>/index.json and
OUT/<split>/shard-NNNNNN.tar: WebDataset tar files of about --shard-size each (256MB, 1GB, 64MiB or bytes),
holding each image's original bytes and its label. Train with `--data.root OUT --data.format webdataset`:
the same samples, classes and augmentation as `--data.root SRC_FOLDER` (docs/classification.md, "Data in
shards"). OUT may be any path the training nodes mount.
"""

from __future__ import annotations

import argparse
import sys

from swtasks.cliutil import run_tool


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("src", metavar="SRC_FOLDER", help="ImageNet-layout folder: SRC_FOLDER/<split>/<class>/<image>")
    parser.add_argument("out", metavar="OUT", help="output folder (one sub-folder per split)")
    parser.add_argument("--shard-size", default="256MB", help="target shard size (default 256MB)")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], help="split folders to write (default: train val)")
    args = parser.parse_args(argv)

    from swtasks.cls.shards import write_shards

    write_shards(args.src, args.out, shard_size=args.shard_size, splits=args.splits, log=print)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv, prog="make_shards.py")


if __name__ == "__main__":
    sys.exit(main())
