#!/usr/bin/env python
"""INT8 against fp32 on the classification demo's validation set (docs/deploy.md, "INT8").

    python benchmarks/int8_demo.py runs/demo/checkpoints/last.ckpt [--calibration-images 256]
    # the same demo with a ConvNeXt of the same widths and depths, for the like-for-like INT8 comparison:
    python tools/train_cls.py fit --config configs/cls/demo.yaml --model.backbone convnext_t \
        --model.backbone_kwargs '{"depths":[1,1,2,1],"dims":[32,64,128,256],"layer_scale_init_value":1.0}' \
        --trainer.default_root_dir runs/demo_convnext
    python benchmarks/int8_demo.py runs/demo_convnext/checkpoints/last.ckpt --model convnext_t

The checkpoint of `make demo` (configs/cls/demo.yaml: shiftwise_atto on the procedural `longrange` task, 48 px)
is exported in its deploy structure (swtasks.export.export_model, verified against eager) and quantised with
swtasks.quantize (what tools/export.py --int8 runs), calibrated on the demo's training images and compared on
its validation images. The demo's images are generated in memory (swtasks.cls.synthetic.generate, the arrays
its data module feeds the model, no image files and no eval transform), so this script hands those arrays to
the library instead of an image folder to the tool. Prints top-1 agreement, mean KL of the logits, top-1
accuracy of each file against the labels, and the speed ratio, for all layers in INT8 (7-bit weights, the
default, and 8-bit) and with the depthwise (large-kernel) convolutions kept in fp32.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("checkpoint", help="the demo's checkpoint (runs/demo/checkpoints/last.ckpt)")
    p.add_argument("--model", default="shiftwise_atto",
                   help="the checkpoint's registry model (default shiftwise_atto, the demo's; e.g. convnext_t for "
                        "the demo trained with --model.backbone convnext_t)")
    p.add_argument("--calibration-images", type=int, default=256)
    p.add_argument("--val-images", type=int, default=1024, help="the demo's validation set size (1024)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    from swtasks.cls.synthetic import generate
    from swtasks.export import export_model
    from swtasks.quantize import compare_int8, ort_session, quantize_int8

    size, batch = 48, 64  # configs/cls/demo.yaml: data.image_size, data.batch_size
    train_x, _ = generate("longrange", args.calibration_images, split="train", image_size=size, seed=0)
    val_x, val_y = generate("longrange", args.val_images, split="val", image_size=size, seed=0)
    cal = [b.numpy() for b in train_x.split(batch)]
    held = [b.numpy() for b in val_x.split(batch)]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = os.path.join(tmp, "demo.onnx")
        rep = export_model(args.model, fp32, checkpoint=args.checkpoint, reparameterize=True, image_size=size,
                           dynamic_batch=True)
        print(f"exported {args.checkpoint}: {rep.structure} structure, max relative diff to eager "
              f"{rep.relative_diff:.2g}")
        for keep, full in ((None, False), ("depthwise", False), (None, True)):
            int8 = os.path.join(tmp, f"demo.{keep or 'all'}.{full}.int8.onnx")
            info = quantize_int8(fp32, int8, cal, keep_fp32=keep, full_range=full)
            r = compare_int8(fp32, int8, held, threads=args.threads, rounds=5)
            acc = []
            for path in (fp32, int8):
                s = ort_session(path, args.threads)
                name = s.get_inputs()[0].name
                pred = np.concatenate([s.run(None, {name: b})[0].argmax(1) for b in held])
                acc.append(float((pred == val_y.numpy()).mean()))
            what = "all convolutions INT8" if keep is None else f"{len(info['fp32_nodes'])} depthwise convs fp32"
            what += ", 8-bit weights (--int8-full-range)" if full else ", 7-bit weights"
            print(f"{what}: {r.images} val images, calibrated on {sum(len(b) for b in cal)} train images: top-1 "
                  f"agreement {100 * r.top1_agreement:.2f}%, mean KL {r.mean_kl:.2e} (max {r.max_kl:.2e}), top-1 "
                  f"fp32 {100 * acc[0]:.2f}% / int8 {100 * acc[1]:.2f}%, speed int8/fp32 {r.speed_ratio:.2f}x "
                  f"({r.speed_ratio_min:.2f}-{r.speed_ratio_max:.2f}, batch {r.batch_size}, {args.threads} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
