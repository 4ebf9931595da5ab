"""Small building blocks shared by the backbones: LayerNorm (channels-first/last), GRN, SE, DropPath,
layout permutes, BatchNorm folding helpers and `is_traced` (whether eager-only checks and paths step aside).

Parameter names and shapes follow UniRepLKNet's reference modules, so state dicts map one to one:
`LayerNorm.weight/bias` (C,), `GRN.gamma/beta` (1, 1, 1, C), `SEBlock.down/up` (1x1 convs with bias).
Imports torch only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "GRN",
    "DropPath",
    "LayerNorm",
    "SEBlock",
    "ToChannelsFirst",
    "ToChannelsLast",
    "bn_scale_shift",
    "drop_path",
    "is_traced",
    "trunc_normal_",
]


def is_traced(x: object = None) -> bool:
    """Whether the code runs under a tracer or compiler rather than eagerly: ``x`` is a torch.fx Proxy
    (symbolic tracing: timm's and torchvision's FX feature extraction, FX quantization), or torch.jit
    tracing / scripting, torch.compile or torch.export is running. Eager-only input checks and eager-only
    fast paths step aside then (a Proxy has no values to check, and a graph should hold the standard path)."""
    return (isinstance(x, torch.fx.Proxy) or torch.jit.is_scripting() or torch.jit.is_tracing()
            or torch.compiler.is_compiling())


class LayerNorm(nn.Module):
    """LayerNorm over the channel dimension for NHWC (`channels_last`, the default, like nn.LayerNorm on the
    last dim) or NCHW (`channels_first`) tensors. Biased variance, `eps` inside the square root - the same
    function as the reference's hand-written channels-first LayerNorm, computed with F.layer_norm."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6, data_format: str = "channels_last"):
        super().__init__()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}")
        self.normalized_shape = (int(normalized_shape),)
        self.eps = eps
        self.data_format = data_format
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps}, data_format={self.data_format}"


class GRN(nn.Module):
    """Global Response Normalisation (ConvNeXt V2) for NHWC input:
    Gx = ||x||_2 over (H, W); Nx = Gx / (mean_C(Gx) + eps); out = (gamma * Nx + 1) * x + beta.
    gamma and beta have shape (1, 1, 1, C) and start at zero (the block is then the identity).
    `use_bias=False` drops beta (the deploy form, where beta has been folded into the next Linear)."""

    def __init__(self, dim: int, use_bias: bool = True, eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.use_bias = use_bias
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        if use_bias:
            self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        out = (self.gamma * nx + 1) * x
        return out + self.beta if self.use_bias else out

    def extra_repr(self) -> str:
        return f"{self.dim}, use_bias={self.use_bias}"


class SEBlock(nn.Module):
    """Squeeze-and-excitation: avg-pool -> 1x1 conv `down` (C -> hidden, bias) -> ReLU -> 1x1 conv `up`
    (hidden -> C, bias) -> sigmoid -> channel scale. NCHW in and out."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.channels = channels
        self.down = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.up = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = torch.sigmoid(self.up(F.relu(self.down(s))))
        return x * s


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True):
    """Stochastic depth per sample: zero whole samples of the residual branch with probability drop_prob."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    if keep > 0.0 and scale_by_keep:
        mask.div_(keep)
    return x * mask


class DropPath(nn.Module):
    """Module form of `drop_path` (identity in eval mode or with drop_prob 0)."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class ToChannelsLast(nn.Module):
    """NCHW -> NHWC (a view; no copy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class ToChannelsFirst(nn.Module):
    """NHWC -> NCHW (a view; no copy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


@torch.no_grad()
def bn_scale_shift(
    bn: nn.modules.batchnorm._BatchNorm, dtype: torch.dtype | None = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as a per-channel affine: bn(x) = scale * x + shift (running statistics),
    computed in `dtype` (float64 by default, for folding; None: the BN's own dtype). Needs tracked running
    statistics; a BN without affine parameters uses weight 1 and bias 0."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn} has no running statistics (track_running_stats=False); it cannot be folded")
    dtype = dtype or bn.running_var.dtype
    var, mean = bn.running_var.to(dtype), bn.running_mean.to(dtype)
    std = torch.sqrt(var + bn.eps)
    weight = bn.weight.detach().to(dtype) if bn.weight is not None else torch.ones_like(std)
    bias = bn.bias.detach().to(dtype) if bn.bias is not None else torch.zeros_like(std)
    scale = weight / std
    return scale, bias - mean * scale


@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, std: float = 0.02, a: float = -2.0, b: float = 2.0) -> torch.Tensor:
    """Normal(0, std) truncated to [a, b] (absolute bounds, like timm's and nn.init's trunc_normal_).
    When the bounds are more than 6 std away (the usual std=0.02 with +-2: 100 std), truncation changes
    nothing representable, and a clamped normal is drawn instead: the same distribution at about a third of
    nn.init.trunc_normal_'s cost (which matters when building 100M-parameter models on 2 cores)."""
    if min(-a, b) / std > 6.0:
        return tensor.normal_(0.0, std).clamp_(a, b)
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=a, b=b)
