"""The cross-shaped depthwise convolution that every shift-wise operator reduces to.

Contract (all paths compute exactly this, with zero padding and cross-correlation):

    x    : (B, C, H, W)
    w_h  : (C, k, L)   horizontal strip; tap (i, u) reads x[.., h + i - k//2, w + u - K//2]
    w_v  : (C, L, k)   vertical strip;   tap (u, j) reads x[.., h + u - K//2, w + j - k//2]
    w_s  : (C, k, k)   centred tile;     tap (i, j) reads x[.., h + i - k//2, w + j - k//2]  (optional)

k is odd, L = k * ceil(K / k) >= K, K is the emulated ("big") kernel size. When K is not a multiple
of k the strips are off-centre: their taps span [-(K//2), L - 1 - K//2].

`cross_conv` returns the three branch outputs (out_h, out_v, out_s) or, with reduce=True, their sum
(the deploy form, where w_s may be None).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

BACKENDS = ("torch", "triton")
ENV_BACKEND = "SWTASKS_OP_BACKEND"


def check_cross_args(x, w_h, w_v, w_s, big_kernel: int) -> tuple[int, int]:
    """Validate shapes and dtypes; returns (k, L)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor (B, C, H, W), got shape {tuple(getattr(x, 'shape', ()))}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    C = x.shape[1]
    if w_h.dim() != 3 or w_v.dim() != 3:
        raise ValueError(f"w_h and w_v must be 3-D, got {tuple(w_h.shape)} and {tuple(w_v.shape)}")
    k, L = w_h.shape[1], w_h.shape[2]
    if k % 2 == 0:
        raise ValueError(f"the strip width (small kernel) must be odd, got {k}")
    if w_h.shape[0] != C or tuple(w_v.shape) != (C, L, k):
        raise ValueError(
            f"kernel shapes do not fit x with {C} channels: w_h {tuple(w_h.shape)} (want ({C}, k, L)), "
            f"w_v {tuple(w_v.shape)} (want ({C}, {L}, {k}))"
        )
    if w_s is not None and tuple(w_s.shape) != (C, k, k):
        raise ValueError(f"w_s must have shape ({C}, {k}, {k}), got {tuple(w_s.shape)}")
    if not (0 < big_kernel <= L and L - big_kernel < k):
        raise ValueError(f"big_kernel={big_kernel} does not fit strips of length L={L} and width k={k}")
    return k, L


def cross_conv_torch(x, w_h, w_v, w_s=None, *, big_kernel: int, reduce: bool = False):
    """Pure PyTorch path: three depthwise strip convolutions (no nk-times intermediate)."""
    k, L = check_cross_args(x, w_h, w_v, w_s, big_kernel)
    C = x.shape[1]
    lo = big_kernel // 2  # taps before the centre along the strip
    hi = L - 1 - lo  # taps after it
    r = k // 2
    w_h4 = w_h.to(x.dtype).unsqueeze(1)  # (C,1,k,L)
    w_v4 = w_v.to(x.dtype).unsqueeze(1)  # (C,1,L,k)
    if lo == hi:
        out_h = F.conv2d(x, w_h4, padding=(r, lo), groups=C)
        out_v = F.conv2d(x, w_v4, padding=(lo, r), groups=C)
    else:
        out_h = F.conv2d(F.pad(x, (lo, hi, r, r)), w_h4, groups=C)
        out_v = F.conv2d(F.pad(x, (r, r, lo, hi)), w_v4, groups=C)
    out_s = None if w_s is None else F.conv2d(x, w_s.to(x.dtype).unsqueeze(1), padding=r, groups=C)
    if reduce:
        out = out_h + out_v
        return out if out_s is None else out + out_s
    if out_s is None:
        out_s = torch.zeros_like(out_h)
    return out_h, out_v, out_s


def resolve_backend(x: torch.Tensor, backend: str | None) -> str:
    """Explicit argument > SWTASKS_OP_BACKEND > automatic (Triton on CUDA, PyTorch elsewhere)."""
    choice = backend or os.environ.get(ENV_BACKEND) or "auto"
    if choice == "auto":
        return "triton" if x.is_cuda else "torch"
    if choice not in BACKENDS:
        raise ValueError(f"unknown shift-wise backend {choice!r}; choose one of {('auto',) + BACKENDS}")
    return choice


def cross_conv(x, w_h, w_v, w_s=None, *, big_kernel: int, reduce: bool = False, backend: str | None = None):
    """Dispatching entry point; see the module docstring for the contract."""
    which = resolve_backend(x, backend)
    if which == "torch":
        return cross_conv_torch(x, w_h, w_v, w_s, big_kernel=big_kernel, reduce=reduce)
    from .triton_cross import cross_conv_triton  # noqa: PLC0415  (lazy: no Triton work at import)

    return cross_conv_triton(x, w_h, w_v, w_s, big_kernel=big_kernel, reduce=reduce)
