"""The GPU checks of the operator that need no pytest: correctness at the SW-T stage shapes and
bit-identical results across processes in deterministic mode (scripts/gpu_checks.sh runs them).

Oracle: the PyTorch path in float64 on the same GPU (cuDNN/ATen strip convolutions in fp64, no TF32),
a different implementation from every Triton kernel. Tolerances: fp32 (dot precision ieee) 1e-5 of
max(1, |oracle|) for outputs and gradients; tf32x3 2e-5; bf16 within one bf16 rounding of the exact
result elementwise (+1e-3 of the scale). Needs only torch and triton.
"""

from __future__ import annotations

import hashlib

import torch

from ..ops.cross_conv import cross_conv, cross_conv_torch
from .kernel_report import STAGES

__all__ = ["check_stage", "digest"]


def _problem(stage: int, batch: int, dtype: torch.dtype, seed: int = 0):
    s = STAGES[stage]
    g = torch.Generator().manual_seed(seed + stage)
    x = torch.randn(batch, s.C, s.H, s.W, generator=g)
    ws = [torch.randn(*shape, generator=g) * 0.1 for shape in ((s.C, s.k, s.L), (s.C, s.L, s.k), (s.C, s.k, s.k))]
    ups = [torch.randn(batch, s.C, s.H, s.W, generator=g) for _ in range(3)]
    dev = "cuda"
    return s.K, x.to(dev, dtype), [w.to(dev, dtype) for w in ws], [u.to(dev, dtype) for u in ups]


def _run(fn, x, ws, ups, K):
    leaves = [t.detach().clone().requires_grad_() for t in (x, *ws)]
    outs = fn(*leaves, big_kernel=K)
    grads = torch.autograd.grad(outs, leaves, [u.to(o.dtype) for u, o in zip(ups, outs)])
    return [o.detach() for o in outs] + list(grads)


def check_stage(stage: int, dtype: str = "fp32", variant: str = "tc", precision: str = "ieee", batch: int = 16):
    """(ok, line): the Triton path against the float64 PyTorch path at one stage shape."""
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    K, x, ws, ups = _problem(stage, batch, dt)

    def tri(*a, big_kernel):
        return cross_conv(*a, big_kernel=big_kernel, backend="triton", variant=variant, dot_precision=precision)

    got = _run(tri, x, ws, ups, K)
    x64, ws64, ups64 = x.double(), [w.double() for w in ws], [u.double() for u in ups]
    want = _run(lambda *a, big_kernel: cross_conv_torch(*a, big_kernel=big_kernel), x64, ws64, ups64, K)
    names = ["out_h", "out_v", "out_s", "dx", "dw_h", "dw_v", "dw_s"]
    worst, ok = 0.0, True
    for name, a, b in zip(names, got, want):
        if dtype == "bf16" and name.startswith("out"):
            err = (a.double() - b).abs()
            excess = (err - (b.abs() * 2.0**-8 + 1e-3 * b.abs().max())).max().item()
            ok &= excess <= 0
            worst = max(worst, err.max().item() / max(1.0, b.abs().max().item()))
            continue
        tol = {"fp32": {"ieee": 1e-5, "tf32x3": 2e-5, "tf32": 5e-3}[precision], "bf16": 3e-2}[dtype]
        rel = (a.double() - b).abs().max().item() / max(1.0, b.abs().max().item())
        worst = max(worst, rel)
        ok &= rel <= tol
    s = STAGES[stage]
    line = (f"stage {stage} (B={batch} C={s.C} {s.H}x{s.W} K={K}) {dtype} variant={variant} precision={precision}: "
            f"max error / scale {worst:.2e} -> {'OK' if ok else 'FAIL'}")
    return ok, line


def digest(stage: int, dtype: str = "bf16", variant: str = "tc", batch: int = 16) -> str:
    """SHA-256 of the outputs and all gradients in deterministic mode (compare across processes)."""
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    K, x, ws, ups = _problem(stage, batch, dt, seed=7)

    def tri(*a, big_kernel):
        return cross_conv(*a, big_kernel=big_kernel, backend="triton", variant=variant, deterministic=True)

    h = hashlib.sha256()
    for t in _run(tri, x, ws, ups, K):
        raw = t.float().cpu().contiguous().view(torch.uint8).flatten()
        try:
            h.update(raw.numpy().tobytes())
        except (RuntimeError, TypeError):  # torch without numpy
            h.update(bytes(raw.tolist()))
    return h.hexdigest()
