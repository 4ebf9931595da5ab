"""The PyTorch path of the cross convolution and the argument check every path shares.

The contract (shapes, taps, off-centre strips) is stated in cross_conv.py; this module is the bottom
of the operator floor: it imports only torch, so the Triton launchers (triton_cross.py) and the
dispatcher (cross_conv.py) both build on it without importing each other.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["StripConv", "autocast_input", "check_cross_args", "cross_conv_torch", "strip_convs", "strip_input",
           "strip_output"]


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


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """x in the dtype autocast runs convolutions in on x's device (bf16 or fp16) when autocast is on there
    and x is fp32, else x unchanged (fp64 is never cast, as autocast never casts it). The operator's
    convolutions then read one 16-bit copy of x instead of one per branch, and the Triton path gets 16-bit x
    and runs its 16-bit kernels (a custom op is not cast by autocast). docs/operator.md, "Mixed precision"."""
    if isinstance(x, torch.fx.Proxy):  # symbolic tracing: no dtype to look at; the graph keeps the call
        return x
    dev = x.device.type
    # (meta and other devices without autocast: is_autocast_enabled would raise)
    if x.dtype == torch.float32 and torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        return x.to(torch.get_autocast_dtype(dev))
    return x


class StripConv(NamedTuple):
    """One strip branch as a depthwise convolution: ``F.conv2d(strip_input(x, s), s.weight, padding=s.padding,
    groups=C)``, then ``strip_output`` (the result transposed back when ``transpose``)."""

    weight: torch.Tensor  # (C, 1, kh, kw), a differentiable function of w_h or w_v
    transpose: bool  # the horizontal strip run as a vertical one on x^T
    pad: tuple[int, int, int, int] | None  # explicit zero padding of the (transposed) input, F.pad order
    padding: tuple[int, int]  # the convolution's own padding


def strip_convs(x, w_h, w_v, big_kernel: int, *, needs_grad: bool,
                wide: bool | None = None) -> tuple[StripConv, StripConv]:
    """The two strip branches of `cross_conv_torch` (horizontal, vertical) for input x, as convolutions.

    Each strip is first centred (zero taps added on its short side) and cropped to the image extent (taps
    further than H-1 or W-1 from the centre never touch the image). On CPU the horizontal strip runs as a
    vertical one on the transposed image (PyTorch's CPU depthwise convolution is fast for tall kernels and
    very slow for wide ones) and, when gradients are needed and the strip is longer than the image, the
    input is zero-padded explicitly (the weight gradient of a padded convolution is slow on CPU when the
    kernel is longer than the image); see benchmarks/RESULTS.md."""
    k, L = w_h.shape[1], w_h.shape[2]
    H, W = x.shape[2], x.shape[3]
    lo = big_kernel // 2  # taps before the centre along the strip
    hi = L - 1 - lo  # taps after it (hi >= lo)
    r = k // 2
    cpu = x.device.type == "cpu"
    wide = not cpu if wide is None else wide
    plans = []
    for w, extent, along_w in ((w_h.to(x.dtype).transpose(1, 2), W, True), (w_v.to(x.dtype), H, False)):
        # half-length of the centred strip, cropped to the image; a symbolic extent (torch.export with a
        # dynamic height/width) keeps the whole strip: the crop would specialise the export to the traced
        # size, and the taps it drops only ever read the zero padding
        half = hi if isinstance(extent, torch.SymInt) else max(min(hi, extent - 1), 0)
        keep_lo = min(lo, half)
        w = w[:, lo - keep_lo : lo + half + 1]  # (C, taps, k), tall
        if half > keep_lo:
            w = F.pad(w, (0, 0, half - keep_lo, 0))
        if along_w and wide:  # wide kernel on the image itself
            plans.append(StripConv(w.transpose(1, 2).unsqueeze(1), False, None, (r, half)))
            continue
        explicit = cpu and needs_grad and 2 * half + 1 > extent
        plans.append(StripConv(w.unsqueeze(1), along_w, (r, r, half, half) if explicit else None,
                               (0, 0) if explicit else (half, r)))
    return plans[0], plans[1]


def strip_input(x, s: StripConv):
    """The convolution input of strip `s`: x, transposed and/or zero-padded as the plan says."""
    xi = x.transpose(2, 3) if s.transpose else x
    return xi if s.pad is None else F.pad(xi, s.pad)


def strip_output(out, s: StripConv):
    """The strip's result in x's (H, W) orientation (a transposed view for a transposed strip)."""
    return out.transpose(2, 3) if s.transpose else out


def cross_conv_torch(x, w_h, w_v, w_s=None, *, big_kernel: int, reduce: bool = False):
    """Pure PyTorch path: three depthwise strip convolutions (no nk-times intermediate).

    Plain differentiable PyTorch (ordinary autograd, any device, torch.compile-able); the strips run as
    `strip_convs` plans them (centred, cropped to the image, transposed / padded on CPU). Outputs may be
    non-contiguous views (the horizontal branch on CPU is a transposed result). Under autocast the
    convolutions run in its 16-bit dtype (fp32 accumulation inside the convolution) and return it; the
    reduce=True sum is accumulated in fp32 (docs/operator.md, "Mixed precision").
    """
    k, _ = check_cross_args(x, w_h, w_v, w_s, big_kernel)
    x = autocast_input(x)  # under autocast: one 16-bit copy for the three convolutions
    r = k // 2
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, w_h, w_v, w_s)
    )
    outs = [strip_output(F.conv2d(strip_input(x, s), s.weight, padding=s.padding, groups=x.shape[1]), s)
            for s in strip_convs(x, w_h, w_v, big_kernel, needs_grad=needs_grad)]
    out_h, out_v = outs
    out_s = None if w_s is None else F.conv2d(x, w_s.to(x.dtype).unsqueeze(1), padding=r, groups=x.shape[1])
    if reduce:  # summed in fp32 (fp64 for fp64) and rounded once to the convolutions' dtype
        acc = torch.promote_types(out_h.dtype, torch.float32)
        out = out_h.to(acc) + out_v.to(acc)
        return (out if out_s is None else out + out_s.to(acc)).to(out_h.dtype)
    if out_s is None:
        out_s = torch.zeros_like(out_v)
    return out_h, out_v, out_s
