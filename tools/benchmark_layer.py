#!/usr/bin/env python
"""Training form vs deploy form of ShiftWiseConv2d at the tiny model's stage shapes (prints a table).

    PYTHONPATH=. python tools/benchmark_layer.py [--device cpu|cuda] [--batch N] [--threads N] [--variant tc]

Needs only torch (and triton for --backend triton on CUDA); runs from the source tree. Method:
swtasks/analysis/layer_benchmark.py.
"""

from __future__ import annotations

import argparse


def main(argv=None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 64 on CUDA, 8 on CPU")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--backend", default=None, help="operator backend (default: automatic)")
    p.add_argument("--variant", default=None, help="Triton kernels: auto, tc or direct")
    p.add_argument("--dot-precision", default=None, help="fp32 tensor-core dots: ieee, tf32x3 or tf32")
    args = p.parse_args(argv)

    from swtasks.analysis.layer_benchmark import run

    print(run(device=args.device, batch=args.batch, threads=args.threads, repeats=args.repeats, dtype=args.dtype,
              backend=args.backend, variant=args.variant, dot_precision=args.dot_precision))


if __name__ == "__main__":
    main()
