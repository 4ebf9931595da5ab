"""The PyTorch path of the cross convolution and the argument check every path shares.

The contract (shapes, taps, off-centre strips) is stated in cross_conv.py; this module is the bottom
of the operator floor: it imports only torch, so the Triton launchers (triton_cross.py) and the
dispatcher (cross_conv.py) both build on it without importing each other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["check_cross_args", "cross_conv_torch"]


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


def _strip(x, w, half: int, r: int, *, along_w: bool, transpose: bool, explicit_pad: bool):
    """Depthwise convolution of x with a centred strip w laid out tall, (C, 2*half+1, k).

    along_w=False: vertical strip (taps (u, j) at (u - half, j - r)); along_w=True: the horizontal
    strip whose tap (i, u) is w[c, u, i], at (i - r, u - half). transpose: run the horizontal strip as a
    vertical one on x^T (PyTorch's CPU depthwise convolution is fast for tall kernels and very slow for
    wide ones). explicit_pad: zero-pad the input instead of asking the convolution to pad (on CPU the
    weight gradient of a padded convolution is slow when the kernel is longer than the image).
    """
    C = x.shape[1]
    if along_w and not transpose:
        w4 = w.transpose(1, 2).unsqueeze(1)  # (C, 1, k, 2*half+1)
        if explicit_pad:
            return F.conv2d(F.pad(x, (half, half, r, r)), w4, groups=C)
        return F.conv2d(x, w4, padding=(r, half), groups=C)
    xi = x.transpose(2, 3) if along_w else x
    w4 = w.unsqueeze(1)  # (C, 1, 2*half+1, k)
    if explicit_pad:
        out = F.conv2d(F.pad(xi, (r, r, half, half)), w4, groups=C)
    else:
        out = F.conv2d(xi, w4, padding=(half, r), groups=C)
    return out.transpose(2, 3) if along_w else out


def cross_conv_torch(x, w_h, w_v, w_s=None, *, big_kernel: int, reduce: bool = False):
    """Pure PyTorch path: three depthwise strip convolutions (no nk-times intermediate).

    Plain differentiable PyTorch (ordinary autograd, any device, torch.compile-able). Each strip is
    first centred (zero taps added on its short side) and cropped to the image extent (taps further
    than H-1 or W-1 from the centre never touch the image). On CPU the horizontal strip runs as a
    vertical one on the transposed image and, when gradients are needed and the strip is longer than
    the image, the input is padded explicitly: both avoid slow oneDNN cases (see benchmarks/RESULTS.md).
    Outputs may be non-contiguous views (the horizontal branch on CPU is a transposed result).
    """
    k, L = check_cross_args(x, w_h, w_v, w_s, big_kernel)
    H, W = x.shape[2], x.shape[3]
    lo = big_kernel // 2  # taps before the centre along the strip
    hi = L - 1 - lo  # taps after it (hi >= lo)
    r = k // 2
    cpu = x.device.type == "cpu"
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, w_h, w_v, w_s)
    )
    outs = []
    for w, extent, along_w in ((w_h.to(x.dtype).transpose(1, 2), W, True), (w_v.to(x.dtype), H, False)):
        half = max(min(hi, extent - 1), 0)  # half-length of the centred, cropped strip
        keep_lo = min(lo, half)
        w = w[:, lo - keep_lo : lo + half + 1]
        if half > keep_lo:
            w = F.pad(w, (0, 0, half - keep_lo, 0))
        outs.append(
            _strip(
                x,
                w,
                half,
                r,
                along_w=along_w,
                transpose=cpu and along_w,
                explicit_pad=cpu and needs_grad and 2 * half + 1 > extent,
            )
        )
    out_h, out_v = outs
    out_s = None if w_s is None else F.conv2d(x, w_s.to(x.dtype).unsqueeze(1), padding=r, groups=x.shape[1])
    if reduce:
        out = out_h + out_v
        return out if out_s is None else out + out_s
    if out_s is None:
        out_s = torch.zeros_like(out_v)
    return out_h, out_v, out_s
