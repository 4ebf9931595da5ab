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
import platform
import sys
import time

SW_KERNELS = (13, 9, 5, 3)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see tools/train_cls.py: shared CPUs


def parse_args(argv=None):
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


def train_one(kernel_sizes, args, seed: int) -> dict:
    import lightning as L

    from swtasks.cls import ClassificationModule, ImageClassificationDataModule

    L.seed_everything(seed, verbose=False)
    model = ClassificationModule(
        "shiftwise_atto",
        num_classes=4,
        drop_path_rate=0.0,
        backbone_kwargs={
            "depths": list(args.depths), "dims": list(args.dims), "kernel_sizes": list(kernel_sizes),
            **({} if args.layer_scale is None else {"layer_scale_init_value": args.layer_scale}),
        },  # fmt: skip
        lr=args.lr,
        base_batch_size=None,  # --lr is the lr the run uses (not stated per a base batch)
        warmup_epochs=0.25,
        min_lr=1e-5,
        label_smoothing=0.0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        ema_decay=None,
    )
    data = ImageClassificationDataModule(
        dataset="longrange",
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=0,
        seed=seed,
        synthetic_train_size=args.train_size,
        synthetic_val_size=args.val_size,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=args.epochs,
    )
    t0 = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - t0
    params = sum(p.numel() for p in model.backbone.parameters())
    m = trainer.callback_metrics
    return {
        "params": params,
        "steps": trainer.global_step,
        "acc1": float(m["val_acc1"]),
        "loss": float(m["val_loss"]),
        "train_loss": float(m["train_loss_epoch"]),
        "seconds": seconds,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from swtasks.cls import synthetic

    # task variants for experiments (the generator reads these module constants at every call)
    if args.periods:
        synthetic.LONGRANGE_PERIODS = tuple(args.periods)
    if args.block:
        synthetic.LONGRANGE_BLOCK = args.block
    nets = [("shift-wise", tuple(args.kernel_sizes)), ("3x3 depthwise", (3, 3, 3, 3))]
    rows = []
    for seed in args.seeds:
        for name, ks in nets:
            r = train_one(ks, args, seed)
            r.update(net=name, kernels="/".join(map(str, ks)), seed=seed)
            rows.append(r)
            print(
                f"[{name}, seed {seed}] val top-1 {100 * r['acc1']:.2f}%  ({r['steps']} steps, {r['seconds']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

    try:
        load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        load = "n/a"
    print(
        f"longrange task: periods {synthetic.LONGRANGE_PERIODS} px, {synthetic.LONGRANGE_BLOCK}-px noise blocks, "
        f"image {args.image_size}px, {args.train_size} train / {args.val_size} val images, "
        f"4 classes (chance 25%); depths {tuple(args.depths)}, dims {tuple(args.dims)}; batch {args.batch_size}, "
        f"{args.epochs} epochs, AdamW lr {args.lr}, cosine; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, load avg at end {load}"
    )
    header = ["network", "big kernels", "params", "seed", "opt. steps", "train loss", "val loss", "val top-1", "time (s)"]
    table = [
        [
            r["net"], r["kernels"], f"{r['params']:,}", str(r["seed"]), str(r["steps"]), f"{r['train_loss']:.3f}",
            f"{r['loss']:.3f}", f"{100 * r['acc1']:.2f}%", f"{r['seconds']:.0f}",
        ]
        for r in rows
    ]  # fmt: skip
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in table:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for row in table:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    sw = [r for r in rows if r["net"] == "shift-wise"]
    dw = [r for r in rows if r["net"] != "shift-wise"]
    mean = lambda rs: 100 * sum(r["acc1"] for r in rs) / len(rs)  # noqa: E731
    ratio = sw[0]["params"] / dw[0]["params"]
    print(
        f"mean val top-1: shift-wise {mean(sw):.2f}%, 3x3 depthwise {mean(dw):.2f}% "
        f"(difference {mean(sw) - mean(dw):+.2f} points; params ratio {ratio:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
