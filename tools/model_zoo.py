#!/usr/bin/env python
"""The model-zoo table (markdown): parameters, MACs, published top-1, throughput relative to the benchmark's
baseline, ERF area ratio.

    tools/benchmark.py shiftwise_tiny unireplknet_t slak_t convnext_t --csv bench.csv ...
    tools/erf.py shiftwise_tiny unireplknet_t slak_t convnext_t --out erf/ ...
    tools/model_zoo.py shiftwise_tiny unireplknet_t slak_t convnext_t --benchmark-csv bench.csv --erf-csv erf/erf.csv
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="registry names or fnmatch patterns")
    p.add_argument("--benchmark-csv", default=None, help="CSV written by tools/benchmark.py --csv")
    p.add_argument("--erf-csv", default=None, help="erf.csv written by tools/erf.py")
    p.add_argument("--erf-threshold", type=float, default=0.2, choices=(0.2, 0.3, 0.5, 0.99))
    p.add_argument("--image-size", type=int, default=224, help="input size for the MAC count")
    args = p.parse_args(argv)
    from swtasks.analysis.select import resolve_models
    from swtasks.analysis.zoo import zoo_table

    models = resolve_models(args.models, torchvision=False)
    print(zoo_table(models, args.benchmark_csv, args.erf_csv, args.erf_threshold, args.image_size))
    return 0


if __name__ == "__main__":
    from swtasks.cliutil import run_tool

    sys.exit(run_tool(main, prog="model_zoo.py"))
