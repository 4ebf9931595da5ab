#!/usr/bin/env python
"""Benchmark of the shift-wise operator's paths against large-kernel baselines (prints a table).

    PYTHONPATH=. python tools/benchmark_op.py                       # CPU here, CUDA when present
    PYTHONPATH=. python tools/benchmark_op.py --device cuda --markdown >> benchmarks/RESULTS.md
    PYTHONPATH=. python tools/benchmark_op.py --device cuda --stages 1,3 --dtype bf16 --estimates report.json

Needs only torch (and triton for the Triton rows): runs from the source tree without installing.
Rows, columns and method: swtasks/analysis/op_benchmark.py.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="default: 64 on CUDA, 8 on CPU")
    ap.add_argument("--stages", default="1,2,3,4", help="comma-separated subset of 1,2,3,4")
    ap.add_argument("--dtype", default=None, help="comma-separated fp32,bf16,fp16 (default: fp32,bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per cell (default 10 CUDA, 3 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up runs per cell (default 2 CUDA, 1 CPU)")
    ap.add_argument("--max-cell-seconds", type=float, default=None,
                    help="stop repeating a cell after this long (default 4 CUDA, 6 CPU)")
    ap.add_argument("--paths", default=None, help="comma-separated row names to keep (substring match)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--tf32", action="store_true", help="add rows: tensor-core kernels with tf32x3 and tf32 dots (fp32)")
    ap.add_argument("--no-backward", action="store_true", help="forward only")
    ap.add_argument("--markdown", action="store_true", help="emit a markdown section for benchmarks/RESULTS.md")
    ap.add_argument("--estimates", default=None, help="kernel report JSON: print static estimates beside the times")
    ap.add_argument("--deterministic", action="store_true",
                    help="Triton rows in deterministic mode: the pinned tile configuration, no tuning")
    # plumbing checks without a GPU: tiny shapes, Triton rows on CPU under TRITON_INTERPRET=1
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--allow-cpu-triton", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    from swtasks.analysis.op_benchmark import run

    print(run(device=args.device, batch=args.batch, stages=[int(s) for s in args.stages.split(",")],
              dtypes=args.dtype.split(",") if args.dtype else None, repeats=args.repeats, warmup=args.warmup,
              max_cell_seconds=args.max_cell_seconds, paths=args.paths.split(",") if args.paths else None,
              threads=args.threads, memory=not args.no_memory, tf32=args.tf32, backward=not args.no_backward,
              markdown=args.markdown, smoke=args.smoke, allow_cpu_triton=args.allow_cpu_triton,
              estimates=args.estimates, deterministic=True if args.deterministic else None,
              command="PYTHONPATH=. python tools/benchmark_op.py " + " ".join(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
