"""Layer-wise learning-rate decay for ConvNeXt-layout backbones, as an mmengine optimiser-wrapper constructor.

Registered in mmengine's root ``OPTIM_WRAPPER_CONSTRUCTORS``, so MMDetection and MMSegmentation configs
(whose registries are children of mmengine's) both find it::

    optim_wrapper = dict(
        type='OptimWrapper',
        constructor='LayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
        paramwise_cfg=dict(decay_rate=0.8, decay_type='layer_wise', num_layers=12))

Layer ids (network spec, "Detection"), for parameter names relative to the backbone:

- ``downsample_layers.0`` (stem) -> 0; ``stages.0`` -> 1; ``downsample_layers.1`` / ``stages.1`` -> 2;
  ``downsample_layers.2`` -> 3; ``stages.2.{b}`` -> 3 + b // 3;
  ``downsample_layers.3`` / ``stages.3`` -> num_layers;
- everything else (the backbone's output norms, neck, heads) -> num_layers + 1.

``decay_type='stage_wise'``: downsampling layers -> 0, ``stages.{s}`` -> s + 1, everything else ->
num_layers + 1. The lr scale of a parameter is ``decay_rate ** (num_layers + 1 - layer_id)``.

Weight decay is 0 for biases, 1-D parameters (norms, layer scales), GRN ``gamma``/``beta`` and the names in
the backbone's ``no_weight_decay()``; ``paramwise_cfg['no_decay_keys']`` adds name substrings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import torch.nn as nn
from mmengine.dist import get_dist_info
from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from ..models.layer_ids import default_num_layers as _default_layer_count
from ..models.layer_ids import layer_id, stage_id

DECAY_TYPES = ("layer_wise", "stage_wise")

# the layer-id rule lives with the network (shared with the classification optimiser)
get_layer_id = layer_id
get_stage_id = stage_id


def default_num_layers(backbone: nn.Module | None, decay_type: str) -> int:
    """``num_layers`` when the config does not give it: 4 stage-wise; layer-wise 12, or more when stage 3
    is deep enough to need more ids."""
    if decay_type == "stage_wise":
        return 4
    depths = getattr(backbone, "depths", None)
    if depths is None and backbone is not None and hasattr(backbone, "stages"):
        depths = [len(s) for s in backbone.stages]
    return _default_layer_count(depths)


def _no_wd_names(backbone: nn.Module | None) -> set[str]:
    if backbone is None or not hasattr(backbone, "no_weight_decay"):
        return set()
    try:
        names = backbone.no_weight_decay()
    except Exception:  # a backbone's helper must not break the optimiser
        return set()
    return set(names or ())


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Parameter groups with layer-wise (or stage-wise) lr decay and no weight decay on norms/biases.

    ``paramwise_cfg`` keys: ``decay_rate`` (float in (0, 1], default 1.0 = no decay), ``decay_type``
    (``'layer_wise'`` default or ``'stage_wise'``), ``num_layers`` (default: derived from the backbone's
    depths: 12, or 3 + (depth of stage 3 - 1) // 3 + 1 when larger), ``no_decay_keys`` (extra name substrings without weight
    decay). The model must have a ``backbone`` attribute (every mmdet detector / mmseg segmentor has).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        decay_type = paramwise_cfg.get("decay_type", "layer_wise")
        if decay_type not in DECAY_TYPES:
            raise ValueError(f"paramwise_cfg.decay_type must be one of {DECAY_TYPES}, got {decay_type!r}")
        rate = paramwise_cfg.get("decay_rate", 1.0)
        if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ValueError(f"paramwise_cfg.decay_rate must be a number in (0, 1], got {rate!r}")
        num_layers = paramwise_cfg.get("num_layers")
        if num_layers is not None and (not isinstance(num_layers, int) or num_layers < 1):
            raise ValueError(f"paramwise_cfg.num_layers must be a positive integer, got {num_layers!r}")
        keys = paramwise_cfg.get("no_decay_keys", ())
        if isinstance(keys, str) or not isinstance(keys, Iterable):
            raise TypeError(f"paramwise_cfg.no_decay_keys must be a list of strings, got {keys!r}")
        # the base class skips add_params when paramwise_cfg is empty: keep it non-empty
        paramwise_cfg.setdefault("decay_type", decay_type)
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params: list[dict], module: nn.Module, **kwargs) -> None:
        logger = MMLogger.get_current_instance()
        cfg = self.paramwise_cfg
        decay_type = cfg.get("decay_type", "layer_wise")
        decay_rate = float(cfg.get("decay_rate", 1.0))
        backbone = getattr(module, "backbone", None)
        num_layers = cfg.get("num_layers") or default_num_layers(backbone, decay_type)
        no_decay_keys = tuple(cfg.get("no_decay_keys", ()))
        no_wd = {f"backbone.{n}" for n in _no_wd_names(backbone)}
        id_fn = get_layer_id if decay_type == "layer_wise" else get_stage_id
        base_wd = self.base_wd if self.base_wd is not None else 0.0

        groups: dict[str, dict] = {}
        matched = 0
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue  # frozen stages stay out of the optimiser
            layer_id = None
            if name.startswith("backbone."):
                layer_id = id_fn(name[len("backbone.") :], num_layers)
                matched += layer_id is not None
            if layer_id is None:
                layer_id = num_layers + 1
            if (
                param.ndim <= 1
                or name.endswith(".bias")
                or name.endswith(".gamma")
                or name.endswith(".beta")
                or name in no_wd
                or any(k in name for k in no_decay_keys)
            ):
                kind, wd = "no_decay", 0.0
            else:
                kind, wd = "decay", base_wd
            group_name = f"layer_{layer_id}_{kind}"
            if group_name not in groups:
                scale = decay_rate ** (num_layers + 1 - layer_id)
                groups[group_name] = {
                    "params": [],
                    "param_names": [],
                    "weight_decay": wd,
                    "lr_scale": scale,
                    "lr": scale * self.base_lr,
                    "group_name": group_name,
                }
            groups[group_name]["params"].append(param)
            groups[group_name]["param_names"].append(name)

        if backbone is not None and matched == 0 and decay_rate != 1.0:
            logger.warning(
                f"LayerDecayOptimWrapperConstructor: no parameter of {type(backbone).__name__} follows the "
                "downsample_layers/stages layout; every parameter gets the full learning rate"
            )
        # the full-lr groups (neck, heads) first: mmengine logs the lr of param_groups[0] as `lr`
        ordered = sorted(
            groups.values(), key=lambda g: (-int(g["group_name"].split("_")[1]), g["group_name"])
        )
        rank, _ = get_dist_info()
        if rank == 0:
            summary = {
                g["group_name"]: {
                    "lr_scale": round(g["lr_scale"], 6),
                    "weight_decay": g["weight_decay"],
                    "num_params": len(g["params"]),
                }
                for g in ordered
            }
            logger.info(
                f"layer-wise lr decay ({decay_type}, rate {decay_rate}, num_layers {num_layers}): "
                f"{json.dumps(summary)}"
            )
        params.extend(ordered)
