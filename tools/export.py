#!/usr/bin/env python
"""Export a registry model to ONNX, a torch.export program (.pt2) or TorchScript, and check the file.

    tools/export.py MODEL OUT [--format onnx|export|torchscript] [--checkpoint FILE] [--reparameterize]
                    [--image-size N|HxW] [--dynamic-batch] [--dynamic-hw [--hw-multiple M] [--min-size N]
                    [--max-size N]] [--batch-size N] [--features-only] [--num-classes N]
                    [--set KEY=VALUE ...] [--opset N] [--tolerance T] [--trust-pickle]
                    [--int8 --calibration DIR [--calibration-images N] [--held-out DIR] [--int8-keep-fp32 depthwise]
                     [--int8-full-range]]

MODEL is a registry name (swtasks.list_models()); FILE any weights file create_model(checkpoint_path=...)
reads (.safetensors included; its recorded num_classes and overrides are used). The file is run in ONNX
Runtime (CPU) / torch.export.load / torch.jit.load on fresh batches (1 and 3 with --dynamic-batch) and
compared with the eager model (with --dynamic-hw at three sizes, a non-square one among them): the max
difference is printed, and above --tolerance (relative, default 1e-4)
the tool fails (exit status 1) and writes nothing. Operators with a Triton path are exported through their
PyTorch path. ONNX needs the `export` extra. See docs/deploy.md.

--int8 (ONNX) also writes OUT's INT8 version (OUT.int8.onnx; swtasks.quantize: static QDQ, per-channel 7-bit
weights unless --int8-full-range),
calibrated on N images of DIR (an ImageNet-layout or flat image folder, read with the classification data's
eval transforms at the export's size) and compared with the fp32 file on held-out images (--held-out DIR, else
DIR's images not used for calibration): top-1 agreement, mean KL of the logits, speed ratio in ONNX Runtime.
"""

from __future__ import annotations

import argparse
import sys

from swtasks.cliutil import add_override_option, run_tool

_HELD_OUT_MAX = 512  # held-out images compared (the first of a seeded shuffle)


def _main(argv: list[str] | None) -> int:
    from swtasks.export import DEFAULT_OPSET, FORMATS, ExportError, export_model, summary

    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("model", metavar="MODEL", help="registry name, e.g. shiftwise_tiny")
    parser.add_argument("output", metavar="OUT", help="the file to write (.onnx, .pt2, .pt)")
    parser.add_argument("--format", choices=FORMATS, help="default: from OUT's suffix")
    parser.add_argument("--checkpoint", metavar="FILE", help="weights to load (default: random init)")
    parser.add_argument("--reparameterize", action="store_true",
                        help="fold into the deploy structure first (verified)")
    parser.add_argument("--image-size", metavar="N|HxW",
                        help="input N x N or H x W, e.g. 320x192 (default: the model's, 224)")
    parser.add_argument("--dynamic-batch", action="store_true", help="a symbolic batch dimension")
    parser.add_argument("--dynamic-hw", action="store_true",
                        help="symbolic height and width (onnx, export): any multiple of --hw-multiple in "
                             "--min-size..--max-size; traced at --image-size")
    parser.add_argument("--hw-multiple", type=int, metavar="M",
                        help="with --dynamic-hw: H and W are multiples of M (default: the total stride, 32)")
    parser.add_argument("--min-size", type=int, metavar="N", help="with --dynamic-hw: smallest H, W (default 2 M)")
    parser.add_argument("--max-size", type=int, metavar="N", help="with --dynamic-hw: largest H, W (default 4096)")
    parser.add_argument("--batch-size", type=int, default=1, help="the fixed batch without --dynamic-batch")
    parser.add_argument("--features-only", action="store_true", help="export the backbone's feature maps")
    parser.add_argument("--num-classes", type=int, help="default: the checkpoint's, else 1000")
    add_override_option(parser, help="model override as a Python literal (repeatable)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest accepted max|diff| / max|output| (default 1e-4)")
    parser.add_argument("--trust-pickle", action="store_true", help="allow a full unpickle of FILE (trusted)")
    parser.add_argument("--allow-download", action="store_true",
                        help="FILE may be an http(s) URL: downloaded, then read like a local file")
    parser.add_argument("--int8", action="store_true", help="also write OUT.int8.onnx, calibrated on --calibration")
    parser.add_argument("--calibration", metavar="DIR", help="with --int8: image folder (class sub-folders or flat)")
    parser.add_argument("--calibration-images", type=int, default=64, metavar="N",
                        help="with --int8: calibrate on N images of DIR (a seeded choice; default 64)")
    parser.add_argument("--held-out", metavar="DIR",
                        help=f"with --int8: compare on these images (default: DIR's others; at most {_HELD_OUT_MAX})")
    parser.add_argument("--int8-keep-fp32", choices=("depthwise",),
                        help="with --int8: keep every depthwise (large-kernel) convolution in fp32")
    parser.add_argument("--int8-full-range", action="store_true",
                        help="with --int8: 8-bit weights (default 7-bit): only for CPUs with VNNI; without it "
                             "(AVX2) ONNX Runtime's int8 products saturate")
    args = parser.parse_args(argv)
    int8 = _int8_images(args) if args.int8 else None  # bad calibration input fails before the export

    try:
        report = export_model(
            args.model, args.output, format=args.format, checkpoint=args.checkpoint,
            reparameterize=args.reparameterize, image_size=args.image_size, dynamic_batch=args.dynamic_batch,
            batch_size=args.batch_size, num_classes=args.num_classes, features_only=args.features_only,
            overrides=dict(args.overrides), opset=args.opset, tolerance=args.tolerance,
            trust_pickle=args.trust_pickle, allow_download=args.allow_download, dynamic_hw=args.dynamic_hw,
            hw_multiple=args.hw_multiple, min_size=args.min_size, max_size=args.max_size,
        )
    except ExportError as e:
        print(f"export.py: failed: {e}", file=sys.stderr)
        return 1
    for line in summary(report):
        print(line)
    if int8 is not None:
        for line in _write_int8(report, *int8, args):
            print(line)
    return 0


def _int8_images(args) -> tuple[list[str], list[str], str]:
    """(calibration files, held-out files, where the held-out ones come from), checked: UserErrors in one line."""
    import os
    import random

    from swtasks.export import ExportOptionError, format_of
    from swtasks.quantize import CalibrationError

    if format_of(args.output, args.format) != "onnx":
        raise ExportOptionError("--int8 quantises an ONNX file: give OUT.onnx or --format onnx")
    if not args.calibration:
        raise CalibrationError("--int8 needs --calibration DIR (an image folder: class sub-folders or flat)")
    if args.calibration_images < 1:
        raise CalibrationError(f"--calibration-images must be >= 1, got {args.calibration_images}")

    def images(folder: str, option: str) -> list[str]:
        from torchvision.datasets.folder import IMG_EXTENSIONS

        from swtasks.cls.datasets import images_under  # any depth: class sub-folders or flat

        if not os.path.isdir(folder):
            raise CalibrationError(f"{option} {folder}: not a folder")
        found = images_under(folder)
        if not found:
            raise CalibrationError(f"{option} {folder}: no images ({', '.join(IMG_EXTENSIONS)}) in it or below it")
        return found

    files = images(args.calibration, "--calibration")
    random.Random(0).shuffle(files)
    n = args.calibration_images
    if len(files) < n:
        raise CalibrationError(f"--calibration {args.calibration}: {len(files)} image(s), fewer than "
                               f"--calibration-images {n}")
    if args.held_out:
        held = images(args.held_out, "--held-out")
        source = args.held_out
        overlap = {os.path.realpath(f) for f in held} & {os.path.realpath(f) for f in files[:n]}
        if overlap:
            raise CalibrationError(f"--held-out {args.held_out}: {len(overlap)} of its images are calibration images "
                                   f"(e.g. {sorted(overlap)[0]}): held-out images must not be used for calibration")
    else:
        held, source = files[n:], f"{args.calibration} (not used for calibration)"
        if not held:
            raise CalibrationError(f"--calibration {args.calibration}: all {len(files)} images calibrate, none is "
                                   "left to compare on: give --held-out DIR or a smaller --calibration-images")
    return files[:n], held[:_HELD_OUT_MAX], source


def _write_int8(report, calibration: list[str], held_out: list[str], source: str, args) -> list[str]:
    """Quantise the written fp32 file, compare it on the held-out images, and say what happened."""
    import numpy as np

    from swtasks.cls.datasets import ImageListDataset
    from swtasks.cls.transforms import eval_transform
    from swtasks.export import ExportOptionError
    from swtasks.models import get_data_config
    from swtasks.quantize import CalibrationError, compare_int8, quantize_int8

    if not isinstance(report.image_size, int):
        raise ExportOptionError("--int8 reads images with the eval transforms (a square centre crop): give a "
                                "square --image-size N")
    cfg = get_data_config(args.model)
    transform = eval_transform(report.image_size, crop_pct=cfg["crop_pct"], interpolation=cfg["interpolation"],
                               mean=cfg["mean"], std=cfg["std"])
    chunk = 8 if report.dynamic_batch else report.checked_batches[0]

    def batches(files: list[str]) -> list[np.ndarray]:
        data = ImageListDataset(files, transform)
        arrays = [data[i][0].numpy() for i in range(len(data))]
        out = [np.stack(arrays[i:i + chunk]) for i in range(0, len(arrays), chunk)]
        return [b for b in out if len(b) == chunk or report.dynamic_batch]  # a fixed batch takes full ones

    cal, held = batches(calibration), batches(held_out)
    if not cal or not held:
        raise CalibrationError(f"the file takes batches of {chunk}: --int8 needs at least {chunk} calibration and "
                               f"{chunk} held-out images (export with --dynamic-batch to use any number)")
    out = report.path[:-len(".onnx")] + ".int8.onnx" if report.path.endswith(".onnx") else report.path + ".int8.onnx"
    info = quantize_int8(report.path, out, cal, keep_fp32=args.int8_keep_fp32, full_range=args.int8_full_range)
    r = compare_int8(report.path, out, held)
    kept = f", {len(info['fp32_nodes'])} depthwise convolutions kept fp32" if args.int8_keep_fp32 else ""
    bits = 8 if args.int8_full_range else 7
    return [f"wrote {out}: INT8 (QDQ, per-channel int8 weights in {bits} bits, uint8 activations){kept}, calibrated on "
            f"{sum(len(b) for b in cal)} images of {args.calibration}",
            f"INT8 vs fp32 on {r.images} held-out images of {source}: top-1 agreement {100 * r.top1_agreement:.1f}%, "
            f"mean KL {r.mean_kl:.3g} (max {r.max_kl:.3g}); speed int8/fp32 {r.speed_ratio:.2f}x "
            f"({r.speed_ratio_min:.2f}-{r.speed_ratio_max:.2f} over {r.rounds} rounds, batch {r.batch_size}, ONNX Runtime)"]


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv, prog="export.py")


if __name__ == "__main__":
    sys.exit(main())
