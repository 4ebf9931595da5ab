"""ShiftWiseNet: UniRepLKNet's macro-architecture with the shift-wise (SW) operator as its large kernel.

Spec: docs/models.md, "ShiftWiseNet". Module names mirror the reference implementation's state dict
so that converting the published checkpoint is a near-identity key mapping:

    downsample_layers.0          stem: Conv3x3 s2 (3 -> C0/2) . LayerNorm(cf) . GELU . Conv3x3 s2 . LayerNorm(cf)
    downsample_layers.{1,2,3}    Conv3x3 s2 . LayerNorm(cf)
    stages.{s}.{b}               ShiftWiseBlock (below)
    norm, head                   LayerNorm on the pooled features, Linear classifier (classification only)
    norm{i}                      LayerNorm(cf) per returned map (features_only only, like the dense-task
                                 reference)

Block, training structure (`stages.{s}.{b}.<name>`):

    large_kernel  ShiftWiseConv2d (identity add and ghost pass-through inside; channel order preserved)
    norm          BatchNorm2d(C)
    se            SEBlock: se.down (C -> C/4), se.up (C/4 -> C), 1x1 convs with bias
    pwconv1       Sequential(ToChannelsLast, Linear(C, 4C))            -> pwconv1.1.weight/bias
    act           Sequential(GELU, GRN(4C))                            -> act.1.gamma/beta (1,1,1,4C)
    pwconv2       Sequential(Linear(4C, C, bias=False), ToChannelsFirst, BatchNorm2d(C))
                                                                       -> pwconv2.0.weight, pwconv2.2.*
    gamma         layer scale (C,) (absent when layer_scale_init_value is None or <= 0)
    drop_path     DropPath (no parameters)
    out = x + drop_path(gamma * pwconv2(act(pwconv1(se(norm(large_kernel(x)))))))

Deploy structure (after `reparameterize()`, or built directly with deploy=True):

    large_kernel  ShiftWiseConv2d deploy form (weight_h, weight_v, bias, rep_idx, ghost_idx), with the
                  eval-mode BatchNorm `norm` folded into it for the rep channels (exact: the deploy
                  operator is a depthwise conv + bias on those channels);
    norm          GhostChannelAffine: the same BN as a per-channel affine (weight, bias of shape (G,)) on the
                  ghost channels only - the operator is the identity there, so nothing upstream can absorb
                  the BN's shift exactly (nn.Identity when there are no ghost channels);
    act.1         GRN without beta (beta projected through pwconv2 into its bias);
    pwconv2       Sequential(Linear(4C, C, bias=True), ToChannelsFirst) with pwconv2's BN and the layer
                  scale gamma folded in; no `gamma`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from swtasks.checkpoint import CheckpointAdapter
from swtasks.layers import ShiftWiseConv2d
from swtasks.layers.common import (
    bn_scale_shift,
    trunc_normal_,
)
from swtasks.ops.shiftwise import rep_channel_count

from .common import as_stage_tuple
from .four_stage import (
    FourStageNet,
    build_pointwise_tail,
    fold_pointwise_tail,
    pointwise_tail,
    unireplknet_downsample_layers,
)
from .registry import ModelConfigError, build_variant, register_family, register_model
from .shiftwise_cpu import block_forward_nchw, use_nchw_path
from .shiftwise_official import (
    SOURCE,
    convert_reference_layout,
    is_kernel_mask,
    is_reference_layout,
    reference_hints,
)

__all__ = [
    "SHIFTWISE_ARCHS",
    "GhostChannelAffine",
    "OperatorShape",
    "ShiftWiseBlock",
    "ShiftWiseNet",
    "operator_shapes",
    "shiftwise_arch",
]


class GhostChannelAffine(nn.Module):
    """Deploy form of the block's BatchNorm on the operator's ghost channels: y[:, idx] = weight * x[:, idx]
    + bias, other channels unchanged. `idx` (the operator's ghost_idx) is passed in by the block, so it is
    never duplicated or stale."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        w = self.weight.view(1, -1, 1, 1).to(x.dtype)
        b = self.bias.view(1, -1, 1, 1).to(x.dtype)
        return x.index_copy(1, index, torch.addcmul(b, x.index_select(1, index), w))

    def extra_repr(self) -> str:
        return f"{self.num_channels}"


class ShiftWiseBlock(nn.Module):
    """One UniRepLKNet block with the SW operator (see the module docstring for the layout)."""

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        small_kernel: int = 3,
        ghost_ratio: float = 0.23,
        n_path: int = 2,
        n_rep: int = 4,
        ffn_factor: float = 4,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        deploy: bool = False,
        backend: str | None = None,
        variant: str | None = None,
        dot_precision: str | None = None,
        deterministic: bool | None = None,
    ):
        super().__init__()
        self.dim = dim
        self.deploy = deploy
        self.large_kernel = ShiftWiseConv2d(
            dim, kernel_size, small_kernel=small_kernel, ghost_ratio=ghost_ratio, n_path=n_path, n_rep=n_rep,
            deploy=deploy, backend=backend, variant=variant, dot_precision=dot_precision, deterministic=deterministic,
        )
        ghosts = self.large_kernel.ghost_channels
        if deploy:
            self.norm = GhostChannelAffine(ghosts) if ghosts > 0 else nn.Identity()
        else:
            self.norm = nn.BatchNorm2d(dim)
        build_pointwise_tail(self, dim, ffn_factor, layer_scale_init_value, drop_path, deploy)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        y = self.large_kernel(x)
        if isinstance(self.norm, GhostChannelAffine):
            y = self.norm(y, self.large_kernel.ghost_idx)
        else:
            y = self.norm(y)
        return pointwise_tail(self, y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_nchw_path(x):  # CPU: the same function with fewer memory passes (swtasks/models/shiftwise_cpu.py)
            return block_forward_nchw(self, x)
        return x + self.residual(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold, in place and with eval semantics (running statistics), everything that folds exactly."""
        if self.deploy:
            return
        lk = self.large_kernel
        lk.reparameterize()  # paths, the three BNs, the centre tile and the identity -> weight_h/v + bias
        f64 = torch.float64
        # 1. the BN after the operator: rep channels into the deploy cross kernel and bias; ghost channels
        #    (identity inside the operator) keep a per-channel affine. Folded in float64.
        scale, shift = bn_scale_shift(self.norm)
        rep, ghost = lk.rep_idx, lk.ghost_idx
        s_rep = scale[rep]
        for p in (lk.weight_h, lk.weight_v):
            p.copy_(p.to(f64) * s_rep.view(-1, 1, 1))
        lk.bias.copy_(lk.bias.to(f64) * s_rep + shift[rep])
        if ghost.numel() > 0:
            ref = self.norm.weight
            affine = GhostChannelAffine(ghost.numel()).to(device=ref.device, dtype=ref.dtype)
            affine.weight.copy_(scale[ghost])
            affine.bias.copy_(shift[ghost])
            self.norm = affine
        else:
            self.norm = nn.Identity()
        # 2. GRN beta, pwconv2's BN and the layer scale into pwconv2 (the UniRepLKNet block's fold)
        fold_pointwise_tail(self)
        self.deploy = True


class ShiftWiseNet(FourStageNet):
    """ShiftWiseNet classifier / backbone. Every argument is a create_model override.

    Args:
        in_chans: image channels.
        num_classes: classifier outputs (0: no classifier; forward returns the pre-logit features).
        depths, dims: blocks and channels per stage (4 stages, strides 4/8/16/32).
        kernel_sizes: the SW big kernel per stage (an int applies to all stages).
        small_kernel, ghost_ratio, n_path, n_rep: the SW operator's settings (shared by all stages).
        ffn_factor: width of the pointwise MLP relative to the stage width.
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks to this value.
        layer_scale_init_value: initial layer scale (None or 0: no layer scale).
        head_init_scale: multiplies the classifier's initial weight and bias.
        deploy: build the re-parameterised inference structure.
        features_only, out_indices: return a list of NCHW maps of the given stages, each through its own
            LayerNorm(cf) `norm{i}`, instead of logits (no `norm` / `head`).
        grad_checkpointing: activation checkpointing per block (see set_grad_checkpointing).
        global_pool: the classifier's pooling, 'avg' or '' (none: the head at every position; timm's).
        backend: the SW op backend ('torch', 'triton'; None: automatic).
        variant, dot_precision, deterministic: the SW op's Triton switches (see ShiftWiseConv2d).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 3, 18, 3),
        dims: Sequence[int] = (80, 160, 320, 640),
        kernel_sizes: Sequence[int] | int = (51, 49, 47, 13),
        small_kernel: int = 3,
        ghost_ratio: float = 0.23,
        n_path: int = 2,
        n_rep: int = 4,
        ffn_factor: float = 4,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        head_init_scale: float = 1.0,
        deploy: bool = False,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        grad_checkpointing: bool = False,
        global_pool: str = "avg",
        backend: str | None = None,
        variant: str | None = None,
        dot_precision: str | None = None,
        deterministic: bool | None = None,
    ):
        super().__init__()
        rates = self._setup(
            in_chans=in_chans, num_classes=num_classes, depths=depths, dims=dims, drop_path_rate=drop_path_rate,
            deploy=deploy, features_only=features_only, out_indices=out_indices,
            grad_checkpointing=grad_checkpointing, global_pool=global_pool,
            min_dim=4,  # the SE block uses dim // 4 channels
        )
        dims = self.dims
        self.kernel_sizes = tuple(int(k) for k in as_stage_tuple("kernel_sizes", kernel_sizes))
        self.downsample_layers = unireplknet_downsample_layers(in_chans, dims)
        self.stages = nn.ModuleList()
        cur = 0
        for i in range(4):
            blocks = [
                ShiftWiseBlock(
                    dims[i], self.kernel_sizes[i], small_kernel=small_kernel, ghost_ratio=ghost_ratio,
                    n_path=n_path, n_rep=n_rep, ffn_factor=ffn_factor, drop_path=rates[cur + j],
                    layer_scale_init_value=layer_scale_init_value, deploy=deploy, backend=backend,
                    variant=variant, dot_precision=dot_precision, deterministic=deterministic,
                )
                for j in range(self.depths[i])
            ]
            self.stages.append(nn.Sequential(*blocks))
            cur += self.depths[i]
        self._build_outputs(head_init_scale)

    # -------------------------------------------------------------------------------------- init
    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        FourStageNet._init_weights(m)
        if isinstance(m, ShiftWiseConv2d) and not m.deploy and not m.weight.is_meta:
            # the small kernels are Conv2d weights in the reference, so they get the same init (the
            # deploy form keeps the layer's own identity init: it exists to be loaded into)
            trunc_normal_(m.weight, std=0.02)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel_sizes={self.kernel_sizes}"


# ------------------------------------------------------------------------------------------------------
# variants
# ------------------------------------------------------------------------------------------------------

_PAPER_SW = dict(kernel_sizes=(51, 49, 47, 13), small_kernel=3, ghost_ratio=0.23, n_path=2, n_rep=4)
# Small CPU variants: UniRepLKNet's atto/femto/pico widths and depths, big kernels 13/11/9/7 (nk = 5/4/3/3
# with k=3: centred and off-centre strips both appear), otherwise the paper's SW settings.
_SMALL_SW = dict(kernel_sizes=(13, 11, 9, 7), small_kernel=3, ghost_ratio=0.23, n_path=2, n_rep=4)

SHIFTWISE_ARCHS: dict[str, dict[str, Any]] = {
    "atto": dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), **_SMALL_SW),
    "femto": dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), **_SMALL_SW),
    "pico": dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512), **_SMALL_SW),
    "tiny": dict(depths=(3, 3, 18, 3), dims=(80, 160, 320, 640), **_PAPER_SW),
    "small": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), **_PAPER_SW),
    "base": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), **_PAPER_SW),
    "large": dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), **_PAPER_SW),
}



def shiftwise_arch(arch: str) -> dict[str, Any]:
    """A copy of the settings of variant `arch` ('tiny', ... or 'shiftwise_tiny', ...)."""
    key = arch[len("shiftwise_"):] if arch.startswith("shiftwise_") else arch
    if key not in SHIFTWISE_ARCHS:
        raise ModelConfigError(f"unknown ShiftWiseNet arch {arch!r}; choose one of {', '.join(SHIFTWISE_ARCHS)}")
    return dict(SHIFTWISE_ARCHS[key])


class OperatorShape(NamedTuple):
    """What one stage's shift-wise operators see: `channels` in, `rep` of them through the operator (the rest are
    ghost channels), a `size` x `size` map (a square image), big kernel `kernel`, small kernel `small`."""

    stage: int  # 1..4
    channels: int
    rep: int
    size: int
    kernel: int
    small: int


def operator_shapes(arch: str = "tiny", image_size: int = 224) -> list[OperatorShape]:
    """The operator's shapes at each stage of variant `arch` for a square image: the one table of them that the
    operator's tests, benchmarks and kernel report use (SW-T at 224 px: C 80/160/320/640, R 60/122/246/492,
    56/28/14/7, K 51/49/47/13)."""
    cfg = shiftwise_arch(arch)
    return [
        OperatorShape(i + 1, c, rep_channel_count(c, cfg["ghost_ratio"]), image_size // (4 * 2**i), k, cfg["small_kernel"])
        for i, (c, k) in enumerate(zip(cfg["dims"], cfg["kernel_sizes"]))
    ]


def _build(arch: str, /, **kwargs: Any) -> ShiftWiseNet:  # positional: `variant` is an operator switch
    return build_variant(f"shiftwise_{arch}", ShiftWiseNet, SHIFTWISE_ARCHS[arch], kwargs)


_CFG = dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic")
# the published implementation's checkpoint layout is read by every loader (see shiftwise_official.py)
SHIFTWISE_ADAPTER = CheckpointAdapter(
    detect=is_reference_layout,
    convert=convert_reference_layout,
    optional=is_kernel_mask,
    extra=is_kernel_mask,
    hints=partial(reference_hints, archs=SHIFTWISE_ARCHS),
    source=SOURCE,
)
register_family("shiftwise", SHIFTWISE_ADAPTER)


@register_model(pretrained_cfg=_CFG)
def shiftwise_atto(**kwargs: Any) -> ShiftWiseNet:
    """Test/CPU-demo size: depths 2/2/6/2, dims 40/80/160/320, kernels 13/11/9/7."""
    return _build("atto", **kwargs)


@register_model(pretrained_cfg=_CFG)
def shiftwise_femto(**kwargs: Any) -> ShiftWiseNet:
    """CPU size: depths 2/2/6/2, dims 48/96/192/384, kernels 13/11/9/7."""
    return _build("femto", **kwargs)


@register_model(pretrained_cfg=_CFG)
def shiftwise_pico(**kwargs: Any) -> ShiftWiseNet:
    """CPU size: depths 2/2/6/2, dims 64/128/256/512, kernels 13/11/9/7."""
    return _build("pico", **kwargs)


@register_model(pretrained_cfg=_CFG)
def shiftwise_tiny(**kwargs: Any) -> ShiftWiseNet:
    """SW-T (paper): depths 3/3/18/3, dims 80/160/320/640, kernels 51/49/47/13; 31,790,260 params."""
    return _build("tiny", **kwargs)


@register_model(pretrained_cfg=_CFG)
def shiftwise_small(**kwargs: Any) -> ShiftWiseNet:
    """SW-S: depths 3/3/27/3, dims 96/192/384/768, kernels 51/49/47/13."""
    return _build("small", **kwargs)


@register_model(pretrained_cfg=_CFG)
def shiftwise_base(**kwargs: Any) -> ShiftWiseNet:
    """SW-B: depths 3/3/27/3, dims 128/256/512/1024, kernels 51/49/47/13."""
    return _build("base", **kwargs)


@register_model(pretrained_cfg=_CFG)
def shiftwise_large(**kwargs: Any) -> ShiftWiseNet:
    """SW-L: depths 3/3/27/3, dims 192/384/768/1536, kernels 51/49/47/13."""
    return _build("large", **kwargs)
