"""The model registry: `register_model`, `create_model`, `list_models`, `get_data_config`, checkpoint loading.

A model family registers one factory per variant name:

    @register_model(pretrained_cfg=dict(input_size=(3, 224, 224), crop_pct=0.875))
    def shiftwise_tiny(**kwargs):
        return ShiftWiseNet(**{**TINY_SETTINGS, **kwargs})

The factory receives `num_classes`, `drop_path_rate`, `deploy`, `features_only`, `out_indices` and any user
overrides as keyword arguments and must raise for unknown ones (see `check_overrides`). `create_model` then
attaches the variant's data config as `model.pretrained_cfg` (and the timm alias `model.default_cfg`) and
loads `checkpoint_path` when given. No weights are ever downloaded: `pretrained=True` means "load the
checkpoint given by checkpoint_path".
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "CheckpointMismatchError",
    "ModelConfigError",
    "check_overrides",
    "create_model",
    "extract_state_dict",
    "get_data_config",
    "is_model",
    "list_models",
    "load_checkpoint",
    "load_state_dict_file",
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

# Keys wrapping a state dict inside a checkpoint, tried in this order, and prefixes stripped from its keys.
STATE_DICT_KEYS = ("state_dict", "model", "model_ema")
STRIP_PREFIXES = ("module.", "backbone.", "model.")


class ModelConfigError(ValueError, TypeError):
    """A bad model name, override or option. Subclasses both ValueError and TypeError (an unknown keyword
    argument is a TypeError in Python, a bad value a ValueError) so either `except` catches it."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the model: lists the missing, unexpected and mis-shaped keys."""


@dataclass
class _Entry:
    name: str
    fn: Callable[..., nn.Module]
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    module: str = ""


_REGISTRY: dict[str, _Entry] = {}


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


def _ensure_builtin_models() -> None:
    # The families register themselves on import; importing the package imports them all.
    import swtasks.models  # noqa: F401


def list_models(pattern: str | Iterable[str] = "*", exclude: str | Iterable[str] = ()) -> list[str]:
    """Sorted registered names matching the fnmatch pattern(s) and none of the exclude pattern(s)."""
    _ensure_builtin_models()
    include = [pattern] if isinstance(pattern, str) else list(pattern)
    excl = [exclude] if isinstance(exclude, str) else list(exclude)
    names = [n for n in _REGISTRY if any(fnmatch.fnmatchcase(n, p) for p in include)]
    names = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in excl)]
    return sorted(names)


def is_model(name: str) -> bool:
    _ensure_builtin_models()
    return name in _REGISTRY


def _entry(name: str) -> _Entry:
    _ensure_builtin_models()
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


def create_model(
    name: str,
    pretrained: bool = False,
    num_classes: int = 1000,
    drop_path_rate: float = 0.0,
    deploy: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] = (0, 1, 2, 3),
    **overrides: Any,
) -> nn.Module:
    """Build a registered model.

    - `num_classes`, `drop_path_rate`, `deploy` (build the re-parameterised inference structure directly),
      `features_only` + `out_indices` (a backbone returning a list of NCHW maps) and any architecture
      `overrides` (e.g. `dims=(32, 64, 128, 256)`, `kernel_sizes=(13, 11, 9, 7)`) go to the variant's
      factory; unknown overrides raise ModelConfigError naming them.
    - `checkpoint_path`: a file holding a state dict (plain, or under 'state_dict' / 'model' / 'model_ema';
      'module.' / 'backbone.' / 'model.' prefixes stripped) that is loaded strictly; a mismatch raises
      CheckpointMismatchError listing the missing, unexpected and mis-shaped keys. With features_only the
      checkpoint's classifier ('norm.*', 'head.*') is ignored and the per-output norms may be absent.
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
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, features_only=features_only)
    return model


# ------------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------------


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint object, with wrapper prefixes stripped."""
    sd = obj
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                sd = obj[key]
                break
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        keys = list(obj.keys())[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointMismatchError(
            f"{source} holds no state dict (expected tensors, or one under {'/'.join(STATE_DICT_KEYS)}); "
            f"found {keys}"
        )
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in STRIP_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        out[k] = v
    return out


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (weights_only, on CPU) and return its state dict (see extract_state_dict)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return extract_state_dict(obj, source=path)


def _fmt(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    features_only: bool | None = None,
) -> nn.Module:
    """Load a checkpoint file or state dict strictly into `model`; raise CheckpointMismatchError listing
    every missing, unexpected and mis-shaped key (with hints for the reference layout and for a
    training/deploy structure mismatch). With features_only (default: the model's own flag) the
    classifier keys 'norm.*' / 'head.*' of the checkpoint are dropped, as are output norms 'norm{i}.*' of
    outputs the model does not return, and the model's output norms may be missing (they are new)."""
    source = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "state dict"
    sd = load_state_dict_file(checkpoint) if source != "state dict" else extract_state_dict(checkpoint)
    if features_only is None:
        features_only = bool(getattr(model, "features_only", False))
    own = model.state_dict()
    if features_only:
        # drop the classifier and the per-output norms of outputs this model does not have
        sd = {
            k: v
            for k, v in sd.items()
            if not (k.startswith(("norm.", "head.")) or (_is_out_norm(k) and k not in own))
        }
    missing = [k for k in own if k not in sd]
    if features_only:
        missing = [k for k in missing if not _is_out_norm(k)]
    unexpected = [k for k in sd if k not in own]
    misshaped = [
        f"{k} (checkpoint {tuple(sd[k].shape)}, model {tuple(own[k].shape)})"
        for k in sd
        if k in own and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or misshaped:
        lines = [f"checkpoint {source} does not fit {type(model).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_fmt(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
        if misshaped:
            lines.append(f"  mis-shaped keys ({len(misshaped)}): {_fmt(misshaped)}")
        lines.extend(_hints(sd, own, misshaped))
        raise CheckpointMismatchError("\n".join(lines))
    model.load_state_dict(sd, strict=not features_only)
    return model


def _is_out_norm(key: str) -> bool:
    head = key.split(".", 1)[0]
    return head.startswith("norm") and head[4:].isdigit()


def _hints(sd: Mapping, own: Mapping, misshaped: list[str]) -> list[str]:
    hints = []
    if any(".LoRAs." in k or ".LoRA." in k or ".bn_lora1." in k for k in sd):
        hints.append(
            "  hint: this is the reference implementation's layout; convert it first with "
            "tools/convert_checkpoint.py --source shiftwise-official"
        )
    ck_deploy = any(k.endswith("large_kernel.weight_h") for k in sd)
    md_deploy = any(k.endswith("large_kernel.weight_h") for k in own)
    if ck_deploy and not md_deploy:
        hints.append("  hint: the checkpoint is re-parameterised (deploy form): create the model with deploy=True")
    if md_deploy and not ck_deploy and any(k.endswith("large_kernel.weight") for k in sd):
        hints.append(
            "  hint: the checkpoint has the training structure: create the model with deploy=False "
            "(then call model.reparameterize())"
        )
    if any(m.startswith("head.") for m in misshaped):
        hints.append(
            "  hint: the classifier size differs: create the model with the checkpoint's num_classes, "
            "then call model.reset_classifier(n)"
        )
    return hints
