#!/usr/bin/env python
"""Train a detector (MMDetection 3.x) with a swtasks backbone. See `--help` and docs/detection-segmentation.md."""

import sys

from swtasks.mm.cli import main

if __name__ == "__main__":
    main("det", "train", sys.argv[1:])
