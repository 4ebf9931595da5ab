"""Pieces every backbone family shares (plain PyTorch): the `feature_info` list, per-stage settings,
input checks, activation checkpointing that keeps BatchNorm statistics exact, and stage freezing
(`StageFreezing`, the one rule tools/train_cls.py's ``--model.freeze_stages`` and the mm backbones'
``frozen_stages`` both call)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from swtasks.layers.common import is_traced

from .registry import ModelConfigError

__all__ = ["GLOBAL_POOLS", "FeatureInfo", "StageFreezing", "as_stage_tuple", "check_classifier_reset", "check_global_pool",
           "check_head_args", "check_image_input", "checkpoint_block", "sync_num_classes"]

# timm's global_pool values the classifiers take: 'avg' (global average pooling, the default) and '' (none:
# the head runs at every position of the last map, forward returns (B, C, H, W))
GLOBAL_POOLS = ("avg", "")


class FeatureInfo(list):
    """`feature_info`: a list of dicts (num_chs, reduction, module), with timm-style accessors."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


def as_stage_tuple(name: str, value: Any, n: int = 4) -> tuple:
    if isinstance(value, (int, float)) and name != "depths":
        value = (value,) * n
    try:
        value = tuple(value)
    except TypeError:
        raise ModelConfigError(f"{name} must be a sequence of {n} values, got {value!r}") from None
    if len(value) != n:
        raise ModelConfigError(f"{name} must have {n} entries (one per stage), got {value!r}")
    return value


class _KeepRunningStats:
    """Recompute context for activation checkpointing: BatchNorms in training mode would update their
    running statistics a second time while the forward is recomputed; save them on entry and put them back
    on exit, so a checkpointed step leaves exactly the state an ordinary one does."""

    def __init__(self, bns: list[_BatchNorm]):
        self.bns = bns
        self.saved: list[tuple] = []

    def __enter__(self):
        self.saved = [
            (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in self.bns
        ]
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for bn, (m, v, n) in zip(self.bns, self.saved):
                bn.running_mean.copy_(m)
                bn.running_var.copy_(v)
                bn.num_batches_tracked.copy_(n)
        self.saved = []
        return False


class StageFreezing:
    """Stage freezing as a behaviour of the model (mmpretrain's ``_freeze_stages`` + ``train()``), mixed into
    every family's base class before ``nn.Module``.

    ``freeze_stages(k)``: -1 freezes nothing; 0 the stem; k >= 1 the stem and the first k stages with their
    downsampling layers. Frozen means: the parameters of ``frozen_parameters(k)`` lose their gradients and
    the modules of ``stage_modules(k)`` are put in eval mode, so their BatchNorm statistics stay fixed in a
    training forward too; ``train()`` applies both again (a later ``model.train()`` does not thaw them).
    Freezing is one-way: a smaller k later keeps what is frozen. A family says what stage k is
    (``stage_modules``); KernelWarehouse models add the warehouses that only frozen layers draw from
    (``KWMixin.frozen_parameters``)."""

    num_stages = 4
    frozen_stages = -1

    def stage_modules(self, k: int) -> list[nn.Module]:
        """The modules ``freeze_stages(k)`` freezes (k >= 0): the stem, then each of the first k stages with
        its downsampling layer."""
        raise NotImplementedError(f"{type(self).__name__} does not say what its stages are")

    def frozen_parameters(self, k: int) -> list[nn.Parameter]:
        """The parameters ``freeze_stages(k)`` takes the gradients from: those of ``stage_modules(k)``."""
        return [p for m in self.stage_modules(k) for p in m.parameters()]

    def freeze_stages(self, k: int):
        """Freeze the stem and the first ``k`` stages (see the class docstring); returns the model."""
        if isinstance(k, bool) or not isinstance(k, int) or not -1 <= k <= self.num_stages:
            raise ValueError(f"freeze_stages takes an int in [-1, {self.num_stages}], got {k!r}")
        self.frozen_stages = max(self.frozen_stages, k)
        self._apply_frozen_stages()
        return self

    def _apply_frozen_stages(self) -> None:
        k = self.frozen_stages
        if k < 0:
            return
        for m in self.stage_modules(k):
            m.eval()
        for p in self.frozen_parameters(k):
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self._apply_frozen_stages()
        return self


def checkpoint_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`torch.utils.checkpoint` of one block (use_reentrant=False); BatchNorm running statistics are updated
    once, as in a plain forward (the recomputation restores them)."""
    bns = [m for m in block.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    if not bns:
        return checkpoint(block, x, use_reentrant=False)
    return checkpoint(block, x, use_reentrant=False, context_fn=lambda: (nullcontext(), _KeepRunningStats(bns)))




def check_image_input(x: torch.Tensor, in_chans: int, total_stride: int) -> None:
    """ValueError naming the shape unless x is (B, in_chans, H, W) with H, W >= total_stride. Eager calls
    only: under a tracer or compiler (a torch.fx Proxy, torch.jit tracing, torch.compile / torch.export;
    swtasks.layers.common.is_traced) there are no values to check and the graph holds no check."""
    if is_traced(x):
        return
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected an image batch of shape (B, {in_chans}, H, W), got {shape}")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"expected {in_chans} image channels, got input of shape {tuple(x.shape)} "
            f"(create the model with in_chans={x.shape[1]} for such images)"
        )
    if x.shape[2] < total_stride or x.shape[3] < total_stride:
        raise ValueError(
            f"input of shape {tuple(x.shape)} is smaller than the network's total stride "
            f"{total_stride}: H and W must be >= {total_stride}"
        )


def check_head_args(in_chans: Any, num_classes: Any, features_only: bool, out_indices) -> tuple[int, ...]:
    """The input / head arguments every four-stage backbone checks (ModelConfigError naming the value);
    returns out_indices as a tuple of ints."""
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ModelConfigError(f"in_chans must be a positive int, got {in_chans!r}")
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ModelConfigError(f"num_classes must be an int >= 0, got {num_classes!r}")
    out_indices = tuple(int(i) for i in out_indices)
    if features_only and (not out_indices or len(set(out_indices)) != len(out_indices)
                          or any(not 0 <= i < 4 for i in out_indices)):
        raise ModelConfigError(f"out_indices must be distinct stage indices in 0..3, got {out_indices}")
    return out_indices


def check_global_pool(global_pool: Any) -> str:
    """The classifier's pooling (GLOBAL_POOLS: 'avg', or '' for none); ModelConfigError naming others."""
    if global_pool not in GLOBAL_POOLS:
        raise ModelConfigError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
    return global_pool


def check_classifier_reset(model: nn.Module, num_classes: Any) -> None:
    """What `reset_classifier(num_classes)` refuses: a features_only model, a class count that is no int >= 0."""
    if model.features_only:
        raise RuntimeError("a features_only model has no classifier")
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")


def sync_num_classes(model: nn.Module, num_classes: int) -> None:
    """Record a new class count in the model's pretrained_cfg / default_cfg (timm's names)."""
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict):
            cfg["num_classes"] = num_classes
