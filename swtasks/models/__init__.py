"""Backbone families and the model registry (plain PyTorch: no lightning / mm imports here).

    import swtasks
    model = swtasks.create_model("shiftwise_tiny", num_classes=1000, drop_path_rate=0.2)
    swtasks.list_models("shiftwise_*")

Each family module registers its variants with `register_model` when imported; import new families below.
"""

from .registry import (
    CheckpointMismatchError,
    ModelConfigError,
    create_model,
    get_data_config,
    is_model,
    list_models,
    load_checkpoint,
    load_state_dict_file,
    register_model,
)
from .shiftwise_net import SHIFTWISE_ARCHS, ShiftWiseBlock, ShiftWiseNet, shiftwise_arch  # noqa: E402

__all__ = [
    "SHIFTWISE_ARCHS",
    "CheckpointMismatchError",
    "ModelConfigError",
    "ShiftWiseBlock",
    "ShiftWiseNet",
    "create_model",
    "get_data_config",
    "is_model",
    "list_models",
    "load_checkpoint",
    "load_state_dict_file",
    "register_model",
    "shiftwise_arch",
]
