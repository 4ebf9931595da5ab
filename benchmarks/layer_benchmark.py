"""Training form vs deploy form of ShiftWiseConv2d at the tiny model's stage shapes (a table).

The training form runs N_path small-kernel sums, three strip branches with three BatchNorms and the
identity; the deploy form (``reparameterize()``) runs one folded cross kernel plus a bias. Both in eval
mode, same input; the table also reports their max relative difference.

    python benchmarks/layer_benchmark.py [--device cpu|cuda] [--batch N] [--threads N] [--variant tc]

Needs torch and numpy (and triton for backend='triton' on CUDA); runs from the source tree.
"""

from __future__ import annotations

import copy
import functools
import statistics
import sys
import time
from pathlib import Path

import torch

if __name__ == "__main__":  # run as a script from the source tree: the repository root goes on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swtasks.layers import ShiftWiseConv2d  # noqa: E402
from swtasks.models.shiftwise_net import operator_shapes  # noqa: E402

__all__ = ["run"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _time(fn, device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def run(*, device: str, batch: int | None = None, threads: int | None = None, repeats: int = 5, dtype: str = "fp32",
        backend: str | None = None, variant: str | None = None, dot_precision: str | None = None) -> str:
    """The markdown table (one row per stage)."""
    device = torch.device(device)
    if threads:
        torch.set_num_threads(threads)
    batch = batch or (64 if device.type == "cuda" else 8)
    dt = DTYPES[dtype]
    lines = [
        f"# ShiftWiseConv2d training form vs deploy form (eval): device={device} torch={torch.__version__} "
        f"threads={torch.get_num_threads()} batch={batch} dtype={dtype} backend={backend} variant={variant} "
        f"median of {repeats}",
        "| C | K | HxW | training form ms | deploy form ms | speed-up | max rel. diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for shape in operator_shapes("tiny"):  # shiftwise_tiny's four stages at 224x224
        C, K, hw = shape.channels, shape.kernel, shape.size
        torch.manual_seed(0)
        train_form = ShiftWiseConv2d(C, K, backend=backend, variant=variant, dot_precision=dot_precision)
        train_form = train_form.to(device).eval()
        for bn in (train_form.bn_h, train_form.bn_v, train_form.bn_s):  # non-trivial statistics
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        deploy = copy.deepcopy(train_form)
        deploy.reparameterize()
        train_form.to(dt)
        deploy.to(dt)
        x = torch.randn(batch, C, hw, hw, device=device, dtype=dt)
        with torch.no_grad():
            a, b = train_form(x).float(), deploy(x).float()
            diff = ((a - b).abs().max() / a.abs().max()).item()
            t_train = _time(functools.partial(train_form, x), device, 1, repeats)
            t_deploy = _time(functools.partial(deploy, x), device, 1, repeats)
        lines.append(
            f"| {C} | {K} | {hw}x{hw} | {t_train:.1f} | {t_deploy:.1f} | {t_train / t_deploy:.2f}x | {diff:.1e} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    import argparse  # noqa: PLC0415

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
    print(run(device=args.device, batch=args.batch, threads=args.threads, repeats=args.repeats, dtype=args.dtype,
              backend=args.backend, variant=args.variant, dot_precision=args.dot_precision))


if __name__ == "__main__":
    main()
