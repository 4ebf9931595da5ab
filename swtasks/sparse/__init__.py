"""Training-time sparsity of the shift-wise operator's small kernels (plain PyTorch; no lightning here)."""

from .core import KernelSparsity, masks_from_weights, shiftwise_layers, snip_scores

__all__ = ["KernelSparsity", "masks_from_weights", "shiftwise_layers", "snip_scores"]
