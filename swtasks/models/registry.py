"""The model registry: `register_model`, `create_model`, `list_models`, `get_data_config`, checkpoint loading.

A model family registers one factory per variant name:

    @register_model(pretrained_cfg=dict(input_size=(3, 224, 224), crop_pct=0.875))
    def shiftwise_tiny(**kwargs):
        return ShiftWiseNet(**{**TINY_SETTINGS, **kwargs})

The factory receives `num_classes`, `drop_path_rate`, `deploy`, `features_only`, `out_indices` and any user
overrides as keyword arguments and must raise for unknown ones (see `check_overrides`). `create_model` then
attaches the variant's data config as `model.pretrained_cfg` (and the timm alias `model.default_cfg`), the
family's checkpoint adapter as `model.checkpoint_adapter` (see below), and loads `checkpoint_path` when given
(`swtasks.checkpoint.load_into`). No weights are ever downloaded:
`pretrained=True` means "load the checkpoint given by checkpoint_path".

A family registers what it knows about weights files once, as timm's per-family checkpoint filters do:

    register_family("shiftwise", CheckpointAdapter(convert=..., optional=..., extra=..., hints=...))

so `create_model(checkpoint_path=...)`, the converters and the MMDetection/MMSegmentation loader accept the
same files (the published implementation's layout included) in the same way.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from swtasks.checkpoint import CheckpointAdapter, load_into
from swtasks.errors import UserError

__all__ = [
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "ModelConfigError",
    "build_variant",
    "check_overrides",
    "checkpoint_adapter",
    "create_model",
    "family_of",
    "get_data_config",
    "is_model",
    "list_models",
    "register_family",
    "register_model",
]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

DEFAULT_DATA_CONFIG: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "mean": IMAGENET_DEFAULT_MEAN,
    "std": IMAGENET_DEFAULT_STD,
    "crop_pct": 0.875,  # resize 256 -> centre crop 224
    "interpolation": "bicubic",
    "num_classes": 1000,
}


class ModelConfigError(UserError, ValueError, TypeError):
    """A bad model name, override or option. Subclasses both ValueError and TypeError (an unknown keyword
    argument is a TypeError in Python, a bad value a ValueError) so either `except` catches it."""


@dataclass
class _Entry:
    name: str
    fn: Callable[..., nn.Module]
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    module: str = ""


_REGISTRY: dict[str, _Entry] = {}
_FAMILIES: dict[str, CheckpointAdapter] = {}


def register_family(prefix: str, adapter: CheckpointAdapter) -> None:
    """Register a family's checkpoint knowledge for every model named ``prefix_*`` (see
    swtasks.checkpoint.CheckpointAdapter). Registering a prefix again replaces the adapter."""
    if not prefix or prefix != prefix.lower() or "_" in prefix:
        raise ModelConfigError(f"family prefixes are lower-case words without '_', got {prefix!r}")
    _FAMILIES[prefix] = adapter


def family_of(name: str) -> str:
    """The family prefix of a registered model name (the longest registered prefix, else the first word)."""
    fams = [f for f in _FAMILIES if name.startswith(f + "_")]
    return max(fams, key=len) if fams else name.split("_", 1)[0]


def checkpoint_adapter(name: str) -> CheckpointAdapter | None:
    """The checkpoint adapter of the family of model ``name`` (None when the family registered none)."""
    return _FAMILIES.get(family_of(name))


def register_model(fn: Callable | None = None, *, name: str | None = None, pretrained_cfg: Mapping | None = None):
    """Register a model factory under `name` (default: the function's name). Usable bare (`@register_model`)
    or with arguments (`@register_model(pretrained_cfg=dict(crop_pct=0.95))`); `pretrained_cfg` entries
    override DEFAULT_DATA_CONFIG. Registering a name twice is an error. Returns the function unchanged."""

    def wrap(f: Callable) -> Callable:
        key = name or f.__name__
        if key != key.lower():
            raise ModelConfigError(f"model names are lower-case, got {key!r}")
        if key in _REGISTRY and _REGISTRY[key].fn is not f:
            raise ModelConfigError(f"model {key!r} is already registered (by {_REGISTRY[key].module})")
        cfg = {**DEFAULT_DATA_CONFIG, **dict(pretrained_cfg or {})}
        _REGISTRY[key] = _Entry(key, f, cfg, getattr(f, "__module__", ""))
        return f

    return wrap(fn) if fn is not None else wrap


def list_models(pattern: str | Iterable[str] = "*", exclude: str | Iterable[str] = ()) -> list[str]:
    """Sorted registered names matching the fnmatch pattern(s) and none of the exclude pattern(s)."""
    include = [pattern] if isinstance(pattern, str) else list(pattern)
    excl = [exclude] if isinstance(exclude, str) else list(exclude)
    names = [n for n in _REGISTRY if any(fnmatch.fnmatchcase(n, p) for p in include)]
    names = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in excl)]
    return sorted(names)


def is_model(name: str) -> bool:
    return name in _REGISTRY


def _entry(name: str) -> _Entry:
    if not isinstance(name, str):
        raise ModelConfigError(f"model name must be a string, got {type(name).__name__}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=5, cutoff=0.5)
    hint = f"closest names: {', '.join(close)}" if close else f"known families: {_families()}"
    raise ModelConfigError(f"unknown model {name!r}; {hint} (see swtasks.list_models())")


def _families() -> str:
    fams = sorted({n.split("_")[0] for n in _REGISTRY})
    return ", ".join(f"{f}_*" for f in fams) or "(none registered)"


def get_data_config(name: str) -> dict[str, Any]:
    """A copy of the variant's data config: input_size (C, H, W), mean, std, crop_pct, interpolation,
    num_classes, architecture."""
    entry = _entry(name)
    return {**entry.pretrained_cfg, "architecture": entry.name}


def check_overrides(variant: str, overrides: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Raise ModelConfigError naming every key of `overrides` not in `allowed`."""
    allowed = set(allowed)
    unknown = sorted(k for k in overrides if k not in allowed)
    if unknown:
        parts = []
        for k in unknown:
            close = difflib.get_close_matches(k, sorted(allowed), n=1)
            parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ModelConfigError(
            f"unknown override{'s' if len(unknown) > 1 else ''} for {variant}: {', '.join(parts)}; "
            f"accepted: {', '.join(sorted(allowed))}"
        )


def build_variant(name: str, cls: type, arch: Mapping[str, Any], overrides: Mapping[str, Any]):
    """`cls(**arch, **overrides)` for the registered variant `name`, after checking the overrides against the
    arguments of `cls.__init__` (ModelConfigError naming the unknown ones). The families' factories use it."""
    check_overrides(name, overrides, (p for p in inspect.signature(cls.__init__).parameters if p != "self"))
    return cls(**{**arch, **overrides})


def create_model(
    name: str,
    pretrained: bool = False,
    num_classes: int = 1000,
    drop_path_rate: float = 0.0,
    deploy: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] = (0, 1, 2, 3),
    trust_pickle: bool = False,
    allow_download: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model.

    - `num_classes`, `drop_path_rate`, `deploy` (build the re-parameterised inference structure directly),
      `features_only` + `out_indices` (a backbone returning a list of NCHW maps) and any architecture
      `overrides` (e.g. `dims=(32, 64, 128, 256)`, `kernel_sizes=(13, 11, 9, 7)`) go to the variant's
      factory; unknown overrides raise ModelConfigError naming them.
    - `checkpoint_path`: any weights file of this toolkit (converted, exported, re-parameterised, a
      Lightning checkpoint of tools/train_cls.py, a detector's) or the family's published layout, read
      weights-only and loaded strictly by `swtasks.checkpoint.load_into`: a mismatch raises
      CheckpointMismatchError listing the missing, unexpected and mis-shaped keys. With features_only the
      checkpoint's classifier is ignored and the per-output norms may be absent. `trust_pickle=True`
      allows a file that holds other Python objects (only for files you trust); `allow_download=True` lets
      `checkpoint_path` be an http(s) URL (downloaded, then read like a local file).
    - `pretrained=True` needs `checkpoint_path` (nothing can be downloaded).
    """
    entry = _entry(name)
    if pretrained and checkpoint_path is None:
        raise ModelConfigError(
            f"pretrained=True for {name!r} needs checkpoint_path=...: swtasks downloads no weights. "
            "Convert the published checkpoint with tools/convert_checkpoint.py and pass the result."
        )
    model = entry.fn(
        num_classes=num_classes,
        drop_path_rate=drop_path_rate,
        deploy=deploy,
        features_only=features_only,
        out_indices=tuple(out_indices),
        **overrides,
    )
    cfg = {**entry.pretrained_cfg, "architecture": entry.name, "num_classes": num_classes}
    model.pretrained_cfg = cfg
    model.default_cfg = cfg  # timm's older name for the same dict
    # what the family knows about weights files travels with the model: load_into finds it there
    model.checkpoint_adapter = checkpoint_adapter(entry.name)
    if checkpoint_path is not None:
        load_into(model, checkpoint_path, trust_pickle=trust_pickle, allow_download=allow_download)
    return model


