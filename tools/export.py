#!/usr/bin/env python
"""Export a registry model to ONNX, a torch.export program (.pt2) or TorchScript, and check the file.

    tools/export.py MODEL OUT [--format onnx|export|torchscript] [--checkpoint FILE] [--reparameterize]
                    [--image-size N|HxW] [--dynamic-batch] [--dynamic-hw [--hw-multiple M] [--min-size N]
                    [--max-size N]] [--batch-size N] [--features-only] [--num-classes N]
                    [--set KEY=VALUE ...] [--opset N] [--tolerance T] [--trust-pickle]

MODEL is a registry name (swtasks.list_models()); FILE any weights file create_model(checkpoint_path=...)
reads (.safetensors included; its recorded num_classes and overrides are used). The file is run in ONNX
Runtime (CPU) / torch.export.load / torch.jit.load on fresh batches (1 and 3 with --dynamic-batch) and
compared with the eager model (with --dynamic-hw at three sizes, a non-square one among them): the max
difference is printed, and above --tolerance (relative, default 1e-4)
the tool fails (exit status 1) and writes nothing. Operators with a Triton path are exported through their
PyTorch path. ONNX needs the `export` extra. See docs/deploy.md.
"""

from __future__ import annotations

import argparse
import sys

from swtasks.cliutil import add_override_option, run_tool


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
    args = parser.parse_args(argv)

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
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_tool(_main, argv, prog="export.py")


if __name__ == "__main__":
    sys.exit(main())
