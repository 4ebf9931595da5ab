"""Layer-wise learning-rate decay as an mmengine optimiser-wrapper constructor.

Registered in mmengine's root ``OPTIM_WRAPPER_CONSTRUCTORS``, so MMDetection and MMSegmentation configs
(whose registries are children of mmengine's) both find it::

    optim_wrapper = dict(
        type='OptimWrapper',
        constructor='LayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
        paramwise_cfg=dict(decay_rate=0.8, decay_type='layer_wise', num_layers=12))

The groups come from ``swtasks.models.param_groups.param_groups`` - the same builder, weight-decay rule
and layer ids as the Lightning classification module: the backbone's own layer ids (ConvNeXt layout:
stem 0, stage 1 -> 1, stage 2 -> 2, downsampling 3 -> 3, stage 3 block b -> 3 + b // 3, stage 4 ->
num_layers), everything outside the backbone's layout (its output norms, the neck, the heads) ->
num_layers + 1; lr scale ``decay_rate ** (num_layers + 1 - layer_id)``. No weight decay for 1-D
parameters, biases and the backbone's ``no_weight_decay()``; ``paramwise_cfg['no_decay_keys']`` adds names
(full names, dotted suffixes or fnmatch patterns such as ``*.gamma``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import torch.nn as nn
from mmengine.dist import get_dist_info
from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from ..models.param_groups import DECAY_TYPES, param_groups


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Parameter groups with layer-wise (or stage-wise) lr decay and no weight decay on norms/biases.

    ``paramwise_cfg`` keys: ``decay_rate`` (float in (0, 1], default 1.0 = no decay), ``decay_type``
    (``'layer_wise'`` default or ``'stage_wise'``), ``num_layers`` (default: the backbone's, e.g. 12 for a
    ConvNeXt-layout backbone, more when stage 3 is deeper than 27 blocks), ``no_decay_keys`` (extra names
    without weight decay). The model must have a ``backbone`` attribute (every mmdet detector / mmseg
    segmentor has).
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
        cfg = self.paramwise_cfg
        decay_type = cfg.get("decay_type", "layer_wise")
        backbone = getattr(module, "backbone", None)
        groups = param_groups(
            module,
            lr=self.base_lr,
            weight_decay=self.base_wd if self.base_wd is not None else 0.0,
            backbone=backbone if backbone is not None else module,
            prefix="backbone." if backbone is not None else "",
            no_weight_decay=tuple(cfg.get("no_decay_keys", ())),
            layer_decay=float(cfg.get("decay_rate", 1.0)),
            decay_type=decay_type,
            num_layers=cfg.get("num_layers"),
        )
        for g in groups:
            g["param_names"] = g.pop("names")
        if get_dist_info()[0] == 0:
            summary = {
                g["group_name"]: {
                    "lr_scale": round(g["lr_scale"], 6),
                    "weight_decay": g["weight_decay"],
                    "num_params": len(g["params"]),
                }
                for g in groups
            }
            MMLogger.get_current_instance().info(
                f"layer-wise lr decay ({decay_type}, rate {cfg.get('decay_rate', 1.0)}): {json.dumps(summary)}"
            )
        params.extend(groups)
