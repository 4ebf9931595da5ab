"""UniRepLKNet's Dilated Reparam Block (DRB) and the kernel algebra of re-parameterisable depthwise convs.

Spec: docs/models.md, "UniRepLKNet". Training structure (names as the published implementation's, so its
state dicts load as they are):

    lk_origin               depthwise K x K conv, no bias
    origin_bn               BatchNorm2d after it
    dil_conv_k{k}_{r}       depthwise k x k conv with dilation r (padding r(k-1)/2, "same"), no bias
    dil_bn_k{k}_{r}         BatchNorm2d after it
    out = origin_bn(lk_origin(x)) + sum over branches of dil_bn(dil_conv(x))

Branches per K (kernel sizes / dilations): 17: 5,9,3,3,3 / 1,2,4,5,7; 15: 5,7,3,3,3 / 1,2,3,5,7;
13: 5,7,3,3,3 / 1..5; 11: 5,5,3,3,3 / 1..5; 9: 5,5,3,3 / 1..4; 7: 5,3,3 / 1,2,3; 5: 3,3 / 1,2.

Deploy structure: `lk_origin` alone, a depthwise K x K conv with bias. The merge is exact: each BN folds into
its conv (eval semantics), a k x k kernel with dilation r equals the dense kernel of size r(k-1)+1 with
r-1 zeros between its taps, which is zero-padded to K x K (every branch is "same"-padded and centred) and
added. Folding is done in float64.

The helpers `fuse_conv_bn`, `dilate_kernel` and `pad_kernel` are shared with the decomposed large-kernel
conv (swtasks.layers.decomposed). Imports torch and swtasks.layers.common only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import bn_scale_shift

__all__ = ["DRB_BRANCHES", "DilatedReparamBlock", "dilate_kernel", "fuse_conv_bn", "pad_kernel"]

# big kernel K -> (branch kernel sizes, dilation rates), the published defaults
DRB_BRANCHES: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    17: ((5, 9, 3, 3, 3), (1, 2, 4, 5, 7)),
    15: ((5, 7, 3, 3, 3), (1, 2, 3, 5, 7)),
    13: ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5)),
    11: ((5, 5, 3, 3, 3), (1, 2, 3, 4, 5)),
    9: ((5, 5, 3, 3), (1, 2, 3, 4)),
    7: ((5, 3, 3), (1, 2, 3)),
    5: ((3, 3), (1, 2)),
}


@torch.no_grad()
def fuse_conv_bn(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """bn(conv(x)) as one conv: (weight * s, bias * s + t) with the BN's eval affine s, t (bias None: 0);
    float64."""
    scale, shift = bn_scale_shift(bn)
    w = weight.detach().double() * scale.view(-1, *([1] * (weight.dim() - 1)))
    b = shift if bias is None else bias.detach().double() * scale + shift
    return w, b


def dilate_kernel(kernel: torch.Tensor, rate: int) -> torch.Tensor:
    """The dense equivalent of a k x k kernel used with dilation `rate`: size rate(k-1)+1, taps at every
    rate-th position, zeros between (any leading dims)."""
    if rate == 1:
        return kernel
    kh, kw = kernel.shape[-2:]
    out = kernel.new_zeros((*kernel.shape[:-2], rate * (kh - 1) + 1, rate * (kw - 1) + 1))
    out[..., ::rate, ::rate] = kernel
    return out


def pad_kernel(kernel: torch.Tensor, height: int, width: int | None = None) -> torch.Tensor:
    """Zero-pad a centred (odd-sized) kernel to height x width (width defaults to height)."""
    width = height if width is None else width
    kh, kw = kernel.shape[-2:]
    if (height - kh) % 2 or (width - kw) % 2 or kh > height or kw > width:
        raise ValueError(f"cannot centre a {kh}x{kw} kernel in {height}x{width}")
    ph, pw = (height - kh) // 2, (width - kw) // 2
    return F.pad(kernel, [pw, pw, ph, ph])


def _depthwise(channels: int, kernel_size: int, dilation: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(
        channels, channels, kernel_size, padding=dilation * (kernel_size - 1) // 2, dilation=dilation,
        groups=channels, bias=bias,
    )


class DilatedReparamBlock(nn.Module):
    """Depthwise K x K conv + BN in parallel with dilated depthwise convs + BN (see the module docstring).

    Args:
        channels: input = output channels (depthwise).
        kernel_size: K, one of DRB_BRANCHES (5, 7, 9, 11, 13, 15, 17).
        deploy: build the merged structure (one K x K depthwise conv with bias).
    """

    def __init__(self, channels: int, kernel_size: int, deploy: bool = False):
        super().__init__()
        if kernel_size not in DRB_BRANCHES:
            raise ValueError(
                f"DilatedReparamBlock: kernel_size must be one of {sorted(DRB_BRANCHES)}, got {kernel_size!r}"
            )
        self.channels = channels
        self.kernel_size = kernel_size
        self.kernel_sizes, self.dilates = DRB_BRANCHES[kernel_size]
        self.deploy = deploy
        self.lk_origin = _depthwise(channels, kernel_size, bias=deploy)
        if not deploy:
            self.origin_bn = nn.BatchNorm2d(channels)
            for k, r in self.branches:
                self.add_module(f"dil_conv_k{k}_{r}", _depthwise(channels, k, dilation=r))
                self.add_module(f"dil_bn_k{k}_{r}", nn.BatchNorm2d(channels))

    @property
    def branches(self) -> list[tuple[int, int]]:
        """(kernel size, dilation) of every dilated branch."""
        return list(zip(self.kernel_sizes, self.dilates))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return self.lk_origin(x)
        out = self.origin_bn(self.lk_origin(x))
        for k, r in self.branches:
            out = out + getattr(self, f"dil_bn_k{k}_{r}")(getattr(self, f"dil_conv_k{k}_{r}")(x))
        return out

    @torch.no_grad()
    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single depthwise K x K kernel (C, 1, K, K) and bias (C,) this block computes, in float64 (eval
        semantics: BatchNorms with their running statistics)."""
        if self.deploy:
            b = self.lk_origin.bias
            return self.lk_origin.weight.double(), (b.double() if b is not None else None)
        K = self.kernel_size
        weight, bias = fuse_conv_bn(self.lk_origin.weight, None, self.origin_bn)
        for k, r in self.branches:
            w, b = fuse_conv_bn(getattr(self, f"dil_conv_k{k}_{r}").weight, None, getattr(self, f"dil_bn_k{k}_{r}"))
            weight = weight + pad_kernel(dilate_kernel(w, r), K)
            bias = bias + b
        return weight, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Merge every branch and BN into `lk_origin` (with bias), in place; idempotent."""
        if self.deploy:
            return
        weight, bias = self.equivalent_kernel_bias()
        ref = self.lk_origin.weight
        merged = _depthwise(self.channels, self.kernel_size, bias=True).to(device=ref.device, dtype=ref.dtype)
        merged.weight.copy_(weight)
        merged.bias.copy_(bias)
        self.lk_origin = merged
        del self.origin_bn
        for k, r in self.branches:
            delattr(self, f"dil_conv_k{k}_{r}")
            delattr(self, f"dil_bn_k{k}_{r}")
        self.deploy = True

    switch_to_deploy = reparameterize

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel_size={self.kernel_size}, branches={self.branches}, deploy={self.deploy}"
