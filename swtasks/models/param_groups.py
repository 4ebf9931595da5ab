"""Optimiser parameter groups: the weight-decay rule and layer-wise learning-rate decay (one home).

Used by the Lightning classification module and the MMDetection/MMSegmentation optimiser constructor
alike; plain PyTorch. Layer ids of four-stage backbones (the network spec's rule; a family with another
layout defines ``layer_id(name, num_layers)`` / ``stage_id`` / ``num_layer_ids`` on the model):

Parameter names are relative to the backbone and follow the ConvNeXt / UniRepLKNet / ShiftWiseNet layout
(``downsample_layers.{i}``, ``stages.{s}.{block}``). Layer-wise ids:

- ``downsample_layers.0`` (the stem) -> 0; ``stages.0`` -> 1; ``downsample_layers.1`` / ``stages.1`` -> 2;
  ``downsample_layers.2`` -> 3; ``stages.2.{b}`` -> 3 + b // 3 (capped at num_layers);
  ``downsample_layers.3`` / ``stages.3`` -> num_layers;
- any other name -> None (callers give it num_layers + 1: the final norm, the head, a detector's neck).

The lr scale of id i is ``decay ** (num_layers + 1 - i)``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn as nn

__all__ = [
    "DECAY_TYPES",
    "decays",
    "default_num_layers",
    "layer_id",
    "model_layer_id_fn",
    "model_num_layers",
    "no_weight_decay_names",
    "param_groups",
    "stage_id",
]

DECAY_TYPES = ("layer_wise", "stage_wise")

_STAGE = re.compile(r"^stages\.(\d+)(?:\.(\d+))?(?:\.|$)")
_DOWN = re.compile(r"^downsample_layers\.(\d+)(?:\.|$)")


def layer_id(name: str, num_layers: int = 12) -> int | None:
    """Layer-wise id of the backbone parameter ``name``, or None outside the layout."""
    m = _DOWN.match(name)
    if m:
        i = int(m.group(1))
        return (0, 2, 3)[i] if i < 3 else num_layers
    m = _STAGE.match(name)
    if not m:
        return None
    s = int(m.group(1))
    if s < 2:
        return s + 1
    if s == 2:
        b = int(m.group(2)) if m.group(2) is not None else 0
        return min(3 + b // 3, num_layers)
    return num_layers


def stage_id(name: str, num_layers: int = 4) -> int | None:
    """Stage-wise id: downsampling layers -> 0, ``stages.{s}`` -> s + 1 (capped), None outside the layout."""
    if _DOWN.match(name):
        return 0
    m = _STAGE.match(name)
    return min(int(m.group(1)) + 1, num_layers) if m else None


def default_num_layers(depths: Sequence[int] | None = None, names: Iterable[str] = ()) -> int:
    """12 (the ConvNeXt / UniRepLKNet convention), raised when stage 3 is deep enough to need more ids.

    Stage 3's depth comes from ``depths`` or, without it, from the parameter ``names``.
    """
    if depths is not None and len(depths) >= 3:
        depth3 = int(depths[2])
    else:
        depth3 = 0
        for name in names:
            m = _STAGE.match(name)
            if m and int(m.group(1)) == 2 and m.group(2) is not None:
                depth3 = max(depth3, int(m.group(2)) + 1)
    return max(12, 3 + (depth3 - 1) // 3 + 1) if depth3 else 12


# ------------------------------------------------------------------------------------------------------
# parameter groups: the one weight-decay rule and the one layer-decay builder
# ------------------------------------------------------------------------------------------------------


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """``model.no_weight_decay()`` as a set (empty when the model has none)."""
    fn = getattr(model, "no_weight_decay", None)
    return set(fn()) if callable(fn) else set()


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.endswith("." + p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def decays(name: str, param: torch.Tensor, no_weight_decay: Iterable[str] = ()) -> bool:
    """The weight-decay rule (timm's): no decay for parameters with at most one dimension, biases, and the
    names in ``no_weight_decay`` (the model's ``no_weight_decay()`` plus user keys: a full name, a dotted
    suffix of it, or an fnmatch pattern such as ``*.gamma``)."""
    if param.ndim <= 1 or name.endswith(".bias") or name == "bias":
        return False
    return not _matches(name, no_weight_decay)


def model_layer_id_fn(model: nn.Module, decay_type: str = "layer_wise") -> Callable[[str, int], int | None]:
    """The family's layer-id rule: ``model.layer_id(name, num_layers)`` (``model.stage_id`` stage-wise)
    when the model defines it, else the ConvNeXt-layout rule of this module."""
    if decay_type not in DECAY_TYPES:
        raise ValueError(f"decay_type must be one of {DECAY_TYPES}, got {decay_type!r}")
    own = getattr(model, "layer_id" if decay_type == "layer_wise" else "stage_id", None)
    if callable(own):
        return own
    return layer_id if decay_type == "layer_wise" else stage_id


def model_num_layers(model: nn.Module, decay_type: str = "layer_wise") -> int:
    """``num_layers`` when none is given: the model's ``num_layer_ids`` (attribute or method) if it has one,
    4 stage-wise, else :func:`default_num_layers` from its depths / parameter names."""
    own = getattr(model, "num_layer_ids", None)
    if own is not None:
        return int(own(decay_type) if callable(own) else own)
    if decay_type == "stage_wise":
        return 4
    return default_num_layers(getattr(model, "depths", None), (n for n, _ in model.named_parameters()))


def param_groups(
    module: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    backbone: nn.Module | None = None,
    prefix: str = "",
    no_weight_decay: Iterable[str] = (),
    layer_decay: float | None = None,
    decay_type: str = "layer_wise",
    num_layers: int | None = None,
) -> list[dict]:
    """Optimiser parameter groups: decay / no-decay (:func:`decays`), optionally per layer id with the lr
    scaled by ``layer_decay ** (num_layers + 1 - id)``.

    ``module`` holds the parameters (a classifier, or a whole detector); ``backbone`` (default: ``module``)
    is the network whose ``no_weight_decay()`` and layer ids apply, found in ``module`` under ``prefix``
    (e.g. ``'backbone.'``). Parameters outside the backbone, or outside its layout (final norm, head, a
    detector's neck), get id ``num_layers + 1`` (the full lr). Frozen parameters are left out. Each group:
    ``params``, ``names``, ``weight_decay``, ``lr``, ``lr_scale``, ``layer_id``, ``group_name``; sorted
    with the full-lr groups first (frameworks log the lr of group 0).
    """
    backbone = module if backbone is None else backbone
    skip = {prefix + n for n in no_weight_decay_names(backbone)} | set(no_weight_decay)
    id_fn = None
    if layer_decay is not None:
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        id_fn = model_layer_id_fn(backbone, decay_type)
        num_layers = num_layers if num_layers is not None else model_num_layers(backbone, decay_type)
        inside = [n[len(prefix) :] for n, p in module.named_parameters() if p.requires_grad and n.startswith(prefix)]
        if layer_decay != 1.0 and inside and all(id_fn(n, num_layers) is None for n in inside):
            raise ValueError(
                f"layer_decay is set but no parameter of {type(backbone).__name__} follows a known layout "
                "(stem / downsample_layers / stages, or the model's own layer_id()); give it a layer_id()"
            )
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        wd = decays(name, p, skip)
        lid = 0
        if id_fn is not None:
            lid = id_fn(name[len(prefix) :], num_layers) if name.startswith(prefix) else None
            lid = num_layers + 1 if lid is None else lid
        key = (lid, wd)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - lid) if id_fn is not None else 1.0
            groups[key] = {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if wd else 0.0,
                "lr": lr * scale,
                "lr_scale": scale,
                "layer_id": lid,
                "group_name": f"layer_{lid}_{'decay' if wd else 'no_decay'}",
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], not k[1]))]
