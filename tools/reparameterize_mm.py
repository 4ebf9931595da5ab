#!/usr/bin/env python
"""Convert a trained detector / segmentor checkpoint to the backbone's deploy structure (and write the
matching config). Usage: tools/reparameterize_mm.py CONFIG CHECKPOINT OUT.pth [--out-config F.py]."""

import sys

from swtasks.mm.deploy import main

if __name__ == "__main__":
    main(sys.argv[1:])
