"""MMDetection 3.x / MMSegmentation 1.x integration. Importing this package registers:

- the backbone ``ShiftWiseNet`` in ``mmdet.registry.MODELS`` and ``mmseg.registry.MODELS`` (whichever of
  the two is installed), and the peer wrappers ``UniRepLKNet``, ``SLaK``, ``SWConvNeXt``, ``KWResNet`` for
  every peer family that the ``swtasks`` model registry holds (``registered_backbones()`` lists them);
- ``LayerDecayOptimWrapperConstructor`` in mmengine's ``OPTIM_WRAPPER_CONSTRUCTORS`` (found from both).

Configs load it with ``custom_imports = dict(imports=['swtasks.mm'], allow_failed_imports=False)``.
"""

from __future__ import annotations

from ._compat import patch_mmengine_package_utils

patch_mmengine_package_utils()  # mmengine's `mmdet::` base-config lookup needs it with setuptools >= 81

from .backbone import (  # noqa: E402
    BACKBONES,
    KWResNet,
    RegistryBackbone,
    ShiftWiseNet,
    SLaK,
    SWConvNeXt,
    UniRepLKNet,
)
from .layer_decay import LayerDecayOptimWrapperConstructor, get_layer_id, get_stage_id  # noqa: E402

__all__ = [
    "KWResNet",
    "LayerDecayOptimWrapperConstructor",
    "RegistryBackbone",
    "SLaK",
    "SWConvNeXt",
    "ShiftWiseNet",
    "UniRepLKNet",
    "get_layer_id",
    "get_stage_id",
    "registered_backbones",
    "registered_frameworks",
]

_REGISTERED: list[str] = []
_BACKBONES: list[str] = []


def _register() -> None:
    errors = {}
    # a peer wrapper is registered once its family is in the model registry (no placeholder types)
    available = [cls for cls in BACKBONES if cls.available_archs()]
    _BACKBONES.extend(cls.__name__ for cls in available)
    for framework in ("mmdet", "mmseg"):
        try:
            registry = __import__(f"{framework}.registry", fromlist=["MODELS"]).MODELS
        except ImportError as e:  # one framework may be absent; the other still works
            errors[framework] = e
            continue
        for cls in available:
            # force=True: re-importing (e.g. importlib.reload in a notebook) must not fail
            registry.register_module(name=cls.__name__, module=cls, force=True)
        _REGISTERED.append(framework)
    if not _REGISTERED:
        raise ImportError(
            "swtasks.mm needs mmdet or mmseg (with mmcv): "
            + "; ".join(f"{k}: {v}" for k, v in errors.items())
        )


def registered_frameworks() -> list[str]:
    """The frameworks ('mmdet', 'mmseg') whose MODELS registry holds the swtasks backbones."""
    return list(_REGISTERED)


def registered_backbones() -> list[str]:
    """The backbone type names registered in those frameworks (e.g. ['ShiftWiseNet'])."""
    return list(_BACKBONES)


_register()
