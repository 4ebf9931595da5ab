"""nn.Modules built on swtasks.ops (plain PyTorch; no lightning/mm imports here)."""

from .decomposed import DecomposedLargeKernelConv
from .dilated_reparam import DilatedReparamBlock
from .shiftwise import ShiftWiseConv2d

__all__ = ["DecomposedLargeKernelConv", "DilatedReparamBlock", "ShiftWiseConv2d"]
