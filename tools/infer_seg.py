#!/usr/bin/env python
"""Predictions of a segmentor (MMSegmentation 1.x) on images, folders or glob patterns. See `--help` and
docs/detection-segmentation.md ("Predictions on your images")."""

import os
import sys

# Shared CPUs: idle OpenMP threads sleep instead of spin-waiting (see tools/train_cls.py); set before torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from swtasks.mm.infer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("seg", sys.argv[1:]))
