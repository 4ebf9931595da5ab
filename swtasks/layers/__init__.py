"""nn.Modules built on swtasks.ops (plain PyTorch; no lightning/mm imports here)."""

from .shiftwise import ShiftWiseConv2d

__all__ = ["ShiftWiseConv2d"]
