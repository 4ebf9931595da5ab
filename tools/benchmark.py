#!/usr/bin/env python
"""Inference throughput, training-step throughput, batch-1 latency and peak memory of registry models,
training and deploy structures, all models measured interleaved (ratios hold on a noisy machine).

    tools/benchmark.py MODEL [MODEL ...] --device cpu|cuda --batch-size N [--image-size 224] [--csv FILE]
    tools/benchmark.py shiftwise_tiny torchvision:convnext_tiny --device cpu --batch-size 8 --threads 2
    tools/benchmark.py shiftwise_tiny unireplknet_t slak_t convnext_t --device cuda --batch-size 64 \\
        --amp bf16 --markdown benchmarks/gpu.md --csv gpu.csv
    tools/benchmark.py shiftwise_tiny convnext_t --structures deploy --modes inference,latency --threads 2 \\
        --runtime onnxruntime,onnxruntime-int8      # eager PyTorch beside the exported deploy file in ONNX Runtime

MODEL: a registry name (see swtasks.list_models()), an fnmatch pattern of them, torchvision:NAME or timm:NAME,
the last two optionally converted to shift-wise kernels with +swK (torchvision:convnext_tiny+sw51).
Method and columns: docs/analysis.md ("Benchmark").
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: shared CPUs (tools/train_cls.py)


def _csv_list(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (comma-separated), got {text!r}")
        return items

    return parse


def parse_args(argv=None) -> argparse.Namespace:
    from swtasks.analysis.benchmark import MODES, RUNTIMES, STRUCTURES
    from swtasks.cliutil import add_override_option

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="registry names, fnmatch patterns, torchvision:NAME or timm:NAME [+swK]")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="batch for inference and training steps (default 8)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--modes", type=_csv_list(MODES), default=list(MODES), help=f"default {','.join(MODES)}")
    p.add_argument("--structures", type=_csv_list(STRUCTURES), default=list(STRUCTURES),
                   help=f"default {','.join(STRUCTURES)}")
    p.add_argument("--runtime", type=_csv_list(RUNTIMES[1:]), default=[],
                   help=f"also run the exported deploy structure in {' / '.join(RUNTIMES[1:])} (comma-separated; "
                        "rows beside eager PyTorch's, same threads and batch; needs the export extra)")
    p.add_argument("--channels-last", action="store_true", help="model and input in channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast dtype (default fp32)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5 on CPU, 20 on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per case (default 2 CPU, 10 CUDA)")
    p.add_argument("--baseline", default=None, help="model for the relative column (default convnext_t if measured)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory calls")
    p.add_argument("--profile", action="store_true",
                   help="also profile one call per case: where the time goes (matrix products, depthwise "
                        "convolutions, normalisation, elementwise, optimiser)")
    p.add_argument("--drop-path", type=float, default=0.0, help="drop_path_rate of every model (default 0)")
    p.add_argument("--skip-missing", action="store_true", help="skip (with a warning) names not in the registry")
    p.add_argument("--csv", default=None, help="write the results as CSV")
    p.add_argument("--markdown", default=None, help="append a markdown section (environment, command, table)")
    p.add_argument("--title", default="", help="title of the markdown section")
    p.add_argument("--no-progress", action="store_true")
    add_override_option(p, help="create_model override for every registry model (repeatable)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from swtasks.cliutil import torch_threads

    with torch_threads(args.threads):
        return _run(args, argv)


def _run(args, argv) -> int:
    from swtasks.analysis import benchmark as bm

    names = bm.resolve_models(args.models, skip_missing=args.skip_missing)
    specs = [bm.ModelSpec(n, () if n.startswith(("torchvision:", "timm:")) else tuple(args.overrides)) for n in names]
    env = bm.environment(args.device)
    results = bm.run_benchmark(
        specs, device=args.device, batch_size=args.batch_size, image_size=args.image_size, modes=args.modes,
        structures=args.structures, channels_last=args.channels_last, compile=args.compile, amp=args.amp,
        repeats=args.repeats, warmup=args.warmup, memory=not args.no_memory, profile=args.profile,
        baseline=args.baseline,
        drop_path_rate=args.drop_path, show_progress=not args.no_progress, runtimes=["eager", *args.runtime],
    )  # fmt: skip
    env["load average at end"] = bm.environment(args.device).get("load average (1/5/15 min)", "n/a")
    print(bm.format_table(results))
    profiled = [r.breakdown for r in results if r.breakdown is not None and not r.note]
    if profiled:
        from swtasks.analysis.profile import format_breakdowns

        print("\n" + format_breakdowns(profiled))
    if args.csv:
        bm.write_csv(results, args.csv)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + bm.format_markdown(results, env, bm.command_line("tools/benchmark.py", argv), args.title))
            if profiled:
                f.write("\nWhere the time goes (one profiled call per case):\n\n" + format_breakdowns(profiled, True)
                        + "\n")
    return 0


if __name__ == "__main__":
    from swtasks.cliutil import run_tool

    sys.exit(run_tool(main, prog="benchmark.py"))
