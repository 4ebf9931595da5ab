"""Exponential moving average of a model's weights (parameters averaged, buffers copied).

Why not ``torch.optim.swa_utils.AveragedModel``: with ``use_buffers=True`` it averages every buffer,
including integer index tables (the shift-wise operator's ``rep_idx`` / ``slot_h``) and 0/1 sparsity
masks, which must be copied, not averaged; with ``use_buffers=False`` it leaves the BatchNorm statistics
stale. This small class averages floating-point parameters and copies all buffers (BN running stats,
sparsity masks, index tables) from the live model, like timm's ``ModelEma``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA(nn.Module):
    """``ema = decay * ema + (1 - decay) * live`` for parameters; buffers copied.

    ``warmup_steps`` > 0 ramps the decay up as ``min(decay, (1 + n) / (warmup_steps + n))`` so that early
    averages are not dominated by the random initialisation. The number of updates is a buffer, so it
    travels in checkpoints with the averaged weights.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup_steps: int = 0):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model)  # follows train()/eval() of its parent; only run in eval
        self.module.requires_grad_(False)
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        if self.warmup_steps <= 0:
            return self.decay
        return min(self.decay, (1.0 + n) / (self.warmup_steps + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_p = dict(self.module.named_parameters())
        live_p = dict(model.named_parameters())
        if ema_p.keys() != live_p.keys():
            raise RuntimeError("EMA and live model have different parameters; was the model changed in place?")
        floats_e, floats_l = [], []
        for name, e in ema_p.items():
            v = live_p[name].detach()
            if e.is_floating_point():
                floats_e.append(e)
                floats_l.append(v.to(e.dtype))
            else:
                e.copy_(v)
        if floats_e:
            torch._foreach_lerp_(floats_e, floats_l, 1.0 - d)
        self.copy_buffers(model)
        self.num_updates += 1

    @torch.no_grad()
    def copy_buffers(self, model: nn.Module) -> None:
        """Copy every buffer of ``model`` (creating buffers that appeared there, e.g. sparsity masks)."""
        ema_mods = dict(self.module.named_modules())
        for mod_name, mod in model.named_modules():
            target = ema_mods.get(mod_name)
            if target is None:
                continue
            for bname, buf in mod._buffers.items():
                cur = target._buffers.get(bname)
                if buf is None:
                    if bname in target._buffers:
                        target._buffers[bname] = None
                elif cur is None or cur.shape != buf.shape or cur.dtype != buf.dtype:
                    target._buffers[bname] = buf.detach().clone()
                else:
                    cur.copy_(buf)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
