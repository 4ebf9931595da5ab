"""Soft-target cross-entropy, label smoothing and batch-level MixUp / CutMix (torchvision.transforms.v2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets with label smoothing: (1 - s) on the true class plus s / K everywhere."""
    t = F.one_hot(labels.long(), num_classes).float()
    return smooth(t, smoothing)


def smooth(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label smoothing of (possibly mixed) soft targets. Smoothing is linear, so smoothing after mixing
    equals mixing smoothed one-hot targets (what timm's Mixup does)."""
    if smoothing <= 0:
        return targets
    return targets * (1.0 - smoothing) + smoothing / targets.shape[-1]


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean over the batch of -sum_c t_c log softmax(z)_c, computed in fp32 (safe under bf16/fp16 autocast)."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class MixUpCutMix:
    """Batch-level MixUp / CutMix with timm's semantics on top of torchvision.transforms.v2.

    With probability ``prob`` a batch is mixed; when both are enabled, CutMix is chosen with probability
    ``switch_prob`` and MixUp otherwise. The targets come back as soft labels with label smoothing
    applied. An ``alpha`` of 0 disables that method. Random draws use the torch global RNG, so a run
    restored with its RNG state makes the same draws.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
    ):
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup/cutmix alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
        if not 0 <= prob <= 1 or not 0 <= switch_prob <= 1:
            raise ValueError(f"prob and switch_prob must be in [0, 1], got {prob}, {switch_prob}")
        self.num_classes = num_classes
        self.prob, self.switch_prob, self.label_smoothing = prob, switch_prob, label_smoothing
        self.mixup = v2.MixUp(alpha=mixup_alpha, num_classes=num_classes) if mixup_alpha > 0 else None
        self.cutmix = v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes) if cutmix_alpha > 0 else None

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup is not None or self.cutmix is not None)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        op = None
        if self.enabled and float(torch.rand(())) < self.prob:
            if self.mixup is not None and self.cutmix is not None:
                op = self.cutmix if float(torch.rand(())) < self.switch_prob else self.mixup
            else:
                op = self.mixup or self.cutmix
        if op is None:
            return images, smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        images, targets = op(images, labels.long())
        return images, smooth(targets.float(), self.label_smoothing)
