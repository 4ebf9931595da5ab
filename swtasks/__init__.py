"""swtasks: shift-wise large-kernel ConvNets for classification, detection and segmentation.

`import swtasks` is cheap: the model API below is imported on first use.

    swtasks.create_model(name, pretrained=False, num_classes=1000, drop_path_rate=0., deploy=False,
                         checkpoint_path=None, features_only=False, out_indices=(0, 1, 2, 3), **overrides)
    swtasks.list_models(pattern="*")
    swtasks.register_model / swtasks.get_data_config
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "create_model": "swtasks.models.registry",
    "list_models": "swtasks.models.registry",
    "register_model": "swtasks.models.registry",
    "get_data_config": "swtasks.models.registry",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'swtasks' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
