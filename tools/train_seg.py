#!/usr/bin/env python
"""Train a segmentor (MMSegmentation 1.x) with a swtasks backbone. See `--help` and docs/detection-segmentation.md."""

import os
import sys

# Shared CPUs: idle OpenMP threads sleep instead of spin-waiting (see tools/train_cls.py); set before torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from swtasks.mm.cli import main  # noqa: E402

if __name__ == "__main__":
    main("seg", "train", sys.argv[1:])
