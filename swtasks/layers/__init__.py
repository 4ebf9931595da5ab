"""nn.Modules built on swtasks.ops (plain PyTorch; no lightning/mm imports here)."""

from .convert import (
    NothingToConvertError,
    Replacement,
    ShiftwiseConversionError,
    reparameterize_shiftwise,
    to_shiftwise,
)
from .decomposed import DecomposedLargeKernelConv
from .dilated_reparam import DilatedReparamBlock
from .kernel_warehouse import KWConv1d, KWConv2d, KWConv3d, KWLinear, WarehouseManager
from .shiftwise import ShiftWiseConv2d

__all__ = [
    "DecomposedLargeKernelConv",
    "DilatedReparamBlock",
    "KWConv1d",
    "KWConv2d",
    "KWConv3d",
    "KWLinear",
    "NothingToConvertError",
    "Replacement",
    "ShiftWiseConv2d",
    "ShiftwiseConversionError",
    "WarehouseManager",
    "reparameterize_shiftwise",
    "to_shiftwise",
]
