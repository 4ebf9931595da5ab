"""KernelWarehouse (Li & Yao, ICML 2024) networks: `kw_resnet18_*`, `kw_resnet50_*`, `kw_mobilenetv2_{100,050}_*`,
`kw_convnext_t_1x`, with the published per-variant settings, and the adapter for the published checkpoints.

Spec: docs/models.md, "KernelWarehouse". The layers are swtasks.layers.kernel_warehouse; the ResNet and
MobileNetV2 builders are swtasks/models/resnet_mobilenet.py (the plain baselines' builder with KW
convolutions); the ConvNeXt builder is swtasks/models/convnext.py with KW convolutions (`KWConvNeXt`).

Variant suffixes: `1d4x` = KW(1/4x), `1d2x` = KW(1/2x), `1x`, `2x`, `4x`, as in the published configs:

    ResNet-18     1/4x: cells 0.25, cell in/out widths 0.5    1/2x: 0.5, 0.5    1x / 2x / 4x: 1 / 2 / 4, widths 1
    ResNet-50     1/2x: 0.5, 0.5, non-local basis 0.0625      1x, 4x
    MobileNetV2   1x: sharing (layer, pwconv)   4x: sharing (layer)   1/2x: reduction 1/32, per-warehouse
                  ratios, only stage 6's pointwise convolutions KW, a KW classifier
    ConvNeXt-T    1x: sharing (layer, pwconv), LayerNorm in the attention heads

The attention temperature: `model.set_temperature(t)` (also the `temperature` attribute); the published
schedule is linear 1 -> 0 over the first 20 epochs (15 for MobileNetV2), set every iteration
(configs/cls/kw_resnet18_4x_in1k.yaml does it with swtasks.cls.StepSchedule). A model starts at 0.

Published checkpoints (`kernelwarehouse-official`): their key names are ours (`warehouse_manager.weights.{i}`,
`<layer>.attention.fc1/norm1/fc2[/fc3/basis_bias]`, `<layer>.bias`, the networks' own names), because the
networks register their modules in the published order; the adapter is an identity plus checks and, for a
features-only model, drops the classifier's warehouse (the published 1/2x MobileNetV2 has one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from swtasks.checkpoint import CheckpointAdapter
from swtasks.layers.common import DropPath, LayerNorm
from swtasks.layers.kernel_warehouse import WarehouseManager

from .convnext import ConvNeXt
from .param_groups import layer_id as convnext_layer_id
from .param_groups import stage_id as convnext_stage_id
from .registry import check_overrides, register_family, register_model
from .resnet_mobilenet import _WAREHOUSE, KWMixin, MobileNetV2, ResNet

__all__ = ["KW_ADAPTER", "KW_VARIANTS", "KWConvNeXt", "KWConvNeXtBlock"]

_KW_KEYS = ("reduction", "cell_num_ratio", "cell_inplane_ratio", "cell_outplane_ratio", "sharing_range",
            "nonlocal_basis_ratio")


class KWConvNeXtBlock(nn.Module):
    """The published KW ConvNeXt block: dwconv (KW 7x7 depthwise, bias) -> LayerNorm (channels last) ->
    pwconv1 (KW 1x1, C -> 4C, bias) -> GELU -> pwconv2 (KW 1x1, 4C -> C, bias) -> gamma (1, C, 1, 1) ->
    drop path, + input (NCHW throughout, unlike ConvNeXt's Linear pointwise layers)."""

    def __init__(self, dim: int, manager: WarehouseManager, stage: int, index: int, drop_path: float = 0.0,
                 layer_scale_init_value: float | None = 1e-6):
        super().__init__()
        name = f"stage{stage}_layer{index}_"
        self.dwconv = manager.reserve(dim, dim, 7, padding=3, groups=dim, warehouse_name=name + "dwconv0")
        self.norm = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = manager.reserve(dim, 4 * dim, 1, warehouse_name=name + "pwconv1")
        self.act = nn.GELU()
        self.pwconv2 = manager.reserve(4 * dim, dim, 1, warehouse_name=name + "pwconv2")
        use_ls = layer_scale_init_value is not None and layer_scale_init_value > 0
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(1, dim, 1, 1)) if use_ls else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma * y
        return x + self.drop_path(y)


class KWConvNeXt(KWMixin, ConvNeXt):
    """ConvNeXt with KernelWarehouse convolutions everywhere (stem, downsampling, depthwise and both pointwise
    layers); head and norms as ConvNeXt. ``kw``: WarehouseManager settings (attention norm: LayerNorm)."""

    def __init__(self, kw: dict[str, Any] | None = None, **kwargs: Any):
        self._kw_settings = dict(kw or {})
        super().__init__(**kwargs)

    def _before_layers(self) -> None:
        self.warehouse_manager = WarehouseManager(norm="layer", **self._kw_settings)

    def _after_layers(self) -> None:
        self.warehouse_manager.store()
        self.warehouse_manager.allocate(self)

    def _stem(self, in_chans: int, dim: int) -> nn.Module:
        conv = self.warehouse_manager.reserve(in_chans, dim, 4, stride=4, warehouse_name="stagestem_conv0")
        return nn.Sequential(conv, LayerNorm(dim, eps=1e-6, data_format="channels_first"))

    def _downsample(self, i: int, cin: int, cout: int) -> nn.Module:
        conv = self.warehouse_manager.reserve(cin, cout, 2, stride=2, warehouse_name=f"stage{i}_layerds_conv0")
        return nn.Sequential(LayerNorm(cin, eps=1e-6, data_format="channels_first"), conv)

    def _block(self, stage: int, index: int, dim: int, drop_path: float, layer_scale: float | None) -> nn.Module:
        return KWConvNeXtBlock(dim, self.warehouse_manager, stage, index, drop_path, layer_scale)

    def reparameterize(self) -> KWConvNeXt:
        """No deploy form: a no-op returning self (a KW layer's kernel depends on its input)."""
        return self

    def layer_id(self, name: str, num_layers: int = 12) -> int | None:
        """ConvNeXt's layer ids (swtasks.models.param_groups.layer_id); a warehouse takes its first user's."""
        return self._warehouse_layer_id(name, convnext_layer_id, num_layers)

    def stage_id(self, name: str, num_layers: int = 4) -> int | None:
        return self._warehouse_layer_id(name, convnext_stage_id, num_layers)


# ------------------------------------------------------------------------------------------------------
# variants (the published configs)
# ------------------------------------------------------------------------------------------------------

_R18 = dict(block="basic", depths=(2, 2, 2, 2))
_R50 = dict(block="bottleneck", depths=(3, 4, 6, 3))
_RES_KW = dict(reduction=0.0625, sharing_range=("layer", "conv"))
_MB_KW = dict(reduction=0.0625)
# the published 1/2x MobileNetV2: 10 warehouses (stem, the depthwise convolutions of stages 1-6, stage 6's
# expansion and projection, the classifier), reduction 1/32
_MB_1D2X = dict(
    reduction=0.03125,
    cell_num_ratio=(1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 0.5),
    cell_inplane_ratio=(1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 0.025),
    cell_outplane_ratio=(1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 1),
    sharing_range=("layer",),
)


def _ratios(n: float, inplane: float = 1.0, outplane: float = 1.0) -> dict[str, float]:
    return dict(cell_num_ratio=n, cell_inplane_ratio=inplane, cell_outplane_ratio=outplane)


# name -> (builder, architecture settings, WarehouseManager settings, published (params M, top-1 %))
KW_VARIANTS: dict[str, tuple[type, dict, dict, tuple[float, float]]] = {
    "kw_resnet18_1d4x": (ResNet, _R18, {**_RES_KW, **_ratios(0.25, 0.5, 0.5)}, (4.08, 72.73)),
    "kw_resnet18_1d2x": (ResNet, _R18, {**_RES_KW, **_ratios(0.5, 0.5, 0.5)}, (7.43, 73.33)),
    "kw_resnet18_1x": (ResNet, _R18, {**_RES_KW, **_ratios(1)}, (11.93, 74.77)),
    "kw_resnet18_2x": (ResNet, _R18, {**_RES_KW, **_ratios(2)}, (23.24, 75.19)),
    "kw_resnet18_4x": (ResNet, _R18, {**_RES_KW, **_ratios(4)}, (45.86, 76.05)),
    "kw_resnet50_1d2x": (ResNet, _R50, {**_RES_KW, **_ratios(0.5, 0.5, 0.5), "nonlocal_basis_ratio": 0.0625},
                         (17.64, 79.30)),
    "kw_resnet50_1x": (ResNet, _R50, {**_RES_KW, **_ratios(1)}, (28.05, 80.38)),
    "kw_resnet50_4x": (ResNet, _R50, {**_RES_KW, **_ratios(4)}, (102.02, 81.05)),
}
for _w, _mult, _pub in (("100", 1.0, ((2.65, 72.59), (5.17, 74.68), (11.38, 75.92))),
                        ("050", 0.5, ((1.47, 65.20), (2.85, 68.29), (4.65, 70.26)))):
    _arch = dict(width_mult=_mult, drop_rate=0.0)
    KW_VARIANTS[f"kw_mobilenetv2_{_w}_1d2x"] = (
        MobileNetV2, {**_arch, "kw_pw_stages": (6,), "kw_classifier": True}, dict(_MB_1D2X), _pub[0])
    KW_VARIANTS[f"kw_mobilenetv2_{_w}_1x"] = (
        MobileNetV2, {**_arch, "classifier": "linear"}, {**_MB_KW, **_ratios(1), "sharing_range": ("layer", "pwconv")},
        _pub[1])
    KW_VARIANTS[f"kw_mobilenetv2_{_w}_4x"] = (
        MobileNetV2, {**_arch, "classifier": "linear"}, {**_MB_KW, **_ratios(4), "sharing_range": ("layer",)},
        _pub[2])
KW_VARIANTS["kw_convnext_t_1x"] = (
    KWConvNeXt, dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    dict(reduction=0.0625, **_ratios(1), sharing_range=("layer", "pwconv")), (39.37, 82.51))

_COMMON = ("num_classes", "drop_path_rate", "deploy", "features_only", "out_indices", "in_chans",
           "grad_checkpointing", "global_pool", *_KW_KEYS)
_ACCEPTED = {
    ResNet: (*_COMMON, "depths", "drop_rate"),
    MobileNetV2: (*_COMMON, "drop_rate"),
    KWConvNeXt: (*_COMMON, "depths", "dims", "layer_scale_init_value", "head_init_scale"),
}


def _build(name: str, **kwargs: Any) -> nn.Module:
    cls, arch, kw, _ = KW_VARIANTS[name]
    check_overrides(name, kwargs, _ACCEPTED[cls])
    kw = {**kw, **{k: kwargs.pop(k) for k in _KW_KEYS if k in kwargs}}
    return cls(**{**arch, **kwargs, "kw": kw})


def _register(name: str) -> None:
    cls, _, _, (params, top1) = KW_VARIANTS[name]
    crop = dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic")

    def factory(**kwargs: Any) -> nn.Module:
        return _build(name, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = __name__
    factory.__doc__ = f"KernelWarehouse {name[3:]}: published {params}M parameters, {top1}% ImageNet-1K top-1."
    register_model(factory, pretrained_cfg=crop)


for _name in KW_VARIANTS:
    _register(_name)

# ------------------------------------------------------------------------------------------------------
# the published checkpoints (OSVAI/KernelWarehouse: {'model': state_dict, ...})
# ------------------------------------------------------------------------------------------------------


def is_kw_layout(sd: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``sd`` holds KernelWarehouse warehouses and attention heads (the published key names)."""
    return any(_WAREHOUSE.match(k) for k in sd) and any(".attention.fc1.weight" in k for k in sd)


def convert_kw_layout(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The published layout is ours (identity). A features-only model has no classifier and so no
    classifier warehouse: the file's warehouses beyond the model's are dropped when the model's
    classification form has them (the published 1/2x MobileNetV2), and refused otherwise."""
    out = dict(sd)
    manager = getattr(model, "warehouse_manager", None)
    if manager is None:
        raise ValueError(f"{type(model).__name__} has no KernelWarehouse layers; the file is a KW checkpoint")
    have = len(manager.weights)
    extra = sorted(int(m.group(1)) for k in sd if (m := _WAREHOUSE.match(k)) and int(m.group(1)) >= have)
    if extra and getattr(model, "classifier_warehouse_dropped", False):
        for i in extra:
            out.pop(f"warehouse_manager.weights.{i}")
    return out


def _warehouse_hints(sd: Mapping, own: Mapping, mismatched: list) -> list[str]:
    if not any(_WAREHOUSE.match(k) for k, _, _ in mismatched):
        return []
    cells = [(k, tuple(sd[k].shape)) for k in sorted(sd) if _WAREHOUSE.match(k)]
    shown = ", ".join(f"{k.rsplit('.', 1)[1]}: {s[0]} cells of {s[1:]}" for k, s in cells[:6])
    return [f"  hint: the file's warehouses ({shown}, ...) belong to another KW variant "
            "(cell_num_ratio / cell_inplane_ratio / cell_outplane_ratio differ): pick the matching kw_* model"]


KW_ADAPTER = CheckpointAdapter(detect=is_kw_layout, convert=convert_kw_layout, hints=_warehouse_hints,
                               source="kernelwarehouse-official")
register_family("kw", KW_ADAPTER)

