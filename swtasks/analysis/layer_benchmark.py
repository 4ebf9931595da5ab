"""Training form vs deploy form of ShiftWiseConv2d at the tiny model's stage shapes (a table).

The training form runs N_path small-kernel sums, three strip branches with three BatchNorms and the
identity; the deploy form (``reparameterize()``) runs one folded cross kernel plus a bias. Both in eval
mode, same input; the table also reports their max relative difference. The command line is
tools/benchmark_layer.py. Needs only torch (and triton for backend='triton' on CUDA).
"""

from __future__ import annotations

import copy
import functools
import statistics
import time

import torch

from ..layers import ShiftWiseConv2d

__all__ = ["STAGES", "run"]

# (channels, big kernel, feature size) of shiftwise_tiny's four stages at 224x224
STAGES = [(80, 51, 56), (160, 49, 28), (320, 47, 14), (640, 13, 7)]
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
    for C, K, hw in STAGES:
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
