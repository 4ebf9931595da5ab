"""Functional operators (torch and triton only; no lightning/mm imports here).

Submodules load on first use (PEP 562), so `import swtasks.ops.cross_conv` needs only torch (the
benchmark and the kernel report run from the source tree on machines with torch and triton alone);
`swtasks.ops.shiftwise` (the tables) also needs numpy.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "cross_conv": "cross_conv",
    "cross_conv_torch": "cross_torch",
    "ShiftwiseTables": "shiftwise",
    "build_cross_kernels": "shiftwise",
    "cross_to_dense": "shiftwise",
    "ghost_split": "shiftwise",
    "reference_draws": "shiftwise",
    "rep_channel_count": "shiftwise",
    "shiftwise_conv": "shiftwise",
    "shiftwise_reference": "shiftwise",
    "shiftwise_tables": "shiftwise",
    "slot_offsets": "shiftwise",
    "slots_from_perm": "shiftwise",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
