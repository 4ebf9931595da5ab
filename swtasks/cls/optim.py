"""Optimiser parameter groups (weight-decay exclusions, layer-wise lr decay) and the per-step schedule.

Plain PyTorch: nothing here imports lightning, so the same helpers serve scripts and notebooks.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..models.layer_ids import default_num_layers, layer_id
from .errors import InputError

__all__ = [
    "decays",
    "layer_id_stages",
    "param_groups",
    "warmup_cosine",
    "WarmupCosine",
]


def _matches(name: str, patterns: Iterable[str]) -> bool:
    for pat in patterns:
        if name == pat or name.endswith("." + pat) or fnmatch.fnmatchcase(name, pat):
            return True
    return False


def decays(name: str, param: torch.Tensor, no_weight_decay: Iterable[str] = ()) -> bool:
    """Whether weight decay applies to a parameter.

    No decay for: biases, every parameter with at most one dimension larger than 1 (norm weights, layer
    scales, GRN's (1, 1, 1, C) gamma/beta, per-channel scales), and names listed by the backbone's
    ``no_weight_decay()`` or the user's extra keys (an entry matches the full name, a dotted suffix of
    it, or is an fnmatch pattern such as ``*.gamma``).
    """
    if name.endswith(".bias") or name == "bias":
        return False
    if sum(1 for s in param.shape if s > 1) <= 1:
        return False
    return not _matches(name, no_weight_decay)


def layer_id_stages(name: str, num_layers: int = 12) -> int:
    """Layer id of a parameter of a four-stage ConvNeXt/UniRepLKNet-style backbone (the spec's rule,
    `swtasks.models.layer_ids`); names outside the layout (final norm, head) get num_layers + 1."""
    lid = layer_id(name, num_layers)
    return num_layers + 1 if lid is None else lid


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    no_weight_decay: Iterable[str] = (),
    layer_decay: float | None = None,
    layer_id_fn: Callable[[str], int] | None = None,
    num_layers: int | None = None,
) -> list[dict]:
    """AdamW parameter groups for ``model``: decay / no-decay, optionally per layer id (lr scaled by
    ``layer_decay ** (num_layers + 1 - layer_id)``).

    ``no_weight_decay`` defaults to ``model.no_weight_decay()`` when the model has it; extra names are added,
    not substituted. Frozen parameters (requires_grad False) are left out.
    """
    skip = set(no_weight_decay)
    if hasattr(model, "no_weight_decay"):
        skip |= set(model.no_weight_decay())
    if layer_decay is not None:
        if not 0.0 < layer_decay <= 1.0:
            raise InputError(f"layer_decay must be in (0, 1], got {layer_decay}")
        if layer_id_fn is None:
            n = num_layers if num_layers is not None else _default_num_layers(model)
            num_layers = n

            def layer_id_fn(name: str) -> int:
                return layer_id_stages(name, n)

            names = [n_ for n_, p in model.named_parameters() if p.requires_grad]
            if names and all(layer_id_fn(n_) == n + 1 for n_ in names):
                raise InputError(
                    "layer_decay is set but the backbone's parameter names do not follow the stem / "
                    "downsample_layers / stages layout; pass layer_id_fn= for this backbone"
                )
        elif num_layers is None:
            raise InputError("param_groups: num_layers is required with a custom layer_id_fn")

    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = decays(name, p, skip)
        lid = layer_id_fn(name) if layer_decay is not None else 0
        key = (lid, wd)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - lid) if layer_decay is not None else 1.0
            groups[key] = {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if wd else 0.0,
                "lr": lr * scale,
                "lr_scale": scale,
                "layer_id": lid,
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def _default_num_layers(model: nn.Module) -> int:
    depths = getattr(model, "depths", None)
    return default_num_layers(depths, (name for name, _ in model.named_parameters()))


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr at optimiser step ``step``: linear 0 -> 1 over ``warmup_steps``, then a
    cosine from 1 to ``min_ratio`` at ``total_steps`` (and ``min_ratio`` after)."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine(torch.optim.lr_scheduler.LambdaLR):
    """Per-step linear warm-up then cosine decay to ``min_lr`` (each group keeps its own lr scale)."""

    def __init__(self, optimizer, *, warmup_steps: int, total_steps: int, base_lr: float, min_lr: float):
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.min_ratio = min_lr / base_lr if base_lr > 0 else 0.0
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        return warmup_cosine(
            step, warmup_steps=self.warmup_steps, total_steps=self.total_steps, min_ratio=self.min_ratio
        )
