"""ConvNeXt (Liu et al., 2022): `convnext_t`, `convnext_s`, `convnext_b`, native, in the published layout.

Spec: docs/models.md, "ConvNeXt". Why native and not timm through an adapter: timm is not a dependency of
this toolkit (the core is torch, torchvision, numpy, triton), and a native network that mirrors the
published module names loads the published checkpoints with an identity mapping and fits the
`downsample_layers` / `stages` layer-id rule of `swtasks.models.param_groups` unchanged:

    downsample_layers.0          stem: Conv4x4 s4 (in -> C0) . LayerNorm(cf)
    downsample_layers.{1,2,3}    LayerNorm(cf) . Conv2x2 s2
    stages.{s}.{b}               dwconv (7x7 depthwise, bias), norm (LayerNorm, channels last), pwconv1
                                 (Linear C -> 4C), act (GELU), pwconv2 (Linear 4C -> C), gamma (layer scale,
                                 shape (C,); absent when layer_scale_init_value <= 0), drop_path
    norm, head                   LayerNorm on the pooled features, Linear (classification only)
    norm{i}                      LayerNorm(cf) per returned map (features_only; the published dense-task
                                 backbones' names)

`reparameterize()` is a no-op: ConvNeXt has no training-only branches to fold.

`ConvNeXt` builds its stem, downsampling layers and blocks through overridable methods (`_stem`,
`_downsample`, `_block`) and calls `_before_layers()` / `_after_layers()` around them, so a variant with
other convolutions (KernelWarehouse's ConvNeXt, swtasks/models/kw_variants.py) has the same model protocol (docs/models.md, "The model protocol").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from swtasks.checkpoint import CheckpointAdapter
from swtasks.layers.common import DropPath, LayerNorm

from .four_stage import FourStageNet
from .registry import build_variant, register_family, register_model

__all__ = ["CONVNEXT_ARCHS", "CONVNEXT_ADAPTER", "ConvNeXt", "ConvNeXtBlock"]


def build_convnext_tail(block: nn.Module, dim: int, drop_path: float, layer_scale_init_value: float | None) -> None:
    """The ConvNeXt block after its depthwise mixer (published names, shared with SLaK's block): ``norm``
    (LayerNorm, channels last), ``pwconv1`` (Linear C -> 4C), ``act`` (GELU), ``pwconv2`` (Linear 4C -> C),
    ``gamma`` (layer scale or None), ``drop_path``."""
    block.norm = LayerNorm(dim, eps=1e-6)
    block.pwconv1 = nn.Linear(dim, 4 * dim)
    block.act = nn.GELU()
    block.pwconv2 = nn.Linear(4 * dim, dim)
    use_ls = layer_scale_init_value is not None and layer_scale_init_value > 0
    block.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim)) if use_ls else None
    block.drop_path = DropPath(drop_path)


def convnext_tail(block: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + drop_path(gamma * pwconv2(act(pwconv1(norm(y))))) for the mixer's output y (NCHW)."""
    y = block.pwconv2(block.act(block.pwconv1(block.norm(y.permute(0, 2, 3, 1)))))
    if block.gamma is not None:
        y = block.gamma * y
    return x + block.drop_path(y.permute(0, 3, 1, 2))


class ConvNeXtBlock(nn.Module):
    """dwconv 7x7 -> LayerNorm -> Linear C->4C -> GELU -> Linear 4C->C -> layer scale -> drop path, + input."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float | None = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        build_convnext_tail(self, dim, drop_path, layer_scale_init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return convnext_tail(self, x, self.dwconv(x))


class ConvNeXt(FourStageNet):
    """ConvNeXt classifier / backbone. Every argument is a create_model override.

    Args:
        in_chans, num_classes: image channels; classifier outputs (0: none, forward returns pooled features).
        depths, dims: blocks and channels per stage (4 stages, strides 4/8/16/32).
        drop_path_rate: stochastic depth rising linearly from 0 over all blocks.
        layer_scale_init_value: initial layer scale (1e-6 for classification, 1.0 for dense tasks; <= 0 or
            None: no layer scale).
        head_init_scale: multiplies the classifier's initial weight and bias.
        deploy: accepted for the registry's interface; there is no deploy form.
        features_only, out_indices: return NCHW maps of the given stages, each through LayerNorm ``norm{i}``.
        grad_checkpointing: activation checkpointing per block.
        global_pool: the classifier's pooling, 'avg' or '' (none: the head at every position; timm's).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
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
        )
        depths, dims = self.depths, self.dims
        self._before_layers()
        self.downsample_layers = nn.ModuleList([self._stem(in_chans, dims[0])])
        for i in range(3):
            self.downsample_layers.append(self._downsample(i, dims[i], dims[i + 1]))
        self.stages = nn.ModuleList()
        cur = 0
        for i in range(4):
            self.stages.append(
                nn.Sequential(*[self._block(i, j, dims[i], rates[cur + j], layer_scale_init_value)
                                for j in range(depths[i])])
            )
            cur += depths[i]
        self._build_outputs(head_init_scale)
        self._after_layers()

    # ------------------------------------------------------------------------------------ building
    def _before_layers(self) -> None:
        """Hook before the layers are built (a subclass creates what they need)."""

    def _after_layers(self) -> None:
        """Hook after every layer is built and initialised."""

    def _stem(self, in_chans: int, dim: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(in_chans, dim, kernel_size=4, stride=4), LayerNorm(dim, eps=1e-6, data_format="channels_first")
        )

    def _downsample(self, i: int, cin: int, cout: int) -> nn.Module:
        return nn.Sequential(
            LayerNorm(cin, eps=1e-6, data_format="channels_first"), nn.Conv2d(cin, cout, kernel_size=2, stride=2)
        )

    def _block(self, stage: int, index: int, dim: int, drop_path: float, layer_scale: float | None) -> nn.Module:
        return ConvNeXtBlock(dim, drop_path, layer_scale)

    def no_weight_decay(self) -> set[str]:
        """Parameters without weight decay: every one with fewer than two dimensions (biases, LayerNorm
        weights, the layer scales ``gamma``) and every ``gamma`` (KW ConvNeXt keeps them as (1, C, 1, 1))."""
        return {n for n, p in self.named_parameters() if p.dim() < 2 or n.endswith((".bias", ".gamma"))}

    def reparameterize(self) -> ConvNeXt:
        """No deploy form: a no-op returning self (ConvNeXt has no training-only branches to fold)."""
        return self



# ------------------------------------------------------------------------------------------------------
# the published checkpoints (facebookresearch/ConvNeXt: {'model': state_dict}, same key names as ours)
# ------------------------------------------------------------------------------------------------------


def is_convnext_layout(sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``sd`` is a ConvNeXt state dict in the published layout (a 4x4 stem, Linear pointwise layers)."""
    stem = sd.get("downsample_layers.0.0.weight")
    pw = [v for k, v in sd.items() if k.startswith("stages.") and k.endswith(".pwconv1.weight")]
    return stem is not None and stem.dim() == 4 and tuple(stem.shape[2:]) == (4, 4) and bool(pw) and all(
        v.dim() == 2 for v in pw)


def convert_convnext_layout(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The published layout is ours (identity). Checked: the file is a ConvNeXt of this layout (Linear
    pointwise layers, 1-D layer scales); any other difference is named by the loader's comparison."""
    bad = [k for k, v in sd.items() if k.endswith(".gamma") and v.dim() != 1 and k.startswith("stages.")]
    if bad:
        raise ValueError(
            f"layer scales of shape {tuple(sd[bad[0]].shape)} ({bad[0]}, ...): not the published ConvNeXt layout "
            "(a KernelWarehouse ConvNeXt checkpoint? use kw_convnext_t_1x)"
        )
    return dict(sd)


def _arch_of(sd: Mapping) -> str:
    try:
        dims = (sd["downsample_layers.0.0.weight"].shape[0],) + tuple(
            sd[f"downsample_layers.{i}.1.weight"].shape[0] for i in (1, 2, 3))
    except KeyError:
        return ""
    blocks = {tuple(k.split(".")[1:3]) for k in sd if k.startswith("stages.")}
    depths = tuple(len({b for s, b in blocks if s == str(i)}) for i in range(4))
    names = [f"convnext_{a}" for a, c in CONVNEXT_ARCHS.items() if c["dims"] == dims and c["depths"] == depths]
    return f"depths {depths}, dims {dims}" + (f" ({', '.join(names)})" if names else "")


def _hints(sd: Mapping, own: Mapping, mismatched: list) -> list[str]:
    hints = []
    theirs, ours = _arch_of(sd), _arch_of(own)
    if theirs and theirs != ours:
        hints.append(f"  the file has {theirs}; the model has {ours or 'another layout'}")
    if any(k.endswith(".gamma") for k in own) and not any(k.endswith(".gamma") for k in sd):
        hints.append("  hint: the file has no layer scales: create the model with layer_scale_init_value=0")
    return hints


CONVNEXT_ADAPTER = CheckpointAdapter(
    detect=is_convnext_layout, convert=convert_convnext_layout, hints=_hints, source="convnext-official"
)

# ------------------------------------------------------------------------------------------------------
# variants
# ------------------------------------------------------------------------------------------------------

CONVNEXT_ARCHS: dict[str, dict[str, Any]] = {
    "t": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    "s": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    "b": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
}
_CFG = dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic")
register_family("convnext", CONVNEXT_ADAPTER)


def _build(variant: str, **kwargs: Any) -> ConvNeXt:
    return build_variant(f"convnext_{variant}", ConvNeXt, CONVNEXT_ARCHS[variant], kwargs)


@register_model(pretrained_cfg=_CFG)
def convnext_t(**kwargs: Any) -> ConvNeXt:
    """ConvNeXt-T: depths 3/3/9/3, dims 96/192/384/768; 28,589,128 parameters (82.1% IN-1K top-1)."""
    return _build("t", **kwargs)


@register_model(pretrained_cfg=_CFG)
def convnext_s(**kwargs: Any) -> ConvNeXt:
    """ConvNeXt-S: depths 3/3/27/3, dims 96/192/384/768; 50,223,688 parameters (83.1%)."""
    return _build("s", **kwargs)


@register_model(pretrained_cfg=_CFG)
def convnext_b(**kwargs: Any) -> ConvNeXt:
    """ConvNeXt-B: depths 3/3/27/3, dims 128/256/512/1024; 88,591,464 parameters (83.8%)."""
    return _build("b", **kwargs)
