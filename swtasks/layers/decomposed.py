"""SLaK's decomposed large-kernel depthwise convolution.

Spec: docs/models.md, "SLaK". Training structure (names as the published implementation's `LoRA=True` /
`Decom=True` form, so its state dicts load as they are):

    LoRA1.conv, LoRA1.bn        depthwise K x s conv ("same" padding K//2, s//2), no bias; BatchNorm2d
    LoRA2.conv, LoRA2.bn        depthwise s x K conv; BatchNorm2d
    small_conv.conv, .bn        depthwise s x s conv; BatchNorm2d (only when s < K)
    out = LoRA1(x) + LoRA2(x) + small_conv(x)

with K the stage's big kernel (51, 49, 47, 13 in SLaK-T) and s the small kernel (5).

Deploy structure (`reparameterize()`, or deploy=True): two strip convolutions,

    reparam1    depthwise K x s conv with bias: LoRA1 and small_conv (zero-padded to K x s) with their BNs
                folded in, and all three BN shifts as its bias
    reparam2    depthwise s x K conv without bias: LoRA2 with its BN folded in
    out = reparam1(x) + reparam2(x)

Why two strips and not one K x K kernel: the published implementation's `merge_kernel` builds a dense
K x K conv (`lkb_reparam`) from `lkb_origin`, which the decomposed model does not have (it fails there).
A dense 51 x 51 depthwise kernel costs 2601 multiply-adds per output pixel and channel; the two strips cost
2 K s = 510 (the training form 535 plus three BNs), so the strips are the cheapest exact deploy form.
`equivalent_kernel_bias()` still gives the dense K x K kernel (for analysis or a dense export).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from .dilated_reparam import fuse_conv_bn, pad_kernel

__all__ = ["DecomposedLargeKernelConv"]


def _strip(channels: int, kh: int, kw: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, (kh, kw), padding=(kh // 2, kw // 2), groups=channels, bias=bias)


def _conv_bn(channels: int, kh: int, kw: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=_strip(channels, kh, kw), bn=nn.BatchNorm2d(channels)))


class DecomposedLargeKernelConv(nn.Module):
    """K x s + s x K (+ s x s) depthwise convs, each with BatchNorm, summed (see the module docstring).

    Args:
        channels: input = output channels (depthwise).
        kernel_size: the big kernel K (odd).
        small_kernel: s (odd, <= K); the s x s branch exists only when s < K.
        deploy: build the merged two-strip structure.
    """

    def __init__(self, channels: int, kernel_size: int, small_kernel: int = 5, deploy: bool = False):
        super().__init__()
        for name, k in (("kernel_size", kernel_size), ("small_kernel", small_kernel)):
            if not isinstance(k, int) or k < 1 or k % 2 == 0:
                raise ValueError(f"DecomposedLargeKernelConv: {name} must be a positive odd int, got {k!r}")
        if small_kernel > kernel_size:
            raise ValueError(
                f"DecomposedLargeKernelConv: small_kernel ({small_kernel}) must not exceed kernel_size ({kernel_size})"
            )
        self.channels = channels
        self.kernel_size = kernel_size
        self.small_kernel = small_kernel
        self.deploy = deploy
        K, s = kernel_size, small_kernel
        if deploy:
            self.reparam1 = _strip(channels, K, s, bias=True)
            self.reparam2 = _strip(channels, s, K)
        else:
            self.LoRA1 = _conv_bn(channels, K, s)
            self.LoRA2 = _conv_bn(channels, s, K)
            if s < K:
                self.small_conv = _conv_bn(channels, s, s)

    @property
    def has_small_conv(self) -> bool:
        return not self.deploy and self.small_kernel < self.kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return self.reparam1(x) + self.reparam2(x)
        out = self.LoRA1(x) + self.LoRA2(x)
        if self.has_small_conv:
            out = out + self.small_conv(x)
        return out

    @torch.no_grad()
    def _folded_strips(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(K x s kernel, s x K kernel, bias) with every BN folded in (eval semantics), float64."""
        if self.deploy:
            return (self.reparam1.weight.double(), self.reparam2.weight.double(), self.reparam1.bias.double())
        K, s = self.kernel_size, self.small_kernel
        w1, b1 = fuse_conv_bn(self.LoRA1.conv.weight, None, self.LoRA1.bn)
        w2, b2 = fuse_conv_bn(self.LoRA2.conv.weight, None, self.LoRA2.bn)
        bias = b1 + b2
        if self.has_small_conv:
            w3, b3 = fuse_conv_bn(self.small_conv.conv.weight, None, self.small_conv.bn)
            w1 = w1 + pad_kernel(w3, K, s)
            bias = bias + b3
        return w1, w2, bias

    @torch.no_grad()
    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The dense depthwise K x K kernel (C, 1, K, K) and bias (C,) this layer computes, float64."""
        K = self.kernel_size
        w1, w2, bias = self._folded_strips()
        return pad_kernel(w1, K) + pad_kernel(w2, K), bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BNs and the s x s branch into the two strip convs `reparam1`/`reparam2`, in place;
        idempotent."""
        if self.deploy:
            return
        w1, w2, bias = self._folded_strips()
        ref = self.LoRA1.conv.weight
        K, s = self.kernel_size, self.small_kernel
        self.reparam1 = _strip(self.channels, K, s, bias=True).to(device=ref.device, dtype=ref.dtype)
        self.reparam2 = _strip(self.channels, s, K).to(device=ref.device, dtype=ref.dtype)
        self.reparam1.weight.copy_(w1)
        self.reparam1.bias.copy_(bias)
        self.reparam2.weight.copy_(w2)
        for name in ("LoRA1", "LoRA2", "small_conv"):
            if hasattr(self, name):
                delattr(self, name)
        self.deploy = True

    switch_to_deploy = reparameterize

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, kernel_size={self.kernel_size}, small_kernel={self.small_kernel}, "
            f"deploy={self.deploy}"
        )
