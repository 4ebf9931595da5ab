"""SLaK: ConvNeXt with decomposed 51 x 51 kernels, 1.3x width and unstructured dynamic sparsity.

Spec: docs/models.md, "SLaK". Module names mirror the published implementation's (`LoRA=True` / `Decom=True`
form), so its classification and dense-task state dicts load unchanged:

    downsample_layers.0          stem: Conv4x4 s4 (3 -> C0) . LayerNorm(cf)
    downsample_layers.{1,2,3}    LayerNorm(cf) . Conv2x2 s2
    stages.{s}.{b}               SLaKBlock (below)
    norm, head                   LayerNorm on the pooled features, Linear classifier
    norm{i}                      LayerNorm(cf) per returned map (features_only)

Block (`stages.{s}.{b}.<name>`):

    large_kernel    DecomposedLargeKernelConv: LoRA1 (K x 5 + BN), LoRA2 (5 x K + BN), small_conv (5 x 5 + BN)
    norm            LayerNorm (channels last)
    pwconv1, act, pwconv2   Linear(C, 4C), GELU, Linear(4C, C)
    gamma           layer scale (C,)
    out = x + drop_path(gamma * pwconv2(act(pwconv1(norm(large_kernel(x))))))   (permuted around the MLP)

Widths: ConvNeXt's dims times `width_factor` (1.3), truncated as the published code does:
96/192/384/768 -> 124/249/499/998. Kernels per stage 51/49/47/13, small kernel 5.

Deploy structure: each large_kernel becomes two strip convolutions (swtasks.layers.decomposed); the rest
of the block has nothing that folds (LayerNorm, no BatchNorm after the MLP).

Sparsity: SLaK trains with 40% unstructured dynamic sparsity over every conv and linear weight
(swtasks.sparse.unstructured.UnstructuredSparsity). Masks are `weight_mask` buffers of the masked layers; a
SLaK model accepts them in any state dict it loads (they are created on load), so sparse checkpoints,
Lightning resumes and exports round-trip with their masks. The published checkpoints carry no masks (their
zeros are the pattern; `masks_from_zero_weights` recovers it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from swtasks.checkpoint import CheckpointAdapter
from swtasks.layers.common import LayerNorm
from swtasks.layers.decomposed import DecomposedLargeKernelConv
from swtasks.sparse.unstructured import MASK_SUFFIX, accept_weight_masks

from .common import as_stage_tuple
from .convnext import build_convnext_tail, convnext_tail
from .four_stage import FourStageNet
from .registry import ModelConfigError, build_variant, register_family, register_model

__all__ = ["SLAK_ARCHS", "SLaK", "SLaKBlock"]


class SLaKBlock(nn.Module):
    """One SLaK block (layout in the module docstring)."""

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        small_kernel: int = 5,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        deploy: bool = False,
    ):
        super().__init__()
        self.large_kernel = DecomposedLargeKernelConv(dim, kernel_size, small_kernel, deploy=deploy)
        build_convnext_tail(self, dim, drop_path, layer_scale_init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return convnext_tail(self, x, self.large_kernel(x))

    def reparameterize(self) -> None:
        """Merge the large kernel's branches and BatchNorms (see DecomposedLargeKernelConv)."""
        self.large_kernel.reparameterize()

    switch_to_deploy = reparameterize


class SLaK(FourStageNet):
    """SLaK classifier / backbone. Every argument is a create_model override.

    Args:
        in_chans, num_classes: image channels; classifier outputs (0: forward returns pre-logit features).
        depths: blocks per stage.
        dims: ConvNeXt widths per stage, multiplied by `width_factor` (truncated to int, as published).
        width_factor: 1.3 for the published SLaK models.
        kernel_sizes: the big kernel K per stage (an int for all stages).
        small_kernel: the strip width and the small square kernel (5).
        drop_path_rate, layer_scale_init_value, head_init_scale: as ConvNeXt's.
        deploy: build the re-parameterised (two-strip) structure.
        features_only, out_indices, grad_checkpointing, global_pool: as every registry backbone's.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        width_factor: float = 1.3,
        kernel_sizes: Sequence[int] | int = (51, 49, 47, 13),
        small_kernel: int = 5,
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
        if not width_factor > 0:
            raise ModelConfigError(f"width_factor must be > 0, got {width_factor!r}")
        self.base_dims = tuple(int(d) for d in as_stage_tuple("dims", dims))
        self.width_factor = float(width_factor)
        rates = self._setup(
            in_chans=in_chans, num_classes=num_classes, depths=depths,
            dims=tuple(int(d * width_factor) for d in self.base_dims), drop_path_rate=drop_path_rate,
            deploy=deploy, features_only=features_only, out_indices=out_indices,
            grad_checkpointing=grad_checkpointing, global_pool=global_pool,
        )
        dims = self.dims
        self.kernel_sizes = tuple(int(k) for k in as_stage_tuple("kernel_sizes", kernel_sizes))
        self.small_kernel = int(small_kernel)
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(
            nn.Sequential(
                nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4),
                LayerNorm(dims[0], eps=1e-6, data_format="channels_first"),
            )
        )
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(
                    LayerNorm(dims[i], eps=1e-6, data_format="channels_first"),
                    nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2),
                )
            )
        self.stages = nn.ModuleList()
        cur = 0
        for i in range(4):
            try:
                blocks = [
                    SLaKBlock(
                        dims[i], self.kernel_sizes[i], self.small_kernel, drop_path=rates[cur + j],
                        layer_scale_init_value=layer_scale_init_value, deploy=deploy,
                    )
                    for j in range(self.depths[i])
                ]
            except ValueError as e:
                raise ModelConfigError(f"SLaK stage {i}: {e}") from None
            self.stages.append(nn.Sequential(*blocks))
            cur += self.depths[i]
        self._build_outputs(head_init_scale)
        accept_weight_masks(self)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, width_factor={self.width_factor}, kernel_sizes={self.kernel_sizes}, "
                f"small_kernel={self.small_kernel}")


# ------------------------------------------------------------------------------------------------------
# the published checkpoint layout
# ------------------------------------------------------------------------------------------------------

_OLD_NAMES = {".large_kernel.Decom1.": ".large_kernel.LoRA1.", ".large_kernel.Decom2.": ".large_kernel.LoRA2."}
_LAYOUT = re.compile(r"\.large_kernel\.(LoRA1|LoRA2|Decom1|Decom2|small_conv|lkb_origin|lkb_reparam)\.")


def _is_published_layout(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(_LAYOUT.search(k) for k in sd)


def _convert(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The published names are this family's own; the repository's earlier spelling of the decomposed
    branches (`Decom1`/`Decom2`) is renamed to `LoRA1`/`LoRA2`. Anything else passes through, so the
    comparison names what does not fit (non-decomposed `lkb_origin` files, other widths or kernels)."""
    out = {}
    for key, value in sd.items():
        for old, new in _OLD_NAMES.items():
            key = key.replace(old, new)
        out[key] = value
    return out


def _hints(sd: Mapping, own: Mapping, mismatched: list) -> list[str]:
    hints = []
    if any(".large_kernel.lkb_origin." in k or ".large_kernel.lkb_reparam." in k for k in sd):
        hints.append("  the file is a non-decomposed SLaK (--Decom/--LoRA False: one dense K x K kernel per block); "
                     "swtasks implements the published decomposed SLaK (K x 5 + 5 x K + 5 x 5) only")
    kernels = {int(m.group(1)): v.shape[-2] for k, v in sd.items()
               if (m := re.match(r"^stages\.(\d+)\.0\.large_kernel\.LoRA1\.conv\.weight$", k))}
    if kernels:
        dims = {int(m.group(1)): v.shape[0] for k, v in sd.items()
                if (m := re.match(r"^stages\.(\d+)\.0\.large_kernel\.LoRA1\.conv\.weight$", k))}
        hints.append(f"  the file has widths {[dims[s] for s in sorted(dims)]} and big kernels "
                     f"{[kernels[s] for s in sorted(kernels)]} (stages 0..3)")
    if any(k.endswith("large_kernel.reparam1.weight") for k in sd) and not any(
            k.endswith("large_kernel.reparam1.weight") for k in own):
        hints.append("  hint: the file is re-parameterised (deploy form): create the model with deploy=True")
    return hints


def _is_mask(key: str) -> bool:
    return key.endswith(MASK_SUFFIX)


SLAK_ADAPTER = CheckpointAdapter(
    detect=_is_published_layout, convert=_convert, optional=_is_mask, extra=_is_mask, hints=_hints,
    source="slak-official",
)


# ------------------------------------------------------------------------------------------------------
# variants
# ------------------------------------------------------------------------------------------------------

_PUBLISHED = dict(width_factor=1.3, kernel_sizes=(51, 49, 47, 13), small_kernel=5)
SLAK_ARCHS: dict[str, dict[str, Any]] = {
    "t": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), **_PUBLISHED),
    "s": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), **_PUBLISHED),
    "b": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), **_PUBLISHED),
}

register_family("slak", SLAK_ADAPTER)


def _build(variant: str, **kwargs: Any) -> SLaK:
    return build_variant(f"slak_{variant}", SLaK, SLAK_ARCHS[variant], kwargs)


_CFG = dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic")


@register_model(pretrained_cfg=_CFG)
def slak_t(**kwargs: Any) -> SLaK:
    """SLaK-T: depths 3/3/9/3, widths 124/249/499/998, kernels 51/49/47/13 (+5); 82.5% ImageNet-1K, 30M."""
    return _build("t", **kwargs)


@register_model(pretrained_cfg=_CFG)
def slak_s(**kwargs: Any) -> SLaK:
    """SLaK-S: depths 3/3/27/3, widths 124/249/499/998, kernels 51/49/47/13 (+5); 83.8%, 55M."""
    return _build("s", **kwargs)


@register_model(pretrained_cfg=_CFG)
def slak_b(**kwargs: Any) -> SLaK:
    """SLaK-B: depths 3/3/27/3, widths 166/332/665/1331, kernels 51/49/47/13 (+5); 84.0%, 95M."""
    return _build("b", **kwargs)
