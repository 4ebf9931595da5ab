"""ResNet and MobileNetV2 in torchvision's layout, plain or with KernelWarehouse convolutions; registers the
plain baselines `resnet18`, `resnet50` and `mobilenetv2_100` (the KW variants: swtasks/models/kw_variants.py).

Spec: docs/models.md, "KernelWarehouse" (which also covers the plain baselines). One builder serves both, so a baseline and
its KW version differ only in their convolutions (same initialisation, forward, drop path and model protocol):

    ResNet:       conv1, bn1, (relu, maxpool), layer1..layer4 (BasicBlock / Bottleneck: conv1, bn1, conv2,
                  bn2[, conv3, bn3], downsample.0/1), fc; the stride sits on the 3x3 convolution (v1.5)
    MobileNetV2:  features.0 (Conv-BN-ReLU6), features.1..17 (inverted residuals: conv.{i}),
                  features.18 (1x1 Conv-BN-ReLU6 to 1280), classifier.1 (Linear after Dropout)

The plain models' state dicts are torchvision's (`torchvision.models.resnet18().state_dict()` loads as it
is); torchvision itself is not imported (it costs a second at import time), it is the tests' oracle.

With ``kw=dict(...)`` (WarehouseManager settings) the convolutions are reserved from a `warehouse_manager`
exactly as the published KernelWarehouse models do it - the same warehouse names (a stage's first block
draws its first convolution, and its downsampling, from the previous stage's warehouse; ResNet's stem and
classifier stay static; MobileNetV2's stem, depthwise and pointwise convolutions are all KW), the same
module registration order (which decides each layer's own cells) and the same key names, so the published
checkpoints load with an identity mapping.

Model protocol: features_only maps at strides 4/8/16/32 (ResNet: layer1..4; MobileNetV2: the last feature module of
each resolution, features.3/6/13/18, as in the published detection backbone), feature_info, no_weight_decay,
grad checkpointing per block, and a layer-id rule (`layer_id`, `stage_id`, `num_layer_ids`) for layer-wise
lr decay: stem 0, then one id per residual block / feature module, the classifier outside.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from swtasks.layers.common import DropPath
from swtasks.layers.kernel_warehouse import KWConvNd, WarehouseManager, is_per_warehouse

from .common import (
    FeatureInfo,
    StageFreezing,
    as_stage_tuple,
    check_classifier_reset,
    check_global_pool,
    check_head_args,
    check_image_input,
    checkpoint_block,
    sync_num_classes,
)
from .registry import ModelConfigError, check_overrides, register_model

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "InvertedResidual",
    "KWMixin",
    "MobileNetV2",
    "ResNet",
    "make_divisible",
]

_WAREHOUSE = re.compile(r"^warehouse_manager\.weights\.(\d+)$")


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a width to a multiple of ``divisor`` without going down by more than 10% (MobileNet rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class _Convs:
    """Makes the network's convolutions: plain PyTorch layers, or KW layers from a WarehouseManager."""

    def __init__(self, manager: WarehouseManager | None):
        self.manager = manager

    def __call__(self, cin, cout, k, stride=1, padding=0, groups=1, bias=False, name="", enabled=True,
                 layer_type="conv2d") -> nn.Module:
        if self.manager is None or not enabled:
            if layer_type == "linear":
                return nn.Linear(cin, cout, bias=bias)
            return nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups, bias=bias)
        return self.manager.reserve(cin, cout, k, stride=stride, padding=padding, groups=groups, bias=bias,
                                    warehouse_name=name, layer_type=layer_type)


# ------------------------------------------------------------------------------------------------------
# the KW protocol shared by every KW model
# ------------------------------------------------------------------------------------------------------


class KWMixin:
    """Temperature, layer ids and frozen stages of the warehouses, for models with a ``warehouse_manager``
    (or none). Mixed in before the family's base (which brings StageFreezing)."""

    warehouse_manager: WarehouseManager | None

    def kw_layers(self) -> list[KWConvNd]:
        return [m for m in self.modules() if isinstance(m, KWConvNd)]

    def set_temperature(self, value: float) -> None:
        """Set the attention temperature tau of every KW layer (1: each layer is its assigned static
        convolution; 0: pure attention, the published default and the trained state). Per step by
        ``swtasks.cls.StepSchedule(method='set_temperature', ...)``; fixed at 0 by the mm wrappers."""
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"temperature must be in [0, 1], got {value}")
        for m in self.kw_layers():
            m.set_temperature(value)

    @property
    def temperature(self) -> float | None:
        """The KW layers' temperature (None without KW layers)."""
        layers = self.kw_layers()
        return layers[0].attention.temperature if layers else None

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.set_temperature(value)

    def warehouse_cells(self) -> list[int]:
        """Cells per warehouse (empty without KW layers)."""
        return self.warehouse_manager.num_cells() if self.warehouse_manager is not None else []

    def frozen_parameters(self, k: int) -> list[nn.Parameter]:
        """The frozen stages' own parameters and every warehouse whose users all lie in the frozen stages
        (a stage's warehouse also serves the next stage's first block, so with k = 1 the stage-1 warehouse
        keeps training, as in the published dense-task models)."""
        params = super().frozen_parameters(k)
        manager = self.warehouse_manager
        if manager is None:
            return params
        names = {id(m): n for n, m in self.named_modules()}
        frozen = [names[id(m)] for m in self.stage_modules(k)]
        return params + [manager.weights[w] for w in manager.warehouses_used_only_within(frozen)]

    def _warehouse_layer_id(self, name: str, rule: Callable[[str, int], int | None], num_layers: int):
        """A warehouse takes the smallest id among the layers drawing from it; other names: ``rule``."""
        m = _WAREHOUSE.match(name)
        if m is None or self.warehouse_manager is None:
            return rule(name, num_layers)
        ids = [rule(u + ".weight", num_layers) for u in self.warehouse_manager.users[int(m.group(1))]]
        ids = [i for i in ids if i is not None]
        return min(ids) if ids else None


# ------------------------------------------------------------------------------------------------------
# shared network protocol
# ------------------------------------------------------------------------------------------------------


class _Backbone(KWMixin, StageFreezing, nn.Module):
    """Protocol shared by ResNet and MobileNetV2: the subclass builds ``self.blocks()`` (stem first) and the
    classifier, and sets ``_out_modules`` (module indices returned by features_only)."""

    total_stride = 32

    def _setup(self, in_chans, num_classes, drop_rate, features_only, out_indices, grad_checkpointing, deploy,
               global_pool="avg"):
        out_indices = check_head_args(in_chans, num_classes, features_only, out_indices)
        self.global_pool = check_global_pool(global_pool)
        if not 0.0 <= drop_rate < 1.0:
            raise ModelConfigError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        self.in_chans, self.num_classes = in_chans, num_classes
        self.features_only = features_only
        self.out_indices = out_indices if features_only else (0, 1, 2, 3)
        self.grad_checkpointing = grad_checkpointing
        self.deploy = deploy
        self.drop_rate = drop_rate

    def _finish(self, init: Callable[[nn.Module], None]) -> None:
        for m in self.modules():
            init(m)
        if self.warehouse_manager is not None:
            self.warehouse_manager.store()
            self.warehouse_manager.allocate(self)

    # forward ------------------------------------------------------------------------------------------
    def _stages(self) -> list[tuple[Callable[[torch.Tensor], torch.Tensor], Sequence[nn.Module] | None]]:
        """(function, block container or None) per output position, stem first."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The last map (B, num_features, H/32, W/32); with features_only the list of maps."""
        check_image_input(x, self.in_chans, self.total_stride)
        stages = self._stages()
        want = {self._out_modules[i] for i in self.out_indices} if self.features_only else set()
        last = max(want) if self.features_only else len(stages) - 1
        ckpt = self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting()
        outs = []
        for j, (fn, blocks) in enumerate(stages[: last + 1]):
            if ckpt and blocks is not None:
                for block in blocks:
                    x = checkpoint_block(block, x)
            else:
                x = fn(x)
            if j in want:
                outs.append(x)
        return outs if self.features_only else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool -> dropout -> classifier; pre_logits=True stops after pooling. With
        global_pool='' no pooling: the classifier at every position, (B, C, H, W) out."""
        if self.features_only:
            raise RuntimeError("a features_only model has no classification head")
        if not self.global_pool:
            return x if pre_logits else self._classify(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self._classify(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.forward_features(x)
        return x if self.features_only else self.forward_head(x)

    # protocol -----------------------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """Parameters without weight decay: every one with fewer than two dimensions (biases, BatchNorm and
        attention-norm weights, the attention's basis bias). Convolution, linear and warehouse weights decay."""
        return {n for n, p in self.named_parameters() if p.dim() < 2 or n.endswith(".bias")}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per residual block / feature module while grad is enabled (BatchNorm
        statistics updated once, as in the plain forward)."""
        self.grad_checkpointing = bool(enable)

    def reparameterize(self):
        """No deploy form: a no-op returning self (a KW layer's kernel depends on its input, so it cannot be
        folded into a static convolution; the plain networks have no branches to fold)."""
        return self

    def stage_id(self, name: str, num_layers: int = 4) -> int | None:
        """Stage-wise id: stem 0, stage s (1..4) -> s, warehouses by their first user, else None."""
        return self._warehouse_layer_id(name, self._stage_rule, num_layers)

    def layer_id(self, name: str, num_layers: int | None = None) -> int | None:
        """Layer-wise id: stem 0, the b-th residual block / feature module counted over the whole network
        -> b (1-based, capped at num_layers), warehouses -> the smallest id of their users, else None."""
        n = self.num_layer_ids("layer_wise") if num_layers is None else num_layers
        return self._warehouse_layer_id(name, self._layer_rule, n)

    def extra_repr(self) -> str:
        kw = f", warehouses={self.warehouse_cells()}" if self.warehouse_manager is not None else ""
        return f"features_only={self.features_only}{kw}"


# ------------------------------------------------------------------------------------------------------
# ResNet
# ------------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """conv3x3 (stride) - BN - ReLU - conv3x3 - BN, + identity / downsample, ReLU."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, convs=None, stage=0, index=0, handover=False,
                 drop_path=0.0):
        super().__init__()
        convs = convs or _Convs(None)
        s1 = max(stage - 1 if handover else stage, 0)
        self.conv1 = convs(inplanes, planes, 3, stride, 1, name=f"stage{s1}_layer{index}_conv0")
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        index = 0 if handover else index
        self.conv2 = convs(planes, planes, 3, 1, 1, name=f"stage{stage}_layer{index}_conv1")
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(identity + self.drop_path(out))


class Bottleneck(nn.Module):
    """conv1x1 - BN - ReLU - conv3x3 (stride) - BN - ReLU - conv1x1 (4x) - BN, + identity, ReLU."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, convs=None, stage=0, index=0, handover=False,
                 drop_path=0.0):
        super().__init__()
        convs = convs or _Convs(None)
        s1 = stage - 1 if handover else stage
        self.conv1 = convs(inplanes, planes, 1, name=f"stage{s1}_layer{index}_conv0", enabled=s1 >= 0)
        self.bn1 = nn.BatchNorm2d(planes)
        index = 0 if handover else index
        self.conv2 = convs(planes, planes, 3, stride, 1, name=f"stage{stage}_layer{index}_conv1")
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = convs(planes, planes * 4, 1, name=f"stage{stage}_layer{index}_conv2")
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(identity + self.drop_path(out))


_LAYER = re.compile(r"^layer([1-4])\.(\d+)(?:\.|$)")


class ResNet(_Backbone):
    """ResNet-18/50 (torchvision layout), plain or KernelWarehouse. Every argument is a create_model override.

    Args:
        block: ``'basic'`` (ResNet-18/34) or ``'bottleneck'`` (ResNet-50/101).
        depths: blocks per stage.
        drop_rate: dropout before the classifier; drop_path_rate: stochastic depth of every block (one rate
            for all blocks, as in the published KW ResNets).
        kw: WarehouseManager settings (reduction, cell_num_ratio, cell_inplane_ratio, cell_outplane_ratio,
            sharing_range, nonlocal_basis_ratio); None builds the plain network.
        deploy: accepted for the registry's interface; there is no deploy form (reparameterize is a no-op).
        global_pool: the classifier's pooling, 'avg' or '' (none: the classifier at every position; timm's).
    """

    def __init__(
        self,
        block: str = "basic",
        depths: Sequence[int] = (2, 2, 2, 2),
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        kw: dict[str, Any] | None = None,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        grad_checkpointing: bool = False,
        deploy: bool = False,
        global_pool: str = "avg",
    ):
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ModelConfigError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        depths = tuple(int(d) for d in as_stage_tuple("depths", depths))
        if any(d < 1 for d in depths):
            raise ModelConfigError(f"depths must be >= 1, got {depths}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ModelConfigError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        self._setup(in_chans, num_classes, drop_rate, features_only, out_indices, grad_checkpointing, deploy,
                    global_pool)
        cls = BasicBlock if block == "basic" else Bottleneck
        self.block, self.depths = block, depths
        self.warehouse_manager = WarehouseManager(**kw) if kw is not None else None
        convs = _Convs(self.warehouse_manager)
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes, index = 64, 0
        widths = (64, 128, 256, 512)
        for s, (planes, n) in enumerate(zip(widths, depths)):
            stride = 1 if s == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * cls.expansion:
                downsample = nn.Sequential(
                    convs(inplanes, planes * cls.expansion, 1, stride, name=f"stage{s - 1}_layer{index + 1}_conv0",
                          enabled=stride != 1),
                    nn.BatchNorm2d(planes * cls.expansion),
                )
            blocks = [cls(inplanes, planes, stride, downsample, convs, s, index, True, drop_path_rate)]
            index, inplanes = 1, planes * cls.expansion
            for _ in range(1, n):
                blocks.append(cls(inplanes, planes, 1, None, convs, s, index, False, drop_path_rate))
                index += 1
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.num_features = self.head_hidden_size = inplanes  # timm's names
        chans = [w * cls.expansion for w in widths]
        info = [{"num_chs": chans[i], "reduction": 4 * 2**i, "module": f"layer{i + 1}", "stage": i} for i in range(4)]
        self.feature_info = FeatureInfo(info[i] for i in self.out_indices)
        self._out_modules = (1, 2, 3, 4)
        if not features_only:
            self.dropout = nn.Dropout(drop_rate)
            self.fc = nn.Linear(inplanes, num_classes) if num_classes > 0 else nn.Identity()
        self._finish(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def _stages(self):
        layers = [getattr(self, f"layer{i}") for i in range(1, 5)]
        return [(self._stem, None)] + [(layer, layer) for layer in layers]

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def stage_modules(self, k: int) -> list[nn.Module]:
        """Frozen by ``freeze_stages(k)``: the stem (conv1, bn1), then layer1..layer{k}."""
        return [self.conv1, self.bn1] + [getattr(self, f"layer{i}") for i in range(1, k + 1)]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs (0: none), on the
        model's device and dtype and in its training mode; ``global_pool`` as timm's (None keeps it)."""
        check_classifier_reset(self, num_classes)
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool)
        ref = self.bn1.weight
        fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.fc = fc.to(device=ref.device, dtype=ref.dtype).train(self.training)
        self.num_classes = num_classes
        sync_num_classes(self, num_classes)

    def num_layer_ids(self, decay_type: str = "layer_wise") -> int:
        return sum(self.depths) if decay_type == "layer_wise" else 4

    def _layer_rule(self, name: str, num_layers: int) -> int | None:
        if name.startswith(("conv1.", "bn1.")):
            return 0
        m = _LAYER.match(name)
        if not m:
            return None
        s, b = int(m.group(1)) - 1, int(m.group(2))
        return min(1 + sum(self.depths[:s]) + b, num_layers)

    def _stage_rule(self, name: str, num_layers: int) -> int | None:
        if name.startswith(("conv1.", "bn1.")):
            return 0
        m = _LAYER.match(name)
        return min(int(m.group(1)), num_layers) if m else None


# ------------------------------------------------------------------------------------------------------
# MobileNetV2
# ------------------------------------------------------------------------------------------------------


class ConvBNReLU(nn.Sequential):
    """Conv (k x k, padding (k-1)/2, no bias) - BatchNorm - ReLU6 (torchvision's Conv2dNormActivation)."""

    def __init__(self, cin, cout, k=3, stride=1, groups=1, convs=None, name="", enabled=True):
        convs = convs or _Convs(None)
        super().__init__(
            convs(cin, cout, k, stride, (k - 1) // 2, groups=groups, name=name, enabled=enabled),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """[1x1 expand - BN - ReLU6] - 3x3 depthwise (stride) - BN - ReLU6 - 1x1 project - BN (+ identity)."""

    def __init__(self, inp, oup, stride, expand_ratio, convs=None, stage=0, index=0, pw_enabled=True):
        super().__init__()
        convs = convs or _Convs(None)
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(inp, hidden, 1, convs=convs, name=f"stage{stage}_layer{index}_pwconv0",
                                     enabled=pw_enabled))
        layers += [
            ConvBNReLU(hidden, hidden, 3, stride, groups=hidden, convs=convs, name=f"stage{stage}_layer{index}_dwconv0"),
            convs(hidden, oup, 1, name=f"stage{stage}_layer{index}_pwconv1", enabled=pw_enabled),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# t (expansion), c (width), n (blocks), s (stride): the MobileNetV2 paper's table
MOBILENETV2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1))
# the published KW models' warehouse stage of each row (a row that changes stage hands over its first block)
KW_STAGE_OF_ROW = (1, 2, 3, 4, 5, 6, 6)
_FEATURES = re.compile(r"^features\.(\d+)(?:\.|$)")


class MobileNetV2(_Backbone):
    """MobileNetV2 (torchvision layout), plain or KernelWarehouse. Every argument is a create_model override.

    Args:
        width_mult: channel multiplier (rounded to multiples of 8); the last width stays >= 1280.
        drop_rate: dropout before the classifier (torchvision's default 0.2).
        classifier: ``'sequential'`` (``classifier = Sequential(Dropout, Linear)``, torchvision's keys
            ``classifier.1.*``) or ``'linear'`` (``dropout`` + ``classifier`` Linear, the published KW 1x/4x
            keys ``classifier.*``).
        kw: WarehouseManager settings (None: the plain network); ``kw_pw_stages``: warehouse stages whose
            pointwise convolutions are KW (default all; the published 1/2x model: only stage 6);
            ``kw_classifier``: a KW classifier from its own warehouse (the published 1/2x model).
        global_pool: the classifier's pooling, 'avg' or '' (none: the classifier at every position; timm's).
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
        classifier: str = "sequential",
        kw: dict[str, Any] | None = None,
        kw_pw_stages: Sequence[int] | None = None,
        kw_classifier: bool = False,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        grad_checkpointing: bool = False,
        deploy: bool = False,
        global_pool: str = "avg",
    ):
        super().__init__()
        if drop_path_rate:
            raise ModelConfigError("MobileNetV2 has no stochastic depth: drop_path_rate must be 0")
        if classifier not in ("sequential", "linear"):
            raise ModelConfigError(f"classifier must be 'sequential' or 'linear', got {classifier!r}")
        if kw_classifier and (kw is None or classifier != "sequential"):
            raise ModelConfigError("kw_classifier=True needs kw settings and classifier='sequential'")
        if not width_mult > 0:
            raise ModelConfigError(f"width_mult must be > 0, got {width_mult!r}")
        self._setup(in_chans, num_classes, drop_rate, features_only, out_indices, grad_checkpointing, deploy,
                    global_pool)
        no_head = features_only or num_classes == 0
        self.width_mult, self.classifier_kind = width_mult, classifier
        self.kw_classifier = kw_classifier and not no_head  # whether the classifier is a KW layer
        # no classifier, so no classifier warehouse (a file of the classification form has one more)
        self.classifier_warehouse_dropped = bool(kw is not None and kw_classifier and no_head)
        if self.classifier_warehouse_dropped:
            # drop its entry from the per-warehouse settings
            kw = {k: v[:-1] if k != "sharing_range" and is_per_warehouse(v) else v for k, v in kw.items()}
        self.warehouse_manager = WarehouseManager(**kw) if kw is not None else None
        convs = _Convs(self.warehouse_manager)
        pw_stages = set(range(7)) if kw_pw_stages is None else set(kw_pw_stages)
        cin = make_divisible(32 * width_mult)
        self.num_features = self.head_hidden_size = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU(in_chans, cin, 3, 2, convs=convs, name="stage0_conv0")]
        strides, chans, stride = [2], [cin], 2
        index = 0
        for row, (t, c, n, s) in enumerate(MOBILENETV2_SETTING):
            cout = make_divisible(c * width_mult)
            for i in range(n):
                handover = i == 0 and row > 0 and KW_STAGE_OF_ROW[row] != KW_STAGE_OF_ROW[row - 1]
                stage = KW_STAGE_OF_ROW[row] - 1 if handover else KW_STAGE_OF_ROW[row]
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, convs, stage, index,
                                                 pw_enabled=stage in pw_stages))
                stride *= s if i == 0 else 1
                strides.append(stride)
                chans.append(cout)
                cin = cout
                index = 0 if handover else index + 1
        features.append(ConvBNReLU(cin, self.num_features, 1, convs=convs,
                                   name=f"stage{KW_STAGE_OF_ROW[-1]}_layer{index}_pwconv1"))
        strides.append(stride)
        chans.append(self.num_features)
        self.features = nn.Sequential(*features)
        self._strides = tuple(strides)
        # the last feature module of each resolution 4, 8, 16, 32
        self._out_modules = tuple(max(j for j, st in enumerate(strides) if st == r) for r in (4, 8, 16, 32))
        info = [
            {"num_chs": chans[j], "reduction": 4 * 2**i, "module": f"features.{j}", "stage": i}
            for i, j in enumerate(self._out_modules)
        ]
        self.feature_info = FeatureInfo(info[i] for i in self.out_indices)
        if not features_only:
            self._make_classifier(num_classes, convs)
        self._finish(self._init_weights)

    def _make_classifier(self, num_classes: int, convs: _Convs) -> None:
        if self.classifier_kind == "linear":
            self.dropout = nn.Dropout(self.drop_rate) if self.drop_rate > 0 else nn.Identity()
            self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
            return
        if num_classes > 0:
            fc = convs(self.num_features, num_classes, 1, bias=True, name="classifier", layer_type="linear",
                       enabled=self.kw_classifier)
        else:
            fc = nn.Identity()
        self.classifier = nn.Sequential(nn.Dropout(self.drop_rate), fc)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)

    def _stages(self):
        return [(f, (f,)) for f in self.features]

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        if self.classifier_kind == "linear":
            return self.classifier(self.dropout(x))
        return self.classifier(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier if self.classifier_kind == "linear" else self.classifier[1]

    def stage_modules(self, k: int) -> list[nn.Module]:
        """Frozen by ``freeze_stages(k)``: the feature modules up to stage k's output (the stem: the modules
        before the first stride-4 block, features.0-1; stage i ends at the i-th returned map)."""
        return [f for j, f in enumerate(self.features) if self._stage_rule(f"features.{j}.x", 4) <= k]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs (0: none), on the
        model's device and dtype and in its training mode; ``global_pool`` as timm's (None keeps it)."""
        check_classifier_reset(self, num_classes)
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool)
        if self.kw_classifier:
            # a KW classifier (the published 1/2x models) draws from the last warehouse, its own: the
            # warehouse goes with it and the new classifier is a plain Linear
            manager, wid = self.warehouse_manager, self.classifier[1].conv.warehouse_id
            if wid != len(manager.weights) - 1 or len(manager.users[wid]) != 1:
                raise RuntimeError(
                    "this model's KernelWarehouse classifier shares its warehouse with other layers: create "
                    f"the model with num_classes={num_classes} instead of resetting the classifier"
                )
            manager.remove_last_warehouse()
            self.kw_classifier, self.classifier_warehouse_dropped = False, True
        ref = self.features[0][1].weight
        self._make_classifier(num_classes, _Convs(None))
        for m in (self.classifier.modules()):
            self._init_weights(m)
        self.classifier.to(device=ref.device, dtype=ref.dtype).train(self.training)
        if self.classifier_kind == "linear":
            self.dropout.train(self.training)
        self.num_classes = num_classes
        sync_num_classes(self, num_classes)

    def num_layer_ids(self, decay_type: str = "layer_wise") -> int:
        return len(self.features) - 1 if decay_type == "layer_wise" else 4

    def _layer_rule(self, name: str, num_layers: int) -> int | None:
        m = _FEATURES.match(name)
        return min(int(m.group(1)), num_layers) if m else None

    def _stage_rule(self, name: str, num_layers: int) -> int | None:
        m = _FEATURES.match(name)
        if not m:
            return None
        j = int(m.group(1))
        if self._strides[j] < 4:  # the stem: the modules before the first stride-4 block
            return 0
        return min(1 + sum(j > e for e in self._out_modules), num_layers)


# ------------------------------------------------------------------------------------------------------
# the plain baselines
# ------------------------------------------------------------------------------------------------------

_CFG = dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bilinear")
_RESNET_ARGS = ("in_chans", "depths", "drop_rate", "grad_checkpointing", "global_pool")
_MBV2_ARGS = ("in_chans", "drop_rate", "width_mult", "grad_checkpointing", "global_pool")
_COMMON = ("num_classes", "drop_path_rate", "deploy", "features_only", "out_indices")


def _plain(variant: str, cls, defaults: dict, accepted: Sequence[str], kwargs: dict) -> nn.Module:
    check_overrides(variant, kwargs, (*accepted, *_COMMON))
    return cls(**{**defaults, **kwargs})


@register_model(pretrained_cfg=_CFG)
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18 (torchvision layout and weights format): 11,689,512 parameters."""
    return _plain("resnet18", ResNet, dict(block="basic", depths=(2, 2, 2, 2)), _RESNET_ARGS, kwargs)


@register_model(pretrained_cfg=_CFG)
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 v1.5 (torchvision layout and weights format): 25,557,032 parameters."""
    return _plain("resnet50", ResNet, dict(block="bottleneck", depths=(3, 4, 6, 3)), _RESNET_ARGS, kwargs)


@register_model(pretrained_cfg=_CFG)
def mobilenetv2_100(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 1.0 (torchvision layout and weights format): 3,504,872 parameters."""
    return _plain("mobilenetv2_100", MobileNetV2, dict(width_mult=1.0), _MBV2_ARGS, kwargs)
