"""Test oracle for the cross convolution, independent of the code under test.

The cross kernel is placed tap by tap into a dense, centred depthwise kernel straight from the
contract's words (swtasks/ops/cross_conv.py: tap (i, u) of w_h reads x[h + i - k//2, w + u - K//2],
tap (u, j) of w_v reads x[h + u - K//2, w + j - k//2], tap (i, j) of w_s reads x[h + i - k//2,
w + j - k//2]) and run by F.conv2d in float64. Nothing here imports swtasks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dense_kernels(w_h, w_v, w_s, big_kernel: int):
    """Per-branch dense kernels (C, 1, D, D), float64, differentiable w.r.t. the strip weights."""
    C, k, L = w_h.shape
    lo, r = big_kernel // 2, k // 2
    half = max(lo, L - 1 - lo, r)
    D = 2 * half + 1
    out = []
    for w, taps in (
        (w_h, [(i, u, i - r, u - lo) for i in range(k) for u in range(L)]),
        (w_v, [(u, j, u - lo, j - r) for u in range(L) for j in range(k)]),
        (w_s, [(i, j, i - r, j - r) for i in range(k) for j in range(k)] if w_s is not None else []),
    ):
        dense = torch.zeros(C, 1, D, D, dtype=torch.float64, device=w_h.device)
        for a, b, dy, dx in taps:
            dense[:, 0, half + dy, half + dx] = dense[:, 0, half + dy, half + dx] + w[:, a, b].double()
        out.append(dense)
    return out, half


def oracle(x, w_h, w_v, w_s, big_kernel: int, reduce: bool = False):
    """(out_h, out_v, out_s) or their sum, float64."""
    (dh, dv, ds), half = dense_kernels(w_h, w_v, w_s, big_kernel)
    xd = x.double()
    C = x.shape[1]
    outs = [F.conv2d(xd, d, padding=half, groups=C) for d in (dh, dv, ds)]
    return outs[0] + outs[1] + outs[2] if reduce else tuple(outs)


def assert_close(got, want, tol, what=""):
    """max |got - want| <= tol * max(1, max |want|)."""
    assert got.shape == want.shape, (what, tuple(got.shape), tuple(want.shape))
    if want.numel() == 0:
        return
    scale = max(1.0, want.double().abs().max().item())
    err = (got.double() - want.double()).abs().max().item()
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol:g} * {scale:.3g}"
