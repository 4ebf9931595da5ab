#!/usr/bin/env python
"""Static report of every Triton kernel of the operator, compiled for sm_80 and sm_90 without a GPU.

    PYTHONPATH=. python tools/kernel_report.py                          # all stages, dtypes, configs
    PYTHONPATH=. python tools/kernel_report.py --stages 1 --dtypes bf16 --archs 90 --summary-only
    PYTHONPATH=. python tools/kernel_report.py --json report.json --csv report.csv --markdown report.md

Per (kernel, config, dtype, arch, stage): registers, spilled bytes, shared memory, tensor-core
instructions, global loads, FP32 FMAs, estimated time and the roofline bound of the pass; then the
best fitting configuration per pass. Model and constants: swtasks/analysis/kernel_report.py.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> None:
    from swtasks.analysis.kernel_report import DEFAULT_CACHE, DEFAULT_PROVIDER, DTYPE_VARIANTS, report

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", default="1,2,3,4", help="comma-separated subset of 1,2,3,4 (SW-T shapes)")
    ap.add_argument("--dtypes", default=",".join(DTYPE_VARIANTS), help=f"subset of {','.join(DTYPE_VARIANTS)}")
    ap.add_argument("--archs", default="80,90", help="compute capabilities to compile for")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--kernels", default=None, help="comma-separated kernel names to keep (substring match)")
    ap.add_argument("--configs", choices=["all", "pinned"], default="all",
                    help="every configuration the tuner can pick, or only deterministic mode's")
    ap.add_argument("--provider", default=DEFAULT_PROVIDER,
                    help="module:function yielding the launches of a stage shape and dtype")
    ap.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    ap.add_argument("--cache", default=DEFAULT_CACHE, help="directory for compiled-kernel results ('' to disable)")
    ap.add_argument("--csv", default=None, help="write every row as CSV")
    ap.add_argument("--markdown", default=None, help="write the tables as markdown to this file")
    ap.add_argument("--json", default=None, help="write one record per (kernel, config, dtype, arch)")
    ap.add_argument("--summary-only", action="store_true", help="print only the per-pass summary")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)
    report(stages=[int(s) for s in args.stages.split(",")], dtypes=[d for d in args.dtypes.split(",") if d],
           archs=tuple(int(a) for a in args.archs.split(",")), batch=args.batch,
           kernels=args.kernels.split(",") if args.kernels else None, provider=args.provider, configs=args.configs,
           jobs=args.jobs, cache=args.cache or None, csv_path=args.csv, markdown_path=args.markdown,
           json_path=args.json, summary_only=args.summary_only, quiet=args.quiet,
           command="PYTHONPATH=. python tools/kernel_report.py " + " ".join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
