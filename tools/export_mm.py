#!/usr/bin/env python
"""Export an MMSegmentation segmentor (end to end: RGB 0-255 images -> per-class logits at the input size) or
an MMDetection detector's backbone + neck (the feature pyramid) to ONNX, checked in ONNX Runtime against the
model the mm Runner builds from the config. Usage:

    tools/export_mm.py CONFIG CHECKPOINT OUT.onnx [--image-size N|HxW] [--dynamic-hw] [--cfg-options k=v ...]

(--dynamic-hw: detectors only; a segmentor refuses it in one line.)

See swtasks/mm/export.py and docs/deploy.md.
"""

import os
import sys

# Shared CPUs: idle OpenMP threads sleep instead of spin-waiting (see tools/train_cls.py); set before torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from swtasks.mm.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
