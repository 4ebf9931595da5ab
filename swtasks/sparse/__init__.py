"""Training-time sparsity (plain PyTorch; no lightning here): per-small-kernel masks of the shift-wise
operator (core) and SLaK's per-weight masks of every conv and linear layer (unstructured)."""

from .core import KernelSparsity, SparsityError, masks_from_weights, shiftwise_layers, snip_scores
from .unstructured import UnstructuredSparsity, apply_weight_masks, masks_from_zero_weights

__all__ = [
    "KernelSparsity",
    "SparsityError",
    "UnstructuredSparsity",
    "apply_weight_masks",
    "masks_from_weights",
    "masks_from_zero_weights",
    "shiftwise_layers",
    "snip_scores",
]
