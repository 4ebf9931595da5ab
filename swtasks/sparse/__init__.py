"""Training-time sparsity (plain PyTorch; no lightning here): one schedule (base: DynamicSparsity) and two
kinds of masks, per small kernel of the shift-wise operator (kernel) and SLaK's per weight of every conv and
linear layer (unstructured); `fold_masks` for exported weights and `mask_summary` for the tools' reports."""

from .base import DynamicSparsity, SparsityError, mask_summary
from .kernel import KernelSparsity, fold_masks, masks_from_weights, shiftwise_layers, snip_scores
from .unstructured import UnstructuredSparsity, apply_weight_masks, masks_from_zero_weights

__all__ = [
    "DynamicSparsity",
    "KernelSparsity",
    "SparsityError",
    "UnstructuredSparsity",
    "apply_weight_masks",
    "fold_masks",
    "mask_summary",
    "masks_from_weights",
    "masks_from_zero_weights",
    "shiftwise_layers",
    "snip_scores",
]
