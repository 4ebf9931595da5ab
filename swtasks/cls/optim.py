"""The per-step learning-rate schedule (linear warm-up, then cosine). Parameter groups (weight decay,
layer-wise lr decay) live in ``swtasks.models.param_groups``, shared with the MM optimiser constructor.

Plain PyTorch: nothing here imports lightning, so the same helpers serve scripts and notebooks.
"""

from __future__ import annotations

import math

import torch

__all__ = ["warmup_cosine", "WarmupCosine"]


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
