"""UniRepLKNet: the large-kernel ConvNet whose macro-architecture ShiftWiseNet is built on.

Spec: docs/models.md, "UniRepLKNet". Module names mirror the published implementation's, so its state
dicts (classification files, `reparameterize_unireplknet()` outputs, dense-task backbones) load unchanged:

    downsample_layers.0          stem: Conv3x3 s2 (3 -> C0/2) . LayerNorm(cf) . GELU . Conv3x3 s2 . LayerNorm(cf)
    downsample_layers.{1,2,3}    Conv3x3 s2 . LayerNorm(cf)
    stages.{s}.{b}               UniRepLKNetBlock (below)
    norm, head                   LayerNorm on the pooled features, Linear classifier
    norm{i}                      LayerNorm(cf) per returned map (features_only)

Block, training structure (`stages.{s}.{b}.<name>`), kernel size K per block:

    dwconv        K >= 5 in the DRB table: DilatedReparamBlock (lk_origin, origin_bn, dil_conv_k*_*,
                  dil_bn_k*_*); K in (3, 5) below the DRB threshold of 7: a plain depthwise conv (no bias);
                  K = 0: identity
    norm          BatchNorm2d(C) (identity for K = 0)
    se            SEBlock (C -> C/4 -> C)
    pwconv1       Sequential(ToChannelsLast, Linear(C, 4C))
    act           Sequential(GELU, GRN(4C))
    pwconv2       Sequential(Linear(4C, C, bias=False), ToChannelsFirst, BatchNorm2d(C))
    gamma         layer scale (C,)
    out = x + drop_path(gamma * pwconv2(act(pwconv1(se(norm(dwconv(x)))))))

Deploy structure (`reparameterize()` or deploy=True): `dwconv` is one depthwise conv with bias (the DRB
merged, then `norm` folded in: `dwconv.lk_origin` for DRB blocks, `dwconv` itself for 3x3/5x5 blocks), `norm`
is the identity, GRN has no beta, and `pwconv2` is Sequential(Linear(4C, C, bias=True), ToChannelsFirst) with
GRN beta, the BatchNorm and the layer scale folded in (`fold_pointwise_tail`, shared with ShiftWiseBlock).

`FourStageNet` holds what every four-stage network of this registry with the ConvNeXt/UniRepLKNet layout
(`downsample_layers`, `stages`, `norm`/`head` or `norm{i}`) does the same way: argument checks, outputs,
classifier, weight-decay names, activation checkpointing, re-parameterisation. SLaK builds on it too.
Not copied from the published code: its module-global switches (use_sync_bn, attempt_use_lk_impl; use
SyncBatchNorm by conversion, e.g. the classification module's sync_batchnorm), print statements, and the
with_cp flag inside blocks (see set_grad_checkpointing).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from swtasks.checkpoint import CheckpointAdapter
from swtasks.layers.dilated_reparam import DRB_BRANCHES, DilatedReparamBlock, fuse_conv_bn

from .common import as_stage_tuple
from .four_stage import (
    FourStageNet,
    build_pointwise_tail,
    fold_pointwise_tail,
    pointwise_tail,
    unireplknet_downsample_layers,
)
from .registry import ModelConfigError, build_variant, register_family, register_model

__all__ = [
    "UNIREPLKNET_ARCHS",
    "UniRepLKNet",
    "UniRepLKNetBlock",
    "default_kernel_sizes",
]


# ------------------------------------------------------------------------------------------------------
# UniRepLKNet
# ------------------------------------------------------------------------------------------------------


class UniRepLKNetBlock(nn.Module):
    """One UniRepLKNet block (layout in the module docstring). kernel_size: 0 (no spatial mixing), 3, 5,
    or a DRB size >= 7 (7, 9, 11, 13, 15, 17)."""

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        deploy: bool = False,
        ffn_factor: float = 4,
    ):
        super().__init__()
        self.dim = dim
        self.kernel_size = kernel_size
        self.deploy = deploy
        if kernel_size == 0:
            self.dwconv = nn.Identity()
        elif kernel_size >= 7 and kernel_size in DRB_BRANCHES:
            self.dwconv = DilatedReparamBlock(dim, kernel_size, deploy=deploy)
        elif kernel_size in (3, 5):
            self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=deploy)
        else:
            raise ModelConfigError(
                f"UniRepLKNet block kernel size must be 0, 3, 5 or one of {sorted(k for k in DRB_BRANCHES if k >= 7)}"
                f", got {kernel_size!r}"
            )
        self.norm = nn.Identity() if deploy or kernel_size == 0 else nn.BatchNorm2d(dim)
        build_pointwise_tail(self, dim, ffn_factor, layer_scale_init_value, drop_path, deploy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + pointwise_tail(self, self.norm(self.dwconv(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Merge the DRB, fold the BatchNorm into the depthwise conv and GRN beta / BN / layer scale into
        pwconv2, in place (eval semantics). Idempotent."""
        if self.deploy:
            return
        if isinstance(self.dwconv, DilatedReparamBlock):
            self.dwconv.reparameterize()
        if isinstance(self.norm, nn.BatchNorm2d):
            conv = self.dwconv.lk_origin if isinstance(self.dwconv, DilatedReparamBlock) else self.dwconv
            weight, bias = fuse_conv_bn(conv.weight, conv.bias, self.norm)
            merged = nn.Conv2d(self.dim, self.dim, conv.kernel_size, padding=conv.padding, groups=self.dim, bias=True)
            merged = merged.to(device=conv.weight.device, dtype=conv.weight.dtype)
            merged.weight.copy_(weight)
            merged.bias.copy_(bias)
            if isinstance(self.dwconv, DilatedReparamBlock):
                self.dwconv.lk_origin = merged
            else:
                self.dwconv = merged
            self.norm = nn.Identity()
        fold_pointwise_tail(self)
        self.deploy = True

    switch_to_deploy = reparameterize


def _stage_kernels(pattern: Sequence[int], depth: int) -> tuple[int, ...]:
    return tuple(pattern[j % len(pattern)] for j in range(depth))


def default_kernel_sizes(depths: Sequence[int]) -> tuple[tuple[int, ...], ...] | None:
    """The published per-block kernel sizes for the published depths (None for other depths): stage 1 all 3,
    stage 2 all 13, stage 3 all 13 (A/F/P/N), 13, 3 alternating (T) or 13, 3, 3 repeating (S/B/L/XL), stage 4
    all 13."""
    stage3 = {(2, 2, 6, 2): (13,), (2, 2, 8, 2): (13,), (3, 3, 18, 3): (13, 3), (3, 3, 27, 3): (13, 3, 3)}
    pattern = stage3.get(tuple(int(d) for d in depths))
    if pattern is None:
        return None
    return tuple(_stage_kernels(p, d) for p, d in zip(((3,), (13,), pattern, (13,)), depths))


def _resolve_kernel_sizes(depths: tuple[int, ...], kernel_sizes) -> tuple[tuple[int, ...], ...]:
    if kernel_sizes is None:
        ks = default_kernel_sizes(depths)
        if ks is None:
            raise ModelConfigError(
                f"no published kernel sizes for depths {depths}: give kernel_sizes, one entry per stage "
                "(an int for all its blocks, or one int per block), e.g. kernel_sizes=(3, 13, 13, 13)"
            )
        return ks
    stages = as_stage_tuple("kernel_sizes", kernel_sizes)
    out = []
    for i, (entry, depth) in enumerate(zip(stages, depths)):
        ks = (int(entry),) * depth if isinstance(entry, (int, float)) else tuple(int(k) for k in entry)
        if len(ks) != depth:
            raise ModelConfigError(f"kernel_sizes[{i}] has {len(ks)} entries for the {depth} blocks of stage {i}")
        out.append(ks)
    return tuple(out)


class UniRepLKNet(FourStageNet):
    """UniRepLKNet classifier / backbone. Every argument is a create_model override.

    Args:
        in_chans, num_classes: image channels; classifier outputs (0: forward returns pre-logit features).
        depths, dims: blocks and channels per stage (4 stages, strides 4/8/16/32).
        kernel_sizes: per stage an int (all its blocks) or one int per block; None: the published sizes for
            the published depths (see default_kernel_sizes).
        ffn_factor: width of the pointwise MLP relative to the stage width.
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks to this value.
        layer_scale_init_value: initial layer scale (None or 0: no layer scale).
        head_init_scale: multiplies the classifier's initial weight and bias.
        deploy: build the re-parameterised inference structure.
        features_only, out_indices: return a list of NCHW maps of the given stages, each through its own
            LayerNorm(cf) `norm{i}`, instead of logits (no `norm` / `head`).
        grad_checkpointing: activation checkpointing per block.
        global_pool: the classifier's pooling, 'avg' or '' (none: the head at every position; timm's).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 3, 18, 3),
        dims: Sequence[int] = (80, 160, 320, 640),
        kernel_sizes: Sequence[int | Sequence[int]] | None = None,
        ffn_factor: float = 4,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        head_init_scale: float = 1.0,
        deploy: bool = False,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        grad_checkpointing: bool = False,
        global_pool: str = "avg",
    ):
        super().__init__()
        rates = self._setup(
            in_chans=in_chans, num_classes=num_classes, depths=depths, dims=dims, drop_path_rate=drop_path_rate,
            deploy=deploy, features_only=features_only, out_indices=out_indices,
            grad_checkpointing=grad_checkpointing, global_pool=global_pool,
            min_dim=4,  # the SE block uses dim // 4 channels
        )
        dims = self.dims
        self.kernel_sizes = _resolve_kernel_sizes(self.depths, kernel_sizes)
        self.downsample_layers = unireplknet_downsample_layers(in_chans, dims)
        self.stages = nn.ModuleList()
        cur = 0
        for i in range(4):
            self.stages.append(nn.Sequential(*(
                UniRepLKNetBlock(
                    dims[i], k, drop_path=rates[cur + j], layer_scale_init_value=layer_scale_init_value,
                    deploy=deploy, ffn_factor=ffn_factor,
                )
                for j, k in enumerate(self.kernel_sizes[i])
            )))
            cur += self.depths[i]
        self._build_outputs(head_init_scale)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel_sizes={self.kernel_sizes}"


# ------------------------------------------------------------------------------------------------------
# the published checkpoint layout
# ------------------------------------------------------------------------------------------------------

_BLOCK_KEY = re.compile(r"^stages\.(\d+)\.(\d+)\.dwconv\.(lk_origin\.weight|weight)$")


def _file_kernel_sizes(sd: Mapping[str, torch.Tensor]) -> dict[int, list[int]]:
    """Per stage, the kernel size of each block that has a depthwise conv in `sd`."""
    found: dict[int, dict[int, int]] = {}
    for key, value in sd.items():
        m = _BLOCK_KEY.match(key)
        if m:
            found.setdefault(int(m.group(1)), {})[int(m.group(2))] = int(value.shape[-1])
    return {s: [blocks[b] for b in sorted(blocks)] for s, blocks in sorted(found.items())}


def _is_published_layout(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(_BLOCK_KEY.match(k) or ".dwconv.origin_bn." in k for k in sd)


def _convert(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The published layout is this family's own (names mirrored): nothing is renamed, and the comparison
    names every key of a file that does not fit (another variant, other kernel sizes, deploy vs training)."""
    return dict(sd)


def _hints(sd: Mapping, own: Mapping, mismatched: list) -> list[str]:
    hints = []
    dims = tuple(sd[f"downsample_layers.{i}.0.weight"].shape[0] for i in (1, 2, 3)) if all(
        f"downsample_layers.{i}.0.weight" in sd for i in (1, 2, 3)) else None
    blocks = {tuple(k.split(".")[1:3]) for k in sd if k.startswith("stages.")}
    depths = tuple(len({b for s, b in blocks if s == str(i)}) for i in range(4))
    if dims is not None:
        match = [n for n, cfg in UNIREPLKNET_ARCHS.items() if cfg["dims"][1:] == dims and cfg["depths"] == depths]
        hints.append(f"  the file has depths {depths}, dims (., {', '.join(map(str, dims))})"
                     + (f" (unireplknet_{match[0]})" if match else ""))
    theirs, ours = _file_kernel_sizes(sd), _file_kernel_sizes(own)
    if theirs and ours and theirs != ours:
        hints.append(f"  the file's per-block kernel sizes are {[tuple(v) for v in theirs.values()]}: create the "
                     "model with kernel_sizes=... to match")
    file_deploy = any(k.endswith("dwconv.lk_origin.bias") or k.endswith("pwconv2.0.bias") for k in sd)
    model_deploy = any(k.endswith("pwconv2.0.bias") for k in own)
    if file_deploy and not model_deploy:
        hints.append("  hint: the file is re-parameterised (deploy form): create the model with deploy=True")
    if model_deploy and not file_deploy:
        hints.append("  hint: the file has the training structure: create the model with deploy=False "
                     "(then call model.reparameterize())")
    return hints


UNIREPLKNET_ADAPTER = CheckpointAdapter(
    detect=_is_published_layout, convert=_convert, hints=_hints, source="unireplknet-official"
)


# ------------------------------------------------------------------------------------------------------
# variants
# ------------------------------------------------------------------------------------------------------

UNIREPLKNET_ARCHS: dict[str, dict[str, Any]] = {
    "a": dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320)),
    "f": dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384)),
    "p": dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512)),
    "n": dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640)),
    "t": dict(depths=(3, 3, 18, 3), dims=(80, 160, 320, 640)),
    "s": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    "b": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
    "l": dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536)),
    "xl": dict(depths=(3, 3, 27, 3), dims=(256, 512, 1024, 2048)),
}

register_family("unireplknet", UNIREPLKNET_ADAPTER)


def _build(variant: str, **kwargs: Any) -> UniRepLKNet:
    return build_variant(f"unireplknet_{variant}", UniRepLKNet, UNIREPLKNET_ARCHS[variant], kwargs)


_CFG_1K = dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic")
# the ImageNet-22K -> 1K fine-tuned weights are evaluated at 384 with a plain resize (no crop)
_CFG_384 = dict(input_size=(3, 384, 384), crop_pct=1.0, interpolation="bicubic")


@register_model(pretrained_cfg=_CFG_1K)
def unireplknet_a(**kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-A: depths 2/2/6/2, dims 40/80/160/320; 77.0% ImageNet-1K, 4.4M params."""
    return _build("a", **kwargs)


@register_model(pretrained_cfg=_CFG_1K)
def unireplknet_f(**kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-F: depths 2/2/6/2, dims 48/96/192/384; 78.6%, 6.2M."""
    return _build("f", **kwargs)


@register_model(pretrained_cfg=_CFG_1K)
def unireplknet_p(**kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-P: depths 2/2/6/2, dims 64/128/256/512; 80.2%, 10.7M."""
    return _build("p", **kwargs)


@register_model(pretrained_cfg=_CFG_1K)
def unireplknet_n(**kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-N: depths 2/2/8/2, dims 80/160/320/640; 81.6%, 18.3M."""
    return _build("n", **kwargs)


@register_model(pretrained_cfg=_CFG_1K)
def unireplknet_t(**kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-T: depths 3/3/18/3, dims 80/160/320/640, stage-3 kernels 13/3 alternating; 83.2%, 31M."""
    return _build("t", **kwargs)


@register_model(pretrained_cfg=_CFG_1K)
def unireplknet_s(**kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-S: depths 3/3/27/3, dims 96/192/384/768, stage-3 kernels 13/3/3; 83.9%, 56M."""
    return _build("s", **kwargs)


@register_model(pretrained_cfg=_CFG_384)
def unireplknet_b(**kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-B (ImageNet-22K): depths 3/3/27/3, dims 128/256/512/1024; 87.4% at 384 after 22K, 98M."""
    return _build("b", **kwargs)


@register_model(pretrained_cfg=_CFG_384)
def unireplknet_l(**kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-L (ImageNet-22K): depths 3/3/27/3, dims 192/384/768/1536; 87.9% at 384, 218M."""
    return _build("l", **kwargs)


@register_model(pretrained_cfg=_CFG_384)
def unireplknet_xl(**kwargs: Any) -> UniRepLKNet:
    """UniRepLKNet-XL (ImageNet-22K): depths 3/3/27/3, dims 256/512/1024/2048; 88.0% at 384, 386M."""
    return _build("xl", **kwargs)
