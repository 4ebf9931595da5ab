"""Training form vs deploy form of ShiftWiseConv2d at the tiny model's stage shapes (prints a table).

The training form runs N_path small-kernel sums, three strip branches with three BatchNorms and the
identity; the deploy form (``reparameterize()``) runs one folded cross kernel plus a bias. Both in eval
mode, same input; the table also reports their max relative difference. Needs only torch (and triton
for --backend triton on CUDA); runs from the source tree:

    PYTHONPATH=. python tools/benchmark_layer.py [--device cpu|cuda] [--batch N] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time

import torch

from swtasks.layers import ShiftWiseConv2d

# (channels, big kernel, feature size) of shiftwise_tiny's four stages at 224x224
STAGES = [(80, 51, 56), (160, 49, 28), (320, 47, 14), (640, 13, 7)]


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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 64 on CUDA, 8 on CPU")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--backend", default=None, help="operator backend (default: automatic)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (64 if device.type == "cuda" else 8)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    print(
        f"# ShiftWiseConv2d training form vs deploy form (eval): device={device} torch={torch.__version__} "
        f"threads={torch.get_num_threads()} batch={batch} dtype={args.dtype} median of {args.repeats}"
    )
    print("| C | K | HxW | training form ms | deploy form ms | speed-up | max rel. diff |")
    print("|---|---|---|---|---|---|---|")
    for C, K, hw in STAGES:
        torch.manual_seed(0)
        train_form = ShiftWiseConv2d(C, K, backend=args.backend).to(device).eval()
        for bn in (train_form.bn_h, train_form.bn_v, train_form.bn_s):  # non-trivial statistics
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        deploy = copy.deepcopy(train_form)
        deploy.reparameterize()
        train_form.to(dtype)
        deploy.to(dtype)
        x = torch.randn(batch, C, hw, hw, device=device, dtype=dtype)
        with torch.no_grad():
            a, b = train_form(x).float(), deploy(x).float()
            diff = ((a - b).abs().max() / a.abs().max()).item()
            t_train = _time(functools.partial(train_form, x), device, 1, args.repeats)
            t_deploy = _time(functools.partial(deploy, x), device, 1, args.repeats)
        print(
            f"| {C} | {K} | {hw}x{hw} | {t_train:.1f} | {t_deploy:.1f} | {t_train / t_deploy:.2f}x | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
