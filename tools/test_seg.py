#!/usr/bin/env python
"""Test a segmentor (MMSegmentation 1.x) with a swtasks backbone. See `--help` and docs/detection-segmentation.md."""

import sys

from swtasks.mm.cli import main

if __name__ == "__main__":
    main("seg", "test", sys.argv[1:])
