#!/usr/bin/env python
"""Shift-wise vs 3x3 depthwise on the embedded long-range task (swtasks.cls.synthetic, ``longrange``).

Trains two networks that differ only in the reach of their token mixer, with the same data, seed,
optimiser, schedule and number of optimiser steps, and prints a table of their validation accuracy:

- ``shift-wise``: a test-sized ShiftWiseNet (``shiftwise_atto`` with the given depths/dims) whose
  shift-wise operators emulate big kernels (default 13/9/5/3 per stage);
- ``3x3 depthwise``: the same network with every big kernel set to 3, where the operator is a sum of
  3x3 depthwise convolutions (horizontal, vertical and centre branch plus identity): a network built
  only from 3x3 depthwise convolutions. Its parameter count is within ~1% of the shift-wise one (the
  shift-wise operator holds ceil(K/3) small kernels per channel instead of one).

    python tools/compare_receptive_field.py --markdown            # 3 seeds x 2 networks, ~6 min on 2 free cores
    python tools/compare_receptive_field.py --epochs 6 --seeds 0

Both networks: depths 1/1/2/1, dims 32/64/128/256, layer scale initialised to 1.0 (see --layer-scale),
48 px images, 3072 training images, batch 64, 4 epochs = 192 AdamW steps (lr 2e-3, cosine), seeds 0-2.
Training uses the toolkit itself (ClassificationModule + ImageClassificationDataModule + a Lightning
Trainer on CPU), without EMA, MixUp/CutMix or label smoothing, so the numbers are the raw networks'.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see tools/train_cls.py: shared CPUs


def parse_args(argv=None):
    from swtasks.cls.experiments import SW_KERNELS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs=4, default=(1, 1, 2, 1))
    p.add_argument("--dims", type=int, nargs=4, default=(32, 64, 128, 256))
    p.add_argument("--kernel-sizes", type=int, nargs=4, default=SW_KERNELS, help="the shift-wise network's big kernels")
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument(
        "--periods", type=int, nargs=2, default=None,
        help="task variant: the two repeat distances in px (default: the dataset's 12 20)",
    )  # fmt: skip
    p.add_argument("--block", type=int, default=None, help="task variant: noise block size in px (default: 2)")
    p.add_argument("--train-size", type=int, default=3072)
    p.add_argument("--val-size", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4, help="epochs (the same optimiser steps for both networks)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument(
        "--layer-scale", type=float, default=1.0,
        help="layer_scale_init_value of both networks (the model's default 1e-6 suits 300-epoch runs; with it the"
        " blocks stay near identity for most of a 200-step budget and both networks learn slowly and erratically)",
    )  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=(0, 1, 2))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from swtasks.cls.experiments import ReceptiveFieldSettings, compare_receptive_field, format_comparison

    settings = ReceptiveFieldSettings(
        depths=args.depths, dims=args.dims, kernel_sizes=args.kernel_sizes, image_size=args.image_size,
        periods=args.periods, block=args.block, train_size=args.train_size, val_size=args.val_size,
        batch_size=args.batch_size, epochs=args.epochs, lr=args.lr, layer_scale=args.layer_scale, seeds=args.seeds,
        threads=args.threads,
    )  # fmt: skip
    print(format_comparison(compare_receptive_field(settings), settings, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
