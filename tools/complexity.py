#!/usr/bin/env python
"""Parameters and FLOPs of registry models at a given input size, printed as a Markdown table.

    tools/complexity.py [MODEL_OR_PATTERN ...] [--input-size 224 | 512x2048] [--deploy] [--num-classes 1000]

Default models: shiftwise_tiny, _small, _base, _large. FLOPs are torch's FlopCounterMode counts (2 x MACs;
convolutions and matrix products only); GMACs are printed beside them. --deploy adds the re-parameterised
structure's parameters and MACs.
"""

from __future__ import annotations

import argparse
import sys


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected S or HxW, got {text!r}") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected S or HxW, got {text!r}")
    return vals[0], vals[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("models", nargs="*", default=["shiftwise_tiny", "shiftwise_small", "shiftwise_base",
                                                      "shiftwise_large"], help="names or fnmatch patterns")
    parser.add_argument("--input-size", type=_size, default=(224, 224), help="S or HxW (default 224)")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--deploy", action="store_true", help="also measure the deploy structure")
    parser.add_argument("--device", choices=("cpu", "meta"), default="cpu",
                        help="where the counting forward runs (meta: shapes only, no activation memory)")
    args = parser.parse_args(argv)

    from swtasks.analysis.complexity import format_table, measure
    from swtasks.analysis.progress import progress
    from swtasks.analysis.select import resolve_models

    names = resolve_models(args.models, torchvision=False)
    rows = []
    for n in progress(names, desc="counting"):
        rows.append(measure(n, input_size=args.input_size, num_classes=args.num_classes, deploy=args.deploy,
                            device=args.device))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    from swtasks.cliutil import run_tool

    sys.exit(run_tool(main, prog="complexity.py"))
