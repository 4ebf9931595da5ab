"""Backbone families and the model registry (plain PyTorch: no lightning / mm imports here).

    import swtasks
    model = swtasks.create_model("shiftwise_tiny", num_classes=1000, drop_path_rate=0.2)
    swtasks.list_models("shiftwise_*")

Each family module registers its variants with `register_model` (and its checkpoint knowledge with
`register_family`) when imported; import new families below.
"""

from .convnext import CONVNEXT_ARCHS, ConvNeXt  # noqa: E402
from .kw_variants import KW_VARIANTS, KWConvNeXt  # noqa: E402
from .registry import (
    ModelConfigError,
    checkpoint_adapter,
    create_model,
    family_of,
    get_data_config,
    is_model,
    list_models,
    register_family,
    register_model,
)
from .resnet_mobilenet import MobileNetV2, ResNet  # noqa: E402
from .shiftwise_net import SHIFTWISE_ARCHS, ShiftWiseBlock, ShiftWiseNet, shiftwise_arch  # noqa: E402
from .slak import SLAK_ARCHS, SLaK  # noqa: E402
from .unireplknet import UNIREPLKNET_ARCHS, UniRepLKNet  # noqa: E402

__all__ = [
    "CONVNEXT_ARCHS",
    "KW_VARIANTS",
    "SHIFTWISE_ARCHS",
    "SLAK_ARCHS",
    "UNIREPLKNET_ARCHS",
    "ConvNeXt",
    "KWConvNeXt",
    "MobileNetV2",
    "ResNet",
    "ModelConfigError",
    "SLaK",
    "ShiftWiseBlock",
    "ShiftWiseNet",
    "UniRepLKNet",
    "checkpoint_adapter",
    "create_model",
    "family_of",
    "get_data_config",
    "is_model",
    "list_models",
    "register_family",
    "register_model",
    "shiftwise_arch",
]
